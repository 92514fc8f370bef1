"""Benchmark scores of a lit checkpoint directory with lm-evaluation-harness, without exporting it.

    python eval/harness.py --checkpoint_dir checkpoints/lit-tiny-llama-1.1b --tasks hellaswag,arc_easy --limit 100

Tasks are lm-evaluation-harness' names (read from the Hugging Face datasets cache when it holds them; set
`HF_DATASETS_OFFLINE=1` on a machine without internet) or paths to a task's YAML file, whose `data_files` are read
relative to it (tests/tasks/ holds two). The model sees every text as it saw documents in training, after bos or eos
as its `separators.json` says (`lit_gpt/harness.py`). Prints one line per score; `--out_file` also writes lm-eval's
whole result as JSON. Needs the optional extra: `pip install -e '.[eval]'`.
"""

import json
import sys
import time
from pathlib import Path
from typing import Literal, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import UserError, check_command_line  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

import torch  # noqa: E402

from lit_gpt.data.separators import read_separators  # noqa: E402
from lit_gpt.generate import load_model  # noqa: E402
from lit_gpt.harness import evaluate_tasks, task_specs  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402
from lit_gpt.training.fabric import L  # noqa: E402
from lit_gpt.weights import lit_checkpoint_files  # noqa: E402


def main(
    checkpoint_dir: Path,
    tasks: str = "hellaswag",
    limit: Optional[float] = None,
    num_fewshot: Optional[int] = None,
    batch_size: int = 16,
    max_gen_toks: int = 256,
    precision: Optional[Literal["32-true", "bf16-true", "16-true"]] = None,
    out_file: Optional[Path] = None,
) -> dict:
    """Evaluate a lit checkpoint on lm-evaluation-harness tasks.

    Args:
        checkpoint_dir: A lit checkpoint directory (`lit_config.json`, `lit_model.pth`, tokenizer files).
        tasks: Comma-separated lm-evaluation-harness task names or task YAML files.
        limit: Evaluate only the first `limit` examples of each task (a value below 1 is a fraction).
        num_fewshot: Examples put before each question; by default each task's own.
        batch_size: Requests per forward pass.
        max_gen_toks: The most tokens a generation task generates, unless the task says.
        precision: Weights and compute dtype; by default bf16-true on a GPU that supports it, else 32-true.
        out_file: Also write lm-evaluation-harness' result as JSON to this file.
    """
    if limit is not None and limit <= 0:
        raise UserError(f"--limit {limit} must be positive (a count of examples, or a fraction below 1)")
    if batch_size < 1 or max_gen_toks < 1:
        raise UserError(f"--batch_size ({batch_size}) and --max_gen_toks ({max_gen_toks}) must be at least 1")
    if limit is not None and limit >= 1:
        if limit != int(limit):
            raise UserError(f"--limit {limit}: a count of examples is a whole number (a fraction is below 1)")
        limit = int(limit)
    lit_checkpoint_files(checkpoint_dir)
    task_specs(tasks)  # a missing task file says so before the model is read
    if precision is None:
        precision = "bf16-true" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    separators = read_separators(checkpoint_dir)
    tokenizer = Tokenizer(checkpoint_dir)
    fabric = L.Fabric(devices=1, precision=precision)
    model = load_model(fabric, checkpoint_dir)
    t0 = time.perf_counter()
    scores, results = evaluate_tasks(
        model, tokenizer, separators, tasks, limit, num_fewshot, batch_size=batch_size, max_gen_toks=max_gen_toks
    )
    seconds = time.perf_counter() - t0
    for name, value in scores.items():
        print(f"{name}: {value:.4f}")
    print(f"evaluated in {seconds:.1f}s ({separators}, {precision})", file=sys.stderr)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return {"scores": scores, "seconds": seconds}


if __name__ == "__main__":
    from lit_gpt.cli import cli

    torch.set_float32_matmul_precision("high")
    cli(main)
