"""scripts/prepare_text.py: a corpus of one's own in every supported format, plain and compressed, read document by
document (real files, the real readers), every bad-input class named by file and line, and a real preparation into
litdata chunks whose tokens are the documents' and whose train/validation split is the same on every run."""

import bz2
import csv
import gzip
import json
import lzma
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from prepared_data import ROOT, load_script

from lit_gpt.data.prepare import chunk_tokens, prepare
from lit_gpt.data.readers import PrepareError, Stats, TextOptions, find_inputs, read_documents
from lit_gpt.tokenizer import Tokenizer

DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog, " * (i % 5 + 1) for i in range(40)]


def write_corpus(root):
    """Every format, holding DOCS in order of the sorted file names; returns {file name: its documents}."""
    (root / "sub").mkdir(parents=True)
    files = {
        "a.txt": DOCS[0:1],
        "b.md": DOCS[1:2],
        "c.jsonl.gz": DOCS[2:6],
        "d.jsonl.zst": DOCS[6:10],
        "e.json.xz": DOCS[10:14],  # a JSON array
        "f.ndjson.bz2": DOCS[14:18],
        "sub/g.parquet": DOCS[18:24],
        "sub/h.arrow": DOCS[24:30],
        "sub/i.csv": DOCS[30:35],
        "sub/j.tsv": DOCS[35:40],
    }
    (root / "a.txt").write_text(DOCS[0])
    (root / "b.md").write_text(DOCS[1])
    lines = lambda docs: "".join(json.dumps({"meta": {"body": d}}) + "\n" for d in docs)  # noqa: E731
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        f.write(lines(DOCS[2:6]))
    (root / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(DOCS[6:10]).encode()))
    with lzma.open(root / "e.json.xz", "wt") as f:
        json.dump([{"meta": {"body": d}} for d in DOCS[10:14]], f)
    with bz2.open(root / "f.ndjson.bz2", "wt") as f:
        f.write(lines(DOCS[14:18]))
    pq.write_table(pa.table({"text": DOCS[18:24]}), root / "sub/g.parquet")
    with pa.ipc.new_stream(str(root / "sub/h.arrow"), pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": DOCS[24:30]}))
    for name, delimiter, docs in (("i.csv", ",", DOCS[30:35]), ("j.tsv", "\t", DOCS[35:40])):
        with open(root / "sub" / name, "w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["id", "text"])
            writer.writerows([i, d] for i, d in enumerate(docs))
    (root / "sub" / "dataset_info.json").write_text("{}")  # a datasets folder's metadata: not data
    (root / "notes.pdf").write_bytes(b"%PDF")  # not a known format: not read
    return files


def read(path, **options):
    stats = Stats()
    docs = list(read_documents(path, stats, TextOptions(text_key="meta.body", **options)))
    return docs, stats


def test_every_format_reads_its_documents(tmp_path):
    files = write_corpus(tmp_path / "corpus")
    found = find_inputs([str(tmp_path / "corpus")])
    assert [str(p.relative_to(tmp_path / "corpus")) for p in found] == sorted(files)
    for path in found:
        docs, stats = read(path)
        assert docs == files[str(path.relative_to(tmp_path / "corpus"))] and not stats.bad, (path, stats.bad)
    # globs and single files; blank-line blocks
    assert [p.name for p in find_inputs([str(tmp_path / "corpus/**/*.csv"), str(tmp_path / "corpus/a.txt")])] == [
        "a.txt",
        "i.csv",
    ]
    (tmp_path / "blocks.txt").write_text("one\nstill one\n\n\ntwo\n \nthree")
    assert read(tmp_path / "blocks.txt", blocks=True)[0] == ["one\nstill one\n", "two\n", "three"]
    assert read(tmp_path / "blocks.txt")[0] == ["one\nstill one\n\n\ntwo\n \nthree"]


def test_bad_inputs_are_named_by_file_and_line(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"meta": {"body": "ok"}}\nnot json\n{"meta": {"title": "x"}}\n')
    docs, stats = read(tmp_path / "rows.jsonl")
    assert docs == ["ok"] and [str(b) for b in stats.bad] == [
        f"{tmp_path}/rows.jsonl:2: malformed JSON line: Expecting value: line 1 column 1 (char 0)",
        f"{tmp_path}/rows.jsonl:3: row without a 'meta.body' string",
    ]
    (tmp_path / "latin1.txt").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    docs, stats = read(tmp_path / "latin1.txt")
    assert docs == [] and str(stats.bad[0]).startswith(f"{tmp_path}/latin1.txt:2: not UTF-8 text")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "other.parquet")
    docs, stats = read(tmp_path / "other.parquet")
    assert docs == [] and "no 'text' column (--column): the file has ['content']" in str(stats.bad[0])
    (tmp_path / "bad.csv").write_text("id,body\n1,x\n")
    assert "no 'text' column (--column): the header is ['id', 'body']" in str(read(tmp_path / "bad.csv")[1].bad[0])
    # a compressed file cut short: the documents before the cut are kept, the cut is reported with its line
    data = gzip.compress("".join(json.dumps({"meta": {"body": d}}) + "\n" for d in DOCS).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    docs, stats = read(tmp_path / "cut.jsonl.gz")
    assert 0 < len(docs) < len(DOCS) and docs == DOCS[: len(docs)]
    assert len(stats.bad) == 1 and "truncated file" in str(stats.bad[0]) and f":{len(docs) + 1}:" in str(stats.bad[0])
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    assert "unreadable parquet file" in str(read(tmp_path / "garbage.parquet")[1].bad[0])
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(PrepareError, match=r"1 inputs cannot be read: .*link.jsonl: a link to no file"):
        find_inputs([str(tmp_path)])
    for inputs, match in [([str(tmp_path / "nope")], "no such file or folder"),
                          ([str(tmp_path / "*.doc")], "matches no file"),
                          ([str(tmp_path / "garbage.parquet"), str(tmp_path / "x.pdf")], "no such file")]:  # fmt: skip
        with pytest.raises(PrepareError, match=match):
            find_inputs(inputs)


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    """Excel and Windows editors start UTF-8 files with a BOM: it is not part of a CSV's header, a JSON array's first
    line or a text's first document (it made the header '\ufefftext' and the run found no 'text' column)."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "excel.csv").write_bytes(bom + b"text,id\r\nhello,1\r\n")
    (tmp_path / "array.json").write_bytes(bom + json.dumps([{"meta": {"body": "a"}}]).encode())
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(bom + b"hello\n"))
    assert [read(tmp_path / name) for name in ("excel.csv", "array.json", "notes.txt.gz")] == [
        (["hello"], Stats()),
        (["a"], Stats()),
        (["hello\n"], Stats()),
    ]


def test_blank_lines_around_csv_rows_or_before_a_json_array_are_no_bad_records(tmp_path):
    """A CSV's blank lines (one at the end is common) hold no row; a JSON array may follow blank lines. Both were bad
    records, which fail a run without --skip_bad_records ('0 fields, the header has 2'; 'malformed JSON line')."""
    (tmp_path / "rows.csv").write_text('text,id\nhello,1\n\n"two\n\nlines",2\n\n')
    (tmp_path / "array.json").write_text("\n  \n" + json.dumps([{"meta": {"body": "a"}}, {"meta": {"body": "b"}}]))
    assert read(tmp_path / "rows.csv") == (["hello", "two\n\nlines"], Stats())
    assert read(tmp_path / "array.json") == (["a", "b"], Stats())


def test_prepared_tokens_are_the_documents_and_the_split_is_reproducible(tmp_path, prepared):
    write_corpus(tmp_path / "corpus")
    tokenizer = Tokenizer(prepared["tokenizer"])
    expected = [t for d in DOCS for t in tokenizer.encode(d, bos=False, eos=True).tolist()]
    options = TextOptions(text_key="meta.body")
    stats = prepare("text", None, str(tmp_path / "all"), prepared["tokenizer"], 2049 * 4, num_workers=1,
                    verbose=False, inputs=[str(tmp_path / "corpus")], text_options=options)  # fmt: skip
    assert stats.documents == len(DOCS) and stats.tokens == len(expected) == sum(chunk_tokens(str(tmp_path / "all")))
    from litdata.streaming import StreamingDataset, TokensLoader

    dataset = StreamingDataset(str(tmp_path / "all"), item_loader=TokensLoader(block_size=len(expected)))
    assert dataset[0].tolist() == expected  # every document, in file order, each ending with eos

    # --val_fraction: two runs of the real script give the same two folders, which hold every document once
    script = [sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--input", str(tmp_path / "corpus")]
    script += ["--tokenizer_path", str(prepared["tokenizer"]), "--text_key", "meta.body", "--val_fraction", "0.3"]
    for out in ("split1", "split2"):
        proc = subprocess.run([*script, "--output_dir", str(tmp_path / out), "--num_workers", "2"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "val"):
        a, b = tmp_path / "split1" / split, tmp_path / "split2" / split
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert all((a / p.name).read_bytes() == (b / p.name).read_bytes() for p in a.iterdir())
    train, val = (json.loads((tmp_path / "split1" / s / "prepare.json").read_text()) for s in ("train", "val"))
    assert train["documents"] + val["documents"] == len(DOCS) and 4 <= val["documents"] <= 20, (train, val)
    assert train["tokens"] + val["tokens"] == len(expected)


def test_an_empty_corpus_or_a_wrong_key_is_refused(tmp_path, prepared):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "empty.txt").write_text("  \n")
    (tmp_path / "corpus" / "rows.jsonl").write_text('{"body": "x"}\n')
    script = [sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--input", str(tmp_path / "corpus")]
    script += ["--tokenizer_path", str(prepared["tokenizer"]), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "hold no documents to tokenize" in proc.stderr, proc.stderr[-2000:]
    assert "rows.jsonl:1: row without a 'text' string" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
    # a validation share too small for the corpus: said so, not "no documents"
    (tmp_path / "corpus" / "rows.jsonl").write_text('{"text": "one document"}\n{"text": "and another"}\n')
    proc = subprocess.run([*script, "--val_fraction", "0.001", "--overwrite", "true"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "--val_fraction 0.001 put none of the 2 documents into" in proc.stderr, proc.stderr
    assert load_script("prepare_text").main.__doc__  # the --help text comes from it


def test_a_file_name_cannot_forge_a_bad_record(tmp_path, export_tokenizer_dir):
    """A file named with a newline and a fake record after it: the report lists one bad record per line, the name
    quoted, and no line that the name made up."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("a document")
    forged = "x\nbad record: shadow.jsonl:1: forged.jsonl"
    (corpus / forged).write_text('{"text": "fine"}\n{not json\n')
    script = [sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--input", str(corpus)]
    script += ["--tokenizer_path", str(export_tokenizer_dir), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run([*script, "--skip_bad_records", "true"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("bad record:")]
    assert len(lines) == 1 and lines[0].startswith(f"bad record: {str(corpus / forged)!r}:2: malformed JSON"), lines


def test_preparation_records_its_largest_id_and_refuses_ids_outside_the_tokenizer(tmp_path, export_tokenizer_dir):
    """A tokenizer whose generation_config.json says eos_token_id -7 used to write -7 after every document: refused in
    one line. A preparation records the largest id it wrote; training's check reads that, so an id that only a later
    file holds is refused before any step (the first chunk alone was read); a folder prepared before the record keeps
    the first-chunk check."""
    import shutil

    import numpy as np

    from lit_gpt.data.loaders import check_token_ids

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("aaaa " * 2000)  # a few low ids
    (corpus / "b.txt").write_text((ROOT / "lit_gpt" / "model.py").read_text())  # the tokenizer's whole range
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(export_tokenizer_dir, tokenizer)
    (tokenizer / "generation_config.json").write_text('{"eos_token_id": -7}')
    script = [sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--input", str(corpus)]
    script += ["--output_dir", str(tmp_path / "out"), "--chunk_size", "8196", "--num_workers", "1"]
    proc = subprocess.run([*script, "--tokenizer_path", str(tokenizer)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "eos_token_id -7" in proc.stderr.splitlines()[-1], proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()

    (tokenizer / "generation_config.json").unlink()
    proc = subprocess.run([*script, "--tokenizer_path", str(tokenizer)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    index = json.loads((out / "index.json").read_text())
    chunks = [np.fromfile(out / c["filename"], dtype=np.int32)[c["chunk_size"] + 2 :] for c in index["chunks"]]
    manifest = json.loads((out / "prepare.json").read_text())
    top, first = max(int(c.max()) for c in chunks), int(chunks[0].max())
    assert manifest["max_token_id"] == top and first < top, (first, top, len(chunks))

    with pytest.raises(ValueError, match=f"{out} holds token id {top} .*has embeddings for {first + 1:,} ids"):
        check_token_ids([str(out)], first + 1, "test-model")
    check_token_ids([str(out)], top + 1, "test-model")
    del manifest["max_token_id"]  # prepared before the record: the first chunk is read, as before
    (out / "prepare.json").write_text(json.dumps(manifest))
    check_token_ids([str(out)], first + 1, "test-model")
    with pytest.raises(ValueError, match=f"holds token id {first}, "):
        check_token_ids([str(out)], first, "test-model")


def test_hostile_records_are_bad_records_of_their_file_and_the_preparation_goes_on(tmp_path, export_tokenizer_dir):
    """Each of these stopped prepare_text.py with a traceback and no file: JSON nested 100,000 deep (RecursionError),
    a lone surrogate escape (a TypeError in the tokenizer), a zstd frame that claims 1 GB (ZstdError, which
    prepare_slimpajama.py reported as a bad record), a file name of bytes that are not UTF-8 with --val_fraction
    (UnicodeEncodeError). The first three are bad records naming their file, worded alike by both scripts' readers;
    the file name is read like any other; the other documents are prepared."""
    import os
    import struct

    from lit_gpt.data.readers import read_slimpajama

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "deep.jsonl").write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + '}\n{"text": "kept 1"}\n')
    (corpus / "surrogate.jsonl").write_text('{"text": "a\\ud800b"}\n{"text": "kept 2 \\u00e9"}\n')
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b'{"text": "hidden"}\n')
    assert frame[4] == 0x20  # single segment, a 1-byte content size: rewritten as a 4-byte one of 1 GB
    (corpus / "claims.jsonl.zst").write_bytes(frame[:4] + bytes([0xA0]) + struct.pack("<I", 1 << 30) + frame[6:])
    (corpus / os.fsdecode(b"name\xff.jsonl")).write_text('{"text": "kept 3"}\n')
    expected = {
        "deep.jsonl:1: malformed JSON line: nested too deeply to parse",
        "surrogate.jsonl:1: lone surrogate: '\\ud800' (half of a pair) in the text",
        "claims.jsonl.zst:1: corrupt zstd data: zstd decompressor error: Frame requires too much memory for decoding "
        "(rest of file unread)",
    }
    docs = []
    stats = Stats()
    for path in sorted(corpus.iterdir()):
        docs += list(read_documents(path, stats, TextOptions(val_fraction=0.5, split="train")))
        docs += list(read_documents(path, stats, TextOptions(val_fraction=0.5, split="val")))
    assert sorted(docs) == ["kept 1", "kept 2 é", "kept 3"]
    assert {str(b).replace(f"{corpus}/", "") for b in stats.bad} == expected
    stats = Stats()
    assert list(read_slimpajama(corpus / "claims.jsonl.zst", stats)) == []
    assert str(stats.bad[0]) == f"{corpus}/{sorted(expected)[0]}"  # the same words from SlimPajama's reader

    script = [sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--input", str(corpus), "--val_fraction"]
    script += ["0.5", "--tokenizer_path", str(export_tokenizer_dir), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run([*script, "--skip_bad_records", "true"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    reported = {line for line in proc.stdout.splitlines() if line.startswith("bad record: ")}
    assert {line.replace(f"bad record: {corpus}/", "") for line in reported} == expected, reported
    split = [json.loads((tmp_path / "out" / s / "prepare.json").read_text())["documents"] for s in ("train", "val")]
    assert sum(split) == 3


def test_a_line_is_read_in_bounded_memory_whatever_its_frame_claims(tmp_path):
    """A small zstd file whose frame holds one line of 64 MiB of zeros: the decoder is fed a little at a time and the
    line is refused once longer than the limit (1 MiB here), never held whole; a long line within the limit is read
    in pieces joined once (not copied again for each piece), and lines across frames are whole."""
    import time
    import tracemalloc

    from lit_gpt.data.readers import LineTooLongError, zstd_lines

    path = tmp_path / "bomb.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20)))
    assert path.stat().st_size < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(LineTooLongError, match="line too long: more than 1 MiB"):
            list(zstd_lines(path, max_line=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, peak  # the whole line, and its copies, took several times 64 MiB
    line = bytes(range(33, 127)) * (200_000 // 94)  # 200 kB that compress poorly enough to come in many pieces
    path.write_bytes(zstandard.ZstdCompressor().compress(b"a\n" + line) + zstandard.ZstdCompressor().compress(b"\nz"))
    t0 = time.perf_counter()
    assert list(zstd_lines(path)) == [b"a", line, b"z"]
    assert time.perf_counter() - t0 < 5


def test_a_chunk_edited_in_its_middle_is_refused_and_a_copy_or_touch_is_not(tmp_path, export_tokenizer_dir):
    """The digest of a training folder read only each chunk's size and its first and last 64 KiB: a same-size edit in
    the middle of a chunk started (and resumed) a run without a word. prepare.json now records every chunk's size and
    SHA-256; the start compares sizes and modification times (a `stat` per chunk) and reads whole only a chunk newer
    than prepare.json. A chunk touched but unchanged is accepted; a folder prepared before the digests were recorded
    keeps the sampled check."""
    import os
    import time

    from lit_gpt.data.loaders import data_contents
    from lit_gpt.files import file_sha256

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text((ROOT / "lit_gpt" / "model.py").read_text() * 40)  # ~2 chunks
    out = tmp_path / "out"
    prepare("text", None, str(out), export_tokenizer_dir, 2049 * 64, num_workers=1, verbose=False,
            inputs=[str(corpus)], text_options=TextOptions())  # fmt: skip
    manifest = json.loads((out / "prepare.json").read_text())
    index = json.loads((out / "index.json").read_text())
    names = [c["filename"] for c in index["chunks"]]
    assert len(names) >= 2 and sorted(manifest["chunks"]) == sorted(names)
    for name in names:
        assert manifest["chunks"][name] == {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
    before = data_contents([str(out)])

    chunk = out / names[0]
    size = chunk.stat().st_size
    assert size > 4 * 2**16 + (index["chunks"][0]["chunk_size"] + 2) * 4  # its middle is outside the samples
    time.sleep(0.05)  # a later edit, as at a resume
    os.utime(chunk)  # touched, its bytes as prepared: read whole and accepted
    assert data_contents([str(out)]) == before
    original = chunk.read_bytes()
    with open(chunk, "r+b") as f:  # four tokens in its middle, same size
        f.seek(size // 2)
        f.write(bytes(4 * 4))
    with pytest.raises(ValueError, match=rf"^{chunk} was modified after its preparation: its SHA-256 differs \("):
        data_contents([str(out)])
    with open(chunk, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=rf"^{chunk} holds {size + 1:,} bytes, its preparation wrote {size:,}"):
        data_contents([str(out)])

    # prepared before the digests were recorded: the samples, which do not see the middle of a chunk
    chunk.write_bytes(original)
    del manifest["chunks"]
    (out / "prepare.json").write_text(json.dumps(manifest))
    sampled = data_contents([str(out)])
    with open(chunk, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(4 * 4))
    assert data_contents([str(out)]) == sampled
