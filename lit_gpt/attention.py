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

With a document mask (`GPT.forward(..., eos_id=)`, `lit_gpt/documents.py`) each kernel restricts attention to the
query's own document: sdpa through `flex_attention` with a block mask on CUDA and through an explicit boolean mask
elsewhere (the CPU reference the tests compare the others with); fa4 through flash-attn-4's variable-length kernels,
the documents of the whole batch laid end to end with their cumulative lengths. Each kernel's `prepare` builds what
it reads from the batch's `Documents` once per forward pass, outside the compiled blocks.
"""

from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from lit_gpt.config import Config
from lit_gpt.documents import Documents

BACKENDS = ("auto", "sdpa", "fa4")
# an attention function takes q (B, T, n_head, head_size), k and v (B, T, n_query_groups, head_size), the scale,
# and what its `prepare` made of the batch's documents (None: no document mask), and returns the causal attention
# output (B, T, n_head, head_size)
Attention = Callable[[Tensor, Tensor, Tensor, float, Any], Tensor]


def sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float, documents: Any = None) -> Tensor:
    """Causal grouped-query attention through `scaled_dot_product_attention`, on (B, T, heads, head_size) tensors.

    SDPA takes (B, heads, T, head_size): it reads the transposed views and writes its output in the layout of q, so
    that the transposed result is (B, T, heads, head_size) in memory and reaches the output projection without a
    copy (nor a second saved copy for backward). With `documents` (`prepare_sdpa`): a (B, 1, T, T) boolean mask, or
    a flex-attention `BlockMask`."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if documents is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    elif isinstance(documents, Tensor):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=documents, scale=scale, enable_gqa=True)
    else:
        y = flex_attention(q, k, v, block_mask=documents, scale=scale, enable_gqa=True)
    return y.transpose(1, 2)


def prepare_sdpa(documents: Documents) -> Any:
    """What `sdpa` reads for a document mask: a flex-attention block mask on CUDA (only the blocks of the (T, T)
    score matrix that hold allowed pairs are computed), the explicit (B, 1, T, T) mask elsewhere."""
    if not documents.ids.is_cuda:
        return documents.mask()
    ids = documents.ids

    def same_document(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (ids[b, q_idx] == ids[b, kv_idx])

    B, T = ids.shape
    return create_block_mask(same_document, B, None, T, T, device=ids.device)


sdpa.prepare = prepare_sdpa


@torch.library.custom_op("lit_gpt::fa4_forward", mutates_args=(), device_types="cuda")
def _fa4_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    from flash_attn.cute.interface import _flash_attn_fwd  # lazy: optional (the hopper extra)

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
    from flash_attn.cute.interface import _flash_attn_bwd  # lazy: optional (the hopper extra)

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


@torch.library.custom_op("lit_gpt::fa4_varlen_forward", mutates_args=(), device_types="cuda")
def _fa4_varlen_forward(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float
) -> Tuple[Tensor, Tensor]:
    from flash_attn.cute.interface import _flash_attn_fwd  # lazy: optional (the hopper extra)

    out, lse, *_ = _flash_attn_fwd(
        q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
        softmax_scale=scale, causal=True, return_lse=True,
    )  # fmt: skip
    return out, lse


@_fa4_varlen_forward.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    total, H, _ = q.shape
    return q.new_empty(total, H, v.size(-1)), q.new_empty((H, total), dtype=torch.float32)


@torch.library.custom_op("lit_gpt::fa4_varlen_backward", mutates_args=(), device_types="cuda")
def _fa4_varlen_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens: Tensor, max_seqlen: int,
    scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    from flash_attn.cute.interface import _flash_attn_bwd  # lazy: optional (the hopper extra)

    dq, dk, dv = _flash_attn_bwd(
        q, k, v, out, grad_out, lse, scale, True, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
    )  # fmt: skip
    return dq, dk, dv


@_fa4_varlen_backward.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fa4_varlen_setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _fa4_varlen_grad(ctx, grad_out: Tensor, _grad_lse: Optional[Tensor]):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _fa4_varlen_backward(grad_out.contiguous(), q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None


_fa4_varlen_forward.register_autograd(_fa4_varlen_grad, setup_context=_fa4_varlen_setup_context)


def fa4(q: Tensor, k: Tensor, v: Tensor, scale: float, documents: Any = None) -> Tensor:
    """Causal grouped-query attention through flash-attn-4, on (B, T, heads, head_size) tensors. With `documents`
    (`prepare_fa4`, the cumulative lengths of the batch's documents), the variable-length kernels attend within
    each document of the B * T tokens laid end to end."""
    if documents is None:
        return _fa4_forward(q, k.contiguous(), v.contiguous(), scale)[0]
    B, T, H, D = q.shape
    flat = [t.reshape(B * T, t.size(2), t.size(3)) for t in (q, k, v)]
    y = _fa4_varlen_forward(*flat, documents, T, scale)[0]
    return y.view(B, T, H, v.size(-1))


def prepare_fa4(documents: Documents) -> Tensor:
    """The cumulative document lengths (`Documents.cu_seqlens`) that `fa4` reads for a document mask; no document
    is longer than a row, T."""
    return documents.cu_seqlens()


fa4.prepare = prepare_fa4


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
        import flash_attn.cute  # noqa: F401 (lazy: optional, the hopper extra)
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
