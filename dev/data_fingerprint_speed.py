"""Measure what `lit_gpt.data.loaders.data_contents` (the digest of a training folder's chunks that every checkpoint
records) costs at the start of a run, and what it would cost on SlimPajama.

A folder of `--chunks` chunk files is written with an `index.json` as a preparation writes them; only the bytes that
the digest reads (the header, then 64 KiB after it and the last 64 KiB) are written, the rest of each file is a hole
of its size. The digest is timed with the files evicted from the page cache (`posix_fadvise(DONTNEED)` on each: a
run's first read) and again from the cache, and scaled to the chunks of `--dataset_tokens` tokens in chunks of
`--chunk_tokens` (`scripts/prepare_slimpajama.py`'s default).

Example:

    python dev/data_fingerprint_speed.py --chunks 4000 --folder /path/on/the/training/disk
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag is refused before the imports below

from lit_gpt.data.loaders import SAMPLE_BYTES, data_contents  # noqa: E402


def main(
    chunks: int = 2000,
    chunk_tokens: int = 2049 * 16384,
    items_per_chunk: int = 2048,
    dataset_tokens: float = 627e9,
    threads: int = 16,
    folder: Optional[Path] = None,
) -> None:
    """Write `chunks` chunk files, time their digest cold and warm, print its cost per 1,000 chunks and for the data.

    Args:
        chunks: Chunk files to write and digest.
        chunk_tokens: Tokens per chunk (int32 each), as prepared: 2049 × 16384 by default.
        items_per_chunk: Items in each chunk (its header holds an offset for each).
        dataset_tokens: Tokens of the data set to scale to (SlimPajama-627B by default).
        threads: Threads that read the chunks (`data_contents`'s default: 16).
        folder: Where to write the chunks (a temporary folder inside it, removed after): the disk to measure.
    """
    if chunks < 1 or chunk_tokens < 1 or items_per_chunk < 1 or not dataset_tokens > 0 or threads < 1:
        raise ValueError("--chunks, --chunk_tokens, --items_per_chunk, --dataset_tokens and --threads must be positive")
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"--folder {folder} is not a folder")
    chunk_bytes = chunk_tokens * 4 + (items_per_chunk + 2) * 4
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        root = Path(tmp)
        entries = []
        for i in range(chunks):
            name = f"chunk-0-{i}.bin"
            with open(root / name, "wb") as f:
                f.truncate(chunk_bytes)
                written = (items_per_chunk + 2) * 4 + SAMPLE_BYTES  # the header and the tokens read after it
                os.pwrite(f.fileno(), os.urandom(written), 0)
                os.pwrite(f.fileno(), os.urandom(SAMPLE_BYTES), chunk_bytes - SAMPLE_BYTES)
                os.fsync(f.fileno())
            entries.append(dict(chunk_bytes=chunk_bytes, chunk_size=items_per_chunk, dim=chunk_tokens, filename=name))
        config = dict(compression=None, data_format=["no_header_tensor:16"], chunk_size=items_per_chunk)
        (root / "index.json").write_text(json.dumps(dict(chunks=entries, config=config)))
        for path in root.iterdir():
            with open(path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        timings = {}
        for kind in ("cold", "warm"):
            start = time.perf_counter()
            data_contents([str(root)], threads)
            timings[kind] = time.perf_counter() - start
    dataset_chunks = dataset_tokens / chunk_tokens
    print(f"{chunks:,} chunks of {chunk_bytes / 1e6:.0f} MB, {threads} threads:")
    for kind, seconds in timings.items():
        per_thousand, scaled = seconds / chunks * 1000, seconds / chunks * dataset_chunks
        print(f"  {kind}: {seconds:.2f} s, {per_thousand:.2f} s per 1,000 chunks, {scaled:.1f} s for the "
              f"{dataset_chunks:,.0f} chunks of {dataset_tokens:.3g} tokens")  # fmt: skip


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
