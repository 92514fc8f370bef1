"""The hang watchdog: a run whose steps stop completing (a dead node, a rank stuck in a collective, a wedged
filesystem) ends every process with a report instead of waiting for the collective timeout.

`Watchdog` is a thread of each process. The training loop calls `beat()` whenever it completes an optimizer step (and
around validation and saves, whose pauses are not hangs). When no beat came within the limit, the process writes
`<out_dir>/logs/hang-rank<R>.txt`: which rank, the step it last completed, the last collective the training entered
(name, sequence number, and whether it returned), the checkpoint being written in the background if one is (its phase: a
write that never ends, or a process that never agrees, stops the training at its next save, which waits for it), the
Python stack of every thread (`faulthandler`), and the ranks that did not arrive; it prints one line naming the file,
and exits with code 124 so that the scheduler restarts the job (`--resume auto` takes the last complete checkpoint). The
processes compare notes through the rendezvous store (a TCP key-value store that works when the collectives do not): a
rank that entered fewer collectives than the others is the one that did not arrive; a rank that wrote no note is dead or
stuck outside Python.

The limit is `--watchdog_timeout` seconds, or by default `MULTIPLE` times the median of the recent step times, at
least `FLOOR` seconds (three times that before the first `SETTLE` steps, which include compilation).

The last collective is recorded by wrapping torch.distributed's collective functions (`record_collectives`), which
FSDP2, Fabric and DCP call through the module: the name and a counter per call, nothing else.
"""

import atexit
import contextlib
import faulthandler
import functools
import inspect
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

EXIT_CODE = 124  # as coreutils' `timeout`
FLOOR = 600.0  # seconds: the default limit's least value
MULTIPLE = 20  # the default limit in step times
SETTLE = 3  # steps (compilation, warm-up) before the step time is measured
HANG_ENV = "LIT_GPT_TEST_HANG"  # test hook: `RANK:STEP` sleeps in that rank's step STEP (`hang_for_test`)
# torch.distributed's collective functions are those whose names hold one of these (FSDP2 calls all_gather_single)
COLLECTIVE_WORDS = ("gather", "scatter", "reduce", "broadcast", "barrier", "all_to_all", "send", "recv")

BACKGROUND = "lit_gpt background"  # the name of a thread whose collectives are not the training's

# the training's last collective: name, how many it entered, when, whether it returned
_last: Dict[str, object] = {"name": None, "count": 0, "since": 0.0, "returned": True}


def record_collectives() -> None:
    """Wrap torch.distributed's collective functions once, so that the watchdog can say which one a hung process is
    in. Calls of background threads (`BACKGROUND`: a checkpoint write, over a group of its own) and inside compiled
    code are not recorded; those of the autograd engine's threads (FSDP2's backward hooks on CUDA) are."""
    for name in list(vars(dist)):
        if name.startswith("_") or name == "reduce_op" or not any(word in name for word in COLLECTIVE_WORDS):
            continue
        fn = getattr(dist, name)
        if not inspect.isfunction(fn):
            continue
        if not getattr(fn, "_watchdog_recorded", False):
            setattr(dist, name, _recorded(fn, name))


def _recorded(fn, name: str):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if threading.current_thread().name.startswith(BACKGROUND) or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        _last.update(name=name, count=int(_last["count"]) + 1, since=time.monotonic(), returned=False)
        result = fn(*args, **kwargs)
        _last["returned"] = True
        return result

    call._watchdog_recorded = True
    return call


class Watchdog:
    def __init__(
        self,
        out_dir: Path,
        rank: int,
        world_size: int,
        timeout: Optional[float] = None,
        activity: Callable[[], Optional[str]] = lambda: None,
    ) -> None:
        """`activity()`: what else the process is doing that the training may wait for (a checkpoint written in the
        background: `CheckpointSaver.in_flight`), said in the report."""
        self.out_dir, self.rank, self.world_size, self.timeout = Path(out_dir), rank, world_size, timeout
        self.activity = activity
        self.step: Optional[int] = None
        self._last_beat = time.monotonic()
        self._step_times: List[float] = []
        self._steps_seen = 0
        self._stopped = threading.Event()
        self._firing = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lit_gpt watchdog", daemon=True)

    def start(self) -> "Watchdog":
        if self.timeout != 0:
            record_collectives()
            self._thread.start()
            atexit.register(self._end_of_firing)
        return self

    def _end_of_firing(self) -> None:
        """At the exit of a process whose watchdog is writing its report: the main thread may end meanwhile (a peer
        that exited broke a collective it waited in), which used to cut the report short and exit with another code
        than the one a scheduler restarts on. The report is finished and the exit code is the watchdog's."""
        if self._firing.is_set():
            self._thread.join(timeout=60)
            os._exit(EXIT_CODE)

    def beat(self, step: Optional[int] = None) -> None:
        """A step completed (`step`), or some other progress (validation, a save: no step time is measured)."""
        now = time.monotonic()
        if step is not None:
            self._steps_seen += 1
            if self._steps_seen > SETTLE and self.step is not None and step == self.step + 1:
                self._step_times = (self._step_times + [now - self._last_beat])[-50:]
            self.step = step
        self._last_beat = now

    def beating(self, batches):
        """`batches`, with a beat before each (a validation run's progress)."""
        for batch in batches:
            self.beat()
            yield batch

    def limit(self) -> float:
        if self.timeout is not None:
            return self.timeout
        if not self._step_times:
            return 3 * FLOOR
        return max(FLOOR, MULTIPLE * statistics.median(self._step_times))

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.limit() / 10)):
            waited = time.monotonic() - self._last_beat
            if waited > self.limit():
                self._fire(waited)

    def _fire(self, waited: float) -> None:
        self._firing.set()
        folder = self.out_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"hang-rank{self.rank}.txt"
        header = (
            f"rank {self.rank} of {self.world_size} ({socket.gethostname()}, pid {os.getpid()}): no optimizer step "
            f"completed for {waited:.0f}s (limit {self.limit():.0f}s) after step {self.step}; last collective: "
            f"{describe_collective()}"
        )
        with contextlib.suppress(Exception):  # the report comes first
            if (doing := self.activity()) is not None:
                header += f"; {doing}"
        with open(path, "w") as f:  # the stacks first: a launcher that ends first may kill this process
            f.write(header + "\n\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        print(f"Watchdog: {header}. Python stacks in {path}", file=sys.stderr, flush=True)
        stragglers = self._compare_notes()
        with open(path, "a") as f:
            f.write(f"\n{stragglers}\n")
        print(
            f"Watchdog: rank {self.rank}: {stragglers}. Exiting with code {EXIT_CODE} for the scheduler to restart the "
            "job with --resume auto",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_CODE)  # the main thread is stuck: no clean way out

    def _compare_notes(self, wait: float = 10.0) -> str:
        """Through the rendezvous store: the ranks that entered fewer collectives than the others (did not arrive),
        and those that left no note within `wait` seconds."""
        if self.world_size == 1:
            return "one process"
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"lit_gpt_watchdog/{self.rank}", str(_last["count"]))
            deadline = time.monotonic() + wait
            counts: Dict[int, int] = {}
            while time.monotonic() < deadline and len(counts) < self.world_size:
                for rank in range(self.world_size):
                    key = f"lit_gpt_watchdog/{rank}"
                    if rank not in counts and store.check([key]):
                        counts[rank] = int(store.get(key))
                time.sleep(0.2)
        except Exception as e:  # the store itself is gone (rank 0's node died)
            return f"the other ranks could not be asked ({type(e).__name__}: {e})"
        silent = [rank for rank in range(self.world_size) if rank not in counts]
        most = max(counts.values())
        behind = {rank: count for rank, count in counts.items() if count < most}
        parts = []
        if behind:
            parts.append(f"did not arrive at collective #{most}: rank(s) {', '.join(map(str, behind))} (entered "
                         f"{', '.join(str(c) for c in behind.values())})")  # fmt: skip
        if silent:
            parts.append(f"no note from rank(s) {', '.join(map(str, silent))} (dead, or stuck outside Python)")
        return "; ".join(parts) or f"every rank entered collective #{most}"


def describe_collective() -> str:
    if _last["name"] is None:
        return "none yet"
    state = "returned" if _last["returned"] else f"waiting in it for {time.monotonic() - float(_last['since']):.0f}s"
    return f"{_last['name']} (#{_last['count']}, {state})"


def hang_for_test(rank: int, step: int) -> None:
    """Test hook: with `LIT_GPT_TEST_HANG=RANK:STEP`, that rank sleeps in step STEP (an hour)."""
    if os.environ.get(HANG_ENV) == f"{rank}:{step}":
        print(f"rank {rank} hangs in step {step} ({HANG_ENV})", file=sys.stderr, flush=True)
        time.sleep(3600)
