"""Learning-rate schedules: linear warmup, then cosine decay to a floor (TinyLlama's recipe), warmup-stable-decay
(WSD: the peak held until a final decay, which can branch from any checkpoint of the stable phase), or constant."""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")
# the share of the steps WSD decays over when neither --decay_fraction nor --decay_steps is given (Hägele et al. 2024
# find 20% of 1-sqrt on par with a cosine over the whole run)
DEFAULT_DECAY_FRACTION = 0.2


def cosine_lr(step: int, learning_rate: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Rises linearly from `learning_rate / warmup_steps` to `learning_rate` over the first `warmup_steps` steps, then
    follows half a cosine down to `min_lr` at `max_steps`, and stays at `min_lr` after it.
    """
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def decay_factor(shape: str, progress: float) -> float:
    """How much of the way from `min_lr` to the peak remains at `progress` (0 to 1) through a decay."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"Unknown decay shape {shape!r}; pick one of {', '.join(DECAY_SHAPES)}")


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every optimizer step of a run; its fields are what a checkpoint records
    (`hparams["lr_schedule_resolved"]`), so that a resumed run can tell whether its own schedule continues it.

    `cosine`: `cosine_lr` over `max_steps`. `wsd`: the warmup of `cosine_lr`, then `learning_rate` until
    `decay_start`, then a decay of `decay_shape` that would reach `min_lr` at `max_steps` (step `decay_start + i` of
    a decay of D steps is at progress i / D, as the cosine's steps are), and `min_lr` after. `constant`: the warmup,
    then `learning_rate`. An anneal (`--anneal_steps`) is a `wsd` whose decay starts at the step it branches from.
    """

    kind: str
    learning_rate: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    decay_start: Optional[int] = None  # wsd only
    decay_shape: str = "linear"

    def lr(self, step: int) -> float:
        if self.kind == "cosine":
            return cosine_lr(step, self.learning_rate, self.min_lr, self.warmup_steps, self.max_steps)
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.kind == "constant" or step < self.decay_start:
            return self.learning_rate
        if step >= self.max_steps:
            return self.min_lr
        progress = (step - self.decay_start) / (self.max_steps - self.decay_start)
        return self.min_lr + decay_factor(self.decay_shape, progress) * (self.learning_rate - self.min_lr)

    def in_stable_phase(self, step: int) -> bool:
        """Whether `step` trains at the peak after the warmup, where an anneal may branch off (up to WSD's first step
        of decay, which is still at the peak)."""
        if step < self.warmup_steps:
            return False
        return self.kind == "constant" or (self.kind == "wsd" and step <= self.decay_start)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def decay_steps_of(schedule_steps: int, decay_fraction: Optional[float], decay_steps: Optional[int]) -> int:
    """WSD's decay length in steps: `decay_steps`, or `decay_fraction` (by default `DEFAULT_DECAY_FRACTION`) of the
    schedule's steps, rounded, at least 1."""
    if decay_steps is not None:
        return decay_steps
    fraction = DEFAULT_DECAY_FRACTION if decay_fraction is None else decay_fraction
    return max(1, round(fraction * schedule_steps))


def make_schedule(
    kind: str,
    learning_rate: float,
    min_lr: float,
    warmup_steps: int,
    schedule_steps: int,
    decay_fraction: Optional[float] = None,
    decay_steps: Optional[int] = None,
    decay_shape: str = "linear",
) -> Schedule:
    """The schedule of the command-line flags over `schedule_steps` steps; a WSD decay that would start inside the
    warmup is refused."""
    if kind != "wsd":
        return Schedule(kind, learning_rate, min_lr, warmup_steps, schedule_steps)
    length = decay_steps_of(schedule_steps, decay_fraction, decay_steps)
    if schedule_steps - length < warmup_steps:
        flag = f"--decay_steps {decay_steps}" if decay_steps is not None else f"--decay_fraction {decay_fraction}"
        raise ValueError(
            f"{flag} decays over {length} of the schedule's {schedule_steps} steps, which leaves less than the "
            f"--warmup_steps {warmup_steps} before it: shorten the decay or the warmup"
        )
    return Schedule(kind, learning_rate, min_lr, warmup_steps, schedule_steps, schedule_steps - length, decay_shape)


def check_schedule_flags(
    lr_schedule: str,
    decay_fraction: Optional[float],
    decay_steps: Optional[int],
    anneal_steps: Optional[int] = None,
    resume: Any = False,
) -> None:
    """Refuse WSD's and the anneal's flags where they contradict each other or would be ignored."""
    if decay_fraction is not None and decay_steps is not None:
        raise ValueError(
            f"--decay_fraction {decay_fraction} and --decay_steps {decay_steps} both set the decay's length: pass one"
        )
    given = "--decay_fraction" if decay_fraction is not None else "--decay_steps" if decay_steps is not None else None
    if given and anneal_steps is not None:
        raise ValueError(f"{given} sets the decay of a WSD run, an anneal decays over --anneal_steps {anneal_steps}: "
                         f"leave {given} out")  # fmt: skip
    if given and lr_schedule != "wsd":
        raise ValueError(f"{given} sets the decay of --lr_schedule wsd, this run has --lr_schedule {lr_schedule}: "
                         "pass --lr_schedule wsd, or leave it out")  # fmt: skip
    if decay_fraction is not None and not 0 < decay_fraction <= 1:
        raise ValueError(f"--decay_fraction {decay_fraction} must be in (0, 1]: the share of the steps that decay")
    if decay_steps is not None and decay_steps < 1:
        raise ValueError(f"--decay_steps {decay_steps} must be at least 1 (the optimizer steps of the final decay)")
    if anneal_steps is None:
        return
    if anneal_steps < 1:
        raise ValueError(f"--anneal_steps {anneal_steps} must be at least 1 (the optimizer steps of the decay)")
    if resume is False:
        raise ValueError(
            f"--anneal_steps {anneal_steps} decays a run from one of its checkpoints: pass --resume "
            "out/<run>/step-XXXXXXXX.pth (a step of the stable phase) and a new --out_dir for the annealed branch"
        )


def warmup_warning(warmup_steps: int, run_steps: int, learning_rate: float) -> Optional[str]:
    """A warning when the warmup does not end within the `run_steps` this run trains (the learning rate would never
    reach `learning_rate`: `--warmup_steps 2000` on a 40-step run peaks at 1/50 of it), else None."""
    if warmup_steps <= run_steps:
        return None
    peak = learning_rate * run_steps / warmup_steps
    return (
        f"Warning: --warmup_steps {warmup_steps} is longer than the {run_steps} steps this run trains: the learning "
        f"rate peaks at {peak:.2g} instead of --learning_rate {learning_rate:g}. For a short run pass a warmup of a "
        f"few percent of its steps, such as --warmup_steps {max(1, run_steps // 10)}"
    )


def anneal_start(
    path: Any, saved: Dict[str, Any], step: int, anneal_steps: Optional[int], same_out_dir: bool
) -> Optional[int]:
    """The step at which this run's anneal (`--anneal_steps`) decays from, given the hparams `saved` in the checkpoint
    `path` of step `step` that it resumes; None when it does not anneal.

    A checkpoint of an anneal continues that anneal: from its recorded start, with the same length. Otherwise the
    anneal branches off at `step`, which must be in the stable phase of the checkpoint's schedule, into another out
    dir than the checkpoint's (whose `--resume auto` would otherwise mix the two runs' checkpoints)."""
    then, start = saved.get("anneal_steps"), saved.get("anneal_from")
    if then is not None and start is not None:
        if anneal_steps != then:
            now = f"--anneal_steps {anneal_steps}" if anneal_steps is not None else "no --anneal_steps"
            raise ValueError(
                f"{path} is a checkpoint of an anneal of {then} steps from step {start}, this run has {now}: resume "
                f"with --anneal_steps {then}, or branch another anneal from the stable run's checkpoint of step {start}"
            )
        return start
    if anneal_steps is None:
        return None
    resolved = saved.get("lr_schedule_resolved")
    if resolved is None or not Schedule(**resolved).in_stable_phase(step):
        kind = resolved["kind"] if resolved else saved.get("lr_schedule", "cosine")
        raise ValueError(
            f"--anneal_steps branches off the stable phase of a --lr_schedule wsd or constant run, and {path} (step "
            f"{step}, --lr_schedule {kind}) is not in one: pass a checkpoint after the warmup and before any decay"
        )
    if same_out_dir:
        raise ValueError(
            f"--anneal_steps {anneal_steps} branches a new run off {path}: pass another --out_dir than the one that "
            "holds it, so that the stable run and the annealed branch keep their own checkpoints"
        )
    return step


def schedule_change_note(path: Any, saved: Optional[Dict[str, Any]], schedule: Schedule, step: int) -> Optional[str]:
    """A note when a resumed run's schedule gives another learning rate at its first step than the schedule recorded
    in the checkpoint (other flags of the schedule, or of the run's length): the learning rate jumps there."""
    if saved is None:  # a checkpoint from before the schedule was recorded
        return None
    then, now = Schedule(**saved).lr(step), schedule.lr(step)
    if math.isclose(then, now, rel_tol=1e-9, abs_tol=0.0):
        return None
    return (
        f"Note: the learning rate of step {step + 1} is {now:.4g} under this run's schedule ({schedule.kind}), "
        f"{then:.4g} under that of {path} ({saved['kind']}): it jumps there. Resume with the checkpoint's schedule "
        "flags to continue its run, or --anneal_steps to decay from a stable phase"
    )
