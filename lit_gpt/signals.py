"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT), a scheduler's SIGTERM, or SLURM's early warning (SIGUSR1,
`sbatch --signal=USR1@120`).

The handler only records the signal. At each optimizer-step boundary the training loop asks `StopSignal.agreed()`,
which all-reduces (max) the record of every process, so that every process stops after the same step, saves the same
checkpoint and exits. A signal may reach only some processes: a `kill` of the launching process, or a launcher
that forwards it to some ranks. A second signal of the same kind stops at once, with one line that says what was not
saved (`StopSignal.saving` tells it a save is under way) and the exit code a shell expects (130, 143); a third one
has the default action.

Child processes (data-loader and preparation workers) die with the process that started them, however it ends
(`die_with_parent`, `end_children_at_exit`): a worker left behind would keep a crashed run from exiting, or write on.
"""

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """Records the first of `STOP_SIGNALS` that this process receives, from construction until `restore()`."""

    def __init__(self, device: torch.device, saved_before: Callable[[], bool] = lambda: True) -> None:
        self.received: Optional[signal.Signals] = None
        self.saved_before = saved_before  # whether the run has a checkpoint to resume from (what a stop at once says)
        self.device = device
        self._pending = None  # the CUDA event after which `_host` holds the last all-reduced flag, not yet read
        self._host = torch.zeros(1).pin_memory() if device.type == "cuda" else None
        self._agreed = False
        self._saving: Optional[Path] = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    @contextlib.contextmanager
    def saving(self, path: Path) -> Iterator[None]:
        """Around the save of the checkpoint `path`: a second signal during it says that `path` was not saved."""
        self._saving = path
        try:
            yield
        finally:
            self._saving = None

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and signum == self.received:
            # a second one: stop now, in one line (the default action was a KeyboardInterrupt traceback from wherever
            # the run was, inside a save as well); a third one has the default action
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            if (saved := self._saving) is not None:
                what = (f"while saving {saved.name}: stopped at once, and {saved.name} was not saved (its partial "
                        f"{saved.name}.tmp is never resumed from; the next save removes it)")  # fmt: skip
            else:
                what = "again: stopped at once, without a checkpoint of the steps since the last one"
            if self.saved_before():
                after = "The checkpoints saved before are intact: resume with --resume auto"
            else:
                after = "No checkpoint of this run was saved before: run it again"
            self._say(f"Received {name} {what}. {after}")
            raise SystemExit(128 + signum)
        self.received = signal.Signals(signum)
        self._say(
            f"Received {name}: stopping after the current optimizer step, with a checkpoint (send {name} again to "
            "stop at once, without one)"
        )

    @staticmethod
    def _say(message: str) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return  # a Ctrl-C in a terminal reaches every process: say it once
        try:
            print(message, file=sys.stderr, flush=True)
        except RuntimeError:  # the signal came while this process wrote to stderr (a reentrant write)
            pass

    def stopped_message(self, step: int, max_steps: int, checkpoint) -> str:
        """What a run stopped by a signal prints last: which signal, where, and the command that resumes it."""
        by = self.received.name if self.received else "a signal to another process"
        return (f"Stopped by {by} after step {step} of {max_steps}; the checkpoint to resume from is {checkpoint}. "
                f"Resume with:\n    {resume_command()}")  # fmt: skip

    def agreed(self) -> bool:
        """Whether any process has received a stop signal, the same answer on every process.

        Call it on every process at the same points. On CUDA, the all-reduce that a call starts is read by the next
        call (from pinned memory, once its event has passed), so that the host never waits for the step the device is
        still computing; a signal is then acted on one or two steps after it came. Elsewhere the answer is current.
        """
        if self._agreed:
            return True
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            self._agreed = self.received is not None
            return self._agreed
        if self._pending is not None:
            self._pending.synchronize()
            self._pending = None
            self._agreed = bool(self._host.item())
            if self._agreed:
                return True
        # `torch.full` launches a fill kernel; a copy of a host value to the GPU would wait for the queued step
        flag = torch.full((1,), float(self.received is not None), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.device.type != "cuda":
            self._agreed = bool(flag.item())
            return self._agreed
        self._host.copy_(flag, non_blocking=True)
        self._pending = torch.cuda.Event()
        self._pending.record()
        return False

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """For data-loader worker processes (`worker_init_fn`): a Ctrl-C in a terminal, or SLURM's signal to every
    process of a job step, would otherwise end them, and the training process with "DataLoader worker exited
    unexpectedly" before it could save. A worker still ends with its parent: killed when the parent dies
    (`die_with_parent`), killed by the parent when it exits (`end_children_at_exit`)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    die_with_parent(os.getppid(), kill=True)


def die_with_parent(parent_pid: int, kill: bool = False) -> None:
    """End this process when `parent_pid` ends, even by SIGKILL: an orphan would go on writing chunks, or training
    alone, or hold a run's out dir. On Linux the kernel sends a signal when the parent dies (`PR_SET_PDEATHSIG`): a
    SIGKILL with `kill` (a process that handles stop signals its own way, or ignores them), else a SIGTERM, on which
    the process also ends the processes multiprocessing started in it. Elsewhere a thread watches the parent id, which
    changes when the parent is gone."""
    if sys.platform.startswith("linux") and (kill or threading.current_thread() is threading.main_thread()):
        PR_SET_PDEATHSIG = 1
        if not kill:
            signal.signal(signal.SIGTERM, _end_worker)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL if kill else signal.SIGTERM)
    else:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1)
            _end_worker()

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        _end_worker()


LAUNCHER_PID = "LIT_GPT_LAUNCHER_PID"


def die_with_launcher() -> None:
    """Call before `fabric.launch()`: the processes it starts (the other ranks of this node, which run the script
    again) die with the process that started them, even by SIGKILL, instead of training on alone, orphaned."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is not None and int(launcher) == os.getppid() and os.environ.get("LOCAL_RANK", "0") != "0":
        die_with_parent(int(launcher), kill=True)
    else:
        os.environ[LAUNCHER_PID] = str(os.getpid())  # inherited by the processes it starts


def _end_worker(*_) -> None:
    for child in multiprocessing.active_children():  # litdata's remover process waits for work forever
        child.kill()
    os._exit(1)


def end_children_at_exit() -> None:
    """Kill this process's multiprocessing children (data-loader workers) when it exits, before multiprocessing's own
    exit handler would wait for them: a worker ignores the SIGTERM that handler sends (`ignore_stop_signals`), so a
    run that ends with an exception, the loader's iterator still alive in the traceback, would wait forever. Call it
    once the workers' module is imported; registered once."""
    global _ending_children
    if not _ending_children:
        atexit.register(_kill_children)  # atexit runs last-registered first: before multiprocessing's handler
        _ending_children = True


_ending_children = False


def _kill_children() -> None:
    # torch's SIGCHLD handler raises "DataLoader worker ... is killed by signal: Killed" for a worker that ends:
    # here that is what is asked, and its traceback would follow the run's own last word
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


def resume_command(argv: Sequence[str] = ()) -> str:
    """This process's command line (`sys.argv` by default) with `--resume auto` in place of any `--resume`."""
    argv: List[str] = list(argv or sys.argv)
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join(["python", argv[0], *args, "--resume", "auto"])
