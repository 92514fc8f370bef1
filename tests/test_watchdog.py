"""The hang watchdog (`lit_gpt/training/watchdog.py`) on a real two-process run over gloo: one rank stuck inside a step
ends both processes with their stacks, the last collective and the rank that did not arrive; so does a checkpoint
written in the background that never ends on one rank (the training waits for it at the next save)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pretrain import COMMON, SCRIPT, _build, _env, checkpoints, same_tokens

from lit_gpt.training.checkpoint import SAVE_PAUSE_ENV
from lit_gpt.training.watchdog import EXIT_CODE, HANG_ENV

LIMIT = 30  # seconds: the CPU steps of a loaded test machine take a few


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("data"), same_tokens, 40)


def run_until_it_ends(cmd, env: dict, stuck_at: str, timeout: float):
    """Run `cmd` (a process group) with `env` added until it prints a line starting with `stuck_at`, then wait for its
    end: (the process, its whole output, the seconds from that line to the end). Killed if it outlives `timeout`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**_env(), **env}, start_new_session=True)  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(stuck_at):
                break
        stuck_since = time.monotonic()
        lines += proc.stdout.readlines()
        proc.wait(timeout=timeout)
        ended_after = time.monotonic() - stuck_since
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc, "".join(lines), ended_after


def test_a_rank_stuck_in_a_step_ends_every_process_with_its_stacks(tmp_path, data):
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path), "--devices", "2",
           "--max_steps", "6", "--save_interval", "100", "--watchdog_timeout", str(LIMIT)]  # fmt: skip
    proc, out, ended_after = run_until_it_ends(cmd, {HANG_ENV: "1:2"}, "step 1/", LIMIT + 90)
    assert proc.returncode == EXIT_CODE, out[-3000:]
    assert ended_after < LIMIT + 60, ended_after  # the limit, the notes compared, the exit
    assert "step 2/" not in out, out[-3000:]
    waiting, stuck = (tmp_path / "logs" / f"hang-rank{rank}.txt" for rank in (0, 1))
    assert waiting.is_file() and stuck.is_file(), out[-3000:]
    report = waiting.read_text()
    assert report.startswith("rank 0 of 2") and "after step 1; last collective: " in report, report[:2000]
    assert "waiting in it for" in report or "returned" in report, report[:2000]
    assert "did not arrive at collective" in report and "rank(s) 1 " in report, report[-2000:]
    assert "Thread 0x" in report and "training_step" in report, report  # the stacks of the waiting main thread
    assert "hang_for_test" in stuck.read_text()  # where the stuck rank is
    assert "hang-rank0.txt" in out and "did not arrive" in out and f"Exiting with code {EXIT_CODE}" in out, out[-3000:]


def test_a_background_save_that_never_ends_on_one_rank_ends_every_process_with_its_stacks(tmp_path, data):
    """Rank 1's background write of step 2 never ends (a wedged filesystem): rank 0's writer waits for it to agree, the
    training goes on to the next save (step 4), which waits for the one in flight on both ranks; within the limit both
    end with their stacks, and the reports say where the save is on each (not an endless wait)."""
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path), "--devices", "2",
           "--max_steps", "6", "--save_interval", "2", "--eval_interval", "100", "--async_save", "true",
           "--watchdog_timeout", str(LIMIT)]  # fmt: skip
    paused = "Checkpoint save paused at writing on rank 1"
    proc, out, ended_after = run_until_it_ends(cmd, {SAVE_PAUSE_ENV: "writing:2:3600:1"}, paused, LIMIT + 150)
    assert proc.returncode == EXIT_CODE, out[-3000:]
    assert ended_after < LIMIT + 90, ended_after  # two CPU steps, the limit, the notes compared, the exit
    assert "step 4/" in out and "step 5/" not in out and "Saved " not in out, out[-3000:]
    assert checkpoints(tmp_path) == ["step-00000002.pth.tmp"], out[-3000:]
    waiting, stuck = ((tmp_path / "logs" / f"hang-rank{rank}.txt").read_text() for rank in (0, 1))
    header = "background save of step-00000002.pth in flight for "
    assert header in waiting and "written here, waiting for the other processes" in waiting, waiting[:2000]
    assert header in stuck and ": writing; the training waits for it" in stuck, stuck[:2000]
    assert "the training waits for it" in waiting.splitlines()[0], waiting[:2000]
    assert "in wait" in waiting and "in _write" in waiting, waiting  # the main thread's and the writer's stacks
    assert "_test_hook" in stuck and "write_data" in stuck, stuck
    assert f"Exiting with code {EXIT_CODE}" in out, out[-3000:]


@pytest.mark.parametrize("value", ["-1"])
def test_a_watchdog_timeout_that_is_not_a_number_of_seconds_is_refused(tmp_path, value, data):
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path),
           "--watchdog_timeout", value]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.fullmatch(r"error: --watchdog_timeout \S+ (must be a number|must not be negative).*\n", proc.stderr)


def test_the_default_limit_is_a_multiple_of_the_step_time_with_a_floor(monkeypatch, tmp_path):
    """Before the first steps are timed: three times the floor (compilation); then 20 median step times, at least the
    floor; a pause that is not a step (a save) does not count as a step time."""
    from lit_gpt.training import watchdog

    clock = [0.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    dog = watchdog.Watchdog(tmp_path, 0, 1)
    assert dog.limit() == 3 * watchdog.FLOOR
    for step in range(1, 10):
        clock[0] += 100.0  # 100 s steps
        dog.beat(step)
        if step == 5:
            clock[0] += 5000.0  # a long save after step 5
            dog.beat()
    assert dog.limit() == watchdog.MULTIPLE * 100.0
    clock[0] += 1.0
    for step in range(10, 70):  # fast steps: the floor
        clock[0] += 1.0
        dog.beat(step)
    assert dog.limit() == watchdog.FLOOR
    assert watchdog.Watchdog(tmp_path, 0, 1, timeout=7).limit() == 7


def test_a_main_thread_that_ends_while_the_watchdog_reports_exits_with_the_watchdogs_code(tmp_path):
    """Two ranks stuck in a background save: the first to finish its report exits, which breaks the collective that the
    other's writer waits in, and that one's main thread then ended with the save's error while its watchdog was still
    writing: the report was cut short and the exit code (1) was not the one a scheduler restarts on (1 in 9 runs of
    the test above). The process now finishes its report and exits with the watchdog's code."""
    root = Path(__file__).resolve().parents[1]
    program = (
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from lit_gpt.training import watchdog\n"
        "watchdog.Watchdog._compare_notes = lambda self, wait=10.0: (time.sleep(2), 'the others compared late')[1]\n"
        f"dog = watchdog.Watchdog({str(tmp_path)!r}, 0, 1, timeout=0.5).start()\n"
        f"while not os.path.exists({str(tmp_path / 'logs' / 'hang-rank0.txt')!r}):\n"
        "    time.sleep(0.02)\n"
        "sys.exit('error: the save failed (a peer closed the connection)')\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CODE, proc.stderr
    assert "the others compared late" in (tmp_path / "logs" / "hang-rank0.txt").read_text(), proc.stderr
