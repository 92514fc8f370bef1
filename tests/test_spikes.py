"""The spike guard (`--spike_factor`, `lit_gpt/training/spikes.py`) on real runs: a planted stretch of data that drives
the loss up, after the model has learned the rest, is not applied and is logged with its sequences; the guard's
statistic resumes exactly; guarded steps in a row stop the run with the command that resumes it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pretrain import BLOCK, COMMON, SCRIPT, _env, _write_chunks, metrics, model_weights, same_tokens

PLANTED_TOKEN = 499
SEQUENCES = 80  # 10 chunks of 8 sequences: one epoch is 10 steps of 8
PLANTED_STEP = 6  # after the guard's warm-up of 3 steps
SEED = 3407  # the script's default --seed


def planted_sequences() -> set:
    """The indices of the sequences that step PLANTED_STEP trains on, in the loader's global order of the source."""
    from lit_gpt.data.order import Cursor, GlobalOrder, SourceOrder

    order = GlobalOrder([SourceOrder([8] * (SEQUENCES // 8), SEED, 0)], [1.0], SEED)
    ids, _ = order.take(Cursor(0, [0]), 8 * PLANTED_STEP)
    return {index for _, index in ids[-8:]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """One sequence per document: those of step PLANTED_STEP hold a single token repeated, the others the sequence
    that the model learns within a few steps."""
    root = tmp_path_factory.mktemp("data")
    planted = planted_sequences()
    constant = torch.full((BLOCK + 1,), PLANTED_TOKEN, dtype=torch.int32)
    _write_chunks(lambda i: constant if i in planted else same_tokens(i)[: BLOCK + 1], SEQUENCES, root / "train")
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
    """step -> the names of the sequences of each step the guard did not apply: `folder index index ...` in the
    global order of the training data."""
    return {
        int(m[1]): m[2].split() for m in re.finditer(r"Spike guard: step (\d+) not applied .*sequences: (.*)", output)
    }


def test_a_planted_batch_is_not_applied_is_logged_and_the_guard_resumes_exactly(tmp_path, data):
    full = run(data, tmp_path / "full", "--max_steps", "8")
    steps = guarded(full)
    # the planted step alone, named by its sequences (source folder, indices in the global order)
    assert list(steps) == [PLANTED_STEP], full[-3000:]
    names = steps[PLANTED_STEP]
    assert names[0] == str(data / "train") and set(map(int, names[1:])) == planted_sequences(), full[-3000:]
    step = PLANTED_STEP
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
