"""Tokenize a corpus of your own (plain text, JSON lines, parquet/arrow, CSV/TSV; plain or compressed) into litdata
chunks for pretraining, optionally splitting off a validation set by document.

Each document is followed by the tokenizer's eos token, as SlimPajama and Starcoder are (`--bos`/`--eos` choose the
separators: `lit_gpt/data/separators.py`). The chunks are read with
`litdata.StreamingDataset(output_dir, item_loader=TokensLoader(block_size=2049))`, and pretrained on with
`pretrain/tinyllama.py --train_data "{data/mine/train: 1.0}" --val_data data/mine/val` (or in a mix with other
sources). Example:

    python scripts/prepare_text.py --input data/my-corpus --output_dir data/mine \
        --tokenizer_path checkpoints/meta-llama/Llama-2-7b-hf --val_fraction 0.01
"""

import sys
from pathlib import Path
from typing import List, Optional, Union

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

from lit_gpt.data.prepare import BLOCK_SIZE, prepare  # noqa: E402
from lit_gpt.data.readers import PrepareError, TextOptions  # noqa: E402


def main(
    input: Union[str, List[str]],
    output_dir: str,
    tokenizer_path: Path = Path("checkpoints/meta-llama/Llama-2-7b-hf"),
    text_key: str = "text",
    column: str = "text",
    blocks: bool = False,
    val_fraction: float = 0.0,
    chunk_size: int = BLOCK_SIZE * 8192,
    fast_dev_run: bool = False,
    num_workers: Optional[int] = None,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    bos: bool = False,
    eos: bool = True,
) -> None:
    """Tokenize the documents of your own files.

    Args:
        input: Folders, glob patterns (quoted: `"data/raw/**/*.jsonl.gz"`) or files; one or several, as
            `--input "[a, b]"` (or `--input+ a --input+ b`). A folder contributes every file of a known format under it
            (through symbolic links to folders too): `.txt`/`.text`/`.md`, `.jsonl`/`.ndjson`/`.json`, `.parquet`,
            `.arrow` (a Hugging Face `datasets` cache or `save_to_disk` folder), `.csv`, `.tsv`; the text formats
            also compressed (`.zst`, `.gz`, `.bz2`, `.xz`).
        output_dir: Where the chunks and `index.json` go (a local folder or an object store URL); with
            `--val_fraction`, its `train/` and `val/` sub-folders.
        tokenizer_path: A tokenizer directory (`tokenizer.model` or `tokenizer.json`), see `scripts/download.py` and
            `scripts/train_tokenizer.py`.
        text_key: The key of the text in JSON objects; `a.b` for `{"a": {"b": "..."}}`.
        column: The text column of parquet, arrow, CSV and TSV files.
        blocks: Plain-text files hold one document per block of lines between blank lines (default: one document
            per file).
        val_fraction: Share of the documents (0..0.5) written to `output_dir/val` instead of `output_dir/train`,
            chosen by a hash of each file's name and the document's position in it: the same split on every run.
        chunk_size: Tokens per chunk. Keep it a multiple of the training block (2049 = 2048 + 1).
        fast_dev_run: Process only the first 2 files, to check the whole pipeline quickly.
        num_workers: Worker processes (default: one per CPU core).
        skip_bad_records: Leave out records and files that cannot be read (malformed JSON or CSV, a missing key or
            column, text that is not UTF-8, a truncated compressed file) and count them in the summary, instead of
            failing the run.
        overwrite: Replace an earlier preparation in `output_dir` (the files its `prepare.json` lists); a folder that
            holds anything else, or overlaps an input or `tokenizer_path`, is refused.
        bos: Put the tokenizer's bos token before each document (TinyLlama's and Llama-2's convention); see
            `lit_gpt/data/separators.py`. Recorded in `prepare.json`; pretraining refuses a mix of conventions.
        eos: Put the tokenizer's eos token after each document (lit-gpt's convention, the default). `--bos true
            --eos false` gives TinyLlama's data, both true gives `<s>doc</s>`; at least one must be true.
    """
    if not 0 <= val_fraction <= 0.5:
        raise PrepareError(f"--val_fraction {val_fraction} must be between 0 and 0.5 (0.01 keeps 1% for validation)")
    splits = [("train", f"{output_dir.rstrip('/')}/train"), ("val", f"{output_dir.rstrip('/')}/val")]
    if val_fraction == 0:
        splits = [(None, output_dir)]
    documents = 0
    for split, out in splits:
        options = TextOptions(text_key=text_key, column=column, blocks=blocks, val_fraction=val_fraction, split=split)
        try:
            stats = prepare(
                "text",
                input_dir=None,
                inputs=[input] if isinstance(input, str) else list(input),
                text_options=options,
                output_dir=out,
                tokenizer_path=tokenizer_path,
                chunk_size=chunk_size,
                fast_dev_run=fast_dev_run,
                num_workers=num_workers,
                skip_bad_records=skip_bad_records,
                overwrite=overwrite,
                bos=bos,
                eos=eos,
            )
        except PrepareError as e:
            if split != "val" or "hold no documents" not in str(e):
                raise
            raise PrepareError(
                f"--val_fraction {val_fraction} put none of the {documents:,} documents into {out}: raise it (each "
                f"document goes there with that probability) and run again with --overwrite true, which replaces the "
                f"{splits[0][1]} this run wrote"
            ) from None
        documents += stats.documents


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
