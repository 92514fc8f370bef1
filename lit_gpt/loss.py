"""Next-token cross-entropy, with a fused output projection that never materializes the full logits.

For TinyLlama at micro-batch 8 and sequence 2048, fp32 logits are 16384 x 32000 x 4 B = 2.1 GB, plus as much again
for their gradient. `fused_linear_cross_entropy` computes the projection, the loss and both gradients chunk by chunk
in the forward pass, so that only one chunk's logits exist at a time; the backward pass only scales the saved
gradients.
"""

import torch
import torch.nn.functional as F


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, z_loss: float = 0.0
) -> torch.Tensor:
    """The plain reference: mean cross-entropy over the non-ignored targets, computed in float32, plus `z_loss` ×
    the mean log²Z of those rows."""
    logits, targets = logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1).long()
    if not z_loss:
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)
    # one pass over the logits: log Z = logit - log p for any column, here the first
    log_probs = logits.log_softmax(dim=-1)
    lse = logits[:, 0] - log_probs[:, 0]
    valid = targets != ignore_index
    nll = -log_probs.gather(1, torch.where(valid, targets, 0).unsqueeze(1)).squeeze(1)
    return ((nll + z_loss * lse.square()) * valid).sum() / valid.sum().clamp(min=1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _chunk_loss_and_grad(logits, targets, row_scale, acc: torch.dtype, need_grad: bool, z_loss: float = 0.0):
    """The summed loss of one chunk's rows, and d loss / d logits = (softmax - onehot) * row_scale in the logits'
    dtype; row_scale is 1 / n_valid for counted rows and 0 for ignored ones. Written as elementwise ops and row
    reductions so that `torch.compile` makes one pass or two over the logits instead of seven.

    With `z_loss`, each counted row adds z_loss * lse², whose gradient z_loss * 2 * lse * softmax folds into the
    softmax term: (softmax * (1 + 2 * z_loss * lse) - onehot) * row_scale."""
    in_dtype = logits.dtype
    logits = logits.to(acc)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    target_logit = logits.gather(1, targets.long().unsqueeze(1))
    counted = row_scale != 0
    if z_loss:
        loss = ((lse - target_logit + z_loss * lse.square()).squeeze(1) * counted).sum()
    else:
        loss = ((lse - target_logit).squeeze(1) * counted).sum()
    if not need_grad:
        return loss, None
    onehot = torch.arange(logits.size(1), device=logits.device) == targets.unsqueeze(1)
    probs = torch.exp(logits - lse)
    if z_loss:
        probs = probs * (1.0 + 2.0 * z_loss * lse)
    grad = (probs - onehot.to(acc)) * row_scale.unsqueeze(1)
    return loss, grad.to(in_dtype)


_compiled = None


def _chunk_loss_and_grad_compiled(*args):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_chunk_loss_and_grad, dynamic=False)
    return _compiled(*args)


def accumulate_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b, with `out` in float32 and a, b possibly in bf16: on CUDA the low-precision product accumulates
    straight into `out` (no bf16-rounded temporary, no separate add pass)."""
    if a.dtype == b.dtype == out.dtype:
        out.addmm_(a, b)
    elif out.is_cuda and _mixed_dtype_addmm_works(a.dtype, out.dtype):
        torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
    else:  # CPU, and torch builds without a mixed-dtype addmm (`out_dtype` came with torch 2.8)
        out += (a @ b).to(out.dtype)


_MIXED_ADDMM = {}


def _mixed_dtype_addmm_works(in_dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Whether this torch build has a working `addmm(..., out_dtype=)` for these dtypes (probed once); without it
    the caller computes the same sum in two steps."""
    if (in_dtype, out_dtype) not in _MIXED_ADDMM:
        try:
            x = torch.ones(8, 8, device="cuda", dtype=in_dtype)
            acc = torch.ones(8, 8, device="cuda", dtype=out_dtype)
            torch.addmm(acc, x, x, out_dtype=out_dtype, out=acc)
            _MIXED_ADDMM[in_dtype, out_dtype] = bool((acc == 9).all())
        except (TypeError, RuntimeError):
            _MIXED_ADDMM[in_dtype, out_dtype] = False
    return _MIXED_ADDMM[in_dtype, out_dtype]


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, chunk_size, ignore_index, grad_enabled, z_loss):
        # x: (N, d), weight: (V, d), targets: (N,)
        dtype = _compute_dtype(x)
        w = weight.to(dtype)
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums in float32 at least
        valid = targets != ignore_index
        n_valid = valid.sum().clamp(min=1).to(acc)
        loss = torch.zeros((), device=x.device, dtype=acc)
        # `needs_input_grad` is also set under `torch.no_grad()` (validation): the caller says whether grad is on
        grad_x = torch.empty_like(x) if grad_enabled and ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=acc) if grad_enabled and ctx.needs_input_grad[1] else None
        need_grad = grad_x is not None or grad_w is not None
        chunk_fn = _chunk_loss_and_grad_compiled if x.is_cuda else _chunk_loss_and_grad
        for start in range(0, x.size(0), chunk_size):
            xc = x[start : start + chunk_size].to(dtype)
            vc = valid[start : start + chunk_size]
            tc = torch.where(vc, targets[start : start + chunk_size], 0)
            logits = xc @ w.t()  # (chunk, V): the only logits alive at any time
            loss_c, grad = chunk_fn(logits, tc, vc.to(acc) / n_valid, acc, need_grad, z_loss)
            loss += loss_c
            if grad_x is not None:
                grad_x[start : start + chunk_size] = grad @ w
            if grad_w is not None:
                accumulate_product(grad_w, grad.t(), xc)
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_x, grad_w)
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_output):
        grad_x, grad_w = ctx.saved_tensors
        gx = grad_x * grad_output.to(grad_x.dtype) if grad_x is not None else None
        gw = (grad_w * grad_output).to(ctx.weight_dtype) if grad_w is not None else None
        return gx, gw, None, None, None, None, None


def fused_linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of `x @ weight.T` against `targets` (plus `z_loss` × the mean log²Z), without
    materializing all logits.

    x: (..., d), weight: (V, d), targets: (...). Equal to `cross_entropy(F.linear(x, weight), targets, z_loss=...)`
    up to floating-point rounding (tested against it).
    """
    x2 = x.reshape(-1, x.size(-1))
    grad_enabled = torch.is_grad_enabled()
    return _FusedLinearCrossEntropy.apply(
        x2, weight, targets.reshape(-1), chunk_size, ignore_index, grad_enabled, z_loss
    )
