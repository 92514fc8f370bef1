"""Learning-rate schedule: linear warmup, then cosine decay to a floor (TinyLlama's recipe)."""

import math
from typing import Optional


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
