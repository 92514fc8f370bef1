"""Tokenize Starcoder (`*.parquet` files, one folder per language) into litdata chunks for pretraining.

Every row's `content` is a document, followed by the tokenizer's eos token (`--bos`/`--eos` choose the separators:
`lit_gpt/data/separators.py`), reading the files in batches of rows. The chunks are read with
`litdata.StreamingDataset(output_dir, item_loader=TokensLoader(block_size=2049))`.

Example:

    python scripts/prepare_starcoder.py --input_dir data/starcoderdata-raw --output_dir data/starcoder \
        --tokenizer_path checkpoints/meta-llama/Llama-2-7b-hf
"""

import sys
from pathlib import Path
from typing import Optional

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

from lit_gpt.data.prepare import BLOCK_SIZE, prepare  # noqa: E402


def main(
    input_dir: Path = Path("data/starcoderdata-raw"),
    output_dir: str = "data/starcoder",
    tokenizer_path: Path = Path("checkpoints/meta-llama/Llama-2-7b-hf"),
    chunk_size: int = BLOCK_SIZE * 8192,
    fast_dev_run: bool = False,
    num_workers: Optional[int] = None,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    bos: bool = False,
    eos: bool = True,
) -> None:
    """Tokenize Starcoder.

    Args:
        input_dir: The folder holding the `<language>/` folders; every `*.parquet` under it is read (through symbolic
            links to folders too).
        output_dir: Where the chunks and `index.json` go: a local folder or an object store URL (`s3://...`).
        tokenizer_path: A tokenizer directory (`tokenizer.model` or `tokenizer.json`), see `scripts/download.py`.
        chunk_size: Tokens per chunk. Keep it a multiple of the training block (2049 = 2048 + 1) so that no block
            straddles two chunks.
        fast_dev_run: Process only the first 2 files, to check the whole pipeline quickly.
        num_workers: Worker processes (default: one per CPU core).
        skip_bad_records: Leave out rows and files that cannot be read (unreadable parquet, no `content` column, null
            content, folders that cannot be listed, links to no file) and count them in the summary, instead of
            failing the run.
        overwrite: Replace an earlier preparation in `output_dir` (the files its `prepare.json` lists); a folder that
            holds anything else, or overlaps `input_dir` or `tokenizer_path`, is refused.
        bos: Put the tokenizer's bos token before each document (TinyLlama's and Llama-2's convention); see
            `lit_gpt/data/separators.py`. Recorded in `prepare.json`; pretraining refuses a mix of conventions.
        eos: Put the tokenizer's eos token after each document (lit-gpt's convention, the default). `--bos true
            --eos false` gives TinyLlama's data, both true gives `<s>doc</s>`; at least one must be true.
    """
    prepare("starcoder", **locals())  # the flags are `prepare`'s arguments of the same names


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
