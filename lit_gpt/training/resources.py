"""Whether a training run fits the machine, estimated before anything is built: memory (weights, gradients, AdamW
states and the activations of one micro-batch) against the RAM available, and the time of one optimizer step against
a matrix-multiplication rate measured here. Used for CPU runs, where TinyLlama-1.1B would otherwise train until the
memory runs out.
"""

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from lit_gpt.cli import UserError
from lit_gpt.config import Config
from lit_gpt.flops import flops_per_token, num_parameters

# bytes per parameter of the training state: weights, gradients, AdamW's two moments (+ a bf16 copy of the weights
# for the forward under bf16-mixed)
STATE_BYTES = {"32-true": 16, "bf16-mixed": 18, "bf16-true": 8}
# a training step on CPU reaches about this fraction of the matmul rate (micro-llama here: ~1/3)
CPU_STEP_EFFICIENCY = 0.5
MAX_CPU_STEP_HOURS = 1.0
PROCESS_OVERHEAD = 0.5e9  # torch, Lightning, the data loader


@dataclass
class Estimate:
    state_bytes: float  # this host's share of weights, gradients and optimizer states
    activation_bytes: float  # activations of one micro-batch, times the processes on this host
    step_seconds: float

    @property
    def total_bytes(self) -> float:
        return self.state_bytes + self.activation_bytes


def activation_elements(config: Config, micro_batch_size: int, checkpointing: bool) -> int:
    """Tensors kept for the backward pass of one micro-batch, in elements: per layer and token about 8 × the width
    (norms, q/k/v, attention output, residuals) + 4 × the MLP width, or only the block inputs with activation
    checkpointing; and the logits with their gradient."""
    tokens = micro_batch_size * config.block_size
    per_layer = 8 * config.n_embd + 4 * config.intermediate_size
    layers = config.n_layer * config.n_embd + per_layer if checkpointing else config.n_layer * per_layer
    return tokens * (layers + 2 * config.padded_vocab_size)


def estimate(
    config: Config,
    precision: str,
    micro_batch_size: int,
    global_batch_size: int,
    devices: int,
    num_nodes: int,
    activation_checkpointing: bool,
    flops_per_second: float,
) -> Estimate:
    world_size = devices * num_nodes
    state = num_parameters(config, include_embedding=True) * STATE_BYTES[precision] * devices / world_size
    element_bytes = 4 if precision == "32-true" else 2
    activations = activation_elements(config, micro_batch_size, activation_checkpointing) * element_bytes
    flops = flops_per_token(config) * global_batch_size * config.block_size
    step_seconds = flops / (num_nodes * flops_per_second * CPU_STEP_EFFICIENCY)
    return Estimate(state, devices * (activations + PROCESS_OVERHEAD), step_seconds)


def available_memory() -> float:
    """Bytes of RAM that can be allocated without swapping (Linux's MemAvailable)."""
    try:
        import psutil  # lazy: optional (not a requirement of the library)

        return float(psutil.virtual_memory().available)
    except ImportError:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def cpu_flops_per_second() -> float:
    """The float32 matrix-multiplication rate of this machine's CPU, measured in about 0.1 s."""
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up the threads
    repeats, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < 0.05 or repeats < 3:
        a @ b
        repeats += 1
    return 2 * n**3 * repeats / elapsed


SMALL_CPU_RUN = (
    "python pretrain/tinyllama.py --model_name micro-llama --accelerator cpu --devices 1 --precision 32-true "
    "--global_batch_size 8 --micro_batch_size 4 --max_tokens 81920 --warmup_steps 4 --data_dir data"
)


def check_cpu_run(config: Config, precision: str, micro_batch_size: int, global_batch_size: int, devices: int,
                  num_nodes: int, activation_checkpointing: bool, flops_per_second: Optional[float] = None,
                  available: Optional[float] = None) -> Estimate:  # fmt: skip
    """Refuse a CPU run that would not fit in this machine's memory or would take over `MAX_CPU_STEP_HOURS` per
    optimizer step, with the estimate and a run that fits; return the estimate otherwise. The machine's matmul rate
    and available bytes are measured, unless given (to judge a run as on another machine)."""
    rate = flops_per_second or cpu_flops_per_second()
    e = estimate(config, precision, micro_batch_size, global_batch_size, devices, num_nodes, activation_checkpointing,
                 rate)  # fmt: skip
    available = available_memory() if available is None else available
    problems = []
    if e.total_bytes > available:
        problems.append(
            f"needs about {e.total_bytes / 1e9:.1f} GB of memory (weights, gradients and AdamW states "
            f"{e.state_bytes / 1e9:.1f} GB, activations of a {micro_batch_size}-sequence micro-batch "
            f"{e.activation_bytes / 1e9:.1f} GB) and this machine has {available / 1e9:.1f} GB available"
        )
    if e.step_seconds > MAX_CPU_STEP_HOURS * 3600:
        problems.append(
            f"one optimizer step of {global_batch_size} × {config.block_size} tokens would take about "
            f"{e.step_seconds / 3600:,.0f} hours at the {rate / 1e9:.0f} GFLOP/s this CPU multiplies matrices at"
        )
    if problems:
        raise UserError(
            f"--model_name {config.name} on CPU {'; and '.join(problems)}. Train on a GPU, or try a small model on "
            f"CPU first: {SMALL_CPU_RUN}"
        )
    return e
