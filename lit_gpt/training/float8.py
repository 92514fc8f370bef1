"""Float8 training through torchao, applied to a plain `GPT` from outside (`lit_gpt.training.parallel.parallelize`).

Every linear layer of the transformer blocks (q/k/v, attention output, the three MLP projections) computes its
three matrix products in float8 with dynamic scales; the output head, the embeddings and the norms stay in bf16.
Master weights, gradients and optimizer states are unchanged (float32 under `bf16-mixed`).

    tensorwise  one scale per tensor (cuBLAS's float8 kernels). Under FSDP2 the weights are all-gathered in float8,
                half the bytes of bf16, with their scales computed once per optimizer step for all layers
                (`precompute_scales_after_step`).
    rowwise     one scale per row of each operand (more accurate, slower kernels); weights all-gathered in bf16.

A float8 run saves ordinary weights (`plain_weights_in_state_dict`): resume, conversion and export read them as
any other checkpoint, and a run may resume with or without `--fp8`. Float8 matrix units exist from compute
capability 8.9 (Ada, Hopper, Blackwell); anywhere else `check_float8` refuses the flag before any work.
"""

import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.distributed.tensor import DTensor

RECIPES = ("tensorwise", "rowwise")


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
    on the torch optimizer, not Fabric's wrapper."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp  # lazy: optional (the hopper extra)

    optimizer.register_step_post_hook(lambda *_: precompute_float8_dynamic_scale_for_fsdp(model))
