"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT), a scheduler's SIGTERM, or SLURM's early warning (SIGUSR1,
`sbatch --signal=USR1@120`).

The handler only records the signal. At each optimizer-step boundary the training loop asks `StopSignal.agreed()`,
which all-reduces (max) the record of every process, so that every process stops after the same step, saves the same
checkpoint and exits. A signal may reach only some processes: a `kill` of the launching process, or a launcher
that forwards it to some ranks. A second signal of the same kind stops at once (the default action).
"""

import shlex
import signal
import sys
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """Records the first of `STOP_SIGNALS` that this process receives, from construction until `restore()`."""

    def __init__(self, device: torch.device) -> None:
        self.received: Optional[signal.Signals] = None
        self.device = device
        self._pending = None  # the CUDA event after which `_host` holds the last all-reduced flag, not yet read
        self._host = torch.zeros(1).pin_memory() if device.type == "cuda" else None
        self._agreed = False
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == self.received:
            signal.signal(signum, self._previous[signum])  # a second one: stop now, as without this handler
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum)
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return  # a Ctrl-C in a terminal reaches every process: say it once
        try:
            print(
                f"Received {self.received.name}: stopping after the current optimizer step, with a checkpoint "
                f"(send {self.received.name} again to stop at once, without one)",
                file=sys.stderr,
                flush=True,
            )
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
    unexpectedly" before it could save. Workers still end with their parent."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


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
