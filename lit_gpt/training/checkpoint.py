"""Training checkpoints: `out_dir/step-{step:08d}.pth`, written atomically, found, checked and resumed.

A checkpoint is a single `torch.save` file when one process trains, and a directory of shards (PyTorch distributed
checkpoint, in the layout of Fabric's `ModelParallelStrategy(save_distributed_checkpoint=True)`) when several do:

    step-00001000.pth                  one process: {"model": full lit state dict, "optimizer": ..., "hparams": ...,
                                       "train_dataloader": ..., "rng": ..., "iter_num": ..., "step_count": ..., ...}
    step-00001000.pth/                 several processes: model and optimizer shards under the "model" and
        __0_0.distcp ... .metadata     "optimizer" prefixes, and `meta.pt` with everything else (from rank 0)
        meta.pt

A weight that the model holds under two names (a tied head is the token embedding: `GPT.tied_weights`) is stored
once: a single file holds one tensor under both names (`torch.save` writes a storage once); a sharded checkpoint
holds it under its own name alone (torch.distributed.checkpoint would write each name apart) and `meta.pt` records
the names left out (`"tied_weights": {"lm_head.weight": "transformer.wte.weight"}`), which the readers give back.
Sharded checkpoints written before hold it under both names, and resume as they are.

Both are written under a `.tmp` name and renamed when complete, so a crash while saving never leaves a broken
checkpoint under a `step-*.pth` name.

Everything in them is tensors and plain Python values: they load with `torch.load(..., weights_only=True)`. A sharded
checkpoint's `.metadata` is a pickle too, which torch's own reader unpickles in full: `DCPReader` reads it with an
unpickler that builds nothing but torch.distributed.checkpoint's metadata classes (and its non-tensor values with
`weights_only=True`), unless the user trusts the checkpoint (`--trust_pickle true`; `lit_gpt/trust.py`). The model
weights of either layout are read without a process group by `training_checkpoint_tensors` (what
`scripts/convert_pretrained_checkpoint.py` does), and the model config and document separators a run was trained with by
`training_checkpoint_config` and `training_checkpoint_separators`.

This is the one module that reads and writes training checkpoints; resuming checks a checkpoint against the run
(`check_compatible`) with what the caller knows of its data (`recorded_sources`).
"""

import contextlib
import copy
import errno
import fcntl
import io
import os
import re
import socket
import stat
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from lit_gpt.cli import UserError, rank
from lit_gpt.config import Config
from lit_gpt.data.order import ORDER
from lit_gpt.data.separators import DEFAULT_SEPARATORS, Separators
from lit_gpt.files import (
    CHECKSUMS,
    CorruptFile,
    check_checksums,
    check_seal,
    missing_digest,
    remove,
    seal_zip,
    write_checksums,
    write_failure,
)
from lit_gpt.model import GPT
from lit_gpt.training.fabric import L, ModelParallelStrategy, _load_raw_module_state, _Stateful, _unwrap_objects
from lit_gpt.trust import is_distributed_checkpoint, load_single_file, read_dcp_metadata, training_hparams
from lit_gpt.weights import load_lit_state_dict, strip_wrapper_prefixes

STEP_PATTERN = re.compile(r"^step-(\d+)\.pth$")
OWN_NAME = re.compile(r"^step-(\d{8,})\.pth$")  # exactly what checkpoint_path writes
# what `flock` fails with on a filesystem that has no locks
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"step-{step:08d}.pth"


@contextlib.contextmanager
def own_out_dir(fabric: L.Fabric, out_dir: Path) -> Iterator[None]:
    """Hold `out_dir/.lock` for the run, so that a second run started on the same `--out_dir` (a job submitted twice)
    is refused instead of overwriting this one's checkpoints. Rank 0 takes it before anything is written and every
    process raises if it cannot. It is an `flock`, which the kernel releases when the process ends, however it ends:
    a killed run leaves nothing to clean up (the file stays, unlocked, naming the last holder). On a filesystem without
    locks (Lustre mounted without `flock`) the run warns and goes on unlocked rather than not at all. A `.lock` that
    this project did not write (a file of other content, a symbolic or hard link, not a regular file) is refused, never
    overwritten or followed."""
    lock, error = None, None
    if fabric.global_rank == 0:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            lock = _open_lock_file(out_dir / ".lock")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            error = _not_a_lock_record(out_dir / ".lock", lock)
        except _NotALockFile as e:
            error = str(e)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "a process that has not yet written its name"
            lock.close()
            lock = None
            error = (
                f"--out_dir {out_dir} is in use by another training run ({holder}; it holds {out_dir}/.lock): two "
                "runs in one out dir overwrite each other's checkpoints. Wait for it to end or stop it, or pass "
                "another --out_dir"
            )
        except OSError as e:
            if lock is not None:
                lock.close()
                lock = None
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                error = f"--out_dir {out_dir} cannot be written ({e.strerror}); pass an --out_dir on a writable disk"
            elif not out_dir.is_dir():
                error = f"--out_dir {out_dir} cannot be made a directory ({e.strerror}); pass another --out_dir"
            elif e.errno in _NO_LOCKS:  # Lustre mounted without `flock`, NFS without a lock daemon
                fabric.print(
                    f"Warning: the filesystem of --out_dir {out_dir} cannot lock {out_dir}/.lock ({e.strerror}): "
                    "this run does not own it, so make sure that no other run uses this --out_dir"
                )
            else:
                error = f"--out_dir {out_dir}: cannot take {out_dir}/.lock ({e}); remove it, or pass another --out_dir"
        if error and lock is not None:
            lock.close()
            lock = None
        elif lock is not None:
            lock.seek(0)
            lock.truncate()
            started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
            lock.flush()
    error = fabric.broadcast(error)
    if error:
        raise FileExistsError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


LOCK_RECORD = re.compile(r"pid \d+ on \S+, started [^\n]*\n?")  # what `own_out_dir` writes in the lock file


class _NotALockFile(Exception):
    pass


def _open_lock_file(path: Path):
    """`path` opened for reading and writing, created if missing, never through a symbolic link (O_NOFOLLOW), never
    a file that is not a regular one (a FIFO, a device), never a file of several names (a hard link)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _NotALockFile(
                f"{path} is a symbolic link (to {os.readlink(path)}), not a lock file of this project: a run would "
                "write through it. Remove it, or pass another --out_dir"
            ) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _NotALockFile(f"{path} is not a regular file, not a lock file of this project: remove it, or pass "
                            "another --out_dir")  # fmt: skip
    if info.st_nlink > 1:  # a hard link: the run would write its record into the other name's file too
        os.close(fd)
        raise _NotALockFile(f"{path} is a hard link ({info.st_nlink} names of one file), not a lock file of this "
                            "project: a run would write through it. Remove it, or pass another --out_dir")  # fmt: skip
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r+", encoding="utf-8")


def _not_a_lock_record(path: Path, lock) -> Optional[str]:
    """The refusal of a lock file that holds something else than the record of an earlier run (empty, or one line:
    `pid 123 on host, started ...`): the run would overwrite it. None if it holds a record, or nothing."""
    lock.seek(0)
    try:
        text = lock.read(4096)
    except UnicodeDecodeError:
        text = "\ufffd"
    if not text or LOCK_RECORD.fullmatch(text):
        return None
    first = text.strip().splitlines()[0][:80] if text.strip() else repr(text[:40])
    return (
        f"{path} holds something other than this project's lock record ({first!r}...): a run would overwrite it. "
        "Move it away, or pass another --out_dir"
    )


def checkpoints_by_step(out_dir: Path) -> List[Tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `out_dir`, oldest first (temporary `.tmp` saves are ignored)."""
    if not out_dir.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in out_dir.iterdir() if (m := STEP_PATTERN.match(p.name)))


def find_latest(out_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step in `out_dir`, or None."""
    found = checkpoints_by_step(out_dir)
    return found[-1][1] if found else None


def print_once(message: str) -> None:
    """`print` on rank 0 alone: a note of a step that every process takes, said once."""
    if rank() == 0:
        print(message)


def latest_to_resume(
    out_dir: Path, trust_pickle: bool = False, say: Callable[[str], Any] = print_once
) -> Optional[Path]:
    """`find_latest(out_dir)` (what `--resume auto` resumes from), checked: a newest checkpoint whose bytes differ from
    its digest (a flipped bit), or whose metadata cannot be read (truncated, corrupt, a shard missing, or refused as
    unsafe: nothing of it is unpickled), is passed over for the newest earlier one that is whole, and `say` names each
    one passed over and why, in one line. None (start afresh) where every checkpoint differs from its digest; refused
    where none can be used and one of them cannot be read (not a save cut short: moving it away is the user's call)."""
    found = [p for _, p in reversed(checkpoints_by_step(out_dir))]
    passed: List[Tuple[Path, str]] = []  # each checkpoint passed over, and why
    unreadable = None
    for path in found:
        try:
            verify_checkpoint(path)
        except CorruptFile as e:
            passed.append((path, str(e)))
            continue
        try:
            load_metadata(path, trust_pickle)
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            passed.append((path, reason))
            unreadable = unreadable or (path, reason)
            continue
        if passed:
            say(f"Warning: {_passed(passed)}, resuming from {path.name}, the newest one that is whole")
        return path
    if unreadable is not None:
        raise ValueError(
            f"--resume auto: no checkpoint in {out_dir} can be used: {_reasons(passed)}. Move them away (for example "
            f"to {unreadable[0].name}.broken, which is not picked up) to start afresh, or pass another --out_dir"
        )
    if passed:
        say(f"Warning: {_passed(passed)}, starting fresh")
    return None


def _reasons(passed: List[Tuple[Path, str]]) -> str:
    """Why each checkpoint was passed over, each named (the reasons name a checkpoint's file, or the checkpoint)."""
    return "; ".join(reason if path.name in reason else f"{path.name}: {reason}" for path, reason in passed)


def _passed(passed: List[Tuple[Path, str]]) -> str:
    return f"{_reasons(passed)}; {', '.join(path.name for path, _ in passed)} passed over"


# the key of a checkpoint's hparams that says that its SHA-256 was written with it
DIGESTS = "checkpoint_digests"


def verify_checkpoint(path: Path) -> bool:
    """Check the training checkpoint at `path` against the SHA-256 written with it (`CorruptFile` where it differs, or
    where it is gone, stripped or deleted, although the checkpoint's hparams record that it was written); False where
    it has none (written before digests were recorded: read as it is)."""
    if not path.is_dir() and not path.is_file():
        return False
    if check_checksums(path) if path.is_dir() else check_seal(path):
        return True
    if _records_digests(path):  # read only where the digest is missing
        raise missing_digest(path, CHECKSUMS if path.is_dir() else "its zip comment", f"its hparams record {DIGESTS}")
    return False


def on_rank_zero(fabric: L.Fabric, compute: Callable[[], Any]) -> Any:
    """`compute()` on rank 0 alone, its result, or the exception it raised, given to every process: a check that
    reads every byte of a checkpoint (its digest) is read once, not by every process of a node from the same disk."""
    result, error = None, None
    if fabric.global_rank == 0:
        try:
            result = compute()
        except Exception as e:
            error = e
    if fabric.world_size > 1:
        result, error = fabric.broadcast((result, error))
    if error is not None:
        raise error
    return result


def _records_digests(path: Path) -> bool:
    """Whether the hparams of the checkpoint at `path` say that its SHA-256 was written with it; False where they
    cannot be read (that refusal is `load_metadata`'s, when the checkpoint is read)."""
    try:
        return training_hparams(path).get(DIGESTS) == "sha256"
    except Exception:
        return False


def nonfinite_stop_message(out_dir: Path, streak: int, step: int) -> str:
    """Why a run stopped after `streak` non-finite steps in a row up to `step`, and what to resume from: a checkpoint
    saved before the streak began (those saved during it hold the weights that diverged)."""
    first = step - streak + 1
    safe = next((p for s, p in reversed(checkpoints_by_step(out_dir)) if s < first), None)
    advice = (
        f"resume from {safe}, the newest checkpoint saved before the streak began at step {first}, with "
        f"--resume {safe} and another --out_dir"
        if safe
        else f"start again: no checkpoint was saved before the streak began at step {first}"
    )
    return (
        f"{streak} optimizer steps in a row had a non-finite gradient norm (each was skipped). Stopped at step "
        f"{step}. Lower --learning_rate or raise --warmup_steps, and {advice}."
    )


def later_checkpoints(out_dir: Path, resume_from: Path) -> list:
    """The checkpoints in `out_dir` of later steps than `resume_from` (a `step-*.pth` path), by name: a run resumed
    from it into `out_dir` would overwrite them one by one, and until it had, `--resume auto` would pick them."""
    m = STEP_PATTERN.match(Path(resume_from).name)
    if m is None or not out_dir.is_dir():
        return []
    later = [p.name for p in out_dir.iterdir() if (n := STEP_PATTERN.match(p.name)) and int(n[1]) > int(m[1])]
    return sorted(later)


def check_no_overwrite(out_dir: Path, resume: Any) -> None:
    """Refuse a fresh run (`--resume false`) into an `out_dir` of an earlier one, and a resume from a checkpoint path
    older than some in `out_dir`: either would overwrite them one by one."""
    if not resume and (latest := find_latest(out_dir)):
        raise FileExistsError(
            f"{out_dir} already holds checkpoints of an earlier run (the newest is {latest.name}); a fresh run would "
            "overwrite them one by one. Pass `--resume auto` to continue that run, or another --out_dir to start "
            "a new one."
        )
    if resume not in (False, True, "auto") and (later := later_checkpoints(out_dir, Path(resume))):
        raise FileExistsError(
            f"{out_dir} holds checkpoints of later steps than {Path(resume).name} ({', '.join(later)}): the resumed "
            "run would overwrite them one by one, and `--resume auto` would meanwhile pick them up. Pass another "
            "--out_dir for the resumed run, or move them away."
        )


def resume_from(resume: Any, out_dir: Path, trust_pickle: bool) -> Optional[Path]:
    """The checkpoint that `--resume` names: None for `false`, the newest whole one in `out_dir` for `true` or `auto`
    (`latest_to_resume`; None where there is none), else the path given."""
    if not resume:
        return None
    return latest_to_resume(out_dir, trust_pickle) if resume in (True, "auto") else Path(resume)


def fresh_state(model: Any, optimizer: Any, hparams: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """What a training checkpoint holds, before the first step: the model, the optimizer and the run's settings; the
    data position, the generators' states and the counts, which a resume restores; and a script's own `extra`
    entries."""
    return {
        "model": model,
        "optimizer": optimizer,
        "hparams": hparams,
        "train_dataloader": None,
        "rng": None,
        "iter_num": 0,
        "step_count": 0,
        "tokens_seen": 0,
        "skipped_steps": 0,
        **extra,
    }


def save_checkpoint(fabric: L.Fabric, path: Path, state: Dict[str, Any]) -> None:
    """`fabric.save(path, state)` through a temporary name, renamed into place once every process has written.

    The processes agree on the outcome: where one fails (a full disk on one node), every one raises, instead of the
    others waiting at the next collective until its timeout; the partial `.tmp` is removed and the checkpoints saved
    before stay as they were."""
    tmp = path.with_name(path.name + ".tmp")
    if fabric.global_rank == 0:
        remove(tmp)  # left by a crash during an earlier save
    fabric.barrier()
    error = None
    if isinstance(state.get("hparams"), dict):  # what says, apart from the digest, that it has one
        state = {**state, "hparams": {**state["hparams"], DIGESTS: "sha256"}}
    raised = False
    try:
        _save(fabric, tmp, state)
    except (OSError, RuntimeError) as e:
        error, raised = e, True
    except CheckpointException as e:  # a BaseException, raised on every process where one process' write failed
        own = e.failures.get(getattr(fabric, "global_rank", 0))
        error, raised = (own[0] if own else None), True
    failed_elsewhere = _failed_elsewhere(fabric, raised)  # also the barrier after the writes
    if error is not None or failed_elsewhere:
        if fabric.global_rank == 0 or error is not None:
            with contextlib.suppress(OSError):  # two processes may remove the same shared folder at once
                remove(tmp)
        raise _save_failure(tmp, error, "another process", state)
    if fabric.global_rank == 0:
        _publish(tmp, path)
    fabric.barrier()


# the entry of a sharded checkpoint's meta.pt that names the weights stored once: {name left out: name stored under}
TIED_WEIGHTS = "tied_weights"


def stored_once(model: Any) -> Dict[str, str]:
    """The names under which `model` holds a weight that it holds under another name too, each with that name
    (`GPT.tied_weights`; {} for another module)."""
    return model.tied_weights() if isinstance(model, GPT) else {}


def tied_record(path: Path, record: Any) -> Dict[str, str]:
    """The `TIED_WEIGHTS` entry of the sharded checkpoint `path`'s meta.pt, checked to map names to names."""
    if not (isinstance(record, dict) and all(isinstance(n, str) for item in record.items() for n in item)):
        raise ValueError(
            f"{path}/meta.pt holds {record!r} as {TIED_WEIGHTS!r}, not a mapping of weight names to weight names (as "
            "pretrain/tinyllama.py writes it): it was changed after training or written by another tool"
        )
    return record


def _training_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer, options=None):
    """The state dicts of `model` and `optimizer` under "model" and "optimizer", each weight once: the model's
    without the names of `stored_once(model)`, which it returns too. (The optimizer's state is keyed by one name per
    parameter already, the first of `named_parameters`: lm_head.weight for a tied head.)"""
    tied = stored_once(model)
    weights = {k: v for k, v in get_model_state_dict(model, options=options).items() if k not in tied}
    return {"model": weights, "optimizer": get_optimizer_state_dict(model, optimizer, options=options)}, tied


def _save(fabric: L.Fabric, path: Path, state: Dict[str, Any]) -> None:
    """`fabric.save(path, state)`; a sharded checkpoint of a model and its optimizer is written here as Lightning's
    `ModelParallelStrategy` writes one, with each weight once (`_training_tensors`), `meta.pt` naming those stored
    once."""
    model, optimizer = _unwrap_objects(state.get("model")), _unwrap_objects(state.get("optimizer"))
    strategy = getattr(fabric, "strategy", None)
    sharded = isinstance(strategy, ModelParallelStrategy) and strategy._save_distributed_checkpoint
    if not (sharded and isinstance(model, torch.nn.Module) and isinstance(optimizer, torch.optim.Optimizer)):
        fabric.save(path, state)
        return
    tensors, tied = _training_tensors(model, optimizer, StateDictOptions(cpu_offload=True))  # Lightning's options
    metadata = {k: v.state_dict() if isinstance(v, _Stateful) else v for k, v in state.items() if k not in tensors}
    path.mkdir(parents=True, exist_ok=True)
    dcp.save(tensors, checkpoint_id=path)
    if fabric.global_rank == 0:
        torch.save({**metadata, TIED_WEIGHTS: tied} if tied else metadata, path / "meta.pt")
    fabric.barrier()  # as `fabric.save` ends (`_failed_elsewhere` pairs its collectives with it)


def _publish(tmp: Path, path: Path) -> None:
    """Rank 0, once every process has written `tmp`: the digest of what they wrote, then the rename. A checkpoint
    under its name always has its digest."""
    write_checksums(tmp) if tmp.is_dir() else seal_zip(tmp)
    remove(path)
    tmp.rename(path)


def _save_failure(tmp: Path, error: Optional[BaseException], elsewhere: str, state: Any = None) -> BaseException:
    """The error a failed save of `state` raises: one line for a full disk or a location that cannot be written
    (`error`, raised here), or that it failed on `elsewhere` (`error` None)."""
    if error is None:
        return RuntimeError(
            f"Saving {tmp} failed on {elsewhere} (its error is in that process' output); fix that and resume with "
            f"--resume auto. {_kept(tmp).split('; ')[0]}"
        )
    if (refusal := _write_refusal(error, tmp, state)) is not None:
        refusal.__cause__ = error
        return refusal
    return error


def _kept(tmp: Path) -> str:
    """What a failed save into `tmp` left as it was, and what to do: only the checkpoints that exist are named."""
    if find_latest(tmp.parent) is None:
        return f"No checkpoint of this run was saved before (the partial {tmp.name} is removed): run it again"
    return f"The checkpoints saved before are intact (the partial {tmp.name} is removed); resume with --resume auto"


def _write_refusal(error: BaseException, tmp: Path, state: Any) -> Optional[BaseException]:
    """`write_failure`'s one line for a save into `tmp`, with the space it needs: the size of the newest checkpoint
    saved before, or without one the bytes of the tensors in `state`."""
    previous = find_latest(tmp.parent)
    needed = _disk_bytes(previous) if previous is not None else _tensor_bytes(state)
    return write_failure(error, tmp, needed or None, _kept(tmp))


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in `obj` (whole tensors: a DTensor counts every shard), modules' and optimizers'
    state included: about what a checkpoint of it takes on disk."""
    obj = _unwrap_objects(obj)  # Fabric's wrappers of the model and the optimizer
    if isinstance(obj, torch.nn.Module):  # a weight under two names is stored once
        obj = {name: tensor for name, tensor in obj.state_dict().items() if name not in stored_once(obj)}
    elif isinstance(obj, torch.optim.Optimizer):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return 0


def _failed_elsewhere(fabric: L.Fabric, failed_here: bool) -> bool:
    """Whether another process's save failed: a sum over the processes of who failed (one process: no). A process
    whose `fabric.save` raised first takes the barrier that ends a `fabric.save` elsewhere, so that the collectives
    pair up."""
    if getattr(fabric, "world_size", 1) == 1:
        return False
    if failed_here:
        fabric.barrier()
    failures = fabric.all_reduce(torch.tensor(float(failed_here), device=fabric.device), reduce_op="sum")
    return bool(failures.item() - float(failed_here) > 0)


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def prune_checkpoints(out_dir: Path, keep_last: Optional[int], saved: Optional[Path] = None) -> List[Path]:
    """Delete all but the `keep_last` newest checkpoints in `out_dir` (none if `keep_last` is None) and return them.

    Call it after a save has completed, with the checkpoint it wrote as `saved`: that one and the `keep_last - 1`
    before it are kept, and so is every later one (a run resumed from an older checkpoint saves below the steps of
    the run it replays, whose checkpoints it overwrites as it reaches them), the newest complete checkpoint, the one
    `--resume auto` would take, among them. Only names of `checkpoint_path`'s scheme (`step-` and 8 or more digits)
    are candidates: an unfinished `.tmp` save, a renamed checkpoint or another tool's file is never touched.
    """
    if keep_last is None or not out_dir.is_dir():
        return []
    ours = sorted((int(m[1]), p) for p in out_dir.iterdir() if (m := OWN_NAME.match(p.name)))
    newest = find_latest(out_dir)
    last = OWN_NAME.match(saved.name) if saved is not None else None
    if last is not None:
        ours = [(step, p) for step, p in ours if step <= int(last[1])]
    old = [p for _, p in ours[: max(len(ours) - keep_last, 0)] if p != newest]
    for path in old:
        remove(path)
    return old


def save_pruned(fabric: L.Fabric, out_dir: Path, saved: Path, keep_last: Optional[int], nonfinite_streak) -> None:
    """After a save: apply `--keep_last` on rank 0 and say what was deleted; not during a non-finite streak (a device
    tensor of the steps in a row that were skipped), whose earlier checkpoints are the ones to resume from."""
    if fabric.global_rank == 0 and not nonfinite_streak.item():
        if pruned := prune_checkpoints(out_dir, keep_last, saved):
            fabric.print(f"Deleted {', '.join(p.name for p in pruned)} (--keep_last {keep_last})")


########################
# Saving in the background
########################

# test hooks: the background save stops at a phase (to be killed there), or one process's write fails as on a full disk
SAVE_PAUSE_ENV = "LIT_GPT_TEST_SAVE_PAUSE"
SAVE_FAIL_ENV = "LIT_GPT_TEST_SAVE_FAIL_RANK"
SAVE_PHASES = ("staging", "writing", "publishing")


def _test_hook(phase: str, rank: int, path: Path) -> None:
    """`LIT_GPT_TEST_SAVE_PAUSE=PHASE`, `PHASE:STEP` (the save of that step only), `PHASE:STEP:SECONDS` (a pause of
    that many seconds instead of an hour) or `PHASE:STEP:SECONDS:RANK` (on that process only);
    `LIT_GPT_TEST_SAVE_FAIL_RANK=RANK` or `RANK:STEP`."""
    step = STEP_PATTERN.match(path.name.removesuffix(".tmp"))
    pause = os.environ.get(SAVE_PAUSE_ENV, "").split(":")
    here = len(pause) < 4 or pause[3] == str(rank)
    if pause[0] == phase and here and (len(pause) == 1 or (step and pause[1] == str(int(step[1])))):
        print(f"Checkpoint save paused at {phase} on rank {rank} ({SAVE_PAUSE_ENV})", file=sys.stderr, flush=True)
        time.sleep(float(pause[2]) if len(pause) > 2 else 3600)
    if phase == "writing" and os.environ.get(SAVE_FAIL_ENV) in (str(rank), f"{rank}:{int(step[1]) if step else ''}"):
        raise OSError(errno.ENOSPC, f"No space left on device ({SAVE_FAIL_ENV}={rank})")


class CheckpointSaver:
    """Writes the training checkpoints of a run: synchronously (`save_checkpoint`) or, with `background`, while
    training goes on.

    A background save waits for the one before to be published, copies the model and optimizer tensors to CPU memory
    (pinned on CUDA, and kept for the next save) behind the step on the device's stream, and returns. A thread then
    writes the copy under the `.tmp` name, in either layout and file format of a synchronous save; the processes agree
    on the outcome over a gloo group of their own (the training's collectives go on meanwhile over theirs); rank 0 adds
    the digests, renames the checkpoint into place and applies `--keep_last`. A crash or a kill at any moment leaves
    at most a `.tmp`, which `--resume auto` ignores. `wait()` returns once the save in flight is published and raises
    its error (one line for a full disk, naming the process that failed) on every process: call it at the same points
    on every process (`save` does, before the next save; the training loop before it stops on a signal and at the end
    of training).

    `in_flight()` says where the save in flight is (for the hang watchdog's report: a write that never ends, or a
    process that never agrees, stops the training at the next `wait()` until the watchdog ends the run).
    """

    def __init__(self, fabric: L.Fabric, out_dir: Path, keep_last: Optional[int], background: bool) -> None:
        self.fabric, self.out_dir, self.keep_last, self.background = fabric, out_dir, keep_last, background
        self._buffers: Dict[str, torch.Tensor] = {}  # the staging copies, kept from one save to the next
        self._thread: Optional[threading.Thread] = None
        # the save in flight: its name, when it began, its phase here, whether the training waits for it
        self._name: Optional[str] = None
        self._began, self._phase, self._waited = 0.0, "", False
        self._outcome: Tuple[Dict[int, Tuple[str, str]], Path] = ({}, out_dir)
        self._group = None
        if background and fabric.world_size > 1:
            # the writer thread's collectives must not interleave with the training's on the same communicator
            self._group = dist.new_group(backend="gloo")

    def save(self, path: Path, state: Dict[str, Any], prune: bool = True) -> None:
        """Save `state` (the training loop's: "model", "optimizer" and plain values) as the checkpoint `path`; prune
        older ones after it is complete, unless not `prune` (during a non-finite streak)."""
        fabric = self.fabric
        if not self.background:
            t0 = time.perf_counter()
            save_checkpoint(fabric, path, state)
            fabric.print(f"Saved {path} ({time.perf_counter() - t0:.2f}s)")
            if prune:
                self._prune(path)
            return
        self.wait()
        t0 = time.perf_counter()
        tmp = path.with_name(path.name + ".tmp")
        self._name, self._began, self._phase = path.name, time.monotonic(), "copying the state to memory"
        _test_hook("staging", fabric.global_rank, tmp)
        tensors, metadata = self._stage(state)
        copied = None
        if fabric.device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record()
        fabric.print(f"Saving {path} in the background (training stopped {time.perf_counter() - t0:.2f}s)")
        self._thread = threading.Thread(
            target=self._write,
            args=(tmp, path, tensors, metadata, copied, prune, time.perf_counter()),
            daemon=True,
            name="lit_gpt background save",  # its collectives are not the training's (lit_gpt.training.watchdog)
        )
        self._thread.start()

    def wait(self) -> None:
        """Block until the background save in flight (if any) is published; raise its error on every process."""
        if self._thread is None:
            return
        self._waited = True
        self._thread.join()
        self._thread, self._name, self._waited = None, None, False
        failures, tmp = self._outcome
        if failures:  # the same on every process: one line, naming the process that failed
            rank, (kind, line) = next(iter(failures.items()))
            where = f" on process {rank}" if self.fabric.world_size > 1 else ""
            message = f"Saving {tmp.name[: -len('.tmp')]} failed{where}: {line}"
            raise UserError(message) if kind == "refusal" else RuntimeError(message)

    def in_flight(self) -> Optional[str]:
        """Where the background save in flight is, in words (None when none is)."""
        name = self._name  # read once: the writer thread changes these
        if name is None:
            return None
        waits = "; the training waits for it" if self._waited else ""
        return f"background save of {name} in flight for {time.monotonic() - self._began:.0f}s: {self._phase}{waits}"

    def _prune(self, path: Path) -> None:
        if self.fabric.global_rank == 0 and (pruned := prune_checkpoints(self.out_dir, self.keep_last, path)):
            self.fabric.print(f"Deleted {', '.join(p.name for p in pruned)} (--keep_last {self.keep_last})")

    def _stage(self, state: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The model and optimizer state dicts as copies in CPU memory (DTensors stay DTensors, of copied shards; one
        process: plain tensors, as `fabric.save` writes them), and a deep copy of the other entries. A weight under
        two names is copied once (`_training_tensors`)."""
        model, optimizer = _unwrap_objects(state["model"]), _unwrap_objects(state["optimizer"])
        whole = self.fabric.world_size == 1
        tensors, tied = _training_tensors(model, optimizer)
        pin = self.fabric.device.type == "cuda"
        metadata = copy.deepcopy({k: v for k, v in state.items() if k not in ("model", "optimizer")})
        copied = self._copy(tensors, "", whole, pin)
        if whole:  # one file: the copy under both names, one tensor that torch.save writes once (as fabric.save)
            copied["model"].update({alias: copied["model"][own] for alias, own in tied.items()})
        elif tied:
            metadata[TIED_WEIGHTS] = tied
        return copied, metadata

    def _copy(self, obj: Any, key: str, whole: bool, pin: bool) -> Any:
        if isinstance(obj, dict):
            return {k: self._copy(v, f"{key}/{k}", whole, pin) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, f"{key}/{i}", whole, pin) for i, v in enumerate(obj))
        if isinstance(obj, DTensor):
            local = self._copy(obj.to_local(), key, whole, pin)
            if whole:  # one process: its shard is the whole tensor
                return local
            # not `DTensor.from_local`, which would move the copy back to the mesh's device (as torch's own staging)
            return DTensor(local, obj._spec, requires_grad=False)
        if isinstance(obj, torch.Tensor):
            buffer = self._buffers.get(key)
            if (
                buffer is None
                or buffer.shape != obj.shape
                or buffer.dtype != obj.dtype
                or buffer.stride() != obj.stride()
            ):
                buffer = self._buffers[key] = torch.empty_like(obj, device="cpu", pin_memory=pin)
            return buffer.copy_(obj.detach(), non_blocking=pin)
        return copy.deepcopy(obj)

    def _write(self, tmp, path, *args) -> None:
        """The writer thread: `_write_and_agree`, whose outcome is a failure unless it ends (an exception that escapes
        it, such as a collective whose peer died, used to leave the previous save's outcome: a success)."""
        rank = self.fabric.global_rank
        self._outcome = ({rank: ("error", "its background write ended without a result")}, tmp)
        try:
            self._write_and_agree(tmp, path, *args)
        except BaseException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            line = f"{type(e).__name__}{': ' + first if first else ''} (another process may have stopped)"
            self._outcome = ({rank: ("error", line)}, tmp)
            self._phase = "failed"

    def _write_and_agree(self, tmp, path, tensors, metadata, copied, prune, started) -> None:
        rank, error = self.fabric.global_rank, None
        try:
            if rank == 0:
                remove(tmp)  # left by a crash during an earlier save
            if copied is not None:
                copied.synchronize()  # the copies queued behind the step
        except Exception as e:
            error = e
        self._phase = "agreeing with the other processes to begin"
        failed = self._agree(error, tmp, tensors)  # also: no process writes there before the removal
        try:
            self._phase = "writing"
            if failed:
                pass
            elif self.fabric.world_size == 1:
                torch.save({**tensors, **metadata}, tmp)
                _test_hook("writing", rank, tmp)  # written, not yet agreed on
            else:
                writer = _HookedWriter(tmp, rank, self._written)
                try:
                    dcp.save(tensors, storage_writer=writer, process_group=self._group)
                except CheckpointException as e:  # raised on every process when one failed: this one's own error
                    error = writer.error or (e if rank in e.failures else None)
                if error is None and rank == 0:
                    torch.save(metadata, tmp / "meta.pt")
        except Exception as e:
            error = error or e
        self._written()
        failed = failed or self._agree(error, tmp, tensors)
        if not failed and rank == 0:
            try:
                self._phase = "publishing (digests, rename)"
                _test_hook("publishing", rank, tmp)
                _publish(tmp, path)
                self.fabric.print(f"Saved {path} (written in {time.perf_counter() - started:.2f}s in the background)")
                if prune:
                    self._prune(path)
            except Exception as e:
                error = e
        self._phase = "agreeing with the other processes on its publication"
        failed = failed or self._agree(error, tmp, tensors)
        if failed and (rank == 0 or error is not None) and not path.exists():
            with contextlib.suppress(OSError):  # two processes may remove the same shared folder at once
                remove(tmp)
        self._outcome = (failed, tmp)
        self._phase = "done"

    def _written(self) -> None:
        self._phase = "written here, waiting for the other processes to finish their part and agree"

    def _agree(self, error: Optional[BaseException], tmp: Path, tensors: Any = None) -> Dict[int, Tuple[str, str]]:
        """rank -> ("refusal" or "error", one line) of the processes whose save failed, the same on every process
        (gathered over the saver's own gloo group): a full disk or a location that cannot be written is a refusal."""
        line = None
        if error is not None:
            refusal = _write_refusal(error, tmp, tensors)
            line = (
                ("refusal", str(refusal)) if refusal else ("error", f"{type(error).__name__}: {error}".splitlines()[0])
            )
        if self._group is None:
            return {self.fabric.global_rank: line} if line else {}
        lines: List[Any] = [None] * self.fabric.world_size
        dist.all_gather_object(lines, line, group=self._group)
        return {rank: line for rank, line in enumerate(lines) if line is not None}


class _HookedWriter(FileSystemWriter):
    """torch.distributed.checkpoint's file writer, with the test hooks of a background save (`_test_hook`); it keeps
    the error of this process's write, which DCP raises on every process wrapped with the others'."""

    def __init__(self, path: Path, rank: int, written: Callable[[], None]) -> None:
        super().__init__(path)
        self.rank, self.error, self.written = rank, None, written

    def write_data(self, plan: Any, planner: Any) -> Any:
        try:
            _test_hook("writing", self.rank, Path(self.path))
            result = super().write_data(plan, planner)
        except Exception as e:
            self.error = e
            raise
        self.written()  # DCP gathers every process's result next
        return result


########################
# Sharded checkpoints read through torch.distributed.checkpoint, without running code
########################


class DCPReader(FileSystemReader):
    """torch.distributed.checkpoint's file reader, with `.metadata` read by `read_dcp_metadata` and the values that
    are not tensors (optimizer hyperparameters) by `torch.load(weights_only=True)`, unless `trust_pickle`."""

    def __init__(self, path: Path, trust_pickle: bool = False) -> None:
        super().__init__(path)
        self.trust_pickle = trust_pickle

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        metadata = read_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))), self.trust_pickle)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def planner(self) -> DefaultLoadPlanner:
        return DefaultLoadPlanner() if self.trust_pickle else _WeightsOnlyLoadPlanner()


class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        # torch's planner unpickles these in full; what passes `weights_only` is saved again for it to read
        safe = io.BytesIO()
        torch.save(torch.load(value, weights_only=True), safe)
        safe.seek(0)
        super().load_bytes(read_item, safe)


def dcp_load(state: Dict[str, Any], path: Path, trust_pickle: bool = False, **kwargs: Any) -> None:
    """`torch.distributed.checkpoint.load(state, ...)` from the directory `path` through `DCPReader`."""
    reader = DCPReader(path, trust_pickle)
    dcp.load(state, storage_reader=reader, planner=reader.planner(), **kwargs)


def _load_sharded(path: Path, state: Dict[str, Any], trust_pickle: bool) -> Dict[str, Any]:
    """What `fabric.load(path, state)` does for a sharded checkpoint (Lightning's
    `strategies.model_parallel._load_checkpoint`), with `dcp_load` instead of a plain `dcp.load`."""
    model, optimizer = _unwrap_objects(state["model"]), _unwrap_objects(state["optimizer"])
    metadata = load_single_file(path / "meta.pt", trust_pickle)
    tied = tied_record(path, metadata.pop(TIED_WEIGHTS, {}))  # the names stored once (none in those written before)
    if tied and tied != stored_once(model):  # another model's, or planted: a weight would be loaded into another
        raise ValueError(
            f"{path}/meta.pt records {tied} as {TIED_WEIGHTS!r} (weights stored once), but the model holds "
            f"{stored_once(model) or 'no weight'} under two names: the checkpoint was changed after training or "
            "written by another tool; resume from an earlier checkpoint"
        )
    model_state = {"model": {k: v for k, v in get_model_state_dict(model).items() if k not in tied}}
    dcp_load(model_state, path, trust_pickle)
    weights = model_state["model"]
    model.load_state_dict({**weights, **{alias: weights[own] for alias, own in tied.items()}}, strict=True)
    optimizer_state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp_load(optimizer_state, path, trust_pickle)
    options = StateDictOptions(cpu_offload=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state["optimizer"], options=options)
    for key in state.keys() - {"model", "optimizer"}:  # each there: `load_checkpoint` checked
        state[key] = metadata.pop(key)
    return metadata


def load_metadata(path: Path, trust_pickle: bool = False) -> Dict[str, Any]:
    """Everything in the checkpoint at `path` except the model and optimizer tensors (cheap: no tensor is read).
    A sharded checkpoint's `.metadata` is read too, so that one that would run code is refused here."""
    if path.is_dir():
        if not (path / "meta.pt").is_file() or not (path / ".metadata").is_file():
            inner = find_latest(path)
            if inner is not None:  # the out dir of a run, not one of its checkpoints
                raise FileNotFoundError(
                    f"{path} is a directory of checkpoints, not one: pass one of them (the newest is {inner}), or "
                    f"--resume auto with --out_dir {path} to continue that run in it"
                )
            raise FileNotFoundError(f"{path} is not a complete sharded checkpoint: it has no meta.pt or .metadata")
        read_dcp_metadata(path / ".metadata", trust_pickle)
        return load_single_file(path / "meta.pt", trust_pickle)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; pass `--resume auto` to pick the latest in --out_dir")
    checkpoint = load_single_file(path, trust_pickle)  # one-line errors for pickled objects and truncated files
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds {type(checkpoint).__name__}, not a training checkpoint (a dict)")
    return {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer")}


# the settings that litdata's saved loader position (of a checkpoint from before the global order) holds only under
LOADER_SETTINGS = ("micro_batch_size", "num_workers", "seed")


def recorded_train_sources(hparams: Dict[str, Any]) -> Optional[list]:
    """The training sources that a run's `hparams` record (None where they record none)."""
    return hparams.get("train_sources")


def check_compatible(
    path: Path,
    metadata: Dict[str, Any],
    model_config: Dict[str, Any],
    world_size: int,
    run_hparams: Optional[Dict[str, Any]] = None,
    recorded_sources: Callable[[Dict[str, Any]], Optional[list]] = recorded_train_sources,
) -> None:
    """Refuse to resume from a checkpoint of another model, or (given this run's `run_hparams`) of other data or
    another data order (`--seed`). A checkpoint whose data position is a cursor into the global order
    (`lit_gpt.data.order`) resumes on any number of processes, micro-batch size and loader workers; one written
    before (litdata's position) only on its own number, micro-batch size and workers. `recorded_sources(hparams)`
    reads the training sources of the checkpoint's hparams (`lit_gpt.data.loaders.recorded_sources` knows those of
    runs before --train_data)."""
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
    elastic = hparams.get("data_order") == ORDER
    if "data_order" in hparams and not elastic:
        raise ValueError(
            f"{path} keeps its data position in order {hparams['data_order']!r}, which this version of lit_gpt does "
            f"not know (it knows {ORDER!r}): resume it with the version that wrote it"
        )
    if not elastic and hparams.get("world_size") != world_size:
        raise ValueError(
            f"{path} was written by {hparams.get('world_size')} processes, this run has {world_size}. It was saved "
            "before elastic resume, so its data position (litdata's) is tied to the number of processes: resume it "
            "with the same --devices × --num_nodes; its next checkpoint does not resume elsewhere either."
        )
    if run_hparams and run_hparams.get("train_sources") is not None:
        check_same_sources(path, recorded_sources(hparams), run_hparams["train_sources"])
    if run_hparams and run_hparams.get("train_fingerprints") is not None:
        check_same_data(path, hparams.get("train_fingerprints"), run_hparams["train_fingerprints"])
    if run_hparams and run_hparams.get("train_contents") is not None:
        what = "the tokens in its chunks differ, its index.json does not: prepared again from other text?"
        check_same_data(path, hparams.get("train_contents"), run_hparams["train_contents"], what)
    if run_hparams and run_hparams.get("separators") is not None:
        check_same_separators(path, hparams, run_hparams["separators"])
    if run_hparams:
        check_same_attention_mask(path, hparams, run_hparams)
    if elastic and run_hparams and "seed" in hparams and hparams["seed"] != run_hparams.get("seed"):
        raise ValueError(
            f"{path} was written with --seed {hparams['seed']}, this run has --seed {run_hparams.get('seed')}: the "
            f"seed orders the data, so the resumed run would see other sequences. Resume with --seed {hparams['seed']}"
        )
    settings = () if elastic else LOADER_SETTINGS
    changed = [k for k in settings if k in hparams and k in run_hparams and hparams[k] != run_hparams[k]]
    if changed:
        then, now = (" ".join(f"--{k} {h[k]}" for k in changed) for h in (hparams, run_hparams))
        raise ValueError(
            f"{path} was written with {then}, this run has {now}. The data loader's saved position is only valid "
            f"with the same micro-batch size, loader workers and data seed: resume with {then}."
        )


def check_same_data(
    path: Path,
    then: Optional[Dict[str, str]],
    now: Dict[str, str],
    what: str = "its index.json differs: prepared again?",
) -> None:
    """Refuse to resume on a training folder whose contents changed since the checkpoint was saved: `then` and `now`
    map each folder to a digest of what it holds (`lit_gpt.data.loaders.data_fingerprints`, `data_contents`; None: a
    checkpoint from before they were recorded, resumed on what it records); `what` says which differs."""
    for folder, digest in (then or {}).items():
        if folder in now and now[folder] != digest:
            raise ValueError(
                f"{folder} has changed since {path} was saved ({what}): the data "
                "loader's saved position would point into other data. Restore that folder as the run trained on it, "
                "or start a new run from the checkpoint's weights with another --out_dir."
            )


def check_same_separators(path: Path, hparams: Dict[str, Any], separators: dict) -> None:
    """Refuse to resume on data prepared with other document separators than the checkpoint's (a folder prepared
    again with other --bos/--eos); a checkpoint from before they were recorded was trained with the default."""
    then = Separators.from_dict(hparams.get("separators", DEFAULT_SEPARATORS.to_dict()), str(path))
    now = Separators.from_dict(separators, "this run's data")
    if then != now:
        raise ValueError(
            f"{path} was trained on documents with {then}, this run's data has {now}: prepare the data as that run's "
            "was (the prepare scripts' --bos/--eos), or start a new run from its weights with another --out_dir."
        )


def attention_mask_flags(hparams: Dict[str, Any]) -> str:
    """The document-mask flags of a run's hparams, as the command line spells them (checkpoints written before the
    flags existed trained across documents)."""
    if not hparams.get("document_mask"):
        return "--document_mask false"
    return (f"--document_mask true --document_positions {str(bool(hparams.get('document_positions'))).lower()} "
            f"--eos_id {hparams.get('eos_id')}")  # fmt: skip


def check_same_attention_mask(path: Path, hparams: Dict[str, Any], run_hparams: Dict[str, Any]) -> None:
    """Refuse to resume a run with another attention mask than it was trained with: the resumed run would be another
    run, as with another data mix."""
    then, now = attention_mask_flags(hparams), attention_mask_flags(run_hparams)
    if then != now:
        raise ValueError(
            f"{path} was trained with {then}, this run has {now}. Resume with {then}, or start a new run (another "
            "--out_dir, --initial_checkpoint_dir for its weights)"
        )


def check_same_sources(path: Path, then: Optional[list], sources: list) -> None:
    """Refuse to resume on other training sources or weights than the checkpoint's (`then`; None: not recorded):
    litdata restores each source's position, not the mix, so the resumed run would not be the run that was
    interrupted."""
    if then is None or [tuple(s) for s in then] == [tuple(s) for s in sources]:
        return

    def mix(pairs) -> str:
        return "{" + ", ".join(f"{folder}: {weight:g}" for folder, weight in pairs) + "}"

    raise ValueError(
        f"{path} was trained on {mix(then)}, this run reads {mix(sources)}. The data loader's saved position holds "
        f"each source's place, not the mix: resume with --train_data \"{mix(then)}\" (or that run's --data_dir and "
        "--data_weights), or start a new run from its weights with another --out_dir."
    )


OPTIONAL_ENTRIES = ("spike_guard",)


def load_checkpoint(
    fabric: L.Fabric,
    path: Path,
    state: Dict[str, Any],
    model_config: Dict[str, Any],
    trust_pickle: bool = False,
    recorded_sources: Callable[[Dict[str, Any]], Optional[list]] = recorded_train_sources,
    verify: bool = True,
) -> None:
    """Check `path` against its digest on rank 0 (unless `verify` is False: `latest_to_resume` did) and this run
    (`check_compatible`), then load it into `state` in place (model, optimizer and the rest)."""
    if verify:
        on_rank_zero(fabric, lambda: verify_checkpoint(path))
    metadata = load_metadata(path, trust_pickle)
    check_compatible(path, metadata, model_config, fabric.world_size, state["hparams"], recorded_sources)
    # entries added since checkpoints were first written: one written before keeps the run's initial value
    absent = {key: state.pop(key) for key in OPTIONAL_ENTRIES if key in state and key not in metadata}
    missing = sorted(k for k in state if k not in ("model", "optimizer") and k not in metadata)
    if missing:  # before any weight is read
        where = path / "meta.pt" if path.is_dir() else path
        raise ValueError(
            f"{where} lacks {missing}: it was changed after training or is not a checkpoint of this script; resume "
            "from another checkpoint"
        )
    note = precision_note(path, metadata["hparams"].get("precision"), (state["hparams"] or {}).get("precision"))
    if note:
        fabric.print(note, file=sys.stderr)  # once, on rank 0
    if path.is_dir():
        remainder = _load_sharded(path, state, trust_pickle)
        fabric.barrier()
    else:
        remainder = fabric.load(path, state, weights_only=not trust_pickle)
    state.update(absent)
    if remainder:
        fabric.print(f"Ignored entries of {path.name}: {sorted(remainder)}")


def precision_note(path: Path, then: Optional[str], now: Optional[str]) -> Optional[str]:
    """The line that says a resume changes the --precision that `path` was written with (the weights were cast
    without a word), or None. bf16-true keeps the weights and optimizer states in bfloat16, the others in float32."""
    if then is None or now is None or then == now:
        return None
    dtypes = ["bfloat16" if p == "bf16-true" else "float32" for p in (then, now)]
    cast = (
        f"its weights and optimizer states are cast from {dtypes[0]} to {dtypes[1]}"
        if dtypes[0] != dtypes[1]
        else f"the weights stay {dtypes[0]}, the computation changes"
    )
    return (
        f"Note: {path.name} was written with --precision {then}, this run has --precision {now}: {cast}. Resume "
        f"with --precision {then} to continue as before"
    )


########################
# The model weights of a training checkpoint, read without a process group
########################


def training_checkpoint_shapes(path: Path, trust_pickle: bool = False) -> Dict[str, torch.Size]:
    """Names (wrapper prefixes stripped) and shapes of the model weights in a training checkpoint, read without
    loading any tensor."""
    if is_distributed_checkpoint(path):
        return {name: meta.size for name, (_, meta) in _dcp_model_entries(path, trust_pickle).items()}
    return {name: t.shape for name, t in _single_file_model(path, trust_pickle).items()}


def training_checkpoint_nbytes(path: Path, trust_pickle: bool = False, tied: bool = False) -> int:
    """Bytes of the model weights of a training checkpoint, in the dtype saved, read without loading any tensor; with
    `tied` (`config.tie_embeddings`) the head, the embedding's tensor under a second name, which a lit checkpoint
    writes once, is not counted."""
    skip = {"lm_head.weight"} if tied else set()
    if is_distributed_checkpoint(path):
        entries = _dcp_model_entries(path, trust_pickle)
        return sum(
            meta.size.numel() * meta.properties.dtype.itemsize for k, (_, meta) in entries.items() if k not in skip
        )
    return sum(t.nbytes for k, t in _single_file_model(path, trust_pickle).items() if k not in skip)


def training_checkpoint_tensors(
    path: Path, group_bytes: int = 2**30, trust_pickle: bool = False
) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) for every model weight of a training checkpoint, wrapper prefixes stripped.

    A single file is memory-mapped. A distributed checkpoint is consolidated without a process group: the DCP
    metadata lists every weight and its global shape, and the weights are read in groups of about `group_bytes`,
    so that the optimizer state is never read and only one group is in flight at a time. Its `.metadata` pickle is
    read without running code unless `trust_pickle` (`DCPReader`).
    """
    if not is_distributed_checkpoint(path):
        yield from _single_file_model(path, trust_pickle).items()
        return
    names: Dict[str, List[str]] = {}  # each stored weight's names: a weight stored once is read once, for both
    entries = _dcp_model_entries(path, trust_pickle)
    for name, (fqn, _) in entries.items():
        names.setdefault(fqn, []).append(name)
    group: Dict[str, torch.Tensor] = {}
    size = 0
    for i, fqn in enumerate(names):
        meta = entries[names[fqn][0]][1]
        group[fqn] = torch.empty(meta.size, dtype=meta.properties.dtype)
        size += group[fqn].nbytes
        if size >= group_bytes or i == len(names) - 1:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
                dcp_load(group, path, trust_pickle, no_dist=True)
            for key, tensor in group.items():
                for name in names[key]:
                    yield name, tensor
            group, size = {}, 0


def training_checkpoint_config(path: Path, config_name: Optional[str] = None, trust_pickle: bool = False) -> Config:
    """The model config a training checkpoint was trained with.

    `pretrain/tinyllama.py` saves it as `hparams["model_config"]` (with the run's `--block_size`): in the file of a
    single-file checkpoint, in `meta.pt` of a sharded one. `config_name`, when given, is checked against it. A
    checkpoint without it (an older one, or another tool's) needs `config_name`, which is looked up in the registry.
    """
    hparams = training_hparams(path, trust_pickle)
    saved = hparams.get("model_config")
    if saved is None:
        if config_name is None:
            raise ValueError(
                f"{str(path)!r} does not record the model config it was trained with (no hparams['model_config']); "
                "pass the registered name it was trained as, for example --config_name tiny-llama-1.1b"
            )
        return Config.from_name(config_name)
    try:
        config = Config(**saved)
    except TypeError as e:  # written by a version of `Config` with other fields
        known = set(Config.__dataclass_fields__)
        raise ValueError(
            f"{str(path)!r} records a model config this version of lit_gpt cannot read ({e}; unknown fields: "
            f"{sorted(set(saved) - known)}). Convert it with the version that trained it."
        ) from None
    if config_name is not None and config_name not in (config.name, hparams.get("model_name")):
        raise ValueError(
            f"--config_name {config_name!r} does not match {str(path)!r}, which was trained as {config.name!r}; "
            f"pass --config_name {config.name} or leave it out to use the config saved in the checkpoint"
        )
    return config


def training_checkpoint_separators(path: Path, trust_pickle: bool = False) -> Separators:
    """The document separators a training checkpoint was trained with (`hparams["separators"]`, which
    `pretrain/tinyllama.py` reads from the data's `prepare.json`); a checkpoint without them was trained before they
    were recorded, on data prepared with the default (eos after each document)."""
    recorded = training_hparams(path, trust_pickle).get("separators")
    return DEFAULT_SEPARATORS if recorded is None else Separators.from_dict(recorded, f"{path}'s hparams")


def _single_file_model(path: Path, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    state = load_single_file(path, trust_pickle)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{str(path)!r} is neither a state dict nor a training checkpoint with the state dict under 'model'"
        )
    return {strip_wrapper_prefixes(k): v for k, v in state.items()}


def _dcp_model_entries(path: Path, trust_pickle: bool = False) -> Dict[str, tuple]:
    """stripped name -> (name in the checkpoint, TensorStorageMetadata) of the weights under the "model" key, a weight
    stored once (`TIED_WEIGHTS`) under each of its names."""
    metadata = read_dcp_metadata(path / ".metadata", trust_pickle)
    entries = {
        strip_wrapper_prefixes(k[len("model.") :]): (k, meta)
        for k, meta in metadata.state_dict_metadata.items()
        if k.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    if not entries:
        some = ", ".join(list(metadata.state_dict_metadata)[:5])
        raise ValueError(
            f"The distributed checkpoint {str(path)!r} has no weights under the 'model' key (it has {some}, ...); "
            "save it with `fabric.save(path, {'model': model, ...})`"
        )
    meta = path / "meta.pt"
    tied = tied_record(path, load_single_file(meta, trust_pickle).get(TIED_WEIGHTS, {}) if meta.is_file() else {})
    if any(own not in entries for own in tied.values()):
        raise ValueError(
            f"{path}/meta.pt records {tied} as {TIED_WEIGHTS!r} (weights stored once), but the checkpoint holds no "
            f"weight {sorted(set(tied.values()) - set(entries))}: it was changed after training or written by another "
            "tool"
        )
    entries.update({alias: entries[own] for alias, own in tied.items() if alias not in entries})
    return entries


def load_lit_weights(fabric: L.Fabric, model: torch.nn.Module, model_file: Path) -> None:
    """The weights of a lit checkpoint's `model_file` into `model` set up by `fabric` (sharded or not), strictly:
    read as `load_lit_state_dict` reads them (tensors only, without running code, memory-mapped: lit-gpt's
    `incremental_save` files and litgpt's names too), each tensor then written into its shards."""
    state_dict = load_lit_state_dict(model_file)
    _load_raw_module_state(state_dict, _unwrap_objects(model), world_size=fabric.world_size, strict=True)
