"""Learning-rate schedules (lit_gpt/training/lr.py): WSD against its formula, and an anneal branched off a stable
phase by pretrain/tinyllama.py on CPU, compared with the run that decayed there without stopping."""

import math

import pytest
import torch
from test_pretrain import BLOCK, checkpoints, metrics, model_weights, run

from lit_gpt.training.lr import (
    DECAY_SHAPES,
    Schedule,
    anneal_start,
    check_schedule_flags,
    cosine_lr,
    make_schedule,
    schedule_change_note,
)

PEAK, FLOOR = 1e-3, 1e-4


def wsd_formula(step: int, warmup: int, decay_start: int, total: int, shape: str) -> float:
    """WSD written out: linear warmup to the peak, the peak, then the shape's way down to the floor at `total`."""
    if step < warmup:
        return PEAK * (step + 1) / warmup
    if step < decay_start:
        return PEAK
    if step >= total:
        return FLOOR
    p = (step - decay_start) / (total - decay_start)
    remaining = {"linear": 1 - p, "cosine": (1 + math.cos(math.pi * p)) / 2, "1-sqrt": 1 - math.sqrt(p)}[shape]
    return FLOOR + remaining * (PEAK - FLOOR)


@pytest.mark.parametrize("shape", DECAY_SHAPES)
@pytest.mark.parametrize(
    "length", [{"decay_fraction": 0.25}, {"decay_steps": 5}, {}], ids=["fraction", "steps", "default"]
)
@pytest.mark.parametrize("warmup", [0, 3])
def test_wsd_learning_rate_at_every_step_follows_its_formula(shape, length, warmup):
    total = 20
    decay = 4 if not length else 5  # the default is a fifth of the steps
    schedule = make_schedule("wsd", PEAK, FLOOR, warmup, total, decay_shape=shape, **length)
    assert schedule.decay_start == total - decay
    for step in range(total + 3):
        assert schedule.lr(step) == pytest.approx(wsd_formula(step, warmup, total - decay, total, shape), rel=1e-12)
    # the decay's halfway point of each shape, and its first step still at the peak
    halfway = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - math.sqrt(0.5)}[shape]
    if decay == 4:
        assert schedule.lr(total - 2) == pytest.approx(FLOOR + halfway * (PEAK - FLOOR))
    assert schedule.lr(total - decay) == PEAK and schedule.lr(total - decay - 1) == PEAK


def test_cosine_and_constant_schedules():
    cosine = make_schedule("cosine", PEAK, FLOOR, 3, 20)
    assert [cosine.lr(s) for s in range(22)] == [cosine_lr(s, PEAK, FLOOR, 3, 20) for s in range(22)]
    constant = make_schedule("constant", PEAK, FLOOR, 3, 20)
    assert [constant.lr(s) for s in range(25)] == [PEAK / 3, 2 * PEAK / 3] + [PEAK] * 23
    assert constant.in_stable_phase(3) and not constant.in_stable_phase(2) and not cosine.in_stable_phase(10)
    wsd = make_schedule("wsd", PEAK, FLOOR, 3, 20, decay_steps=5)  # up to the decay's first step, still at the peak
    assert [s for s in range(22) if wsd.in_stable_phase(s)] == list(range(3, 16))


@pytest.mark.parametrize(
    "args, message",
    [
        (("wsd", 0.2, 10), "--decay_fraction 0.2 and --decay_steps 10 both set the decay's length: pass one"),
        (("cosine", None, 10), "--decay_steps sets the decay of --lr_schedule wsd, this run has --lr_schedule cosine"),
        (("wsd", 1.5, None), "--decay_fraction 1.5 must be in (0, 1]"),
        (("wsd", None, 0), "--decay_steps 0 must be at least 1"),
        (("wsd", None, None, 0, "x.pth"), "--anneal_steps 0 must be at least 1"),
        (("wsd", None, None, 5, False), "--anneal_steps 5 decays a run from one of its checkpoints: pass --resume"),
        (("wsd", 0.2, None, 5, "x.pth"), "--decay_fraction sets the decay of a WSD run, an anneal decays over"),
    ],
)
def test_schedule_flags_that_contradict_each_other_are_refused(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        check_schedule_flags(*args)


def test_a_wsd_decay_that_would_overlap_the_warmup_is_refused():
    with pytest.raises(ValueError, match="--decay_steps 18 decays over 18 of the schedule's 20 steps, which leaves "):
        make_schedule("wsd", PEAK, FLOOR, 3, 20, decay_steps=18)


def test_anneal_start_and_the_note_on_a_changed_schedule():
    stable = {"lr_schedule_resolved": Schedule("constant", PEAK, FLOOR, 2, 100).to_dict()}
    assert anneal_start("a.pth", stable, 10, 5, same_out_dir=False) == 10
    assert anneal_start("a.pth", stable, 10, None, same_out_dir=False) is None
    with pytest.raises(ValueError, match="pass another --out_dir than the one that holds it"):
        anneal_start("a.pth", stable, 10, 5, same_out_dir=True)
    cosine = {"lr_schedule_resolved": Schedule("cosine", PEAK, FLOOR, 2, 100).to_dict()}
    with pytest.raises(ValueError, match=r"a.pth \(step 10, --lr_schedule cosine\) is not in one"):
        anneal_start("a.pth", cosine, 10, 5, same_out_dir=False)
    annealing = {"anneal_steps": 5, "anneal_from": 10}  # a checkpoint of an anneal continues it, in its own out dir
    assert anneal_start("b.pth", annealing, 12, 5, same_out_dir=True) == 10
    with pytest.raises(
        ValueError, match="b.pth is a checkpoint of an anneal of 5 steps from step 10, this run has no "
    ):
        anneal_start("b.pth", annealing, 12, None, same_out_dir=True)

    wsd = make_schedule("wsd", PEAK, FLOOR, 2, 100, decay_steps=20)
    assert schedule_change_note("a.pth", wsd.to_dict(), wsd, 50) is None
    assert schedule_change_note("a.pth", None, wsd, 50) is None  # a checkpoint from before schedules were recorded
    note = schedule_change_note(
        "a.pth", stable["lr_schedule_resolved"], make_schedule("cosine", PEAK, FLOOR, 2, 100), 50
    )
    now = cosine_lr(50, PEAK, FLOOR, 2, 100)
    assert note.startswith(
        f"Note: the learning rate of step 51 is {now:.4g} under this run's schedule (cosine), 0.001 "
    )


def test_anneal_from_a_stable_checkpoint_is_the_run_that_decayed_there(tmp_path, data_dir):
    """A constant run saved at step 3 and annealed from there over 3 steps (into another out dir) is, bit for bit,
    the WSD run of 6 steps that decays over its last 3 without stopping: the same losses, learning rates, weights,
    optimizer moments, data position and step counts. Its learning rates follow WSD's formula, and the checkpoints
    record the schedule. All three train with a z-loss, which the checkpoints record too."""
    flags = ["--save_interval", "3", "--eval_interval", "100", "--decay_shape", "linear", "--z_loss", "1e-4"]
    stable, annealed, through = tmp_path / "stable", tmp_path / "annealed", tmp_path / "through"
    run(stable, data_dir, *flags, "--lr_schedule", "constant", "--max_steps", "3")
    branch = stable / "step-00000003.pth"
    proc = run(annealed, data_dir, *flags, "--resume", str(branch), "--anneal_steps", "3")
    assert "Resumed at step 3" in proc.stdout and "Done: 6 steps" in proc.stdout, proc.stdout[-2000:]
    assert "Note: the learning rate" not in proc.stderr, proc.stderr[-2000:]
    run(through, data_dir, *flags, "--lr_schedule", "wsd", "--decay_steps", "3", "--max_tokens", str(6 * 8 * BLOCK))

    lrs = metrics(through, "learning_rate")
    formula = [wsd_formula(s, 2, 3, 6, "linear") * 3 for s in range(6)]  # COMMON's peak 3e-3 and floor 3e-4
    assert [lrs[s + 1] for s in range(6)] == pytest.approx(formula, rel=1e-12), lrs
    assert metrics(stable, "loss") == {s: metrics(through, "loss")[s] for s in (1, 2, 3)}
    at_branch = [torch.load(d / "step-00000003.pth", weights_only=True) for d in (stable, through)]
    for key in ("step_count", "iter_num", "tokens_seen", "train_dataloader"):
        assert at_branch[0][key] == at_branch[1][key], key
    for key in ("loss", "learning_rate"):
        assert metrics(annealed, key) == {s: metrics(through, key)[s] for s in (4, 5, 6)}, key
    assert checkpoints(annealed) == ["step-00000006.pth"]
    ends = [torch.load(d / "step-00000006.pth", weights_only=True) for d in (annealed, through)]
    for key in ("step_count", "iter_num", "tokens_seen", "train_dataloader"):
        assert ends[0][key] == ends[1][key], key
    for pair in (at_branch, ends):
        moments = [[s["exp_avg_sq"] for s in end["optimizer"]["state"].values()] for end in pair]
        assert all(torch.equal(a, b) for a, b in zip(*moments, strict=True))
    weights = [model_weights(d / "step-00000006.pth") for d in (annealed, through)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[1])
    hparams = ends[0]["hparams"]
    assert (hparams["lr_schedule"], hparams["anneal_steps"], hparams["anneal_from"], hparams["z_loss"]) == (
        "wsd", 3, 3, 1e-4)  # fmt: skip
    assert hparams["lr_schedule_resolved"] == {**ends[1]["hparams"]["lr_schedule_resolved"]}
