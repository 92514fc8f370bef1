"""The readers of every input format: the documents of raw SlimPajama (`*.jsonl.zst`) and Starcoder (`*.parquet`)
files for `scripts/prepare_slimpajama.py` and `scripts/prepare_starcoder.py`, and of a corpus of one's own for
`scripts/prepare_text.py`: plain-text, JSON-lines, parquet, arrow and CSV/TSV files, plain or compressed. Every record
that cannot be read is named by file and line (row, for parquet) in a `Stats`, and nothing is dropped silently.
`lit_gpt/data/prepare.py` drives them; `lit_gpt/data/instruct.py` reads instruction files with `read_lines`.

    .txt .text .md          one document per file, or per block of lines between blank lines (`blocks=True`)
    .jsonl .ndjson .json    one JSON object per line (or one JSON array of objects), the text under `text_key`
                            (`a.b` for nested objects)
    .parquet .arrow         the string column `column` (`.arrow`: Arrow IPC stream or file, as Hugging Face
                            `datasets` writes its cache and `save_to_disk` folders)
    .csv .tsv               the column `column` of a file with a header row

Text formats may be compressed: `.zst`, `.gz`, `.bz2`, `.xz` after the format's suffix (`data.jsonl.gz`). Files are
found under folders (through symbolic links to folders too), by glob patterns, or named one by one (`find_inputs`).
"""

import bz2
import csv
import fnmatch
import glob
import gzip
import hashlib
import json
import lzma
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import zstandard as zstd

from lit_gpt.cli import UserError, check_not_empty_path

Kind = Literal["slimpajama", "starcoder", "text"]  # text: any corpus of scripts/prepare_text.py
GITHUB_SET = "RedPajamaGithub"  # SlimPajama's code rows, skipped: Starcoder covers code
PARQUET_BATCH_ROWS = 1024


class PrepareError(UserError):
    """A problem with the inputs or the options, with what to do about it."""


class TruncatedError(zstd.ZstdError):
    """A zstd file that ends inside a frame: the end of a complete file is missing."""


class LineTooLongError(ValueError):
    """A line longer than `MAX_LINE_BYTES`: read whole, it would take as much memory (a small zstd frame can claim
    gigabytes of one line)."""


# the longest line that a reader takes (JSON lines are documents); a longer one ends its file with a bad record
MAX_LINE_BYTES = 1 << 27
# compressed bytes given to the zstd decoder at a time: what it returns at once is at most ~32,768 times this (its
# largest ratio, a run of one byte: 8 MiB), so a small file of a large frame is read in bounded pieces
ZSTD_FEED_BYTES = 256


@dataclass
class BadRecord:
    path: str
    line: Optional[int]  # 1-based line (jsonl) or row (parquet); None: the whole file
    reason: str

    def __str__(self) -> str:
        path = quoted_path(self.path)
        return f"{path}:{self.line}: {self.reason}" if self.line else f"{path}: {self.reason}"


def quoted_path(path: str) -> str:
    """`path` as printed in a list of bad records: as it is, or quoted as Python writes strings when it holds what
    could pass for another record or cannot be printed (a newline, `: `, `; `, a quote, bytes that are not UTF-8)."""
    plain = path.isprintable() and not any(s in path for s in (": ", "; ", "'", '"', "\\"))
    return path if plain else repr(path)


@dataclass
class Stats:
    files: int = 0
    documents: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    bad: List[BadRecord] = field(default_factory=list)
    elapsed: float = 0.0  # seconds
    max_id: int = -1  # the largest token id written (-1: none)

    def add(self, other: "Stats") -> None:
        self.files += other.files
        self.documents += other.documents
        self.tokens += other.tokens
        self.max_id = max(self.max_id, other.max_id)
        self.skipped.update(other.skipped)
        self.bad.extend(other.bad)

    def skip(self, record: BadRecord) -> None:
        self.skipped[record.reason.split(":")[0]] += 1
        self.bad.append(record)


# ---------------------------------------------------------------------------------------------------------------------
# SlimPajama and Starcoder
# ---------------------------------------------------------------------------------------------------------------------


def find_files(input_dir: Path, kind: Kind, problems: Optional[List[BadRecord]] = None) -> List[Path]:
    """Every input file of a dataset under `input_dir`, sorted (the order of the output is then reproducible).

    Symbolic links to folders are followed. A folder that cannot be listed or a link to no file is an error, or, when
    a `problems` list is given, appended to it and left out.
    """
    pattern = PATTERNS[kind]
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise PrepareError(f"--input_dir {input_dir} is not a directory: {DOWNLOAD_HINT[kind]}")
    found = walk_files(input_dir, pattern)
    files = [p for p, problem in found if problem is None]
    bad = [BadRecord(str(p), None, problem) for p, problem in found if problem is not None]
    if bad and problems is None:
        listed = "; ".join(map(str, bad[:3])) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise PrepareError(
            f"{len(bad)} inputs under --input_dir {input_dir} cannot be read: {listed}. Fix them, or leave them out "
            "with --skip_bad_records true"
        )
    if problems is not None:
        problems.extend(bad)
    if not files:
        raise PrepareError(f"--input_dir {input_dir} holds no {pattern} files: {DOWNLOAD_HINT[kind]}")
    return files


PATTERNS = {"slimpajama": "*.jsonl.zst", "starcoder": "*.parquet"}


def walk_files(folder: Path, pattern: str) -> List[Tuple[Path, Optional[str]]]:
    """The files matching `pattern` under `folder`, through symbolic links to folders too (each folder once), sorted,
    each with None or why it cannot be read (a folder that cannot be listed comes with its own path)."""
    found: List[Tuple[Path, Optional[str]]] = []
    seen = set()

    def unreadable(e: OSError) -> None:
        found.append((Path(e.filename), f"unreadable directory: {e.strerror}"))

    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs[:] = []
            continue
        seen.add(real)
        for name in fnmatch.filter(names, pattern):
            path = Path(root) / name
            if path.is_file():
                found.append((path, None))
            else:
                found.append((path, "a link to no file" if path.is_symlink() else "not a regular file"))
    return sorted(found)


DOWNLOAD_HINT = {
    "slimpajama": "point it at SlimPajama's train/, validation/ or test/ folder (fetch a slice with `python "
    "scripts/download.py --repo_id cerebras/SlimPajama-627B --repo_type dataset --allow_patterns 'train/chunk1/*'`) "
    "or build the sample corpus with `python scripts/prepare_sample_data.py`",
    "starcoder": "point it at the folder holding Starcoder's <language>/ folders (fetch a slice with `python "
    "scripts/download.py --repo_id bigcode/starcoderdata --repo_type dataset --allow_patterns 'python/*'`) "
    "or build the sample corpus with `python scripts/prepare_sample_data.py`",
}


def read_slimpajama(path: Path, stats: Stats) -> Iterator[str]:
    """The `text` of every row of a `.jsonl.zst` file, RedPajamaGithub rows left out."""
    line_no, documents = 0, 0
    try:
        for line_no, line in enumerate(zstd_lines(path), start=1):  # noqa: B007 (line_no is reported after the loop)
            if not line.strip():
                continue
            row = json_value(line, path, line_no, stats)
            if row is NOT_JSON:
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                stats.skip(BadRecord(str(path), line_no, "row without a 'text' string"))
                continue
            if not is_unicode(text, line, path, line_no, stats):
                continue
            meta = row.get("meta")
            if isinstance(meta, dict) and meta.get("redpajama_set_name") == GITHUB_SET:
                stats.skipped[GITHUB_SET] += 1
                continue
            documents += 1
            yield text
    except TruncatedError:
        lost = f"truncated file: it ends inside a zstd frame after {documents:,} documents; the rest is lost"
        stats.skip(BadRecord(str(path), line_no + 1, f"{lost} (download it again)"))
    except (zstd.ZstdError, LineTooLongError, OSError) as e:
        stats.skip(BadRecord(str(path), line_no + 1, stream_problem(e)))


def stream_problem(e: BaseException) -> str:
    """Why the rest of a file cannot be read, the same for every reader: corrupt or truncated compressed data (a zstd
    frame that needs more memory than the decoder allows included), a line too long to hold, a read error."""
    if isinstance(e, zstd.ZstdError):
        return f"corrupt zstd data: {short_reason(e)} (rest of file unread)"
    if isinstance(e, LineTooLongError):
        return f"{e} (rest of file unread)"
    return f"unreadable file: {short_reason(e)} (rest of file unread)"


def json_value(line: bytes, path: Path, line_no: Optional[int], stats: Stats, what: str = "line") -> object:
    """The JSON value of a line (or a whole file), or `NOT_JSON` with a bad record: malformed JSON, bytes that are
    not UTF-8, or nesting deeper than Python's JSON parser goes (a RecursionError)."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply to parse" if isinstance(e, RecursionError) else short_reason(e)
        stats.skip(BadRecord(str(path), line_no, f"malformed JSON {what}: {reason}"))
        return NOT_JSON


NOT_JSON = object()


def is_unicode(text: str, raw: bytes, path: Path, line_no: Optional[int], stats: Stats) -> bool:
    """Whether a JSON string is Unicode text, else a bad record: an escape of half a surrogate pair (`"\\ud800"`)
    decodes to a string that no tokenizer encodes and UTF-8 cannot hold. Only a line with a `\\u` escape can."""
    if b"\\u" not in raw:
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError as e:
        stats.skip(BadRecord(str(path), line_no, f"lone surrogate: {text[e.start]!r} (half of a pair) in the text"))
        return False


def zstd_lines(path: Path, read_size: int = 1 << 22, max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of a zstd-compressed file (one frame or several); raises `ZstdError` on corrupt or truncated data,
    which a plain stream reader would take for the end of the file, and `LineTooLongError` for a line of more than
    `max_line` bytes. The memory it takes is bounded by these and the decoder's window limit (128 MiB), whatever size
    a frame claims."""
    dctx = zstd.ZstdDecompressor()
    frame, fed = dctx.decompressobj(), False
    pending: List[bytes] = []  # the pieces of the line read so far, joined once it ends
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(read_size):
            for start in range(0, len(block), ZSTD_FEED_BYTES):
                data = block[start : start + ZSTD_FEED_BYTES]
                while data:
                    out = frame.decompress(data)
                    fed, data = True, b""
                    if frame.eof:  # a frame ended: the rest of the input starts the next one
                        data = frame.unused_data
                        frame, fed = dctx.decompressobj(), False
                    lines = out.split(b"\n")
                    if len(lines) > 1:
                        lines[0] = b"".join([*pending, lines[0]])
                        pending, size = [], 0
                    pending.append(lines.pop())
                    size += len(pending[-1])
                    if size > max_line:
                        raise LineTooLongError(f"line too long: more than {max_line >> 20} MiB")
                    yield from lines
    if fed:
        raise TruncatedError("the file ends inside a zstd frame (truncated download?)")
    if size:
        yield b"".join(pending)


def read_starcoder(path: Path, stats: Stats) -> Iterator[str]:
    """The `content` of every row of a `.parquet` file, read in batches of rows."""
    import pyarrow as pa  # lazy: heavy (~0.4 s), only for parquet and arrow files
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        stats.skip(BadRecord(str(path), None, f"unreadable parquet file: {short_reason(e)}"))
        return
    names = parquet_file.schema_arrow.names
    if "content" not in names:
        stats.skip(BadRecord(str(path), None, f"no 'content' column: the file has {names}"))
        return
    row = 0
    try:
        for batch in parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["content"]):
            for text in batch.column(0).to_pylist():
                row += 1
                if not isinstance(text, str):
                    stats.skip(BadRecord(str(path), row, "row without a 'content' string"))
                    continue
                yield text
    except (pa.ArrowException, OSError) as e:
        stats.skip(BadRecord(str(path), row + 1, f"unreadable parquet file: {short_reason(e)} (rest of file unread)"))


READERS: Dict[str, Callable[[Path, Stats], Iterator[str]]] = {
    "slimpajama": read_slimpajama,
    "starcoder": read_starcoder,
}


def iter_texts(input_dir: Path, stats: Optional[Stats] = None) -> Iterator[str]:
    """The documents of every SlimPajama and Starcoder file under `input_dir` (either layout, or both)."""
    stats = stats or Stats()
    files = [(p, kind, problem) for kind in READERS for p, problem in walk_files(Path(input_dir), PATTERNS[kind])]
    for path, kind, problem in files:
        if problem is not None:
            stats.skip(BadRecord(str(path), None, problem))
            continue
        stats.files += 1
        for text in READERS[kind](path, stats):
            stats.documents += 1
            yield text


def short_reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------------
# A corpus of one's own: text, JSON, parquet, arrow and CSV files
# ---------------------------------------------------------------------------------------------------------------------


FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".tsv": "tsv",
}
COMPRESSIONS = (".zst", ".gz", ".bz2", ".xz")
# the metadata files of a Hugging Face `datasets` folder, not data
DATASETS_METADATA = ("dataset_info.json", "state.json", "dataset_dict.json")
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark


@dataclass(frozen=True)
class TextOptions:
    """How documents are taken from the files; `split` and `val_fraction` keep one side of a reproducible split by
    document ("train" keeps the documents not in the validation share, "val" the others)."""

    text_key: str = "text"
    column: str = "text"
    blocks: bool = False
    val_fraction: float = 0.0
    split: Optional[str] = None


def file_format(path: Path) -> Optional[Tuple[str, Optional[str]]]:
    """(format, compression) from a file's name, or None for a file that is not one of the formats."""
    name = path.name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    fmt = FORMATS.get(os.path.splitext(name)[1])
    if fmt is None or (compression and fmt in ("parquet", "arrow")) or path.name in DATASETS_METADATA:
        return None
    return fmt, compression


def find_inputs(inputs: Sequence[str], problems: Optional[List[BadRecord]] = None) -> List[Path]:
    """The files of `inputs` (folders, glob patterns or files), each once, sorted. A folder contributes every file of
    a known format under it; a named file must be of one. A folder that cannot be listed or a link to no file is an
    error, or, with a `problems` list, appended to it."""
    found, bad = {}, []
    for item in inputs:
        check_not_empty_path("--input", item)
        path = Path(item)
        if path.is_dir():
            for p, problem in walk_files(path, "*"):
                if problem is not None and (file_format(p) or problem.startswith("unreadable directory")):
                    bad.append(BadRecord(str(p), None, problem))
                elif problem is None and file_format(p):
                    found.setdefault(os.path.realpath(p), p)
        elif glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise PrepareError(f"--input {item} matches no file")
            for p in matches:
                if file_format(p):
                    found.setdefault(os.path.realpath(p), p)
        elif path.is_file():
            if not file_format(path):
                raise PrepareError(
                    f"--input {item}: not a file of a known format ({', '.join(sorted(FORMATS))}, text formats also "
                    f"with {', '.join(COMPRESSIONS)})"
                )
            found.setdefault(os.path.realpath(path), path)
        else:
            raise PrepareError(f"--input {item}: no such file or folder")
    if bad and problems is None:
        listed = "; ".join(map(str, bad[:3])) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise PrepareError(
            f"{len(bad)} inputs cannot be read: {listed}. Fix them, or leave them out with --skip_bad_records true"
        )
    if problems is not None:
        problems.extend(bad)
    if not found:
        raise PrepareError(
            f"--input {' '.join(inputs)} holds no file of a known format ({', '.join(sorted(FORMATS))}, text formats "
            f"also with {', '.join(COMPRESSIONS)})"
        )
    return sorted(found.values())


def input_roots(inputs: Sequence[str]) -> List[Tuple[str, Path]]:
    """Each input with the folder or file it reads from, a glob pattern's folder before its first wildcard: the output
    must stay outside all of them (and outside every input file, which `prepare` checks too)."""
    roots = []
    for item in inputs:
        if glob.has_magic(item):
            parts = Path(item).parts
            fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            if fixed:  # a pattern of the working directory itself ("*.txt") names no folder to keep out of
                roots.append((item, Path(*parts[:fixed])))
        else:
            roots.append((item, Path(item)))
    return roots


def in_validation(path: Path, index: int, fraction: float) -> bool:
    """Whether document `index` of the file `path` belongs to the validation share: a hash of the file's name and the
    index, so the split is the same on every run and machine and for every worker count."""
    # os.fsencode: a name of bytes that are not UTF-8 (Python holds them as surrogates) hashes as its bytes
    digest = hashlib.blake2b(os.fsencode(path.name) + f"\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def read_documents(path: Path, stats: Stats, options: TextOptions) -> Iterator[str]:
    """The documents of one file (see the module docstring); unreadable records are recorded in `stats`."""
    fmt, compression = file_format(path) or ("text", None)
    reader = {"text": _read_text, "json": _read_json, "parquet": _read_table, "arrow": _read_table}.get(fmt, _read_csv)
    index = 0
    for text in reader(path, compression, stats, options):
        if not text.strip():
            stats.skipped["empty document"] += 1
            continue
        index += 1
        if options.split is None or in_validation(path, index, options.val_fraction) == (options.split == "val"):
            yield text


def read_lines(path: Path, compression: Optional[str], stats: Stats) -> Iterator[Tuple[int, bytes]]:
    """(1-based line number, line with its newline) of a plain or compressed file, without the byte order mark that
    Windows editors and Excel put first; a truncated or corrupt stream ends the file with a bad record."""
    line_no = 0
    try:
        for line_no, line in enumerate(_raw_lines(path, compression), start=1):  # noqa: B007
            yield line_no, line[len(BOM) :] if line_no == 1 and line.startswith(BOM) else line
    except (TruncatedError, EOFError):
        stats.skip(BadRecord(str(path), line_no + 1, "truncated file: the compressed stream ends early (download it "
                             "again); the documents before the cut are kept"))  # fmt: skip
    except (OSError, lzma.LZMAError, ValueError, zstd.ZstdError) as e:  # corrupt data, a line too long
        stats.skip(BadRecord(str(path), line_no + 1, stream_problem(e)))


def _raw_lines(path: Path, compression: Optional[str]) -> Iterator[bytes]:
    if compression == ".zst":
        for line in zstd_lines(path):
            yield line + b"\n"
        return
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(compression, open)
    with opener(path, "rb") as f:
        while line := f.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise LineTooLongError(f"line too long: more than {MAX_LINE_BYTES >> 20} MiB")
            yield line


def _decode(line: bytes, path: Path, line_no: int, stats: Stats) -> Optional[str]:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.skip(BadRecord(str(path), line_no, f"not UTF-8 text: {short_reason(e)}"))
        return None


def _read_text(path: Path, compression: Optional[str], stats: Stats, options: TextOptions) -> Iterator[str]:
    block: List[str] = []
    bad_file = False
    for line_no, raw in read_lines(path, compression, stats):
        line = _decode(raw, path, line_no, stats)
        if line is None:
            bad_file = True  # a document with a line left out would be a different document: leave it all out
            continue
        if options.blocks and not line.strip():
            if block and not bad_file:
                yield "".join(block)
            block, bad_file = [], False
            continue
        block.append(line)
    if block and not bad_file:
        yield "".join(block)


def nested_value(row: object, key: str) -> object:
    for part in key.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def _read_json(path: Path, compression: Optional[str], stats: Stats, options: TextOptions) -> Iterator[str]:
    lines = read_lines(path, compression, stats)
    first = next(lines, None)
    while first is not None and not first[1].strip():  # blank lines before the first value
        first = next(lines, None)
    if first is not None and first[1].lstrip().startswith(b"["):  # one JSON array, not JSON lines
        data = first[1] + b"".join(line for _, line in lines)
        rows = json_value(data, path, None, stats, what="array")
        for i, row in enumerate(rows if isinstance(rows, list) else [], start=1):
            text = nested_value(row, options.text_key)
            if not isinstance(text, str):
                stats.skip(BadRecord(str(path), i, f"element without a {options.text_key!r} string"))
            elif is_unicode(text, data, path, i, stats):
                yield text
        return
    for line_no, raw in _chain(first, lines):
        if not raw.strip():
            continue
        row = json_value(raw, path, line_no, stats)
        if row is NOT_JSON:
            continue
        text = nested_value(row, options.text_key)
        if not isinstance(text, str):
            stats.skip(BadRecord(str(path), line_no, f"row without a {options.text_key!r} string"))
            continue
        if is_unicode(text, raw, path, line_no, stats):
            yield text


def _chain(first, rest) -> Iterator[Tuple[int, bytes]]:
    if first is not None:
        yield first
    yield from rest


def _read_table(path: Path, compression: Optional[str], stats: Stats, options: TextOptions) -> Iterator[str]:
    import pyarrow as pa  # lazy: heavy (~0.4 s), only for parquet and arrow files
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[options.column])
        else:
            batches, names = _arrow_batches(path)
    except (pa.ArrowException, OSError) as e:
        stats.skip(BadRecord(str(path), None, f"unreadable {path.suffix[1:]} file: {short_reason(e)}"))
        return
    if options.column not in names:
        stats.skip(BadRecord(str(path), None, f"no {options.column!r} column (--column): the file has {names}"))
        return
    row = 0
    try:
        for batch in batches:
            for text in batch.column(batch.schema.get_field_index(options.column)).to_pylist():
                row += 1
                if isinstance(text, str):
                    yield text
                else:
                    stats.skip(BadRecord(str(path), row, f"row without a {options.column!r} string"))
    except (pa.ArrowException, OSError) as e:
        stats.skip(BadRecord(str(path), row + 1, f"unreadable file: {short_reason(e)} (rest of file unread)"))


def _arrow_batches(path: Path):
    """The record batches and column names of an Arrow IPC stream (Hugging Face `datasets`' format) or file."""
    import pyarrow as pa  # lazy: heavy, as in _read_table

    try:
        stream = pa.ipc.open_stream(pa.memory_map(str(path)))
        return iter(stream), stream.schema.names
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        return (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema.names


def _read_csv(path: Path, compression: Optional[str], stats: Stats, options: TextOptions) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)
    fmt = file_format(path)[0]
    numbered: List[int] = []

    def text_lines() -> Iterator[str]:
        for line_no, raw in read_lines(path, compression, stats):
            line = _decode(raw, path, line_no, stats)
            numbered.append(line_no)
            if line is not None:
                yield line

    reader = csv.reader(text_lines(), delimiter="\t" if fmt == "tsv" else ",")
    try:
        header = next(reader, None)
        if header is None:
            return
        if options.column not in header:
            stats.skip(BadRecord(str(path), None, f"no {options.column!r} column (--column): the header is {header}"))
            return
        at = header.index(options.column)
        for fields in reader:
            if not fields:  # a blank line (such as one at the end of the file)
                continue
            if len(fields) != len(header):
                stats.skip(BadRecord(str(path), numbered[-1], f"{len(fields)} fields, the header has {len(header)}"))
                continue
            yield fields[at]
    except csv.Error as e:
        stats.skip(BadRecord(str(path), numbered[-1] if numbered else None, f"malformed CSV: {short_reason(e)}"))
