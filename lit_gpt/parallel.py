"""Parallelism, mixed precision, activation checkpointing and compilation, applied to a plain `GPT` from outside.

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

Hybrid is `fully_shard` over a 2-D ("replicate", "shard") mesh. Fabric's own mesh stays ("data_parallel",
"tensor_parallel") = (N, 1): the data loaders, `fabric.all_reduce` and the checkpoint see N data-parallel processes
either way.
"""

from functools import partial
from typing import Literal, Optional

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lit_gpt.model import GPT, Block

PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def parallelize(
    model: GPT,
    device_mesh: DeviceMesh,
    precision: str = "bf16-mixed",
    compile: bool = False,
    activation_checkpointing: bool = False,
    sharding: Literal["full", "hybrid"] = "full",
    devices_per_node: Optional[int] = None,
    reshard_after_forward: Optional[bool] = None,
) -> GPT:
    """Apply activation checkpointing, `torch.compile` and FSDP2 to `model` in place and return it.

    `device_mesh` is Fabric's ("data_parallel", "tensor_parallel") mesh; only data parallelism is used here.
    `sharding="hybrid"` shards within groups of `devices_per_node` consecutive ranks (a node, with the rank order
    of torchrun, SLURM and Fabric) and replicates across groups. `reshard_after_forward=None` frees the gathered
    weights after the forward pass when more than one process shares them (ZeRO-3) and keeps them when the shard
    group is a single process, where there is nothing to gather.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"] if device_mesh.mesh_dim_names else device_mesh
    if sharding == "hybrid":
        mesh = hybrid_mesh(mesh, devices_per_node or mesh.size())
    if reshard_after_forward is None:
        reshard_after_forward = mesh.size(mesh.ndim - 1) > 1  # the shard dimension: the last one
    param_dtype = PARAM_DTYPES.get(precision)
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)

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


def checkpoint(block: Block) -> nn.Module:
    """Recompute the block's activations in backward instead of keeping them (state-dict names unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    return checkpoint_wrapper(block, preserve_rng_state=False)


def hybrid_mesh(mesh: DeviceMesh, devices_per_node: int) -> DeviceMesh:
    """A 2-D ("replicate", "shard") mesh over the same ranks: shard within a node, replicate across nodes.

    Ranks are laid out row-major: with 2 nodes of 2 devices, the shard groups are {0, 1} and {2, 3} (one per node)
    and the replicate groups {0, 2} and {1, 3}.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if mesh.size() % devices_per_node:
        raise ValueError(
            f"Hybrid sharding needs the world size ({mesh.size()}) to be a multiple of the devices per node "
            f"({devices_per_node}); use `--sharding full`, or the same --devices on every node"
        )
    shape = (mesh.size() // devices_per_node, devices_per_node)
    return init_device_mesh(mesh.device_type, shape, mesh_dim_names=("replicate", "shard"))
