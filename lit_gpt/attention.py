"""The attention kernel of the training forward pass, chosen once per run and set on the model from outside.

    sdpa   `torch.nn.functional.scaled_dot_product_attention` with native grouped-query attention: cuDNN's (or
           torch's own) flash attention on CUDA, the math kernel on CPU. The model's default.
    fa4    FlashAttention-4 (`pip install flash-attn-4`, the CuTe DSL kernels; FA3-class on Hopper), native GQA, read
           and written in the model's (B, T, heads, head_size) layout. Wrapped as torch custom ops, so that a
           compiled transformer block stays one graph around it.

`--attention auto` takes fa4 on a GPU of compute capability 9.0 or newer (Hopper, Blackwell) when flash-attn-4
imports and suits the shapes and dtype (bf16/fp16 compute, head size 8..256 in steps of 8); sdpa otherwise. Both
compute the same function (`tests/test_attention.py` on the GPU: outputs and gradients within bf16 rounding).
The KV-cache path of generation always uses sdpa (`lit_gpt/model.py`).
"""

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gpt.config import Config

BACKENDS = ("auto", "sdpa", "fa4")
# an attention function takes q (B, T, n_head, head_size), k and v (B, T, n_query_groups, head_size) and returns the
# causal attention output (B, T, n_head, head_size)
Attention = Callable[[Tensor, Tensor, Tensor, float], Tensor]


def sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal grouped-query attention through `scaled_dot_product_attention`, on (B, T, heads, head_size) tensors.

    SDPA takes (B, heads, T, head_size): it reads the transposed views and writes its output in the layout of q, so
    that the transposed result is (B, T, heads, head_size) in memory and reaches the output projection without a
    copy (nor a second saved copy for backward)."""
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale, enable_gqa=True
    )
    return y.transpose(1, 2)


@torch.library.custom_op("lit_gpt::fa4_forward", mutates_args=(), device_types="cuda")
def _fa4_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse, *_ = _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=True, return_lse=True)
    return out, lse


@_fa4_forward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    B, T, H, _ = q.shape
    return q.new_empty(B, T, H, v.size(-1)), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("lit_gpt::fa4_backward", mutates_args=(), device_types="cuda")
def _fa4_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> Tuple[Tensor, Tensor, Tensor]:
    from flash_attn.cute.interface import _flash_attn_bwd

    dq, dk, dv = _flash_attn_bwd(q, k, v, out, grad_out, lse, scale, True)
    return dq, dk, dv


@_fa4_backward.register_fake
def _(grad_out, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fa4_setup_context(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _fa4_grad(ctx, grad_out: Tensor, _grad_lse: Optional[Tensor]):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _fa4_backward(grad_out.contiguous(), q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_fa4_forward.register_autograd(_fa4_grad, setup_context=_fa4_setup_context)


def fa4(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal grouped-query attention through flash-attn-4, on (B, T, heads, head_size) tensors."""
    return _fa4_forward(q, k.contiguous(), v.contiguous(), scale)[0]


KERNELS = {"sdpa": sdpa, "fa4": fa4}


def fa4_unsuitable(config: Config, device: torch.device, precision: str) -> Optional[str]:
    """Why flash-attn-4 cannot run this model's attention here, or None when it can."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "flash-attn-4 needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        name = torch.cuda.get_device_name(device)
        return f"flash-attn-4 needs a GPU of compute capability 9.0 or newer (Hopper), this {name} is {major}.{minor}"
    if "16" not in precision:
        return f"flash-attn-4 computes in bf16 or fp16, and --precision {precision} computes in float32"
    if not (8 <= config.head_size <= 256 and config.head_size % 8 == 0):
        return f"flash-attn-4 needs a head size of 8..256 in steps of 8, {config.name} has {config.head_size}"
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as e:  # ImportError, or the CUTLASS DSL failing to load its libraries
        return f"flash-attn-4 does not import ({type(e).__name__}: {e}); `pip install -e '.[hopper]'` installs it"
    return None


def choose_attention(backend: str, config: Config, device: torch.device, precision: str) -> Tuple[str, str]:
    """The kernel for `--attention backend` (auto, sdpa, fa4) and a line saying why; an fa4 that cannot run is
    refused here, before any work."""
    if backend not in BACKENDS:
        raise ValueError(f"--attention {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "sdpa":
        return "sdpa", "attention: sdpa (--attention sdpa)"
    reason = fa4_unsuitable(config, device, precision)
    if backend == "fa4":
        if reason:
            raise ValueError(f"--attention fa4: {reason}. Use --attention sdpa (or auto)")
        return "fa4", "attention: fa4 (flash-attn-4, --attention fa4)"
    if reason:
        return "sdpa", f"attention: sdpa (--attention auto: {reason})"
    return "fa4", "attention: fa4 (flash-attn-4, --attention auto on this GPU)"


def apply_attention(model: nn.Module, kernel: str) -> None:
    """Set every attention layer of `model` to `kernel` (a name of `KERNELS`), in place; call before compiling."""
    from lit_gpt.model import CausalSelfAttention

    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            module.attention = KERNELS[kernel]
