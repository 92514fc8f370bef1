"""dev/loss_parity.py on CPU: real prepared litdata chunks, a real one-process Fabric run of the bf16 step, the
float32 reference and litgpt, compared step by step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dev" / "loss_parity.py"


def load_script():
    from prepared_data import load_script

    return load_script("loss_parity", "dev")


def test_bf16_cases_follow_the_float32_reference(tmp_path, data_dir):
    steps = 12
    # bf16 matrix products are slow on CPUs without bf16 units (micro-llama's 32000-token head dominates): short
    # sequences and few steps keep this under 30 s on 2 cores (with bf16 instructions; several minutes without them
    # under load, hence the generous limit); a high learning rate makes the weights move
    cmd = [sys.executable, str(SCRIPT), "--model_name", "micro-llama", "--block_size", "32", "--micro_batch_size", "2",
           "--steps", str(steps), "--warmup_steps", "2", "--learning_rate", "3e-3", "--min_lr", "3e-4",
           "--data_dir", str(data_dir), "--out_dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "ours vs fp32 reference: max" in proc.stdout and "-> within 1%" in proc.stdout, proc.stdout[-2000:]

    record = json.loads((tmp_path / "loss_parity.json").read_text())
    losses, summary = record["losses"], record["summary"]
    assert sorted(losses) == ["autocast", "litgpt", "nudged", "ours", "reference"]
    assert all(len(curve) == steps for curve in losses.values())
    ours, reference, litgpt = losses["ours"], losses["reference"], losses["litgpt"]
    # same weights, same first batch: only bf16 rounding separates the first losses
    assert abs(ours[0] - reference[0]) / reference[0] < 0.01
    for name in ("ours", "autocast", "litgpt"):
        rel = [abs(a - b) / b for a, b in zip(losses[name], reference)]
        assert max(rel) <= 0.01, (name, rel)
        assert any(r > 0 for r in rel), f"{name} equals the float32 reference exactly: was it run in bf16?"
        assert summary["vs_reference"][name]["within_tolerance"]
        assert summary["vs_reference"][name]["max"] == pytest.approx(max(rel))
    assert max(abs(a - b) / b for a, b in zip(ours, litgpt)) == pytest.approx(summary["ours_vs_litgpt"]["max"])
    # against textbook mixed precision (float32 weights, eager, bf16 autocast): the same rounding, other kernels
    rel = [abs(a - b) / b for a, b in zip(ours, losses["autocast"])]
    assert summary["vs_autocast"]["ours"]["max"] == pytest.approx(max(rel)) and max(rel) <= 0.01
    assert "ours vs eager bf16 autocast: max" in proc.stdout
    # float32 again from weights one float32 step apart: not identical, but far closer than the bf16 run
    nudged = [abs(a - b) / b for a, b in zip(losses["nudged"], reference)]
    ours_rel = [abs(a - b) / b for a, b in zip(ours, reference)]
    assert 0 < max(nudged) < 1e-3 and max(nudged) < max(ours_rel), nudged
    for curve in losses.values():
        assert sum(curve[-3:]) / 3 < curve[0] - 0.5, curve  # it trained


def test_summary_reports_a_curve_outside_the_tolerance():
    script = load_script()
    reference = [10.0, 9.0, 8.0, 7.5]
    close = [10.01, 9.0, 8.02, 7.5]  # 0.25% at most
    off = [10.0, 9.18, 8.0, 7.5]  # 2% at step 2
    diverged = [10.0, float("nan"), 8.0, 7.5]
    summary = script.summarize(dict(reference=reference, ours=off, litgpt=close), {}, tolerance=0.01)
    ours, litgpt = summary["vs_reference"]["ours"], summary["vs_reference"]["litgpt"]
    assert not ours["within_tolerance"] and ours["max_step"] == 2 and ours["max"] == pytest.approx(0.02)
    assert ours["mean"] == pytest.approx(0.005)
    assert litgpt["within_tolerance"] and litgpt["max"] == pytest.approx(0.0025)
    assert summary["ours_vs_litgpt"]["max_step"] == 2
    assert summary["cases"]["ours"] == dict(steps=4, first_loss=10.0, last_loss=7.5, seconds=None)
    assert not script.summarize(dict(reference=reference, ours=diverged), {}, 0.01)["vs_reference"]["ours"][
        "within_tolerance"
    ]
    with pytest.raises(ValueError, match="Cannot compare loss curves of 3 and 4 steps"):
        script.compare(close[:3], reference)


def test_nudge_moves_every_float_by_one_float32_step_either_way():
    script = load_script()
    state = {"w": torch.randn(1000), "tiny": torch.full((100,), 1e-30), "ids": torch.arange(5)}
    nudged = script.nudge(state, seed=1)
    for name in ("w", "tiny"):
        before, after = state[name], nudged[name]
        up = after > before
        assert (after != before).all() and 0.4 < up.float().mean() < 0.6  # both directions, about equally
        # exactly one representable float32 away: stepping back lands on the original value
        back = torch.nextafter(after, torch.where(up, -torch.inf, torch.inf))
        assert torch.equal(back, before)
    assert torch.equal(nudged["ids"], state["ids"])
    assert torch.equal(script.nudge(state, seed=1)["w"], nudged["w"])  # reproducible
    assert not torch.equal(script.nudge(state, seed=2)["w"], nudged["w"])


def test_missing_or_short_data_and_help(tmp_path, data_dir):
    from prepared_data import help_text

    script = load_script()
    with pytest.raises(
        FileNotFoundError, match="lacks prepared litdata chunks in slimpajama/train.*prepare_slimpajama"
    ):
        script.load_batches(tmp_path / "nothing", 32, 2, 10)
    with pytest.raises(ValueError, match="--steps 100000 x --micro_batch_size 2 needs 200000.*lower --steps"):
        script.load_batches(data_dir, 32, 2, 100_000)
    batches = script.load_batches(data_dir, 32, 2, 3)
    assert batches.shape == (3, 2, 33)
    assert script.load_batches(data_dir, 32, 2, 4)[:3].equal(batches)  # in order: a longer run starts the same

    help_text(script.main)


def test_variants_of_ours_are_judged_against_the_bf16_noise_floor():
    script = load_script()
    ours = [4.0] * 10
    losses = {
        "ours": ours,
        "ours_nudged": [4.0 * (1 + 0.01)] * 10,  # 1% from ours at every step
        "fp8": [4.0 * (1 + 0.5)] * 4 + [4.0 * (1 + 0.012)] * 6,  # far off early, 1.2% in the window
        "fa4": [4.0 * (1 - 0.02)] * 10,  # 2%: twice the floor
    }
    summary = script.summarize(losses, {}, tolerance=0.01, window=(5, 10), noise_ratio=1.5)
    fp8, fa4 = summary["vs_ours"]["fp8"], summary["vs_ours"]["fa4"]
    assert fp8["noise_floor"] == pytest.approx(0.01) and fp8["mean"] == pytest.approx(0.012)
    assert fp8["ratio"] == pytest.approx(1.2) and fp8["within"]  # the early steps are outside the window
    assert fa4["ratio"] == pytest.approx(2.0) and not fa4["within"]
    assert summary["vs_ours"]["ours_nudged"]["ratio"] == pytest.approx(1.0)


def test_a_bf16_nudge_moves_each_weight_by_one_bf16_step():
    script = load_script()
    value = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    nudged = script.nudge({"w": value, "step": torch.tensor(3)}, seed=1, step_dtype=torch.bfloat16)
    rounded = value.to(torch.bfloat16)
    up = nudged["w"] > value
    target = torch.where(up, torch.inf, -torch.inf).to(torch.bfloat16)
    step = torch.nextafter(rounded, target).float() - rounded.float()  # one bf16 step in the direction taken
    # exactly one bf16 step added in float32 (a difference `nudged - value` would round again near a power of two)
    assert torch.equal(nudged["w"], value + step)
    assert (nudged["w"] > value).any() and (nudged["w"] < value).any()
    assert nudged["step"] == 3
    # in float32 it is the float32 neighbour, as before
    assert torch.equal(
        script.nudge({"w": value}, seed=1)["w"].sub(value).abs(), torch.nextafter(value, value * 2).sub(value).abs()
    )
