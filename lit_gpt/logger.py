"""Experiment loggers for Fabric: TensorBoard, CSV, or Weights & Biases (offline when no API key is configured)."""

import importlib.util
import netrc
import os
from pathlib import Path
from typing import Literal

from lightning.fabric.loggers import Logger, TensorBoardLogger


def choose_logger(name: Literal["tensorboard", "csv", "wandb"], out_dir: Path, run_name: str) -> Logger:
    """The logger called `name`, writing under `out_dir/logs`."""
    if name == "tensorboard":
        return TensorBoardLogger(root_dir=out_dir / "logs", name="tensorboard")
    if name == "csv":
        # Lightning's (not Fabric's) CSV logger: it also writes the hyperparameters (hparams.yaml)
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=out_dir / "logs", name="csv", flush_logs_every_n_steps=1)
    if name == "wandb":
        if importlib.util.find_spec("wandb") is None:  # Lightning's WandbLogger would raise a ModuleNotFoundError
            raise ValueError(
                "--logger_name wandb needs wandb, which this Python lacks: `pip install wandb`; or pass "
                "--logger_name tensorboard or csv"
            )
        from lightning.pytorch.loggers import WandbLogger

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
