"""Throughput of lit_gpt/harness.py beside lm-evaluation-harness' `hf` backend on the export of the same checkpoint,
in one process, on one GPU: the same task, limit, batch size and dtype (bf16), each timed after its model is loaded.

    python dev/device/harness_speed.py --tokenizer_dir .device/tok --limit 1000 --batch_size 32

The device has no internet and no copy of HellaSwag could be made here (this machine reaches package registries
only), so the task is a HellaSwag-shaped multiple-choice task written by this script: `--limit` examples of a
~`--context_tokens` context and 4 endings of ~`--ending_tokens`, decoded from random token ids of the tokenizer
(HellaSwag's examples are a sentence or two of context and four one-sentence endings; the default lengths are an
estimate of theirs, not a measurement). With `--task hellaswag` and a
datasets cache carried in HF_DATASETS_CACHE, the real task runs instead. The model is TinyLlama-1.1B's architecture
with random weights (the time of a forward pass does not depend on the weights), written as a lit checkpoint
trained with bos before each document (TinyLlama's convention) and exported with scripts/convert_lit_checkpoint.py.
Prints one line per backend (seconds, examples/s, scores) and the ratio of the times.
"""

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import save_tokenizer_files  # noqa: E402
from lit_gpt.data.separators import Separators, write_separators  # noqa: E402
from lit_gpt.model import GPT, init_weights  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402
from lit_gpt.weights import save_lit_checkpoint  # noqa: E402

TASK_YAML = """task: speed_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: speed_choice.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{query}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
metadata:
  version: 1.0
"""


def write_checkpoint(tokenizer_dir: Path, out: Path, model_name: str, device: str) -> Path:
    """A lit checkpoint of `model_name` with random weights, trained with bos before each document (TinyLlama's)."""
    out.mkdir(parents=True, exist_ok=True)
    config = Config.from_name(model_name)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    init_weights(model, config.n_layer, config.n_embd)
    state_dict = {k: v.to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
    del model
    save_tokenizer_files(tokenizer_dir, out, config.block_size, add_bos_token=True)
    write_separators(out, Separators(bos=True, eos=False))
    save_lit_checkpoint(state_dict, config, out)
    return out


def write_task(tokenizer_dir: Path, out: Path, n: int, context_tokens: int, ending_tokens: int) -> Path:
    """`speed_choice.yaml` over `n` examples of a context and 4 endings of about the given lengths in tokens."""
    tokenizer = Tokenizer(tokenizer_dir)
    rng = random.Random(0)
    # pieces that decode to printable text on their own (no byte pieces, which decode to replacement characters)
    pieces = {i: tokenizer.decode([i]) for i in range(3, tokenizer.vocab_size)}
    ids = [i for i, piece in pieces.items() if piece.isprintable() and "\ufffd" not in piece]

    def text(length: int) -> str:
        return tokenizer.decode(rng.sample(ids, rng.randint(length * 3 // 4, length * 5 // 4)))

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "speed_choice.jsonl", "w", encoding="utf-8") as f:
        for _ in range(n):
            doc = {"query": text(context_tokens), "choices": [" " + text(ending_tokens) for _ in range(4)]}
            f.write(json.dumps({**doc, "label": rng.randrange(4)}) + "\n")
    (out / "speed_choice.yaml").write_text(TASK_YAML, encoding="utf-8")
    return out / "speed_choice.yaml"


def main(
    tokenizer_dir: Path,
    root: Path = Path("/tmp/hs"),
    task: Optional[str] = None,
    limit: int = 1000,
    batch_size: int = 32,
    context_tokens: int = 70,
    ending_tokens: int = 25,
    model_name: str = "tiny-llama-1.1b",
    device: str = "cuda",
) -> None:
    """Time both backends on the same task and print a line each.

    Args:
        tokenizer_dir: The tokenizer of the checkpoint (`.device/tok` of dev/device/prepare.sh).
        root: Where the lit checkpoint, its export and the task go.
        task: An lm-eval task name (its data in the carried datasets cache); default: the HellaSwag-shaped local one.
        limit: Examples evaluated.
        batch_size: Requests per forward pass, in both backends.
        context_tokens: About how many tokens each context of the local task has.
        ending_tokens: About how many tokens each of its 4 endings has.
        model_name: The architecture (random weights).
        device: `cuda`; `cpu` tries the script with a small model.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from lit_gpt.data.separators import read_separators
    from lit_gpt.generate import load_model
    from lit_gpt.harness import evaluate_tasks, flat_scores, task_manager, task_specs
    from lit_gpt.training.fabric import L

    lit, hf = write_checkpoint(tokenizer_dir, root / "lit", model_name, device), root / "hf"
    subprocess.run([sys.executable, str(ROOT / "scripts/convert_lit_checkpoint.py"), "--checkpoint_dir", str(lit),
                    "--output_dir", str(hf), "--overwrite", "true"], check=True)  # fmt: skip
    task = task or str(write_task(tokenizer_dir, root / "task", limit, context_tokens, ending_tokens))
    precision, dtype = ("bf16-true", "bfloat16") if device == "cuda" else ("32-true", "float32")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{model_name}, task {task}, limit {limit}, batch size {batch_size}, {dtype}, {name}")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    rows = {}
    model = load_model(L.Fabric(devices=1, accelerator=device, precision=precision), lit)
    tokenizer, separators = Tokenizer(lit), read_separators(lit)
    evaluate_tasks(model, tokenizer, separators, task, 2 * batch_size, batch_size=batch_size)  # warm-up
    sync()
    t0 = time.perf_counter()
    scores, results = evaluate_tasks(model, tokenizer, separators, task, limit, batch_size=batch_size)
    sync()
    rows["lit_gpt/harness.py"] = (time.perf_counter() - t0, scores, results)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    # the task index that evaluate_tasks made (and reuses), so that neither time counts the indexing
    specs = task_specs(task)
    tasks = task_manager(all(isinstance(spec, dict) for spec in specs))
    lm = HFLM(pretrained=str(hf), dtype=dtype, batch_size=batch_size, device=device)
    simple_evaluate(model=lm, tasks=task_specs(task), limit=2 * batch_size, task_manager=tasks)  # warm-up
    sync()
    t0 = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=task_specs(task), limit=limit, task_manager=tasks, bootstrap_iters=0)
    sync()
    rows["lm-eval hf backend"] = (time.perf_counter() - t0, flat_scores(results), results)

    for backend, (seconds, scores, results) in rows.items():
        examples = sum(n["effective"] for n in results["n-samples"].values())
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        print(f"{backend}: {examples} examples in {seconds:.1f}s, {examples / seconds:.1f} examples/s; {shown}")
    ours, theirs = rows["lit_gpt/harness.py"][0], rows["lm-eval hf backend"][0]
    print(f"lit_gpt/harness.py takes {ours / theirs:.2f}x the hf backend's time")


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
