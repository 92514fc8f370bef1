"""Checkpoints written in the background (`--async_save true`, `lit_gpt.training.checkpoint.CheckpointSaver`) on CPU,
one and two processes: a kill at every phase of a write leaves the checkpoints before it intact and `--resume auto`
ends bit-identical to a run that saved synchronously and never stopped; a write that fails on one process fails the
save on every one, in one line."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest
import torch
from test_pretrain import COMMON, SCRIPT, _build, _env, checkpoints, metrics, model_weights, same_tokens

from lit_gpt.training.checkpoint import SAVE_FAIL_ENV, SAVE_PAUSE_ENV, verify_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("data"), same_tokens, 40)


def start(data: Path, out_dir: Path, *args: str, devices: int = 1, env: Optional[dict] = None) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(out_dir)]
    cmd += ["--devices", str(devices), "--save_interval", "1", "--eval_interval", "1000", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**_env(), **(env or {})}, start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def kill_when_paused(proc: subprocess.Popen, phase: str, processes: int = 1, timeout: float = 240) -> str:
    """SIGKILL every process of the run once `processes` of them say that their background save paused at `phase`;
    a run in which they do not within `timeout` seconds is killed too, and the test fails (it never hangs)."""
    lines, paused = [], 0

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            paused += line.startswith(f"Checkpoint save paused at {phase}")
            if paused == processes:
                kill()
                break
    finally:
        timer.cancel()
        finish(proc)
    assert paused == processes, f"{paused} of {processes} paused at {phase} in {timeout} s: " + "".join(lines)[-3000:]
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return "".join(lines)


def assert_same_run(reference: Path, resumed: Path, step: int) -> None:
    assert metrics(resumed) == metrics(reference)
    name = f"step-{step:08d}.pth"
    expected, actual = model_weights(reference / name), model_weights(resumed / name)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_a_kill_at_every_phase_of_a_background_save_leaves_the_previous_checkpoint_and_resumes_exactly(tmp_path, data):
    flags = ["--max_steps", "4"]
    reference = tmp_path / "sync"
    out = finish(start(data, reference, *flags, "--async_save", "false"))
    assert checkpoints(reference) == [f"step-0000000{i}.pth" for i in range(1, 5)], out[-3000:]

    run = tmp_path / "async"
    resume = ["--resume", "auto", "--async_save", "true"]
    # killed while the step-2 state is being copied: only step 1 exists
    kill_when_paused(start(data, run, *flags, *resume, env={SAVE_PAUSE_ENV: "staging:2"}), "staging")
    assert checkpoints(run) == ["step-00000001.pth"]
    # killed while the step-3 copy is written: step 2 is whole, step 3 only a .tmp
    out = kill_when_paused(start(data, run, *flags, *resume, env={SAVE_PAUSE_ENV: "writing:3"}), "writing")
    assert "Resumed at step 1" in out and "Saving " in out and "in the background" in out, out[-3000:]
    assert checkpoints(run) == ["step-00000001.pth", "step-00000002.pth", "step-00000003.pth.tmp"]
    assert verify_checkpoint(run / "step-00000002.pth")
    # killed after every byte of step 4 is written, before its rename
    out = kill_when_paused(start(data, run, *flags, *resume, env={SAVE_PAUSE_ENV: "publishing:4"}), "publishing")
    assert "Resumed at step 2" in out, out[-3000:]
    assert checkpoints(run)[-2:] == ["step-00000003.pth", "step-00000004.pth.tmp"]
    out = finish(start(data, run, *flags, *resume))
    assert "Resumed at step 3" in out and "Done: 4 steps" in out, out[-3000:]
    assert checkpoints(run) == checkpoints(reference)
    assert_same_run(reference, run, 4)


def test_a_stop_signal_waits_for_the_write_in_flight(tmp_path, data):
    """SIGTERM while the step-2 checkpoint is written in the background (slowly: 15 s): the run finishes its step,
    waits for that write, saves the step it stopped at and exits 0 with both checkpoints complete."""
    proc = start(data, tmp_path, "--max_steps", "8", "--save_interval", "2", "--async_save", "true",
                 env={SAVE_PAUSE_ENV: "writing:2:15"})  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Checkpoint save paused at writing"):
                os.killpg(proc.pid, signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
    finally:
        finish(proc)
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    stopped = int(re.search(r"Stopped by SIGTERM after step (\d)", out)[1])
    assert out.index("Saved ") < out.index("Stopped by SIGTERM"), out[-3000:]
    assert checkpoints(tmp_path) == ["step-00000002.pth", f"step-0000000{stopped}.pth"], out[-3000:]
    for name in checkpoints(tmp_path):
        assert verify_checkpoint(tmp_path / name), name


@pytest.mark.slow
def test_two_processes_a_failed_write_fails_the_save_on_both_and_a_kill_at_every_phase_resumes_exactly(tmp_path, data):
    flags = ["--max_steps", "4"]
    reference = tmp_path / "sync"
    out = finish(start(data, reference, *flags, "--async_save", "false", devices=2))
    assert checkpoints(reference) == [f"step-0000000{i}.pth" for i in range(1, 5)], out[-3000:]
    assert (reference / "step-00000004.pth").is_dir()

    run = tmp_path / "async"
    resume = ["--resume", "auto", "--async_save", "true"]
    # rank 1 finds the disk full while writing step 2: both processes stop at the next save, saying so in one line
    proc = start(data, run, *flags, *resume, devices=2, env={SAVE_FAIL_ENV: "1:2"})
    out = finish(proc)
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Saving step-00000002.pth failed on process 1: cannot write" in errors[0], out[-3000:]
    assert "no space left on device" in errors[0] and "resume with --resume auto" in errors[0], errors
    assert "Traceback" not in out, out[-3000:]
    assert checkpoints(run) == ["step-00000001.pth"]
    # killed in both processes while they copy step 2, while they write step 3, and (rank 0 alone renames) before
    # step 4 is renamed into place
    for phase, step, processes in (("staging", 2, 2), ("writing", 3, 2), ("publishing", 4, 1)):
        env = {SAVE_PAUSE_ENV: f"{phase}:{step}"}
        out = kill_when_paused(start(data, run, *flags, *resume, devices=2, env=env), phase, processes)
        assert checkpoints(run)[-1] == (f"step-0000000{step}.pth.tmp" if phase != "staging" else "step-00000001.pth")
        assert all(verify_checkpoint(run / name) for name in checkpoints(run) if not name.endswith(".tmp")), phase
    assert checkpoints(run) == ["step-00000001.pth", "step-00000002.pth", "step-00000003.pth", "step-00000004.pth.tmp"]
    out = finish(start(data, run, *flags, *resume, devices=2))
    assert "Resumed at step 3" in out and "Done: 4 steps" in out, out[-3000:]
    assert checkpoints(run) == checkpoints(reference)
    assert_same_run(reference, run, 4)


def test_a_writer_thread_that_dies_fails_the_save_instead_of_passing_for_a_success(tmp_path, monkeypatch):
    """An exception that escaped the writer thread (a collective whose peer died: gloo's "Connection closed by peer")
    left the previous save's outcome in place, so `wait()` reported the unfinished save as a success and the training
    ran on. It is a failure of that save, raised by `wait()` in one line."""
    from lit_gpt.training.checkpoint import CheckpointSaver
    from lit_gpt.training.fabric import L

    fabric = L.Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    saver = CheckpointSaver(fabric, tmp_path, None, background=True)
    saver.save(tmp_path / "step-00000001.pth", {"model": model, "optimizer": optimizer, "step_count": 1})
    saver.wait()
    assert (tmp_path / "step-00000001.pth").is_file()

    def dead_peer(self, error, tmp, tensors=None):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setattr(CheckpointSaver, "_agree", dead_peer)
    saver.save(tmp_path / "step-00000002.pth", {"model": model, "optimizer": optimizer, "step_count": 2})
    failed = r"^Saving step-00000002.pth failed: RuntimeError: Connection closed by peer"
    with pytest.raises(RuntimeError, match=failed):
        saver.wait()
    assert not (tmp_path / "step-00000002.pth").exists()
