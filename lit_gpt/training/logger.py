"""Experiment loggers for Fabric: TensorBoard, CSV, or Weights & Biases (offline when no API key is configured), and
what a training loop logs: the metrics and console line of a log step, and those of a validation."""

import importlib.util
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any, Dict, Literal, Optional

import torch
import yaml

from lit_gpt.training.fabric import CSVLogger, L, Logger, TensorBoardLogger, rank_zero_only


class CSVHparamsLogger(CSVLogger):
    """Fabric's CSV logger (`metrics.csv`) that also writes the hyperparameters, to `hparams.yaml` beside it, as
    Lightning's CSVLogger does: that one comes with lightning.pytorch and torchmetrics, ~2.5 s of imports a process."""

    @rank_zero_only
    def log_hyperparams(self, params: Dict[str, Any]) -> None:
        self.hparams = {**getattr(self, "hparams", {}), **params}
        log_dir = self.experiment.log_dir  # the writer creates the folder (and warns of an earlier run's files there)
        with open(os.path.join(log_dir, "hparams.yaml"), "w", encoding="utf-8") as f:
            yaml.dump(self.hparams, f)


def choose_logger(name: Literal["tensorboard", "csv", "wandb"], out_dir: Path, run_name: str) -> Logger:
    """The logger called `name`, writing under `out_dir/logs`."""
    if name == "tensorboard":
        return TensorBoardLogger(root_dir=out_dir / "logs", name="tensorboard")
    if name == "csv":
        return CSVHparamsLogger(root_dir=out_dir / "logs", name="csv", flush_logs_every_n_steps=1)
    if name == "wandb":
        if importlib.util.find_spec("wandb") is None:  # Lightning's WandbLogger would raise a ModuleNotFoundError
            raise ValueError(
                "--logger_name wandb needs wandb, which this Python lacks: `pip install wandb`; or pass "
                "--logger_name tensorboard or csv"
            )
        # lazy: heavy, and wandb is optional; pytorch_lightning is the Lightning built on lit_gpt/training/fabric.py's
        from pytorch_lightning.loggers import WandbLogger

        offline = not wandb_key_configured()
        return WandbLogger(project="lit-gpt-pretrain", name=run_name, save_dir=out_dir / "logs", offline=offline)
    raise ValueError(f"Unknown logger {name!r}; choose one of tensorboard, csv, wandb")


def wandb_key_configured() -> bool:
    """Whether W&B can log online: WANDB_API_KEY is set or `wandb login` wrote a ~/.netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def mean_loss(fabric: L.Fabric, loss: torch.Tensor) -> float:
    """`loss` averaged over the processes, on the host: the only host sync of a log step."""
    loss = fabric.all_reduce(loss, reduce_op="mean").item()
    if fabric.device.type == "cuda":
        # `.item()` waits for the compute stream only; the step time must also include the other streams' work (FSDP's
        # gradient reduce-scatter)
        torch.cuda.synchronize()
    return loss


def step_metrics(
    fabric: L.Fabric,
    state: Dict[str, Any],
    loss: float,
    lr: float,
    grad_norm: torch.Tensor,
    tokens_per_sec: float,
    step_time: float,
    remaining_steps: int,
    mfu: Optional[float] = None,
    data_wait: Optional[float] = None,
) -> Dict[str, Any]:
    """The metrics of a log step, in the order of its console line (`format_metrics`); a None is not logged."""
    return {
        "loss": loss,
        "learning_rate": lr,
        "grad_norm": grad_norm.item(),
        "tokens": state["tokens_seen"],
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_sec_per_device": tokens_per_sec / fabric.world_size,
        "mfu": mfu,
        "step_time": step_time,
        # the host's wait for the loader; it costs throughput only where it exceeds the GPU's queued work
        "data_wait": data_wait,
        # GiB, as dev/benchmark.py and the peer harness count it
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if fabric.device.type == "cuda" else None,
        "remaining_hours": remaining_steps * step_time / 3600,
        "skipped_steps": state["skipped_steps"],
    }


def log_metrics(fabric: L.Fabric, step: int, max_steps: int, metrics: Dict[str, Any]) -> None:
    """The console line of a log step, and its metrics to the logger."""
    fabric.print(format_metrics(step, max_steps, metrics))
    fabric.log_dict({k: v for k, v in metrics.items() if v is not None}, step=step)


def log_validation(fabric: L.Fabric, step: int, val_loss: float, t0: float) -> None:
    """The console line and the logged metrics of a validation at `step` that began at `t0` (`time.perf_counter()`)."""
    metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 100))}
    fabric.print(f"step {step}: val loss {val_loss:.4f}, val ppl {metrics['val_ppl']:.2f}, "
                 f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
    fabric.log_dict(metrics, step=step)


def format_metrics(step: int, max_steps: int, m: Dict[str, Any]) -> str:
    """One console line for a log step."""
    parts = [
        f"step {step}/{max_steps}",
        f"loss {m['loss']:.4f}",
        f"lr {m['learning_rate']:.2e}",
        f"grad norm {m['grad_norm']:.3f}",
        f"tokens {m['tokens']:,}",
        f"{m['tokens_per_sec']:,.0f} tok/s ({m['tokens_per_sec_per_device']:,.0f}/device)",
    ]
    if m.get("mfu") is not None:
        parts.append(f"MFU {m['mfu']:.1%}")
    parts.append(f"{m['step_time'] * 1000:.0f} ms/step")
    if m.get("data_wait") is not None:
        parts.append(f"data wait {m['data_wait'] * 1000:.0f} ms")
    if m.get("peak_memory_gb") is not None:
        parts.append(f"peak mem {m['peak_memory_gb']:.1f} GiB")
    parts.append(f"ETA {format_duration(m['remaining_hours'] * 3600)}")
    if m.get("skipped_steps"):
        parts.append(f"skipped {m['skipped_steps']}")
    return " | ".join(parts)


def format_duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
