"""Training FLOPs and model FLOPs utilization (MFU).

Convention (PaLM, appendix B; Chinchilla): a training step costs, per token, `6 N + 12 L d T` FLOPs, where `N` is the
number of parameters without the input embedding (the output head counts), `L` the number of layers, `d` the
attention width (`n_head * head_size`) and `T` the sequence length. `6 N` is the forward (2) and backward (4)
multiply-adds of the weights; `12 L d T` the attention scores and the weighted sum of the values, not halved for
the causal mask. Activation recomputation is not counted (it is not useful work). A head tied to the embedding
(`tie_embeddings`) is one parameter but still a matrix product per token: it counts in `N` as an untied one does.
"""

from typing import Optional

import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT

# dense bf16 tensor-core peaks (no sparsity), by a substring of `torch.cuda.get_device_name()`
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "L40S": 362e12,
}


def num_parameters(config: Config, include_embedding: bool = False) -> int:
    """The parameter count of `GPT(config)`, computed from the config alone."""
    with torch.device("meta"):
        model = GPT(config)
    total = sum(p.numel() for p in model.parameters())
    return total if include_embedding else total - model.transformer.wte.weight.numel()


def flops_per_token(config: Config, seq_len: Optional[int] = None) -> float:
    """Training FLOPs per token: `6 N + 12 L d T` (see the module docstring)."""
    seq_len = seq_len or config.block_size
    attention_width = config.n_head * config.head_size
    head = config.padded_vocab_size * config.n_embd if config.tie_embeddings else 0  # not in num_parameters
    return 6 * (num_parameters(config) + head) + 12 * config.n_layer * attention_width * seq_len


def peak_flops(device: torch.device) -> Optional[float]:
    """The bf16 peak FLOP/s of one `device`, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    # the longest matching key: "NVIDIA L40S" contains "L4" too
    keys = sorted((key for key in PEAK_BF16_FLOPS if key in name), key=len)
    return PEAK_BF16_FLOPS[keys[-1]] if keys else None


def mfu(tokens_per_sec_per_device: float, flops_per_tok: float, device: torch.device) -> Optional[float]:
    """Model FLOPs utilization in [0, 1] of one device, or None without a known peak."""
    peak = peak_flops(device)
    return None if peak is None else tokens_per_sec_per_device * flops_per_tok / peak
