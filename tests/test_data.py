"""The data pipeline on the real components: sample corpus, SentencePiece trainer, litdata chunks, StreamingDataset."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard as zstd
from prepared_data import ROOT, load_script

from lit_gpt.data.prepare import chunk_tokens, prepare
from lit_gpt.data.readers import PrepareError, Stats, iter_texts, read_slimpajama
from lit_gpt.tokenizer import Tokenizer


def write_jsonl_zst(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_bytes(zstd.ZstdCompressor().compress(text.encode()))
    return path


def run_script(name: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_sample_corpus_layout_and_determinism(prepared, tmp_path):
    raw = prepared["raw"]
    for split in ("train", "validation", "test"):
        assert sorted((raw / "slimpajama-raw" / split / "chunk1").glob(f"example_{split}_*.jsonl.zst"))
    rows = []
    for path in sorted((raw / "slimpajama-raw").rglob("*.jsonl.zst")):
        with zstd.open(path, "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    sets = {row["meta"]["redpajama_set_name"] for row in rows}
    assert "RedPajamaGithub" in sets and len(sets) > 2
    assert all(isinstance(row["text"], str) and row["text"] for row in rows)
    table = pq.read_table(raw / "starcoderdata-raw" / "python" / "train-00000-of-00004.parquet")
    assert table.column_names == ["max_stars_repo_path", "max_stars_repo_name", "max_stars_count", "id", "content"]
    assert "def " in "".join(table.column("content").to_pylist())

    # same installation, same bytes
    load_script("prepare_sample_data").main(output_dir=tmp_path, max_source_files=60)
    for path in raw.rglob("*.*"):
        assert (tmp_path / path.relative_to(raw)).read_bytes() == path.read_bytes(), path


def test_tokenizer_trainer_writes_a_llama_style_tokenizer(prepared):
    tokenizer = Tokenizer(prepared["tokenizer"])
    assert tokenizer.backend == "sentencepiece" and tokenizer.vocab_size == 1024
    assert (tokenizer.processor.unk_id(), tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.add_bos_token is True
    text = "def f(x):\n    return x  # 12 €, 漢字"
    ids = tokenizer.encode_ids(text)
    assert tokenizer.decode(ids) == text  # byte fallback: nothing is <unk>
    assert 0 not in ids
    config = json.loads((prepared["tokenizer"] / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>"


def test_tokenizer_trainer_default_32000_on_the_full_sample_corpus(tmp_path):
    sample, train = load_script("prepare_sample_data"), load_script("train_tokenizer")
    sample.main(output_dir=tmp_path / "data")
    train.train(input_dir=tmp_path / "data", output_dir=tmp_path / "tok")
    assert Tokenizer(tmp_path / "tok").vocab_size == 32000
    with pytest.raises(PrepareError, match="exists; pass --overwrite true"):
        train.train(input_dir=tmp_path / "data", output_dir=tmp_path / "tok")


def test_prepared_tokens_equal_the_kept_documents_encoded(prepared):
    tokenizer = Tokenizer(prepared["tokenizer"])
    for raw, out, github in [
        ("slimpajama-raw/train", "slimpajama_train", True),
        ("starcoderdata-raw", "starcoder", False),
    ]:
        stats = Stats()
        texts = list(iter_texts(prepared["raw"] / raw, stats))
        expected = sum(len(ids) for ids in tokenizer.encode_batch(texts, eos=True))
        assert sum(chunk_tokens(prepared[out])) == expected
        assert stats.bad == []
        assert (stats.skipped["RedPajamaGithub"] > 0) == github  # the code rows of SlimPajama are left out


def test_read_back_with_streaming_dataset_and_tutorial_weights(prepared):
    import torch
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset, TokensLoader

    block = 257  # micro-llama: 256 + 1
    train = StreamingDataset(str(prepared["slimpajama_train"]), item_loader=TokensLoader(block_size=block))
    code = StreamingDataset(str(prepared["starcoder"]), item_loader=TokensLoader(block_size=block), shuffle=True)
    assert len(train) == sum(n // block for n in chunk_tokens(prepared["slimpajama_train"]))
    item = train[0]
    assert item.shape == (block,) and item.dtype == torch.int32 and int(item.max()) < 1024
    # the tutorial's mix: SlimPajama and Starcoder sampled by their token counts
    combined = CombinedStreamingDataset([train, code], weights=(0.693584, 0.306416), iterate_over_all=False, seed=42)
    batch = next(iter(StreamingDataLoader(combined, batch_size=4, num_workers=0)))
    assert batch.shape == (4, block)


def test_fast_dev_run_reads_a_few_files(prepared, tmp_path):
    stats = prepare("slimpajama", prepared["raw"] / "slimpajama-raw/train", str(tmp_path / "out"),
                    prepared["tokenizer"], 2049 * 4, fast_dev_run=True, num_workers=2, verbose=False)  # fmt: skip
    assert stats.files == 2 and sum(chunk_tokens(tmp_path / "out")) == stats.tokens > 0


def test_bad_slimpajama_records_are_reported_with_file_and_line(prepared, tmp_path):
    good = {"text": "hello world", "meta": {"redpajama_set_name": "RedPajamaC4"}}
    raw = tmp_path / "raw"
    bad_json = write_jsonl_zst(raw / "a.jsonl.zst", [good, "{not json", {"meta": {}}, good])
    github = {"text": "import os", "meta": {"redpajama_set_name": "RedPajamaGithub"}}
    write_jsonl_zst(raw / "b.jsonl.zst", [good, github])
    corrupt = raw / "c.jsonl.zst"
    corrupt.write_bytes(write_jsonl_zst(tmp_path / "x.jsonl.zst", [good] * 50).read_bytes()[:40] + b"\x00garbage")
    stats = Stats()
    assert list(read_slimpajama(bad_json, stats)) == ["hello world", "hello world"]
    assert [(r.line, r.reason.split(":")[0]) for r in stats.bad] == [
        (2, "malformed JSON line"),
        (3, "row without a 'text' string"),
    ]  # noqa: E501

    args = ["--input_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--tokenizer_path",
            str(prepared["tokenizer"]), "--chunk_size", "8196", "--num_workers", "1"]  # fmt: skip
    out = run_script("prepare_slimpajama", *args, tmp_path=tmp_path)
    assert out.returncode == 2
    assert f"{bad_json}:2: malformed JSON line" in out.stdout
    assert f"{bad_json}:3: row without a 'text' string" in out.stdout
    assert f"{corrupt}:1: truncated file: it ends inside a zstd frame after 0 documents" in out.stdout
    assert "--skip_bad_records true" in out.stderr.strip().splitlines()[-1]

    # the same run refuses to write into the non-empty output directory, then accepts the loss when told
    with pytest.raises(PrepareError, match="holds an earlier preparation.*--overwrite true"):
        prepare("slimpajama", raw, str(tmp_path / "out"), prepared["tokenizer"], 8196, skip_bad_records=True)
    out = run_script(
        "prepare_slimpajama", *args, "--skip_bad_records", "true", "--overwrite", "true", tmp_path=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "3 files, 3 documents" in out.stdout  # good rows: 2 in a.jsonl.zst, 1 in b.jsonl.zst
    assert (
        "1 RedPajamaGithub" in out.stdout and "1 malformed JSON line" in out.stdout and "1 truncated file" in out.stdout
    )
    tokenizer = Tokenizer(prepared["tokenizer"])
    assert sum(chunk_tokens(tmp_path / "out")) == 3 * len(tokenizer.encode_ids("hello world", eos=True))


def test_bad_starcoder_files_are_reported(prepared, tmp_path):
    raw = tmp_path / "raw" / "python"
    raw.mkdir(parents=True)
    pq.write_table(pa.table({"content": ["x = 1\n", None, "y = 2\n"]}), raw / "train-00000-of-00003.parquet")
    pq.write_table(pa.table({"text": ["no content column"]}), raw / "train-00001-of-00003.parquet")
    (raw / "train-00002-of-00003.parquet").write_bytes(b"PAR1 this is not parquet")
    stats = prepare("starcoder", tmp_path / "raw", str(tmp_path / "out"), prepared["tokenizer"], 2049 * 4,
                    num_workers=1, skip_bad_records=True, verbose=False)  # fmt: skip
    assert stats.documents == 2 and stats.files == 3
    reasons = sorted(str(r).replace(str(raw), "") for r in stats.bad)
    assert reasons[0] == "/train-00000-of-00003.parquet:2: row without a 'content' string"
    assert reasons[1].startswith("/train-00001-of-00003.parquet: no 'content' column")
    assert reasons[2].startswith("/train-00002-of-00003.parquet: unreadable parquet file")
    with pytest.raises(PrepareError, match="3 records could not be read"):
        prepare("starcoder", tmp_path / "raw", str(tmp_path / "out"), prepared["tokenizer"], 2049 * 4,
                num_workers=1, overwrite=True, verbose=False)  # fmt: skip


def test_prepare_input_errors_say_what_to_do(prepared, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=r"holds no \*.jsonl.zst files.*prepare_sample_data"):
        prepare("slimpajama", tmp_path / "empty", str(tmp_path / "out"), prepared["tokenizer"], 2049)
    with pytest.raises(PrepareError, match=r"holds no \*.parquet files"):
        prepare("starcoder", tmp_path / "empty", str(tmp_path / "out"), prepared["tokenizer"], 2049)


def write_tokenizer(folder: Path, eos: bool = True) -> Path:
    """A tiny real `tokenizer.json` (a word-level vocabulary), with `</s>` named as its eos token or not."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tokenizer = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"} if eos else {}))
    return folder


def test_seed_tutorial_tokenizer_path_finds_the_download(tmp_path, monkeypatch, capsys):
    """The seed tutorial's `--tokenizer_path checkpoints/Llama-2-7b-hf` after its download command, which writes
    checkpoints/meta-llama/Llama-2-7b-hf: preparation uses that folder and says so."""
    monkeypatch.chdir(tmp_path)
    write_tokenizer(tmp_path / "checkpoints" / "meta-llama" / "Llama-2-7b-hf")
    write_jsonl_zst(tmp_path / "raw" / "train" / "chunk1" / "a.jsonl.zst", [{"text": "hello world"}] * 3)
    stats = prepare("slimpajama", Path("raw/train"), "out", Path("checkpoints/Llama-2-7b-hf"), 2049 * 4,
                    num_workers=1, verbose=False)  # fmt: skip
    assert stats.tokens == 3 * 3 and sum(chunk_tokens("out")) == 9  # "hello world </s>" three times
    out = capsys.readouterr().out
    assert (
        "--tokenizer_path checkpoints/Llama-2-7b-hf does not exist; using checkpoints/meta-llama/Llama-2-7b-hf" in out
    )


def test_tokenizer_path_without_a_single_match_is_an_error(tmp_path):
    from lit_gpt.data.prepare import check_tokenizer_dir

    checkpoints = tmp_path / "checkpoints"
    # none: what to download
    with pytest.raises(PrepareError, match="Llama-2-7b-hf does not exist. Get one with `python scripts"):
        check_tokenizer_dir(checkpoints / "Llama-2-7b-hf")
    # several of that name: which one is not guessed
    write_tokenizer(checkpoints / "meta-llama" / "Llama-2-7b-hf")
    write_tokenizer(checkpoints / "someone" / "Llama-2-7b-hf")
    with pytest.raises(PrepareError, match="several tokenizers have its name") as e:
        check_tokenizer_dir(checkpoints / "Llama-2-7b-hf")
    assert f"{checkpoints}/meta-llama/Llama-2-7b-hf, {checkpoints}/someone/Llama-2-7b-hf" in str(e.value)
    # a folder that exists but holds no tokenizer is not replaced, only pointed at the candidates
    (checkpoints / "Llama-2-7b-hf").mkdir()
    with pytest.raises(PrepareError, match="Llama-2-7b-hf holds no tokenizer.model or tokenizer.json. Did you mean"):
        check_tokenizer_dir(checkpoints / "Llama-2-7b-hf")
    with pytest.raises(PrepareError, match=f"Did you mean --tokenizer_path {checkpoints}/meta-llama/Llama-2-7b-hf"):
        check_tokenizer_dir(checkpoints / "Llama-2-7b-hf")


def test_tokenizer_without_eos_is_refused_before_the_workers_start(tmp_path):
    write_jsonl_zst(tmp_path / "raw" / "a.jsonl.zst", [{"text": "hello world"}])
    tokenizer = write_tokenizer(tmp_path / "no-eos", eos=False)
    with pytest.raises(PrepareError, match=r"no-eos has no end-of-document \(eos\) token.*tokenizer_config.json"):
        prepare("slimpajama", tmp_path / "raw", str(tmp_path / "out"), tokenizer, 2049, num_workers=1, verbose=False)
    assert not (tmp_path / "out").exists()  # nothing was started
    # an unreadable tokenizer file: also one line before the workers start, not a traceback from each of them
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("not json")
    with pytest.raises(PrepareError, match="cannot load the tokenizer in .*broken: .*tokenizer.json is not a readable"):
        prepare("slimpajama", tmp_path / "raw", str(tmp_path / "out"), tmp_path / "broken", 2049, verbose=False)


def test_training_batches_are_all_full_across_epochs(prepared, tmp_path):
    """litdata's workers each end an epoch with a short batch despite drop_last; training sees only full ones."""
    from lit_gpt.data.loaders import cycle_full_batches, train_dataloader

    data_dir = prepared["slimpajama_train"].parents[1]
    loader = train_dataloader(str(data_dir), (0.7, 0.3), block_size=256, batch_size=8, num_workers=2, seed=1)
    sizes = [batch.size(0) for batch in loader]
    assert sizes.count(8) >= 2
    # with this corpus and litdata 0.2.76 the epoch also holds short batches (7 and 5 rows): what is skipped
    batches = cycle_full_batches(loader, 8)
    for _ in range(3 * sizes.count(8)):  # three epochs
        assert next(batches).shape == (8, 257)
    with pytest.raises(RuntimeError, match="no full batch"):
        next(cycle_full_batches(loader, 10_000))

    # a checkpoint taken right after an epoch's last batch: the resumed loader's first pass is empty
    for _ in loader:
        pass
    state = loader.state_dict()
    resumed = train_dataloader(str(data_dir), (0.7, 0.3), block_size=256, batch_size=8, num_workers=2, seed=1)
    resumed.load_state_dict(state)
    assert next(cycle_full_batches(resumed, 8)).shape == (8, 257)


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_dir_around_inputs_or_with_foreign_files_is_refused_and_nothing_is_deleted(prepared, tmp_path):
    """`--overwrite true` into the input's parent (or the input, or the tokenizer) deletes nothing: such an
    --output_dir is refused, and so is one that holds a file no preparation wrote. Only an earlier preparation's
    output (listed in its prepare.json) is replaced."""
    import shutil

    data = tmp_path / "data"
    train = data / "slimpajama-raw" / "train"
    write_jsonl_zst(train / "chunk1" / "a.jsonl.zst", [{"text": "hello world"}] * 3)
    (data / "notes.txt").write_text("mine")
    tokenizer = shutil.copytree(prepared["tokenizer"], data / "tokenizer")
    before = snapshot(data)
    for out, relation, flag in [
        (data, "contains", "--input_dir"),
        (train, "is", "--input_dir"),
        (train / "chunks", "is inside", "--input_dir"),
        (tokenizer, "is", "--tokenizer_path"),
    ]:
        for overwrite in (False, True):
            with pytest.raises(PrepareError, match=f"--output_dir {out} {relation} {flag} ") as e:
                prepare("slimpajama", train, str(out), tokenizer, 2049 * 4, overwrite=overwrite, verbose=False)
            assert "pass --overwrite true" not in str(e.value)
    foreign = data / "out"
    foreign.mkdir()
    (foreign / "index.json").write_text("{}")  # not a preparation's: no prepare.json lists it
    with pytest.raises(PrepareError, match=f"--output_dir {foreign} holds index.json, which no preparation wrote"):
        prepare("slimpajama", train, str(foreign), tokenizer, 2049 * 4, overwrite=True, verbose=False)
    assert snapshot(data) == {**before, foreign / "index.json": b"{}"}

    # an earlier preparation: refused without --overwrite, replaced with it
    out = tmp_path / "prepared"
    first = prepare("slimpajama", train, str(out), tokenizer, 2049 * 4, num_workers=1, verbose=False)
    with pytest.raises(PrepareError, match="holds an earlier preparation .*pass --overwrite true to replace it"):
        prepare("slimpajama", train, str(out), tokenizer, 2049 * 4, verbose=False)
    second = prepare("slimpajama", train, str(out), tokenizer, 2049 * 4, num_workers=1, overwrite=True, verbose=False)
    assert sum(chunk_tokens(out)) == first.tokens == second.tokens
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    assert snapshot(data) == {**before, foreign / "index.json": b"{}"}


def _descendants(pid: int) -> list:
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree in /proc")
def test_killed_preparation_leaves_no_writer_and_preparations_are_byte_identical(prepared, tmp_path):
    """A preparation SIGKILLed in the middle: its workers die with it, a re-run with --overwrite true reports success
    and stays as written, and it is byte for byte a clean run with the same options and 2 workers."""
    import signal
    import time

    raw = tmp_path / "raw" / "python"
    raw.mkdir(parents=True)
    for copy in range(4):  # ~2M tokens: a run that is still going when its first chunk is written
        for f in sorted((prepared["raw"] / "starcoderdata-raw" / "python").glob("*.parquet")):
            (raw / f"{copy}-{f.name}").write_bytes(f.read_bytes())
    args = ["--input_dir", str(raw.parent), "--tokenizer_path", str(prepared["tokenizer"]), "--chunk_size", "4098",
            "--num_workers", "2", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    script = str(ROOT / "scripts" / "prepare_starcoder.py")
    killed = subprocess.Popen([sys.executable, script, *args], cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(tmp_path.glob("**/chunk-*.bin")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _descendants(killed.pid)  # litdata's workers and their helpers
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert workers and killed.returncode == -signal.SIGKILL

    rerun = run_script("prepare_starcoder", *args, "--overwrite", "true", tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    time.sleep(2)  # an orphan would write its chunks now
    assert [pid for pid in workers if _running(pid)] == []
    clean = tmp_path / "clean"
    prepare("starcoder", raw.parent, str(clean), prepared["tokenizer"], 4098, num_workers=2, verbose=False)
    assert snapshot(tmp_path / "out") == {tmp_path / "out" / p.name: b for p, b in snapshot(clean).items()}


def test_symlinked_folders_are_read_and_dangling_links_or_unreadable_folders_are_named(prepared, tmp_path):
    import os

    doc = {"text": "hello world"}
    raw = tmp_path / "raw" / "train"
    write_jsonl_zst(raw / "chunk1" / "a.jsonl.zst", [doc] * 2)
    write_jsonl_zst(tmp_path / "elsewhere" / "chunk2" / "b.jsonl.zst", [doc] * 3)
    (raw / "chunk2").symlink_to(tmp_path / "elsewhere" / "chunk2")  # as on clusters: a folder on another disk
    (raw / "loop").symlink_to(raw)  # followed once, not forever
    (raw / "chunk1" / "c.jsonl.zst").symlink_to(tmp_path / "gone.jsonl.zst")
    unreadable = raw / "locked"
    unreadable.mkdir()
    write_jsonl_zst(unreadable / "d.jsonl.zst", [doc])
    unreadable.chmod(0)
    try:
        listable = os.access(unreadable, os.R_OK)  # root reads every folder
        # refused by name before anything starts
        with pytest.raises(
            PrepareError, match=r"inputs under --input_dir .* cannot be read: .*c.jsonl.zst: a link"
        ) as e:
            prepare("slimpajama", raw, str(tmp_path / "out"), prepared["tokenizer"], 2049 * 4, verbose=False)
        assert "--skip_bad_records true" in str(e.value)
        assert listable or f"{unreadable}: unreadable directory" in str(e.value)
        # or counted and named, and everything else read (the linked folder too)
        stats = prepare("slimpajama", raw, str(tmp_path / "out"), prepared["tokenizer"], 2049 * 4, num_workers=1,
                        skip_bad_records=True, verbose=False)  # fmt: skip
    finally:
        unreadable.chmod(0o755)
    per_doc = len(Tokenizer(prepared["tokenizer"]).encode_ids("hello world", eos=True))
    assert (stats.files, stats.documents, stats.tokens) == (2 + listable, 5 + listable, (5 + listable) * per_doc)
    assert stats.skipped["a link to no file"] == 1
    assert [str(r) for r in stats.bad][0] == f"{raw}/chunk1/c.jsonl.zst: a link to no file"


def test_tokenizer_trainer_reports_the_records_it_leaves_out(prepared, tmp_path, capsys):
    import shutil

    corpus = shutil.copytree(prepared["raw"] / "slimpajama-raw" / "validation", tmp_path / "corpus")
    write_jsonl_zst(corpus / "bad.jsonl.zst", [{"text": "fine"}, "{not json", {"meta": {}}])
    load_script("train_tokenizer").train(input_dir=corpus, output_dir=tmp_path / "tok", vocab_size=400, num_threads=1)
    out = capsys.readouterr().out
    assert f"left out 2 records that could not be read; the first: {corpus}/bad.jsonl.zst:2: malformed JSON" in out


def test_truncated_zst_reports_the_documents_read_and_no_documents_is_an_error(prepared, tmp_path):
    import hashlib

    # 100 documents of 2.6 KB that compress badly: several zstd blocks, of which the first ones can be read
    docs = [{"text": " ".join(hashlib.sha256(f"{i} {j}".encode()).hexdigest() for j in range(40))} for i in range(100)]
    whole = write_jsonl_zst(tmp_path / "whole.jsonl.zst", docs).read_bytes()
    truncated = tmp_path / "raw" / "a.jsonl.zst"
    truncated.parent.mkdir()
    truncated.write_bytes(whole[: len(whole) * 2 // 3])  # a download that stopped
    stats = Stats()
    read = list(read_slimpajama(truncated, stats))
    assert 0 < len(read) < 100 and read == [d["text"] for d in docs[: len(read)]]
    assert [str(r) for r in stats.bad] == [
        f"{truncated}:{len(read) + 1}: truncated file: it ends inside a zstd frame after {len(read)} documents; the "
        "rest is lost (download it again)"
    ]
    assert dict(stats.skipped) == {"truncated file": 1}  # one file, not "1 rows"

    # a preparation that finds no document fails and writes nothing
    github = {"text": "import os", "meta": {"redpajama_set_name": "RedPajamaGithub"}}
    write_jsonl_zst(tmp_path / "code" / "b.jsonl.zst", [github] * 3)
    with pytest.raises(PrepareError, match=r"1 \*.jsonl.zst files hold no documents to tokenize \(left out: 3 Red"):
        prepare("slimpajama", tmp_path / "code", str(tmp_path / "out"), prepared["tokenizer"], 2049 * 4,
                num_workers=1, verbose=False)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_long_documents_are_tokenized_in_pieces_to_the_tokens_of_one_call(prepared, tmp_path, monkeypatch):
    """A document longer than PIECE_CHARS is encoded in pieces (bounded memory: a 50 MB document took 2.6 GB in one
    call) whose tokens are exactly those of one call, with SentencePiece's handling of spaces, newlines and bytes."""
    import numpy as np

    import lit_gpt.data.prepare as prepare_module

    tokenizer = Tokenizer(prepared["tokenizer"])
    text = "".join(p.read_text() for p in sorted((ROOT / "lit_gpt").glob("*.py"))) + " 漢字  two  spaces a b\u00a0c "
    whole = tokenizer.encode_ids(text, eos=True)
    for piece_chars in (40, 1000):
        pieces = list(prepare_module.split_at_spaces(text, piece_chars))
        assert "".join(pieces) == text and len(pieces) > len(text) // (piece_chars * 2)
        assert np.concatenate(list(prepare_module.encode_long(tokenizer, text, piece_chars))).tolist() == whole[:-1]

    # through the work function: the long document between two short ones
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 1000)
    path = write_jsonl_zst(tmp_path / "a.jsonl.zst", [{"text": "hello"}, {"text": text}, {"text": "world"}])
    items = prepare_module.tokenize_files([str(path)], "slimpajama", str(prepared["tokenizer"]), 4096)
    expected = [tokenizer.encode_ids(t, eos=True) for t in ("hello", text, "world")]
    assert np.concatenate(list(items)).tolist() == [i for ids in expected for i in ids]


def test_a_long_document_without_spaces_is_encoded_in_bounded_pieces(prepared, tmp_path, monkeypatch):
    """A 20 MB line without spaces was one piece, encoded in one call that took 1.4 GB. A document with no single space
    within MAX_PIECE_CHARS is cut every PIECE_CHARS characters: every piece bounded, the tokens decoding to the text,
    and those of the document's parts that have spaces near enough are still the tokens of one call."""
    import random

    import numpy as np

    import lit_gpt.data.prepare as prepare_module

    tokenizer = Tokenizer(prepared["tokenizer"])
    rng = random.Random(0)
    solid = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20_000))
    pieces = list(prepare_module.split_at_spaces(solid, 1000, max_chars=3000))
    assert "".join(pieces) == solid and len(pieces) == 20 and {len(p) for p in pieces} == {1000}

    spaced = " ".join(solid[i : i + 500] for i in range(0, 10_000, 500))  # a single space every 500 characters
    assert all(p.startswith(" ") for p in list(prepare_module.split_at_spaces(spaced, 1000, max_chars=3000))[1:])

    # through the work function, with the bounds made small: what the tokenizer is given, and what it returns
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 1000)
    monkeypatch.setattr(prepare_module, "MAX_PIECE_CHARS", 3000)
    calls = []
    split = prepare_module.split_at_spaces
    monkeypatch.setattr(prepare_module, "split_at_spaces", lambda *a: calls.extend(map(len, split(*a))) or split(*a))
    path = tmp_path / "a.jsonl.zst"
    write_jsonl_zst(path, [{"text": solid + spaced}])
    items = prepare_module.tokenize_files([str(path)], "slimpajama", str(prepared["tokenizer"]), 4096)
    ids = np.concatenate(list(items)).tolist()
    assert tokenizer.decode(ids[:-1]) == solid + spaced and ids[-1] == tokenizer.eos_id
    assert len(calls) > 20 and max(calls) <= 3000  # MAX_PIECE_CHARS
    spaced_ids = tokenizer.encode_ids(spaced)
    assert tokenizer.decode(ids[-1 - len(spaced_ids) : -1]).endswith(spaced[len(spaced) // 2 :])


def test_a_20_mb_line_without_spaces_is_tokenized_in_bounded_memory(tmp_path, export_tokenizer_dir):
    """A 20 MB line without spaces peaked at ~570 MB in preparation (13 bytes a character): the whole document's ids
    were held at once, as pieces, concatenated, and again with its separators. Each piece's ids now go out as int32
    items before the next piece is encoded, in pieces of at most MAX_PIECE_CHARS: a worker's peak above what it holds
    with its tokenizer loaded stays under 130 MB (about three times the line: its bytes and its text as read, and a
    piece at a time)."""
    import random

    if not Path("/proc/self/status").is_file():
        pytest.skip("reads the peak memory of a process from /proc/self/status (Linux)")
    rng = random.Random(0)
    (tmp_path / "line.txt").write_text("".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=20_000_000)))
    # VmHWM: the peak resident memory of this process image (getrusage's ru_maxrss keeps the forking parent's across
    # exec: pytest's own)
    child = f"""
import functools, re, sys
sys.path.insert(0, {str(ROOT)!r})
import lit_gpt.data.prepare as prepare
from lit_gpt.data.readers import TextOptions, read_documents
def peak():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s*(\\d+) kB", f.read()).group(1)) * 1024
prepare._tokenizer({str(export_tokenizer_dir)!r})
before = peak()
reader = functools.partial(read_documents, options=TextOptions())
tokens = sum(len(item) for item in prepare.tokenize_files(
    [{str(tmp_path / "line.txt")!r}], "text", {str(export_tokenizer_dir)!r}, 2049 * 8, reader=reader))
print(tokens, peak() - before)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens, peak_bytes = map(int, proc.stdout.split())
    assert tokens > 10_000_000  # the whole line was tokenized
    assert peak_bytes < 130e6, f"{peak_bytes / 1e6:.0f} MB above the worker's baseline for a 20 MB line"


def test_preparation_progress_rates_leave_out_the_first_report(capsys):
    import multiprocessing
    import re
    import threading
    import time

    from lit_gpt.data.prepare import _monitor
    from lit_gpt.data.readers import Stats

    progress = multiprocessing.Queue()

    def workers():  # a file of 60,000 tokens at once, then 1,000 tokens a second
        progress.put(("update", Stats(files=1, documents=10, tokens=60_000)))
        for _ in range(2):
            time.sleep(0.6)
            progress.put(("update", Stats(files=1, documents=1, tokens=600)))
        progress.put(("done", None))

    thread = threading.Thread(target=workers)
    thread.start()
    _monitor(progress, Stats(), num_files=3, verbose=True, desc="test")
    thread.join()
    rates = [int(r.replace(",", "")) for r in re.findall(r"([\d,]+) tok/s", capsys.readouterr().err)]
    assert rates and all(500 < r < 1_100 for r in rates), rates  # the first report gave 60,000 / 1 ms


def test_a_forged_prepare_json_deletes_no_file_that_no_preparation_wrote(prepared, tmp_path):
    """A prepare.json that lists a user file, or a path out of the folder, does not make it the preparation's: the
    folder is refused, and `--overwrite true` deletes only the index and chunks that it lists."""
    from lit_gpt.data.prepare import publish

    train = tmp_path / "raw" / "train"
    write_jsonl_zst(train / "a.jsonl.zst", [{"text": "hello world"}])
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "victim.txt").write_text("precious")
    (out / "notes.txt").write_text("mine")
    (out / "prepare.json").write_text(json.dumps({"files": ["notes.txt", "../victim.txt"]}))
    with pytest.raises(PrepareError, match=f"--output_dir {out} holds notes.txt, which no preparation wrote"):
        prepare("slimpajama", train, str(out), prepared["tokenizer"], 2049 * 4, overwrite=True, verbose=False)

    (out / "notes.txt").unlink()
    (out / "prepare.json").write_text(json.dumps({"files": ["chunk-0-0.bin", "../victim.txt"]}))
    (out / "chunk-0-0.bin").write_bytes(b"old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "index.json").write_text("{}")
    publish(new, out, overwrite=True)  # the last step of a preparation that replaces `out`
    assert (tmp_path / "victim.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "victim.txt"]
    assert [p.name for p in out.iterdir()] == ["index.json"]


def test_the_output_folder_gets_the_mode_of_a_new_folder(tmp_path):
    """The staging folder renamed into place as --output_dir has mkdir's mode (0755 under umask 022), not mkdtemp's
    0700: a shared data folder's other users can read the chunks."""
    import os

    from lit_gpt.data.prepare import _staging_dir

    umask = os.umask(0o022)
    try:
        assert _staging_dir(tmp_path / "out").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(umask)


def test_tokenizer_trainer_says_which_vocab_size_fits_without_sentencepiece_flags(tmp_path):
    """SentencePiece's own text was passed on: "decrease character_coverage with --character_coverage option", a flag
    that train_tokenizer.py does not have. The line now names the --vocab_size that fits, which then trains."""
    (tmp_path / "a.txt").write_text("".join(chr(0x4E00 + i) for i in range(600)) + "\n" + "hello world\n" * 10)
    train = load_script("train_tokenizer").train
    with pytest.raises(PrepareError, match="more distinct characters than --vocab_size 300 has room for") as e:
        train(input=str(tmp_path / "a.txt"), output_dir=tmp_path / "tok", vocab_size=300, num_threads=1)
    assert "character_coverage" not in str(e.value)
    fits = int(re.search(r"pass --vocab_size (\d+) or more", str(e.value))[1])
    train(input=str(tmp_path / "a.txt"), output_dir=tmp_path / "tok", vocab_size=fits, num_threads=1)
    assert Tokenizer(tmp_path / "tok").vocab_size == fits
