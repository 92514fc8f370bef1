"""Training checkpoints: `out_dir/step-{step:08d}.pth`, written atomically, found, checked and resumed.

A checkpoint is a single `torch.save` file when one process trains, and a directory of shards (PyTorch distributed
checkpoint, written by Fabric's `ModelParallelStrategy(save_distributed_checkpoint=True)`) when several do:

    step-00001000.pth                  one process: {"model": full lit state dict, "optimizer": ..., "hparams": ...,
                                       "train_dataloader": ..., "rng": ..., "iter_num": ..., "step_count": ..., ...}
    step-00001000.pth/                 several processes: model and optimizer shards under the "model" and
        __0_0.distcp ... .metadata     "optimizer" prefixes, and `meta.pt` with everything else (from rank 0)
        meta.pt

Both are written under a `.tmp` name and renamed when complete, so a crash while saving never leaves a broken
checkpoint under a `step-*.pth` name. Everything in them is tensors and plain Python values: they load with
`torch.load(..., weights_only=True)`. To read the model weights of either layout without a process group, use
`lit_gpt.convert.training_checkpoint_tensors` (what `scripts/convert_pretrained_checkpoint.py` does).
"""

import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L
import torch

STEP_PATTERN = re.compile(r"^step-(\d+)\.pth$")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"step-{step:08d}.pth"


def find_latest(out_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step in `out_dir`, or None (temporary `.tmp` saves are ignored)."""
    if not out_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := STEP_PATTERN.match(p.name))]
    return max(found)[1] if found else None


def later_checkpoints(out_dir: Path, resume_from: Path) -> list:
    """The checkpoints in `out_dir` of later steps than `resume_from` (a `step-*.pth` path), by name: a run resumed
    from it into `out_dir` would overwrite them one by one, and until it had, `--resume auto` would pick them."""
    m = STEP_PATTERN.match(Path(resume_from).name)
    if m is None or not out_dir.is_dir():
        return []
    later = [p.name for p in out_dir.iterdir() if (n := STEP_PATTERN.match(p.name)) and int(n[1]) > int(m[1])]
    return sorted(later)


def save_checkpoint(fabric: L.Fabric, path: Path, state: Dict[str, Any]) -> None:
    """`fabric.save(path, state)` through a temporary name, renamed into place once every process has written."""
    tmp = path.with_name(path.name + ".tmp")
    if fabric.global_rank == 0:
        remove(tmp)  # left by a crash during an earlier save
    fabric.barrier()
    fabric.save(tmp, state)
    fabric.barrier()
    if fabric.global_rank == 0:
        remove(path)
        tmp.rename(path)
    fabric.barrier()


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def load_metadata(path: Path) -> Dict[str, Any]:
    """Everything in the checkpoint at `path` except the model and optimizer tensors (cheap: no tensor is read)."""
    if path.is_dir():
        if not (path / "meta.pt").is_file():
            raise FileNotFoundError(f"{path} is not a complete sharded checkpoint: it has no meta.pt")
        return torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; pass `--resume auto` to pick the latest in --out_dir")
    checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
    return {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer")}


# the settings that litdata's saved loader position holds only under (it refuses to restore with others)
LOADER_SETTINGS = ("micro_batch_size", "num_workers", "seed")


def check_compatible(
    path: Path,
    metadata: Dict[str, Any],
    model_config: Dict[str, Any],
    world_size: int,
    run_hparams: Optional[Dict[str, Any]] = None,
) -> None:
    """Refuse to resume from a checkpoint of another model, written by another number of processes, or (given this
    run's `run_hparams`) with other data-loader settings."""
    if "hparams" not in metadata:
        raise ValueError(
            f"{path} is not a training checkpoint of pretrain/tinyllama.py (it holds no run settings) and cannot be "
            "resumed. To start training from its weights, pass the folder that holds it (with lit_config.json) as "
            "--initial_checkpoint_dir."
        )
    hparams = metadata["hparams"]
    saved = hparams.get("model_config")
    if saved != model_config:
        diff = {k: (saved.get(k), v) for k, v in model_config.items() if saved.get(k) != v} if saved else saved
        raise ValueError(
            f"{path} holds a different model configuration (checkpoint, now): {diff}. "
            f"Resume with the checkpoint's --model_name {hparams.get('model_name')!r} (and --block_size), "
            "or start a new run with another --out_dir."
        )
    if hparams.get("world_size") != world_size:
        raise ValueError(
            f"{path} was written by {hparams.get('world_size')} processes, this run has {world_size}. The data "
            "loader's position is tied to the number of processes: resume with the same --devices × --num_nodes."
        )
    changed = [k for k in LOADER_SETTINGS if run_hparams and k in hparams and hparams[k] != run_hparams[k]]
    if changed:
        then, now = (" ".join(f"--{k} {h[k]}" for k in changed) for h in (hparams, run_hparams))
        raise ValueError(
            f"{path} was written with {then}, this run has {now}. The data loader's saved position is only valid "
            f"with the same micro-batch size, loader workers and data seed: resume with {then}."
        )


def load_checkpoint(fabric: L.Fabric, path: Path, state: Dict[str, Any], model_config: Dict[str, Any]) -> None:
    """Check `path` against this run, then load it into `state` in place (model, optimizer and the rest)."""
    check_compatible(path, load_metadata(path), model_config, fabric.world_size, state["hparams"])
    remainder = fabric.load(path, state, weights_only=True)
    if remainder:
        fabric.print(f"Ignored entries of {path.name}: {sorted(remainder)}")
