"""AdamW, its parameter groups and the checks of the optimizer's and the schedule's flags, shared by pretraining and
finetuning."""

from typing import Any, Dict, List, Tuple

import torch
from torch import nn


def check_optimizer_flags(
    learning_rate: float, min_lr: float, warmup_steps: int, weight_decay: float, betas: tuple, grad_clip: float
) -> None:
    """Refuse values of the schedule and AdamW that are accepted silently or fail only inside the optimizer."""
    if not learning_rate >= 0:
        raise ValueError(f"--learning_rate {learning_rate} must not be negative (the peak learning rate)")
    if not 0 <= min_lr <= learning_rate:
        raise ValueError(
            f"--min_lr {min_lr} must be between 0 and --learning_rate {learning_rate}: the cosine decays from the peak "
            "down to it"
        )
    for flag, value, meaning in [
        ("warmup_steps", warmup_steps, "optimizer steps of linear warmup; 0 starts at the peak"),
        ("weight_decay", weight_decay, "AdamW's decoupled weight decay; 0 disables it"),
        ("grad_clip", grad_clip, "the largest gradient norm; 0 disables clipping"),
    ]:
        if value < 0:
            raise ValueError(f"--{flag} {value} must not be negative ({meaning})")
    for flag, beta in zip(("beta1", "beta2"), betas):
        if not 0 <= beta < 1:
            raise ValueError(f"--{flag} {beta} must be in [0, 1) (AdamW's moment decay; TinyLlama's are 0.9 and 0.95)")


def optimizer_param_groups(model: nn.Module, weight_decay: float, decay_norms_and_biases: bool) -> List[Dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices and embeddings, and on 1-D parameters (norm weights,
    biases) only if `decay_norms_and_biases`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norms_and_biases:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: Tuple[float, float],
    decay_norms_and_biases: bool,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters (`optimizer_param_groups`), fused on CUDA and CPU."""
    param_groups = optimizer_param_groups(model, weight_decay, decay_norms_and_biases)
    return torch.optim.AdamW(param_groups, lr=learning_rate, betas=betas, fused=device.type in ("cuda", "cpu"))
