"""Data preparation shared by `scripts/prepare_slimpajama.py`, `scripts/prepare_starcoder.py` and
`scripts/train_tokenizer.py`: reading raw SlimPajama (`*.jsonl.zst`) and Starcoder (`*.parquet`) files, tokenizing
them in batches and writing litdata chunks that `litdata.StreamingDataset(..., item_loader=TokensLoader(block_size))`
reads.

Nothing is dropped silently: every row that is not turned into tokens is counted by reason, and a row that could not
be read is reported with its file and line (row, for parquet).
"""

import functools
import itertools
import json
import multiprocessing
import os
import queue as queue_module
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Literal, Optional

import numpy as np
import torch
import zstandard as zstd

from lit_gpt.tokenizer import Tokenizer

Kind = Literal["slimpajama", "starcoder"]
BLOCK_SIZE = 2049  # one TinyLlama training sequence: 2048 inputs + 1 shifted target
GITHUB_SET = "RedPajamaGithub"  # SlimPajama's code rows, skipped: Starcoder covers code
BATCH_CHARS = 1 << 20  # characters of text per tokenizer call
PARQUET_BATCH_ROWS = 1024
MAX_LISTED_BAD_RECORDS = 20


class PrepareError(Exception):
    """A problem with the inputs or the options, with what to do about it."""


@dataclass
class BadRecord:
    path: str
    line: Optional[int]  # 1-based line (jsonl) or row (parquet); None: the whole file
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}" if self.line else f"{self.path}: {self.reason}"


@dataclass
class Stats:
    files: int = 0
    documents: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    bad: List[BadRecord] = field(default_factory=list)
    elapsed: float = 0.0  # seconds

    def add(self, other: "Stats") -> None:
        self.files += other.files
        self.documents += other.documents
        self.tokens += other.tokens
        self.skipped.update(other.skipped)
        self.bad.extend(other.bad)

    def skip(self, record: BadRecord) -> None:
        self.skipped[record.reason.split(":")[0]] += 1
        self.bad.append(record)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the raw datasets
# ---------------------------------------------------------------------------------------------------------------------


def find_files(input_dir: Path, kind: Kind) -> List[Path]:
    """Every input file of a dataset under `input_dir`, sorted (the order of the output is then reproducible)."""
    pattern = "*.jsonl.zst" if kind == "slimpajama" else "*.parquet"
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise PrepareError(f"--input_dir {input_dir} is not a directory: {DOWNLOAD_HINT[kind]}")
    files = sorted(p for p in input_dir.rglob(pattern) if p.is_file())
    if not files:
        raise PrepareError(f"--input_dir {input_dir} holds no {pattern} files: {DOWNLOAD_HINT[kind]}")
    return files


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
    line_no = 0
    try:
        for line_no, line in enumerate(_zstd_lines(path), start=1):  # noqa: B007 (line_no is reported after the loop)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # malformed JSON or invalid UTF-8
                stats.skip(BadRecord(str(path), line_no, f"malformed JSON line: {_short(e)}"))
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                stats.skip(BadRecord(str(path), line_no, "row without a 'text' string"))
                continue
            meta = row.get("meta")
            if isinstance(meta, dict) and meta.get("redpajama_set_name") == GITHUB_SET:
                stats.skipped[GITHUB_SET] += 1
                continue
            yield text
    except zstd.ZstdError as e:
        stats.skip(BadRecord(str(path), line_no + 1, f"corrupt zstd data: {_short(e)} (rest of file unread)"))
    except OSError as e:
        stats.skip(BadRecord(str(path), line_no + 1, f"unreadable file: {_short(e)} (rest of file unread)"))


def _zstd_lines(path: Path, read_size: int = 1 << 22) -> Iterator[bytes]:
    """The lines of a zstd-compressed file (one frame or several); raises `ZstdError` on corrupt or truncated data,
    which a plain stream reader would take for the end of the file."""
    dctx = zstd.ZstdDecompressor()
    frame, fed, pending = dctx.decompressobj(), False, b""
    with open(path, "rb") as fh:
        while data := fh.read(read_size):
            while data:
                out = frame.decompress(data)
                fed, data = True, b""
                if frame.eof:  # a frame ended: the rest of the input starts the next one
                    data = frame.unused_data
                    frame, fed = dctx.decompressobj(), False
                lines = (pending + out).split(b"\n")
                pending = lines.pop()
                yield from lines
    if fed:
        raise zstd.ZstdError("the file ends inside a zstd frame (truncated download?)")
    if pending:
        yield pending


def read_starcoder(path: Path, stats: Stats) -> Iterator[str]:
    """The `content` of every row of a `.parquet` file, read in batches of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        stats.skip(BadRecord(str(path), None, f"unreadable parquet file: {_short(e)}"))
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
        stats.skip(BadRecord(str(path), row + 1, f"unreadable parquet file: {_short(e)} (rest of file unread)"))


READERS: Dict[str, Callable[[Path, Stats], Iterator[str]]] = {
    "slimpajama": read_slimpajama,
    "starcoder": read_starcoder,
}


def iter_texts(input_dir: Path, stats: Optional[Stats] = None) -> Iterator[str]:
    """The documents of every SlimPajama and Starcoder file under `input_dir` (either layout, or both)."""
    stats = stats or Stats()
    files = [(p, "slimpajama") for p in sorted(Path(input_dir).rglob("*.jsonl.zst"))]
    files += [(p, "starcoder") for p in sorted(Path(input_dir).rglob("*.parquet"))]
    for path, kind in files:
        stats.files += 1
        for text in READERS[kind](path, stats):
            stats.documents += 1
            yield text


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizing into litdata chunks
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer(tokenizer_dir: str) -> Tokenizer:
    # one per worker process, loaded on its first file
    return Tokenizer(tokenizer_dir)


def tokenize_file(
    path: str, kind: Kind, tokenizer_dir: str, item_tokens: int, progress: Optional[multiprocessing.Queue] = None
) -> Iterator[torch.Tensor]:
    """The litdata work function: one input file -> int32 token items of `item_tokens` tokens (the last one shorter).

    Documents are encoded `bos=False, eos=True` (lit-gpt's convention), many per tokenizer call; their tokens form
    one stream that is cut into equal items, so that chunks of a multiple of `item_tokens` fill up exactly.
    """
    tokenizer = _tokenizer(tokenizer_dir)
    stats = Stats(files=1)  # this file's counts; the skipped and bad rows are recorded by the reader
    pending = np.empty(0, dtype=np.int32)

    def encode(texts: List[str]) -> Iterator[torch.Tensor]:
        nonlocal pending
        ids = tokenizer.encode_batch(texts, bos=False, eos=True)
        count = sum(len(i) for i in ids)
        stream = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=count)
        stats.documents += len(texts)
        stats.tokens += count
        if progress is not None:
            progress.put(("progress", Stats(documents=len(texts), tokens=count)))
        pending = np.concatenate([pending, stream]) if len(pending) else stream
        full = len(pending) // item_tokens * item_tokens
        for start in range(0, full, item_tokens):
            yield torch.from_numpy(pending[start : start + item_tokens].copy())
        pending = pending[full:]

    batch, chars = [], 0
    for text in READERS[kind](Path(path), stats):
        batch.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS:
            yield from encode(batch)
            batch, chars = [], 0
    if batch:
        yield from encode(batch)
    if len(pending):
        yield torch.from_numpy(pending.copy())
    if progress is not None:
        # documents and tokens were reported batch by batch
        progress.put(("file", Stats(files=1, skipped=stats.skipped, bad=stats.bad)))


def item_tokens_for(chunk_size: int, target: int = BLOCK_SIZE * 8) -> int:
    """The largest divisor of `chunk_size` up to `target` tokens: items of that size fill chunks exactly."""
    for d in range(min(target, chunk_size), 0, -1):
        if chunk_size % d == 0 and d >= min(1024, chunk_size):
            return d
    return min(chunk_size, BLOCK_SIZE)


def prepare(
    kind: Kind,
    input_dir: Path,
    output_dir: str,
    tokenizer_path: Path,
    chunk_size: int,
    fast_dev_run: bool = False,
    num_workers: Optional[int] = None,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
) -> Stats:
    """Tokenize every file of a SlimPajama or Starcoder folder into litdata chunks; see the scripts for the options.

    Raises `PrepareError` with a message for the user when the options or the inputs are wrong, or, unless
    `skip_bad_records`, when some rows could not be read (after writing everything else).
    """
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    t0 = time.perf_counter()
    tokenizer_path = check_tokenizer_dir(tokenizer_path)
    if chunk_size < 1:
        raise PrepareError(f"--chunk_size {chunk_size} must be a positive number of tokens, e.g. {BLOCK_SIZE * 1024}")
    files = find_files(input_dir, kind)
    if fast_dev_run:
        files = files[:2]  # a few files: a quick end-to-end check of the whole pipeline
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(files)))
    mode = _check_output_dir(output_dir, overwrite)

    progress = multiprocessing.get_context("spawn").Queue()
    stats = Stats()
    monitor = threading.Thread(
        target=_monitor, args=(progress, stats, len(files), verbose, f"{kind} {Path(input_dir).name}"), daemon=True
    )
    monitor.start()
    try:
        optimize(
            fn=functools.partial(
                tokenize_file,
                kind=kind,
                tokenizer_dir=str(tokenizer_path),
                item_tokens=item_tokens_for(chunk_size),
                progress=progress,
            ),
            inputs=[str(f) for f in files],
            output_dir=str(output_dir),
            num_workers=num_workers,
            chunk_size=chunk_size,
            item_loader=TokensLoader(),
            reorder_files=False,
            mode=mode,
            verbose=False,
        )
    finally:
        progress.put(("done", None))
        monitor.join()
    stats.elapsed = time.perf_counter() - t0
    if verbose:
        print_summary(stats, output_dir)
    written = chunk_tokens(output_dir)
    if written is not None and sum(written) != stats.tokens:
        raise PrepareError(
            f"{output_dir}/index.json lists {sum(written):,} tokens but {stats.tokens:,} were encoded; the chunks are "
            "incomplete (was the output directory written to by another run at the same time?)"
        )
    if stats.bad and not skip_bad_records:
        raise PrepareError(
            f"{len(stats.bad)} rows could not be read (listed above) and are not in {output_dir}. Fix or remove those "
            "files and run again with --overwrite true, or accept the loss: --skip_bad_records true --overwrite true."
        )
    return stats


def chunk_tokens(output_dir: str) -> Optional[List[int]]:
    """Tokens per chunk, from a local output directory's `index.json` (None for object stores)."""
    index = Path(output_dir) / "index.json"
    if "://" in str(output_dir) or not index.is_file():
        return None
    return [chunk["dim"] for chunk in json.loads(index.read_text())["chunks"]]


def check_tokenizer_dir(tokenizer_path: Path) -> Path:
    """The tokenizer directory, checked before the workers start (they would each fail on it with a traceback).

    A path that does not exist is taken to mean the one `<parent>/<org>/<name>` with a tokenizer that has its name, if
    there is exactly one: the tutorials' `checkpoints/Llama-2-7b-hf` is where `scripts/download.py` writes
    `checkpoints/meta-llama/Llama-2-7b-hf`.
    """
    tokenizer_path = Path(tokenizer_path)
    # download.py writes `checkpoints/<org>/<name>`
    candidates = [p for p in sorted(tokenizer_path.parent.glob(f"*/{tokenizer_path.name}")) if _has_tokenizer(p)]
    if not tokenizer_path.exists() and len(candidates) == 1:
        print(
            f"--tokenizer_path {tokenizer_path} does not exist; using {candidates[0]}, the one tokenizer of that name"
        )
        tokenizer_path = candidates[0]
    elif not tokenizer_path.exists() and len(candidates) > 1:
        raise PrepareError(
            f"--tokenizer_path {tokenizer_path} does not exist, and several tokenizers have its name: "
            f"{', '.join(map(str, candidates))}. Pass the one to use."
        )
    if not _has_tokenizer(tokenizer_path):
        hint = f" Did you mean --tokenizer_path {candidates[0]}?" if candidates else ""
        raise PrepareError(
            f"--tokenizer_path {tokenizer_path} holds no tokenizer.model or tokenizer.json.{hint} Get one with `python "
            "scripts/download.py --repo_id meta-llama/Llama-2-7b-hf --tokenizer_only true` (writes "
            "checkpoints/meta-llama/Llama-2-7b-hf) or `python scripts/train_tokenizer.py`."
        )
    try:
        tokenizer = Tokenizer(tokenizer_path)
    except (OSError, RuntimeError, ValueError) as e:  # an unreadable tokenizer file or malformed JSON config
        raise PrepareError(f"cannot load the tokenizer in {tokenizer_path}: {e}") from None
    if tokenizer.eos_id is None:
        raise PrepareError(
            f"the tokenizer in {tokenizer_path} has no end-of-document (eos) token, which preparation appends to every "
            'document. Name it in tokenizer_config.json (`"eos_token": "</s>"`) or generation_config.json '
            '(`"eos_token_id": 2`) next to the tokenizer, or use a tokenizer that has one.'
        )
    return tokenizer_path


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()


def _check_output_dir(output_dir: str, overwrite: bool) -> Optional[str]:
    """litdata's write mode, after refusing to mix a new run into an existing output directory."""
    if "://" in str(output_dir):
        # object stores: litdata itself refuses a non-empty prefix unless told to overwrite
        return "overwrite" if overwrite else None
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise PrepareError(f"--output_dir {path} is a file; pick a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise PrepareError(
                f"--output_dir {path} is not empty (it holds {sorted(p.name for p in path.iterdir())[:3]}...). "
                "Pick another --output_dir, or pass --overwrite true to delete its contents and write it again."
            )
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    return None


def _monitor(progress: multiprocessing.Queue, stats: Stats, num_files: int, verbose: bool, desc: str) -> None:
    """Collects the workers' counts into `stats` and shows them: files done, documents/s, tokens/s."""
    from tqdm import tqdm

    bar = tqdm(total=num_files, desc=desc, unit="file", disable=not verbose, dynamic_ncols=True)
    t0 = None  # the rates count from the first tokens, not from the workers' start-up
    while True:
        try:
            kind, update = progress.get(timeout=0.5)
        except queue_module.Empty:
            continue
        if kind == "done":
            break
        stats.add(update)
        t0 = t0 or time.perf_counter() - 1e-3
        elapsed = time.perf_counter() - t0
        bar.set_postfix_str(
            f"{stats.documents / elapsed:,.0f} docs/s, {stats.tokens / elapsed:,.0f} tok/s", refresh=False
        )
        bar.update(update.files)
    bar.close()


def print_summary(stats: Stats, output_dir: str) -> None:
    for record in stats.bad[:MAX_LISTED_BAD_RECORDS]:
        print(f"bad record: {record}")
    if len(stats.bad) > MAX_LISTED_BAD_RECORDS:
        print(f"... and {len(stats.bad) - MAX_LISTED_BAD_RECORDS} more bad records")
    elapsed = stats.elapsed
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in sorted(stats.skipped.items())) or "none"
    print(
        f"{stats.files:,} files, {stats.documents:,} documents, {stats.tokens:,} tokens written to {output_dir} "
        f"in {elapsed:.1f}s ({stats.tokens / max(elapsed, 1e-9):,.0f} tokens/s); rows skipped: {skipped}"
    )
    chunks = chunk_tokens(output_dir)
    if chunks:
        blocks = sum(n // BLOCK_SIZE for n in chunks)
        print(
            f"{len(chunks)} chunks: {blocks:,} blocks of {BLOCK_SIZE} tokens for TokensLoader(block_size={BLOCK_SIZE})"
            f" ({sum(chunks) - blocks * BLOCK_SIZE:,} tokens at chunk ends are not part of a whole block)"
        )
