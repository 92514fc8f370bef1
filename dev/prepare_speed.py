"""Measure the data preparation against lit-gpt's approach, on the same input in one run, and print the ratios.

lit-gpt's preparation (early 2024) encodes one document per `Tokenizer.encode` call, turns each into a torch tensor,
parses every SlimPajama line twice and hands litdata one item per document; `lit_gpt.data.prepare` reads bigger batches,
encodes many documents per SentencePiece call and hands litdata block-sized items. Two measurements:

- per core: one process tokenizing the files (no litdata), documents/s and tokens/s;
- end to end: `litdata.optimize` with one worker per core, input files to chunks on disk;
- `scripts/prepare_text.py`'s generic readers on both datasets as one mixed corpus, per core.

Example:

    python scripts/prepare_sample_data.py && python scripts/train_tokenizer.py
    python dev/prepare_speed.py --data_dir data --tokenizer_path checkpoints/sample-tokenizer
"""

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt.data.prepare import BLOCK_SIZE, _tokenizer, item_tokens_for, prepare, tokenize_files  # noqa: E402
from lit_gpt.data.readers import find_files  # noqa: E402

INPUTS = {"slimpajama": "slimpajama-raw/train", "starcoder": "starcoderdata-raw"}


def main(
    data_dir: Path = Path("data"),
    tokenizer_path: Path = Path("checkpoints/sample-tokenizer"),
    repeats: int = 2,
    num_workers: Optional[int] = None,
) -> None:
    """Compare on `data_dir/slimpajama-raw/train` and `data_dir/starcoderdata-raw`.

    Args:
        data_dir: The folder holding the raw datasets (`python scripts/prepare_sample_data.py` builds one).
        tokenizer_path: A tokenizer directory.
        repeats: Per-core runs of each approach (alternating; the fastest counts), to damp noise from other load.
        num_workers: Worker processes for the end-to-end runs (default: one per CPU core).
    """
    num_workers = num_workers or os.cpu_count() or 1
    for kind, sub in INPUTS.items():
        files = [str(f) for f in find_files(data_dir / sub, kind)]
        best = {"lit-gpt": float("inf"), "lit_gpt.prepare": float("inf")}
        counts, docs = {}, 0
        for _ in range(repeats):
            for name, fn in (("lit-gpt", litgpt_tokenize_file), ("lit_gpt.prepare", _ours)):
                t0 = time.perf_counter()
                items, tokens = 0, 0
                for f in files:
                    for item in fn(f, kind, str(tokenizer_path)):
                        tokens += len(item)
                        items += 1
                best[name] = min(best[name], time.perf_counter() - t0)
                counts[name] = tokens
                if name == "lit-gpt":
                    docs = items  # lit-gpt yields one item per document
        if counts["lit-gpt"] != counts["lit_gpt.prepare"]:
            raise SystemExit(f"error: the two approaches disagree on the token count of {kind}: {counts}")
        tokens = counts["lit-gpt"]
        for name, seconds in best.items():
            print(
                f"{kind:10s} per core    {name:16s} {seconds:6.2f}s {docs / seconds:9,.0f} docs/s "
                f"{tokens / seconds:11,.0f} tokens/s"
            )
        print(f"{kind:10s} per core    speed-up {best['lit-gpt'] / best['lit_gpt.prepare']:.2f}x ({tokens:,} tokens)")

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _litgpt_optimize(files, kind, tokenizer_path, f"{tmp}/litgpt", num_workers)
            litgpt_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            prepare(kind, data_dir / sub, f"{tmp}/ours", tokenizer_path, BLOCK_SIZE * 1024, num_workers=num_workers,
                    verbose=False)  # fmt: skip
            ours_s = time.perf_counter() - t0
        print(
            f"{kind:10s} end to end  lit-gpt {litgpt_s:.1f}s, lit_gpt.prepare {ours_s:.1f}s with {num_workers} workers:"
            f" speed-up {litgpt_s / ours_s:.2f}x"
        )
    text_corpus_speed(data_dir, tokenizer_path, repeats)


def text_corpus_speed(data_dir: Path, tokenizer_path: Path, repeats: int) -> None:
    """`scripts/prepare_text.py`'s generic readers (`lit_gpt.data.readers`) on both raw datasets as one mixed corpus
    (JSON lines under `text`, parquet under `content`), per core: files/s and tokens/s."""
    from lit_gpt.data.readers import TextOptions, find_inputs, read_documents

    files = [str(f) for f in find_inputs([str(data_dir / sub) for sub in INPUTS.values()])]
    reader = functools.partial(read_documents, options=TextOptions(text_key="text", column="content"))
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        t0, tokens = time.perf_counter(), 0
        for f in files:
            for item in tokenize_files([f], "text", str(tokenizer_path), item_tokens_for(BLOCK_SIZE * 1024),
                                       reader=reader):  # fmt: skip
                tokens += len(item)
        best = min(best, time.perf_counter() - t0)
    print(
        f"text       per core    prepare_text     {best:6.2f}s {len(files) / best:9.1f} files/s "
        f"{tokens / best:11,.0f} tokens/s ({len(files)} files of both formats, {tokens:,} tokens)"
    )


def litgpt_tokenize_file(path: str, kind: str, tokenizer_dir: str) -> Iterator[torch.Tensor]:
    """lit-gpt's `prepare_item` of scripts/prepare_slimpajama.py and scripts/prepare_starcoder.py (early 2024)."""
    tokenizer = _tokenizer(tokenizer_dir)

    def encode(text: str) -> torch.Tensor:  # lit-gpt's Tokenizer.encode(text, bos=False, eos=True)
        return torch.tensor(tokenizer.processor.encode(text) + [tokenizer.eos_id], dtype=torch.int)

    if kind == "slimpajama":
        import zstandard as zstd

        with zstd.open(open(path, "rb"), "rt", encoding="utf-8") as f:
            for row in f:
                text = json.loads(row)["text"]
                if json.loads(row)["meta"]["redpajama_set_name"] == "RedPajamaGithub":
                    continue
                yield encode(text)
    else:
        import pyarrow.parquet as pq

        parquet_file = pq.ParquetFile(path)
        for batch in parquet_file.iter_batches(batch_size=8192, columns=["content"]):
            for text in batch.to_pandas()["content"]:
                yield encode(text)


def _ours(path: str, kind: str, tokenizer_dir: str) -> Iterator[torch.Tensor]:
    return tokenize_files([path], kind, tokenizer_dir, item_tokens_for(BLOCK_SIZE * 1024))


def _litgpt_optimize(files: list, kind: str, tokenizer_path: Path, output_dir: str, num_workers: int) -> None:
    from litdata import TokensLoader, optimize

    fn = functools.partial(litgpt_tokenize_file, kind=kind, tokenizer_dir=str(tokenizer_path))
    optimize(fn=fn, inputs=files, output_dir=output_dir, num_workers=num_workers, chunk_size=BLOCK_SIZE * 1024,
             item_loader=TokensLoader(), reorder_files=False, verbose=False)  # fmt: skip


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
