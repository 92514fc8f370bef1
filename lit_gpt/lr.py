"""Learning-rate schedule: linear warmup, then cosine decay to a floor (TinyLlama's recipe)."""

import math


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
