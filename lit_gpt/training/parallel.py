"""Parallelism, mixed precision, float8, the attention kernel, activation checkpointing and compilation, applied to a
plain `GPT` from outside.

`parallelize` is the `parallelize_fn` of Lightning Fabric's `ModelParallelStrategy`: FSDP2 (`fully_shard`) on each
transformer block and on the root, with bf16 compute and float32 master weights and gradient reduction under
`bf16-mixed`. The same function runs on one CPU process, on GPUs, and across nodes.

Sharding (`--sharding` of `pretrain/tinyllama.py`):

    full     every parameter, gradient and optimizer state is split over all N processes (ZeRO-3): least memory,
             but every all-gather and reduce-scatter spans all nodes
    hybrid   split over the devices of one node, replicated across nodes (HSDP): all-gathers and reduce-scatters
             stay on the node's fast links; across nodes, one all-reduce of each device's gradient shard per
             optimizer step. Weights, gradients and optimizer states take 1/devices of the model's per device,
             as on a single node.

When the weights are gathered (all-gathered in bf16 from the shards) is the other choice, `keep_weights_gathered`:
a small model (TinyLlama-1.1B: 2.2 GB of bf16 weights) keeps them from its first forward until the last backward
of an optimizer step, one all-gather per step; a large one frees each block's weights after its forward and after
its backward and gathers them again, two all-gathers per block and micro-batch.

Hybrid is `fully_shard` over a 2-D ("replicate", "shard") mesh. Fabric's own mesh stays ("data_parallel",
"tensor_parallel") = (N, 1): the data loaders, `fabric.all_reduce` and the checkpoint see N data-parallel processes
either way.
"""

import logging
from functools import partial
from pathlib import Path
from typing import Literal, Optional, Tuple, Union

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lit_gpt.attention import KERNELS
from lit_gpt.model import GPT, Block, CausalSelfAttention
from lit_gpt.training.fabric import L, ModelParallelStrategy
from lit_gpt.training.float8 import convert_to_float8
from lit_gpt.training.logger import choose_logger

PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# where Lightning announces the process group when it starts it: "Initializing distributed: GLOBAL_RANK: 0, MEMBER:
# 1/1", then rank_zero_info's "distributed_backend=gloo / All distributed processes registered. Starting with 1
# processes" (logged by lightning_fabric's, or once pytorch_lightning is imported, by its logger)
LIGHTNING_BANNER_LOGGERS = (
    "lightning_fabric.utilities.distributed",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
# the whole model's gathered weights may stay allocated through a step when they take at most this share of a GPU
GATHERED_WEIGHTS_BUDGET = 0.05


def keep_weights_gathered(
    num_params: int, shard_size: int, device: torch.device, precision: str = "bf16-mixed"
) -> bool:
    """Whether FSDP2 should keep the gathered weights from a step's first forward to its last backward (the
    default of `reshard_after_forward` and `reshard_after_backward` is the opposite of this).

    Yes when each shard group is one process: nothing is gathered, and the weights in compute precision exist
    during every forward and backward anyway, so keeping them between micro-batches only saves copies. Yes on a GPU
    whose memory the whole model's gathered weights (2 bytes each in 16-bit precisions, 4 in `32-true`) fit in at
    `GATHERED_WEIGHTS_BUDGET`: one all-gather per step instead of two per block and micro-batch (the 2-GPU figures
    are in tutorials/performance.md). No otherwise (CPU processes included: memory there is not the GPU's).

    Each process decides from its own GPU, and all must decide alike: on a cluster of GPUs of different memory
    sizes, set `--reshard_after_forward` and `--reshard_after_backward` explicitly.
    """
    if shard_size == 1:
        return True
    if device.type != "cuda" or not torch.cuda.is_available():  # no GPU: Fabric reports a wrong --accelerator
        return False
    bytes_per_param = 4 if precision == "32-true" else 2
    total = torch.cuda.get_device_properties(device).total_memory
    return num_params * bytes_per_param <= GATHERED_WEIGHTS_BUDGET * total


def reshard_choices(
    forward: Optional[bool],
    backward: Optional[bool],
    num_params: int,
    shard_size: int,
    device: torch.device,
    precision: str,
) -> Tuple[bool, bool]:
    """`reshard_after_forward` and `reshard_after_backward` as given, or where None, the opposite of
    `keep_weights_gathered`."""
    keep = keep_weights_gathered(num_params, shard_size, device, precision)
    return (not keep if forward is None else forward), (not keep if backward is None else backward)


def apply_attention(model: nn.Module, kernel: str) -> None:
    """Set every attention layer of `model` to `kernel` (a name of `KERNELS`), in place; call before compiling."""
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            module.attention = KERNELS[kernel]
        if isinstance(module, GPT):  # its forward pass prepares the document mask for this kernel
            module.prepare_documents = KERNELS[kernel].prepare


def parallelize(
    model: GPT,
    device_mesh: DeviceMesh,
    precision: str = "bf16-mixed",
    compile: bool = False,
    activation_checkpointing: bool = False,
    sharding: Literal["full", "hybrid"] = "full",
    devices_per_node: Optional[int] = None,
    reshard_after_forward: Optional[bool] = None,
    attention: str = "sdpa",
    fp8: Optional[str] = None,
    fp8_emulate: bool = False,
    fp8_fast_accum: bool = True,
) -> GPT:
    """Apply the attention kernel, float8 training, activation checkpointing, `torch.compile` and FSDP2 to `model`
    in place and return it.

    `device_mesh` is Fabric's ("data_parallel", "tensor_parallel") mesh; only data parallelism is used here.
    `sharding="hybrid"` shards within groups of `devices_per_node` consecutive ranks (a node, with the rank order
    of torchrun, SLURM and Fabric) and replicates across groups. `reshard_after_forward=None` frees the gathered
    weights after the forward pass unless `keep_weights_gathered` says to keep them (one process per shard group,
    or a model small enough). `attention` is a kernel of `lit_gpt.attention.KERNELS` (`choose_attention` picks it);
    `fp8` a recipe of `lit_gpt.training.float8.RECIPES` or None (bf16 products), `fp8_emulate` runs its products in high
    precision (tests on CPU), `fp8_fast_accum` accumulates the backward products in cuBLAS's fast mode too.
    """
    mesh = device_mesh["data_parallel"] if device_mesh.mesh_dim_names else device_mesh
    if sharding == "hybrid":
        mesh = hybrid_mesh(mesh, devices_per_node or mesh.size())
    if reshard_after_forward is None:
        num_params = sum(p.numel() for p in model.parameters())
        device = torch.device(mesh.device_type, torch.cuda.current_device() if mesh.device_type == "cuda" else None)
        # the shard dimension is the last one
        reshard_after_forward = not keep_weights_gathered(num_params, mesh.size(mesh.ndim - 1), device, precision)
    param_dtype = PARAM_DTYPES.get(precision)
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)

    apply_attention(model, attention)
    if fp8:
        convert_to_float8(model, fp8, emulate=fp8_emulate, fast_accum=fp8_fast_accum)
    for i, block in enumerate(model.transformer.h):
        if activation_checkpointing:
            block = checkpoint(block)
        if compile:
            block.compile()
        # the last block's weights are needed again first in backward: keep them gathered
        last = i == len(model.transformer.h) - 1
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward and not last)
        model.transformer.h[i] = block
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    return model


def make_parallelize_fn(**kwargs) -> "partial[GPT]":
    """`parallelize` with its options bound, as `ModelParallelStrategy(parallelize_fn=...)` wants it."""
    return partial(parallelize, **kwargs)


def model_parallel_fabric(
    accelerator: str,
    devices: Union[int, str],
    num_nodes: int,
    precision: str,
    world_size: int,
    logger_name: str,
    out_dir: Path,
    run_name: str,
    **parallelize_kwargs,
) -> L.Fabric:
    """The Fabric of a training script: `ModelParallelStrategy` with `parallelize` (in `precision`, given the other
    `parallelize_kwargs`) over all `world_size` processes, saving sharded checkpoints, or a single file with one
    process (the converter reads it), and the logger `logger_name` (`choose_logger`)."""
    parallelize_fn = make_parallelize_fn(precision=precision, **parallelize_kwargs)
    # data_parallel_size and tensor_parallel_size default to num_nodes and devices: FSDP over the whole world here
    strategy = ModelParallelStrategy(
        parallelize_fn, data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=True
    )
    if world_size == 1:
        strategy._save_distributed_checkpoint = False  # one process: a single file (the converter reads it)
    logger = choose_logger(logger_name, out_dir, run_name)
    return L.Fabric(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, precision=precision, strategy=strategy,
        loggers=logger,
    )  # fmt: skip


def checkpoint(block: Block) -> nn.Module:
    """Recompute the block's activations in backward instead of keeping them (state-dict names unchanged)."""
    return checkpoint_wrapper(block, preserve_rng_state=False)


def hybrid_mesh(mesh: DeviceMesh, devices_per_node: int) -> DeviceMesh:
    """A 2-D ("replicate", "shard") mesh over the same ranks: shard within a node, replicate across nodes.

    Ranks are laid out row-major: with 2 nodes of 2 devices, the shard groups are {0, 1} and {2, 3} (one per node)
    and the replicate groups {0, 2} and {1, 3}.
    """
    if mesh.size() % devices_per_node:
        raise ValueError(
            f"Hybrid sharding needs the world size ({mesh.size()}) to be a multiple of the devices per node "
            f"({devices_per_node}); use `--sharding full`, or the same --devices on every node"
        )
    shape = (mesh.size() // devices_per_node, devices_per_node)
    return init_device_mesh(mesh.device_type, shape, mesh_dim_names=("replicate", "shard"))


def not_one_process_banner(record: logging.LogRecord) -> bool:
    """A logging filter that drops Lightning's announcement of a process group of one process (a CPU run on one
    device), which a user reads as trouble; with several processes it says that each one joined, and stays."""
    message = record.getMessage()
    one = message.startswith("Initializing distributed: ") and message.endswith(", MEMBER: 1/1")
    return not one and "All distributed processes registered. Starting with 1 processes" not in message


# the training scripts build their strategy with this module: its import quiets the banner for all of them
for _name in LIGHTNING_BANNER_LOGGERS:
    logging.getLogger(_name).addFilter(not_one_process_banner)
