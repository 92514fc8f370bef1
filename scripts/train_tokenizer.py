"""Train a tokenizer on a SlimPajama- or Starcoder-layout corpus, or on files of your own: a Llama-style SentencePiece
BPE (`--kind sentencepiece`, the default) or a byte-level BPE as Llama 3's, SmolLM2's, Qwen's and OLMo 2's
(`--kind bpe`).

`sentencepiece`, Llama's settings: BPE with byte fallback (every byte sequence can be encoded), digits split,
whitespace kept as is, `<unk>`=0, `<s>`=1, `</s>`=2, no padding token; writes `tokenizer.model`.
`bpe`, with Hugging Face `tokenizers`: BPE over the bytes of the UTF-8 text (every text is encoded and decodes back
exactly, no unknown token), split first as Llama 3's tokenizer does (words with their leading space, numbers in groups
of up to 3 digits, punctuation, newlines), `<|begin_of_text|>`=0, `<|end_of_text|>`=1; writes `tokenizer.json`.
Either way the output directory is a checkpoint-style tokenizer directory (with `tokenizer_config.json`, which names
the bos and eos tokens) that `lit_gpt.tokenizer.Tokenizer` and `--tokenizer_path` accept.

Example:

    python scripts/prepare_sample_data.py
    python scripts/train_tokenizer.py --input_dir data --output_dir checkpoints/sample-tokenizer
    python scripts/train_tokenizer.py --input my-corpus --output_dir checkpoints/my-tokenizer --vocab_size 8000
    python scripts/train_tokenizer.py --input my-corpus --output_dir checkpoints/my-bpe --kind bpe --vocab_size 16384
"""

import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Union

# entry points import `lit_gpt` from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

from lit_gpt.data.readers import PrepareError, Stats, iter_texts  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402

MAX_LINE_BYTES = 4192  # SentencePiece's max_sentence_length (as in Llama's tokenizer)
# `--kind bpe`: the text is split before the byte-level BPE as Llama 3's tokenizer.json splits it
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
BPE_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>")  # ids 0 and 1: bos and eos


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
    kind: Literal["sentencepiece", "bpe"] = "sentencepiece",
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
        kind: `sentencepiece` (Llama 2's and TinyLlama's kind: `tokenizer.model`) or `bpe`, a byte-level BPE
            (Llama 3's, SmolLM2's, Qwen's, OLMo 2's kind: `tokenizer.json`, no SentencePiece model); see above.
    """
    existing = [output_dir / n for n in ("tokenizer.model", "tokenizer.json") if (output_dir / n).exists()]
    if existing and not overwrite:
        raise PrepareError(f"{existing[0]} exists; pass --overwrite true or another --output_dir")
    special = len(BPE_SPECIAL) if kind == "bpe" else 3
    least = 256 + special + (1 if kind == "bpe" else 3)  # room for merges
    if vocab_size < least:
        raise PrepareError(
            f"--vocab_size {vocab_size} is too small: the 256 byte tokens and {special} special tokens come first; "
            f"pass at least {least}"
        )
    stats = Stats()
    if input is not None:
        from lit_gpt.data.readers import TextOptions, find_inputs, read_documents

        options = TextOptions(text_key=text_key, column=column, blocks=blocks)
        files = find_inputs([input] if isinstance(input, str) else list(input))
        input_dir = Path(" ".join(map(str, files[:1]))).parent
        lines = _lines(_documents(files, stats, options, read_documents))
    else:
        lines = _lines(iter_texts(input_dir, stats))
    if kind == "bpe":  # whole lines, their newlines included: the BPE learns merges of newlines and indentation
        lines = _with_newlines(lines, max_lines)
    first = next(lines, None)
    if first is None and input is not None:
        raise PrepareError(f"--input {input} holds no text (left out: {sum(stats.skipped.values())} records)")
    if first is None:
        raise PrepareError(
            f"--input_dir {input_dir} holds no text in *.jsonl.zst or *.parquet files; build the sample corpus with "
            "`python scripts/prepare_sample_data.py` or point it at SlimPajama / Starcoder files"
        )
    t0 = time.perf_counter()
    if kind == "bpe":
        _train_bpe(_chain(first, lines), vocab_size, output_dir)
    else:
        _train_sentencepiece(_chain(first, lines), input_dir, vocab_size, max_lines, num_threads, output_dir)
    for stale in existing:  # the other kind's file of an earlier run, which would be read instead of this one's
        if stale.name != ("tokenizer.json" if kind == "bpe" else "tokenizer.model"):
            stale.unlink()
    tokenizer = Tokenizer(output_dir)
    print(
        f"Trained a {tokenizer.vocab_size}-token {'byte-level ' if kind == 'bpe' else ''}BPE tokenizer on "
        f"{stats.documents:,} documents of {stats.files} files in {time.perf_counter() - t0:.1f}s -> {output_dir} "
        f"(bos={tokenizer.bos_id}, eos={tokenizer.eos_id})"
    )
    if stats.bad:
        print(f"left out {len(stats.bad):,} records that could not be read; the first: {stats.bad[0]}")


def _train_bpe(lines: Iterator[str], vocab_size: int, output_dir: Path) -> None:
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(output_dir / "tokenizer.json"))
    bos, eos = BPE_SPECIAL
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": bos,
        "eos_token": eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _train_sentencepiece(
    lines: Iterator[str],
    input_dir: Path,
    vocab_size: int,
    max_lines: Optional[int],
    num_threads: Optional[int],
    output_dir: Path,
) -> None:
    import os

    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
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


def _with_newlines(lines: Iterator[str], max_lines: Optional[int]) -> Iterator[str]:
    """The lines with their newline back, the first `max_lines` of them (all by default)."""
    for i, line in enumerate(lines):
        if max_lines is not None and i >= max_lines:
            return
        yield line + "\n"


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(train)
