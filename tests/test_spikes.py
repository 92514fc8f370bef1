"""The spike guard (`--spike_factor`, `lit_gpt/training/spikes.py`) on real runs: a planted stretch of data that drives
the loss up, after the model has learned the rest, is not applied and is logged with its sequences; the guard's
statistic resumes exactly; guarded steps in a row stop the run with the command that resumes it."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pretrain import BLOCK, COMMON, SCRIPT, _env, _write_chunks, metrics, model_weights, same_tokens

PLANTED_TOKEN = 499
DOCS = 12  # 2 documents (8 sequences: one step) per chunk, 6 chunks


def planted(index: int):
    """Documents 4 and 5 (one chunk, so one step of the shuffled order) hold a single token repeated; the others are
    the sequence the model learns within a few steps."""
    if index in (4, 5):
        return torch.full((4 * (BLOCK + 1),), PLANTED_TOKEN, dtype=torch.int32)
    return same_tokens(index)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    _write_chunks(planted, DOCS, root / "train")
    _write_chunks(same_tokens, 8, root / "val")
    return root


def run(data: Path, out_dir: Path, *args: str, code: int = 0) -> str:
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--train_data", f"{{{data / 'train'}: 1.0}}", "--val_data",
           str(data / "val"), "--out_dir", str(out_dir), "--devices", "1", "--save_interval", "1", "--eval_interval",
           "1000", "--spike_factor", "3", "--spike_window", "4", "--spike_warmup", "3", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=_env())
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def guarded(output: str) -> dict:
    """step -> the sequence ids of each step the guard did not apply."""
    return {int(m[1]): m[2].split() for m in re.finditer(r"Spike guard: step (\d+) not applied .*rank 0: (.*)", output)}


def test_a_planted_batch_is_not_applied_is_logged_and_the_guard_resumes_exactly(tmp_path, data):
    full = run(data, tmp_path / "full", "--max_steps", "8")
    steps = guarded(full)
    planted_id = hashlib.sha1(np.full(BLOCK + 1, PLANTED_TOKEN, dtype=np.int32).tobytes()).hexdigest()[:12]
    assert list(steps.values()) == [[planted_id] * 8], full[-3000:]  # the planted step alone, all its sequences
    (step,) = steps
    assert step > 3, "the planted chunk must come after the guard's warm-up in this seed's order"
    # nothing of the guarded step reached the weights or AdamW's moments and step counts
    before, after = (tmp_path / "full" / f"step-{s:08d}.pth" for s in (step - 1, step))
    for name, tensor in model_weights(before).items():
        assert torch.equal(tensor, model_weights(after)[name]), name
    adam_before, adam_after = (torch.load(p, weights_only=True)["optimizer"]["state"] for p in (before, after))
    for key in adam_before:
        for field, value in adam_before[key].items():
            assert torch.equal(value, adam_after[key][field]), (key, field)
    assert metrics(tmp_path / "full", "guarded_steps")[8] == 1

    # stopped two steps before the planted one and resumed: the guard's statistic comes back with the checkpoint (a
    # fresh one would still be warming up and apply the planted step); with --max_spike_steps 1 the run stops there
    resumed = tmp_path / "resumed"
    run(data, resumed, "--max_steps", str(step - 2))
    out = run(data, resumed, "--max_steps", "8", "--resume", "auto", "--max_spike_steps", "1", code=2)
    assert list(guarded(out)) == [step], out[-3000:]
    stop = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(stop) == 1 and f"1 optimizer steps in a row (steps {step} to {step})" in stop[0], out[-3000:]
    assert re.search(r"resume with: python \S+tinyllama.py .*--resume auto$", stop[0]), stop
    out = run(data, resumed, "--max_steps", "8", "--resume", "auto")
    assert list(guarded(out)) == [step], out[-3000:]
    assert metrics(resumed) == metrics(tmp_path / "full")
    final, final_resumed = (model_weights(d / "step-00000008.pth") for d in (tmp_path / "full", resumed))
    for name in final:
        assert torch.equal(final[name], final_resumed[name]), name


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--spike_factor", "1"], "--spike_factor 1.0 must be above 1"),
        (["--spike_window", "1000000000"], "--spike_window 1000000000 is more than the 100,000 steps"),
    ],
)
def test_spike_guard_flags_are_refused_up_front(tmp_path, data, flags, message):
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--train_data", f"{{{data / 'train'}: 1.0}}", "--val_data",
           str(data / "val"), "--out_dir", str(tmp_path), *flags]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr[-3000:]
