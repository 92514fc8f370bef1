"""Synthetic instruction records whose every example is longer than 2,048 tokens, for LoRA throughput runs: no
padding under either tool, so that tokens/s counts the same tokens. Each record's instruction and output are runs of
words drawn at random offsets from the sample corpus (`scripts/prepare_sample_data.py`)."""

import json
import lzma
import random
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(
    raw_dir: Path,
    output: Path,
    records: int = 700,
    instruction_words: int = 40,
    output_words: int = 2600,
    seed: int = 0,
) -> None:
    """Write `records` Alpaca-layout records (empty `input`) as an xz-compressed JSON array.

    Args:
        raw_dir: A folder of `*.jsonl.zst` files with a `text` field (the sample corpus' slimpajama-raw/train).
        output: The `.json.xz` file to write (`lzma.open` reads it back; `lora_checkpoints.py` unpacks it).
        records: How many records.
        instruction_words: Words of each instruction.
        output_words: Words of each output: 2,600 words are ~3,700-4,700 tokens of the sample tokenizer.
        seed: The seed of the offsets.
    """
    words: list = []
    for path in sorted(Path(raw_dir).rglob("*.jsonl.zst")):
        with zstandard.open(path, "rt") as f:
            for line in f:
                words += json.loads(line)["text"].split()
    longest = max(instruction_words, output_words)
    if len(words) <= longest:
        raise ValueError(f"{raw_dir} holds {len(words)} words; the records need more than {longest}")
    rng = random.Random(seed)

    def run(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    data = [{"instruction": run(instruction_words), "input": "", "output": run(output_words)} for _ in range(records)]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(output, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    print(f"Wrote {records} records to {output} ({Path(output).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
