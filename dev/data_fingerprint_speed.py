"""Measure what `lit_gpt.data.loaders.data_contents` (the digest of a training folder's chunks that every checkpoint
records) costs at the start of a run, and what it would cost on SlimPajama.

A folder of `--chunks` chunk files is written with an `index.json` as a preparation writes them; only the bytes that
the sampled digest reads (the header, then 64 KiB after it and the last 64 KiB) are written, the rest of each file is
a hole of its size; every chunk holds the same bytes. Two digests are timed:

- "recorded": a folder whose `prepare.json` records each chunk's size and SHA-256 (a preparation writes them,
  `lit_gpt.data.prepare.chunk_digests`); the start checks each chunk's size and modification time, one `stat` each.
  The SHA-256 of one chunk is timed too: what the preparation spends per chunk, and what the start spends on a chunk
  modified since (read whole).
- "sampled": a folder prepared before the digests were recorded; the start reads 128 KiB of each chunk.

Each is timed with the files evicted from the page cache (`posix_fadvise(DONTNEED)` on each: a run's first read;
the `stat` calls of "recorded" may still find the file metadata cached) and again from the cache, and scaled to the
chunks of `--dataset_tokens` tokens in chunks of `--chunk_tokens` (`scripts/prepare_slimpajama.py`'s default).

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
from lit_gpt.data.prepare import MANIFEST  # noqa: E402
from lit_gpt.files import file_sha256  # noqa: E402


def main(
    chunks: int = 2000,
    chunk_tokens: int = 2049 * 16384,
    items_per_chunk: int = 2048,
    dataset_tokens: float = 627e9,
    threads: int = 16,
    folder: Optional[Path] = None,
) -> None:
    """Write `chunks` chunk files, time their digests cold and warm, print the cost per 1,000 chunks and for the data.

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
    head = os.urandom((items_per_chunk + 2) * 4 + SAMPLE_BYTES)  # the header and the tokens read after it
    tail = os.urandom(SAMPLE_BYTES)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        root = Path(tmp)
        entries = []
        for i in range(chunks):
            name = f"chunk-0-{i}.bin"
            with open(root / name, "wb") as f:
                f.truncate(chunk_bytes)
                os.pwrite(f.fileno(), head, 0)
                os.pwrite(f.fileno(), tail, chunk_bytes - SAMPLE_BYTES)
                os.fsync(f.fileno())
            entries.append(dict(chunk_bytes=chunk_bytes, chunk_size=items_per_chunk, dim=chunk_tokens, filename=name))
        config = dict(compression=None, data_format=["no_header_tensor:16"], chunk_size=items_per_chunk)
        (root / "index.json").write_text(json.dumps(dict(chunks=entries, config=config)))
        start = time.perf_counter()
        digest = file_sha256(root / entries[0]["filename"])  # every chunk holds the same bytes
        hash_seconds = time.perf_counter() - start
        record = {"bytes": chunk_bytes, "sha256": digest}
        manifest = {"chunks": {entry["filename"]: record for entry in entries}}
        timings = {}
        for mode in ("recorded", "sampled"):
            if mode == "recorded":
                (root / MANIFEST).write_text(json.dumps(manifest))
            else:
                (root / MANIFEST).unlink()
            for path in root.iterdir():
                with open(path, "rb") as f:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            for kind in ("cold", "warm"):
                start = time.perf_counter()
                data_contents([str(root)], threads)
                timings[f"{mode}, {kind}"] = time.perf_counter() - start
    dataset_chunks = dataset_tokens / chunk_tokens
    print(f"{chunks:,} chunks of {chunk_bytes / 1e6:.0f} MB, {threads} threads:")
    for kind, seconds in timings.items():
        per_thousand, scaled = seconds / chunks * 1000, seconds / chunks * dataset_chunks
        print(f"  {kind}: {seconds:.2f} s, {per_thousand:.2f} s per 1,000 chunks, {scaled:.1f} s for the "
              f"{dataset_chunks:,.0f} chunks of {dataset_tokens:.3g} tokens")  # fmt: skip
    print(f"  SHA-256 of one chunk (a hole of zeros but its first and last bytes): {hash_seconds:.2f} s, "
          f"{chunk_bytes / hash_seconds / 1e6:,.0f} MB/s; at the preparation, {hash_seconds * dataset_chunks / 60:.0f} "
          "CPU-minutes for the data set, shared by its hashing threads")  # fmt: skip


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
