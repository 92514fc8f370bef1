"""Train a Llama-style SentencePiece BPE tokenizer on a SlimPajama- or Starcoder-layout corpus, or on files of your own.

Llama's settings: BPE with byte fallback (every byte sequence can be encoded), digits split, whitespace kept as is,
`<unk>`=0, `<s>`=1, `</s>`=2, no padding token. The output directory is a checkpoint-style tokenizer directory
(`tokenizer.model`, `tokenizer_config.json`) that `lit_gpt.tokenizer.Tokenizer` and `--tokenizer_path` accept.

Example:

    python scripts/prepare_sample_data.py
    python scripts/train_tokenizer.py --input_dir data --output_dir checkpoints/sample-tokenizer
    python scripts/train_tokenizer.py --input my-corpus --output_dir checkpoints/my-tokenizer --vocab_size 8000
"""

import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Union

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

from lit_gpt.data.readers import PrepareError, Stats, iter_texts  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402

MAX_LINE_BYTES = 4192  # SentencePiece's max_sentence_length (as in Llama's tokenizer)


def train(
    input_dir: Path = Path("data"),
    output_dir: Path = Path("checkpoints/sample-tokenizer"),
    vocab_size: int = 32000,
    max_lines: Optional[int] = None,
    num_threads: Optional[int] = None,
    overwrite: bool = False,
    input: Optional[Union[str, List[str]]] = None,
    text_key: str = "text",
    column: str = "text",
    blocks: bool = False,
) -> None:
    """Train on the `*.jsonl.zst` (SlimPajama) and `*.parquet` (Starcoder) files under `input_dir`, or on `--input`.

    Args:
        input_dir: A corpus folder in either layout, or a folder holding both (such as `data/`).
        output_dir: Where `tokenizer.model` and `tokenizer_config.json` are written.
        vocab_size: Number of tokens, the 3 special ones and the 256 byte tokens included.
        max_lines: Train on this many lines of text at most (SentencePiece samples them), to bound time and memory.
        num_threads: Trainer threads (default: all cores).
        overwrite: Replace a tokenizer already in `output_dir`.
        input: Instead of `input_dir`: folders, glob patterns or files of your own corpus in any format that
            `scripts/prepare_text.py` reads (plain text, JSON lines, parquet, arrow, CSV/TSV; compressed too).
        text_key: With `--input`: the key of the text in JSON objects (`a.b` for nested ones).
        column: With `--input`: the text column of parquet, arrow, CSV and TSV files.
        blocks: With `--input`: plain-text files hold one document per block of lines between blank lines.
    """
    import os

    import sentencepiece as spm

    if (output_dir / "tokenizer.model").exists() and not overwrite:
        raise PrepareError(f"{output_dir / 'tokenizer.model'} exists; pass --overwrite true or another --output_dir")
    if vocab_size < 259 + 3:
        raise PrepareError(f"--vocab_size {vocab_size} is too small: 256 byte tokens and 3 special tokens come first")
    stats = Stats()
    if input is not None:
        from lit_gpt.data.readers import TextOptions, find_inputs, read_documents

        options = TextOptions(text_key=text_key, column=column, blocks=blocks)
        files = find_inputs([input] if isinstance(input, str) else list(input))
        input_dir = Path(" ".join(map(str, files[:1]))).parent
        lines = _lines(_documents(files, stats, options, read_documents))
    else:
        lines = _lines(iter_texts(input_dir, stats))
    first = next(lines, None)
    if first is None and input is not None:
        raise PrepareError(f"--input {input} holds no text (left out: {sum(stats.skipped.values())} records)")
    if first is None:
        raise PrepareError(
            f"--input_dir {input_dir} holds no text in *.jsonl.zst or *.parquet files; build the sample corpus with "
            "`python scripts/prepare_sample_data.py` or point it at SlimPajama / Starcoder files"
        )
    t0 = time.perf_counter()
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_chain(first, lines),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=0.99995,
            max_sentence_length=MAX_LINE_BYTES,
            input_sentence_size=max_lines or 0,
            shuffle_input_sentence=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        refusal = vocab_size_refusal(str(e), input_dir, vocab_size)
        if refusal is None:
            raise
        raise refusal from e
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 2048,
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    tokenizer = Tokenizer(output_dir)
    print(
        f"Trained a {tokenizer.vocab_size}-token BPE tokenizer on {stats.documents:,} documents of {stats.files} files "
        f"in {time.perf_counter() - t0:.1f}s -> {output_dir} (bos={tokenizer.bos_id}, eos={tokenizer.eos_id})"
    )
    if stats.bad:
        print(f"left out {len(stats.bad):,} records that could not be read; the first: {stats.bad[0]}")


def vocab_size_refusal(message: str, input_dir: Path, vocab_size: int) -> Optional[PrepareError]:
    """SentencePiece's refusal of `--vocab_size` in the project's words, or None for another error. Its own text names
    its `--character_coverage` option, which this script does not have (it keeps 99.995% of the characters)."""
    too_few = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_few:
        return PrepareError(
            f"the corpus in {input_dir} has more distinct characters than --vocab_size {vocab_size} has room for: "
            f"those of 99.995% of its text need {int(too_few[2]):,} tokens of their own, the 256 bytes and the special "
            f"tokens more; pass --vocab_size {int(too_few[2]) + 259} or more"
        )
    too_many = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_many:
        return PrepareError(
            f"the corpus in {input_dir} is too small for --vocab_size {vocab_size}: it yields at most {too_many[2]} "
            f"tokens; pass --vocab_size {too_many[2]} or less, or more text"
        )
    return None


def _documents(files, stats: Stats, options, read_documents) -> Iterator[str]:
    for path in files:
        stats.files += 1
        for text in read_documents(path, stats, options):
            stats.documents += 1
            yield text


def _lines(texts: Iterator[str]) -> Iterator[str]:
    """SentencePiece learns from lines; longer lines than it accepts are cut, blank ones left out."""
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line[: MAX_LINE_BYTES // 4] if len(line.encode("utf-8")) > MAX_LINE_BYTES else line


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(train)
