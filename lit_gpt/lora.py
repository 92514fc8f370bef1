"""LoRA (https://arxiv.org/abs/2106.09685), applied to a plain `GPT` from outside, as `lit_gpt/training/float8.py` swaps
layers.

`apply_lora(model, config)` replaces the chosen linear layers with `LoRALinear`, which keeps the layer's `weight`
and `bias` under their names (a base `lit_model.pth` loads into it unchanged) and adds a rank-`r` update
`alpha / r * B @ A` that starts at zero (B is zero). Only `lora_A` and `lora_B` train; `lora_state_dict(model)` holds
just them and the `LoRAConfig`, which is what a LoRA checkpoint saves; `merge_lora(model)` folds them into the
weights and puts plain `nn.Linear`s back, so that the model's state dict is an ordinary GPT's.

The query, key and value projections of a layer are one fused `attn` linear whose output rows are laid out per query
group, `[q x q_per_kv, k, v] x n_query_groups` (`lit_gpt.model.CausalSelfAttention`): each of q, k and v chosen gets
its own rank-`r` pair, which updates only that projection's rows.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt.config import Config
from lit_gpt.weights import strip_wrapper_prefixes

# the config's fields that choose layers, and what they mean (the scripts' `--lora_*` help)
TARGETS = {
    "query": "the query rows of the fused q/k/v projection `attn.attn`",
    "key": "the key rows of `attn.attn`",
    "value": "the value rows of `attn.attn`",
    "projection": "the attention output projection `attn.proj`",
    "mlp": "the MLP projections `mlp.fc_1`, `mlp.fc_2`, `mlp.proj`",
    "head": "the output head `lm_head`",
}


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    query: bool = True
    key: bool = False
    value: bool = True
    projection: bool = False
    mlp: bool = False
    head: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"--lora_r {self.r} must be at least 1 (the rank of each adapter)")
        if not self.alpha > 0:
            raise ValueError(
                f"--lora_alpha {self.alpha} must be positive (the adapter's output is scaled by alpha / r: at 0 it "
                "would train and change nothing)"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--lora_dropout {self.dropout} must be in [0, 1)")
        if not any(getattr(self, t) for t in TARGETS):
            raise ValueError(
                "No layer is chosen for LoRA: set at least one of "
                + ", ".join(f"--lora_{t}" for t in TARGETS)
                + " to true"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LoRALinear(nn.Module):
    """`base(x)` plus `scaling * B_i @ A_i @ dropout(x)` on the output rows `rows[i]` of each part i.

    `rows` is None for one part over all output rows; for the fused q/k/v layer it lists each chosen projection's
    rows. `lora_A` (parts * r, in_features) stacks the parts' A matrices, `lora_B` (sum of rows, r) their B matrices
    in the same order."""

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, dropout: float, rows: Optional[List[torch.Tensor]] = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.r, self.scaling = r, alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        parts = rows or [torch.arange(self.out_features)]
        device = base.weight.device
        self.sizes = [len(p) for p in parts]
        self.whole = rows is None
        # which output row each row of lora_B writes to (not saved: it follows from the config)
        self.register_buffer("rows", torch.cat(parts).to(device), persistent=False)
        self.lora_A = nn.Parameter(torch.empty(len(parts) * r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.empty(sum(self.sizes), r, device=device))
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        # as the reference implementation: A like nn.Linear's default, B zero so that training starts at the base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        after_a = F.linear(self.dropout(x), self.lora_A)  # (..., parts * r)
        if self.whole:
            return y + self.scaling * F.linear(after_a, self.lora_B)
        # each part's r columns against its own rows of B: (..., rows of part i)
        deltas = [F.linear(a, b) for a, b in zip(after_a.split(self.r, dim=-1), self.lora_B.split(self.sizes, dim=0))]
        return y.index_add(-1, self.rows, torch.cat(deltas, dim=-1), alpha=self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """The update to `weight`, (out_features, in_features), in float32."""
        a, b = self.lora_A.float(), self.lora_B.float()
        delta = torch.zeros(self.out_features, self.in_features, device=a.device)
        parts = zip(a.split(self.r, dim=0), b.split(self.sizes, dim=0))
        return delta.index_add(0, self.rows, torch.cat([b_i @ a_i for a_i, b_i in parts]), alpha=self.scaling)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` holding `weight + delta_weight()` (in the weight's dtype) and the same bias."""
        with torch.device("meta"):
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        weight = (self.weight.float() + self.delta_weight()).to(self.weight.dtype)
        linear.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, parts={len(self.sizes)}"


def qkv_rows(config: Config, query: bool, key: bool, value: bool) -> List[torch.Tensor]:
    """The output rows of the fused `attn.attn` weight that belong to the chosen projections, one tensor each, in the
    order q, k, v. Rows are laid out per query group: q_per_kv query heads, one key head, one value head."""
    q_per_kv = config.n_head // config.n_query_groups
    head = torch.arange(config.head_size)
    group_rows = (q_per_kv + 2) * config.head_size
    starts = {
        "query": [g * group_rows + h * config.head_size for g in range(config.n_query_groups) for h in range(q_per_kv)],
        "key": [g * group_rows + q_per_kv * config.head_size for g in range(config.n_query_groups)],
        "value": [g * group_rows + (q_per_kv + 1) * config.head_size for g in range(config.n_query_groups)],
    }
    chosen = [name for name, on in (("query", query), ("key", key), ("value", value)) if on]
    return [torch.cat([s + head for s in starts[name]]) for name in chosen]


def apply_lora(model: nn.Module, lora: LoRAConfig) -> int:
    """Replace the chosen linear layers of `model` (a `GPT`) with `LoRALinear`, in place, before sharding and
    compilation; freeze every other parameter. Returns the number of trainable (adapter) parameters."""
    config: Config = model.config

    def wrap(linear: nn.Linear, rows: Optional[List[torch.Tensor]] = None) -> LoRALinear:
        return LoRALinear(linear, lora.r, lora.alpha, lora.dropout, rows)

    for block in model.transformer.h:
        attn = block.attn
        if lora.query or lora.key or lora.value:
            parts = qkv_rows(config, lora.query, lora.key, lora.value)
            attn.attn = wrap(attn.attn, parts)
        if lora.projection:
            attn.proj = wrap(attn.proj)
        if lora.mlp:
            for name in ("fc_1", "fc_2", "fc", "proj"):
                if isinstance(getattr(block.mlp, name, None), nn.Linear):
                    setattr(block.mlp, name, wrap(getattr(block.mlp, name)))
    if lora.head:
        model.lm_head = wrap(model.lm_head)
        # the fused loss reads `lm_head.weight` directly, which would leave the head's adapter out
        model.fused_loss = False
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def tied_head_refusal(name: str, what: str) -> str:
    """The line that refuses an adapter on the output head of a model whose head is its token embedding: merged, the
    head's update would have to go into the one weight that the embedding reads too."""
    return (
        f"{what}: the output head of {name} is its token embedding (tie_embeddings: one weight), which an adapter of "
        "the head alone cannot be merged into; train with --lora_head false"
    )


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter tensors of `model` by their state-dict names (`transformer.h.0.attn.attn.lora_A`, ...), on the CPU:
    nothing of the base model."""
    return {
        strip_wrapper_prefixes(k): v.detach().cpu()
        for k, v in model.state_dict().items()
        if k.split(".")[-1].startswith("lora_")
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every `LoRALinear` of `model` into a plain `nn.Linear`, in place; the model is an ordinary `GPT` after
    (its state dict has exactly a GPT's names). Returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    if hasattr(model, "fused_loss"):
        model.fused_loss = None
    return model
