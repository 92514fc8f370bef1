"""What a launch makes of the flags, shared by the training scripts: the world size, the check against the processes
torchrun started, the batch split into micro-batches per process (`check_processes`), the device, compilation and
attention kernel (`choose_device`), whether the CPU computes in bf16, and the start of the processes (`launch`)."""

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch

from lit_gpt.attention import choose_attention
from lit_gpt.config import Config
from lit_gpt.training.float8 import check_float8


def check_processes(
    devices: Union[int, str], num_nodes: int, accelerator: str, global_batch_size: int, micro_batch_size: int
) -> Tuple[int, int]:
    """(world size, micro-batches per optimizer step on each process) of `--devices`, `--num_nodes` and the batch
    sizes, refused where torchrun started other processes or the batch does not divide evenly."""
    world_size = num_processes(devices, num_nodes, accelerator)
    check_launcher(world_size, num_nodes)
    return world_size, gradient_accumulation_steps(global_batch_size, micro_batch_size, world_size)


def choose_device(
    config: Config,
    accelerator: str,
    precision: str,
    compile: Optional[bool],
    attention: str,
    fp8: Optional[str] = None,
) -> Tuple[torch.device, bool, str, str]:
    """(device, whether to compile, attention kernel, the line that says why) of `--accelerator`, `--compile`,
    `--attention` and `--fp8`: CUDA when asked for or (`auto`) available, compiled there unless told otherwise; an
    `--fp8` or `--attention` that cannot run there is refused."""
    cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    compile = cuda if compile is None else compile
    device = torch.device("cuda" if cuda else "cpu")
    check_float8(fp8, device)
    attention, attention_note = choose_attention(attention, config, device, precision)
    return device, compile, attention, attention_note


def launch(fabric: Any) -> None:
    """`fabric.launch()`: start this node's other processes, except under `fabric run`, where Fabric() itself has
    joined the processes it started."""
    if os.environ.get("LT_CLI_USED") != "1":
        fabric.launch()


def num_processes(devices: Union[int, str], num_nodes: int, accelerator: str) -> int:
    """The world size that Fabric will launch: processes per node × nodes."""
    if devices == "auto":
        cuda = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
        devices = torch.cuda.device_count() if cuda else 1
        if devices == 0:
            raise ValueError(
                f"--accelerator {accelerator} with --devices auto, but this machine has no visible CUDA GPU "
                "(torch.cuda.device_count() is 0). Check the driver and CUDA_VISIBLE_DEVICES, or pass --accelerator cpu"
            )
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"--devices {devices} must be a positive number of processes per node, or auto")
    if num_nodes < 1:
        raise ValueError(f"--num_nodes {num_nodes} must be at least 1")
    return devices * num_nodes


# names a file read instead of /proc/cpuinfo: tests and CI run as on another CPU (`LIT_GPT_CPUINFO=avx2-only.txt`)
CPUINFO_ENV = "LIT_GPT_CPUINFO"


def cpu_has_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether the CPU computes in bf16 natively (x86's `avx512_bf16` or `amx_bf16` flags in /proc/cpuinfo, or in the
    file that the environment variable `LIT_GPT_CPUINFO` names: for tests and CI that simulate another CPU); without
    them, bf16-mixed on CPU converts every operand and is slower than 32-true."""
    if cpuinfo is None:
        path = os.environ.get(CPUINFO_ENV)
        try:
            cpuinfo = Path(path or "/proc/cpuinfo").read_text()
        except OSError as e:
            if path:
                raise FileNotFoundError(
                    f"{CPUINFO_ENV}={path} cannot be read ({e.strerror}): it names a file in the format of "
                    "/proc/cpuinfo to read instead (to run as on another CPU); unset it to read this machine's"
                ) from None
            return False  # not Linux: unknown, assume not
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def check_launcher(world_size: int, num_nodes: int) -> None:
    """Refuse --devices × --num_nodes other than the processes torchrun (or `fabric run`, which is torchrun) started;
    Lightning would otherwise fail with an IndexError. SLURM's task counts are checked by Fabric itself."""
    env = os.environ
    if not all(k in env for k in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")):
        return  # not under torchrun (Lightning's TorchElasticEnvironment.detect)
    started, per_node = int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
    if (started, per_node) != (world_size, world_size // num_nodes):
        raise ValueError(
            f"torchrun started {started} processes, {per_node} on this node (WORLD_SIZE={started}, "
            f"LOCAL_WORLD_SIZE={per_node}), but --devices {world_size // num_nodes} --num_nodes {num_nodes} makes "
            f"{world_size}: pass --devices {per_node} (torchrun's --nproc_per_node) and --num_nodes "
            f"{started // per_node} (its --nnodes), see tutorials/multi_node.md"
        )


def gradient_accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step on each process; refuses combinations that do not divide evenly."""
    if global_batch_size < 1 or micro_batch_size < 1:
        raise ValueError("--global_batch_size and --micro_batch_size must be positive numbers of sequences")
    if global_batch_size % world_size:
        low = world_size * max(1, global_batch_size // world_size)
        choices = " or ".join(map(str, sorted({low, world_size * (global_batch_size // world_size + 1)})))
        raise ValueError(
            f"--global_batch_size {global_batch_size} is not divisible by the {world_size} processes "
            f"(--devices × --num_nodes); pick a multiple of {world_size} such as {choices}"
        )
    per_device = global_batch_size // world_size
    if per_device % micro_batch_size:
        divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
        below = max(d for d in divisors if d < micro_batch_size) if micro_batch_size > 1 else 1
        above = [d for d in divisors if d > micro_batch_size]
        suggestion = f"{below} or {above[0]}" if above else str(below)
        raise ValueError(
            f"--micro_batch_size {micro_batch_size} does not divide the per-device batch {per_device} "
            f"(--global_batch_size {global_batch_size} over {world_size} processes); "
            f"pick a divisor such as {suggestion}"
        )
    return per_device // micro_batch_size
