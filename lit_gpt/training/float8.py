"""Float8 training through torchao, applied to a plain `GPT` from outside (`lit_gpt.training.parallel.parallelize`).

Every linear layer of the transformer blocks (q/k/v, attention output, the three MLP projections) computes its
three matrix products in float8 with dynamic scales; the output head, the embeddings and the norms stay in bf16.
Master weights, gradients and optimizer states are unchanged (float32 under `bf16-mixed`).

    tensorwise  one scale per tensor (cuBLAS's float8 kernels). Under FSDP2 the weights are all-gathered in float8,
                half the bytes of bf16, with their scales computed once per optimizer step for all layers
                (`precompute_scales_after_step`).
    rowwise     one scale per row of each operand (more accurate, slower kernels); weights all-gathered in bf16.
    tokenwise   this project's own `TokenwiseFloat8Linear` (no torchao): one power-of-2 scale per token of each
                activation and gradient, so that the scale is found in the same pass as the RMSNorm, SwiGLU or
                gradient that produces the tensor (a per-row reduction that the compiled block fuses with its
                producer), not in a pass of its own over the whole tensor; one scale per tensor for the weights and
                for both operands of the weight-gradient product. Every product runs in cuBLAS's tensorwise kernels:
                a per-token scale of the left operand is applied to the product's rows afterwards, fused with
                whatever reads them. Weights all-gathered in bf16.

A float8 run saves ordinary weights (`plain_weights_in_state_dict`): resume, conversion and export read them as
any other checkpoint, and a run may resume with or without `--fp8`. Float8 matrix units exist from compute
capability 8.9 (Ada, Hopper, Blackwell); anywhere else `check_float8` refuses the flag before any work.
"""

import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.distributed.tensor import DTensor

RECIPES = ("tensorwise", "rowwise", "tokenwise")
E4M3_MAX = 448.0  # the largest float8_e4m3fn value


def check_float8(recipe: Optional[str], device: torch.device) -> None:
    """Refuse `--fp8 recipe` where it cannot run: an unknown recipe, no GPU, a GPU before sm89, no torchao."""
    if recipe is None:
        return
    if recipe not in RECIPES:
        raise ValueError(f"--fp8 {recipe!r} is not one of {', '.join(RECIPES)}")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(
            f"--fp8 {recipe}: float8 training needs a CUDA GPU with float8 matrix units (compute capability 8.9 or "
            "newer: Ada, Hopper, Blackwell) and this run is on the CPU. Leave --fp8 out"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(
            f"--fp8 {recipe}: this {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
            "float8 matrix units; they need compute capability 8.9 or newer (Ada, Hopper, Blackwell). Leave --fp8 out"
        )
    if recipe == "tokenwise":  # this module's own: no torchao
        return
    try:
        import torchao.float8  # noqa: F401 (lazy: optional, the hopper extra)
    except ImportError as e:
        raise ValueError(
            f"--fp8 {recipe} needs torchao ({e}): `pip install -e '.[hopper]'` or `pip install torchao`"
        ) from None


def is_block_linear(module: nn.Module, fqn: str) -> bool:
    """The layers that compute in float8: linear layers inside the transformer blocks whose dimensions the float8
    kernels take (multiples of 16)."""
    return (
        isinstance(module, nn.Linear)
        and ".h." in f".{fqn}"
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def convert_to_float8(model: nn.Module, recipe: str, emulate: bool = False, fast_accum: bool = True) -> int:
    """Swap the block linear layers of `model` for torchao's `Float8Linear`, in place, before sharding and
    compilation; return how many were swapped. `emulate` computes the float8 products in high precision (tests on
    CPU). `fast_accum` lets the two backward products (input and weight gradients) accumulate in cuBLAS's faster,
    less precise float8 mode too, as the forward product always does: 1.02x the step of TinyLlama-1.1B on an H200,
    and the 200-step loss stays as close to bf16's as a bf16 run from other rounding does (tutorials/performance.md);
    False keeps torchao's default (precise accumulation in backward)."""
    if recipe == "tokenwise":
        return swap_tokenwise(model, fast_accum)
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # lazy: optional (the hopper extra)

    if recipe == "tensorwise":
        config = Float8LinearConfig(enable_fsdp_float8_all_gather=True, emulate=emulate)
    else:
        config = Float8LinearConfig.from_recipe_name(recipe)
        if emulate:
            config = dataclasses.replace(config, emulate=True)
    from torchao.float8.config import Float8GemmConfig  # lazy: optional

    backward = Float8GemmConfig(use_fast_accum=fast_accum)
    config = dataclasses.replace(config, gemm_config_grad_input=backward, gemm_config_grad_weight=backward)
    convert_to_float8_training(model, module_filter_fn=is_block_linear, config=config)
    swapped = [m for m in model.modules() if type(m).__name__ == "Float8Linear"]
    for module in swapped:
        module._register_state_dict_hook(_plain_weight)
    return len(swapped)


def _plain_weight(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: the weight as an ordinary tensor (or a DTensor of one), not torchao's float8-cast wrapper,
    so that checkpoints load without torchao and with `weights_only=True`."""
    key = prefix + "weight"
    value = state_dict.get(key)
    if value is None:
        return
    local = getattr(value, "_local_tensor", value)
    inner = getattr(local, "_tensor", None)
    if inner is None:  # not wrapped (rowwise keeps plain weights)
        return
    if local is value:
        state_dict[key] = inner
    else:
        state_dict[key] = DTensor.from_local(
            inner, value.device_mesh, value.placements, run_check=False, shape=value.shape, stride=value.stride()
        )


def precompute_scales_after_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """After every optimizer step, compute the float8 scales of all weights that FSDP2 all-gathers in float8 at once
    (one all-reduce of their absolute maxima) instead of one reduction per layer in the next forward pass. Register
    on the torch optimizer, not Fabric's wrapper. Nothing to do for a model without torchao's float8 layers."""
    if not any(type(m).__name__ == "Float8Linear" for m in model.modules()):
        return
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp  # lazy: optional (the hopper extra)

    optimizer.register_step_post_hook(lambda *_: precompute_float8_dynamic_scale_for_fsdp(model))


def swap_tokenwise(model: nn.Module, fast_accum: bool = True) -> int:
    """Swap the block linear layers of `model` for `TokenwiseFloat8Linear` (same parameters), in place; return how
    many were swapped."""
    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            fqn = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and is_block_linear(child, fqn):
                setattr(module, child_name, TokenwiseFloat8Linear.from_linear(child, fast_accum))
                swapped += 1
    return swapped


class TokenwiseFloat8Linear(nn.Linear):
    """`nn.Linear` whose three products run in float8 (the `tokenwise` recipe of this module's docstring). Its
    parameters, state dict and initialization are `nn.Linear`'s."""

    fast_accum: bool = True

    @classmethod
    def from_linear(cls, linear: nn.Linear, fast_accum: bool = True) -> "TokenwiseFloat8Linear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.fast_accum = fast_accum
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # the product's dtype, as autocast would give nn.Linear's
            dtype = torch.get_autocast_dtype(x.device.type)
        else:
            dtype = x.dtype
        y = _TokenwiseProduct.apply(x.to(dtype), self.weight, self.fast_accum)
        return y if self.bias is None else y + self.bias.to(dtype)


def pow2_scale(amax: torch.Tensor) -> torch.Tensor:
    """The largest power of 2 that keeps `amax * scale` within float8_e4m3fn's range (float32). A power of 2, so that
    scaling is exact and a tensor quantized with one scale can be moved to a smaller one by an exact shift."""
    return torch.exp2(torch.floor(torch.log2(E4M3_MAX / amax.float().clamp(min=1e-12))))


def quantize_rows(x: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """x (M, K) as float8_e4m3fn with one scale per row: (x * scale, scale (M, 1) float32)."""
    scale = pow2_scale(x.abs().amax(dim=-1, keepdim=True))
    return (x.float() * scale).to(torch.float8_e4m3fn).contiguous(), scale  # row-major, as the float8 kernels want


def quantize_tensor(x: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """x as float8_e4m3fn with one scale: (x * scale, scale () float32)."""
    scale = pow2_scale(x.abs().amax())
    return (x.float() * scale).to(torch.float8_e4m3fn), scale


def requantize_transposed(q: torch.Tensor, scale: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """q (M, K) float8_e4m3fn with row scales (M, 1), as (K, M') contiguous float8_e4m3fn with one scale per tensor
    (the smallest row scale): each row moves down by an exact power-of-2 shift, rounded only where it lands below
    e4m3's normal range (rows over 28,000 times smaller than the largest), as a direct cast would round it. M' is M
    rounded up to a multiple of 16 (zero columns: the float8 kernels need it of a contracted dimension)."""
    target = scale.min()
    x = q.float() * (target / scale)
    if (pad := -q.size(0) % 16) > 0:
        x = torch.cat((x, x.new_zeros(pad, x.size(1))))
    return x.to(torch.float8_e4m3fn).t().contiguous(), target


def _product(a: torch.Tensor, b_t: torch.Tensor, scale_a, scale_b, dtype: torch.dtype, fast_accum: bool):
    """a @ b_t.t() from float8 operands, a row-major and b_t (N, K) row-major (so b is column-major, as the float8
    kernels want it), dequantized by two scalar scales (the products' inverses)."""
    return torch._scaled_mm(a, b_t.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=dtype, use_fast_accum=fast_accum)


class _TokenwiseProduct(torch.autograd.Function):
    """x @ weight.t() with the three products in float8 (x (..., K), weight (N, K)).

    forward      x per token (e4m3) @ weight per tensor (e4m3); the token scales divide the product's rows
    grad input   grad per token (e4m3) @ weight per tensor (e4m3); likewise
    grad weight  grad.t() per tensor (e4m3) @ x per tensor (e4m3), both shifted exactly from the per-token float8
                 tensors above (the contracted dimension is the tokens': no per-token scale there). e4m3, not the
                 e5m2 that torchao's tensorwise recipe gives gradients: a shift of e4m3 is exact where a cast to e5m2
                 would round the gradient a second time (tests/test_float8.py compares the three errors)
    Only x's float8 copy and its token scales are kept for backward (half the bytes of x)."""

    @staticmethod
    def forward(ctx, x, weight, fast_accum):
        shape = x.shape
        xq, xs = quantize_rows(x.reshape(-1, shape[-1]))
        wq, ws = quantize_tensor(weight)
        one = torch.ones((), device=x.device)
        y = _product(xq, wq, one, ws.reciprocal(), x.dtype, True)  # forward: always cuBLAS's fast accumulation
        ctx.save_for_backward(xq, xs, weight)
        ctx.fast_accum = fast_accum
        ctx.shape = shape
        return (y * xs.reciprocal()).to(x.dtype).reshape(*shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, grad):
        xq, xs, weight = ctx.saved_tensors
        dtype = grad.dtype
        grad = grad.reshape(-1, grad.size(-1))
        gq, gs = quantize_rows(grad)
        wq, ws = quantize_tensor(weight)
        wq_t = wq.t().contiguous()  # (K, N): weight as the column-major right operand of grad @ weight
        one = torch.ones((), device=grad.device)
        grad_x = (_product(gq, wq_t, one, ws.reciprocal(), dtype, ctx.fast_accum) * gs.reciprocal()).to(dtype)
        gq_t, gs_t = requantize_transposed(gq, gs)  # (N, M')
        xq_t, xs_t = requantize_transposed(xq, xs)  # (K, M')
        grad_w = _product(gq_t, xq_t, gs_t.reciprocal(), xs_t.reciprocal(), weight.dtype, ctx.fast_accum)
        return grad_x.reshape(ctx.shape), grad_w, None
