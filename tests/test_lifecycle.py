"""How runs end: a failure ends every process (loader workers and other ranks included) and releases the out dir;
what the run refuses before it starts (empty paths, a `.lock` it did not write); what a stop before the loop says."""

import ast
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_pretrain import COMMON, SCRIPT, _build, _env, same_tokens

ROOT = Path(__file__).resolve().parents[1]
# seconds within which a failed run must have ended, every process of it
ENDS_WITHIN = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("data"), same_tokens, 40)


def command(data: Path, out_dir: Path, *args: str, devices: int = 1) -> list:
    return [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(out_dir),
            "--devices", str(devices), *args]  # fmt: skip


def left_behind(session: int) -> dict:
    """The processes still alive in the session (`start_new_session=True`) that a run started: process -> its name
    and arguments."""
    alive = {}
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == session and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive[p] = f"{p.pid} {p.name()} {' '.join(p.cmdline()[:2])}"
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return alive


def run_in_session(cmd: list, timeout: float) -> tuple:
    """Run `cmd` in a session of its own; (exit code or None if it did not end within `timeout`, output, the
    processes of its session still alive once it ended). Whatever is left is killed afterwards."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, code = proc.communicate()[0], None
    alive = still_alive_after(proc.pid, 1.0)  # a worker killed as its parent exits needs a moment to be reaped
    for p in alive:
        p.kill()
    return code, output, alive


def still_alive_after(session: int, seconds: float) -> dict:
    """`left_behind(session)` once it is empty, or after `seconds` (what is left then)."""
    deadline = time.monotonic() + seconds
    while (alive := left_behind(session)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_a_run_that_fails_in_training_exits_at_once_ends_its_loader_worker_and_releases_the_out_dir(tmp_path, data):
    """The non-finite stop (a learning rate that makes the weights overflow after the first step) with the default
    loader worker: the run used to print its traceback and wait for the worker forever, holding the out dir's lock."""
    flags = ["--learning_rate", "1e30", "--min_lr", "0", "--max_nonfinite_steps", "1", "--max_steps", "6"]
    started = time.monotonic()
    code, output, alive = run_in_session(command(data, tmp_path, *flags), ENDS_WITHIN)
    assert code is not None, f"still running after {ENDS_WITHIN}s: {output[-3000:]}"
    assert code != 0 and "non-finite gradient norm" in output, output[-3000:]
    assert not alive, list(alive.values())
    assert time.monotonic() - started < ENDS_WITHIN
    # the out dir is free: a resume right after goes ahead (it finds no checkpoint and starts fresh)
    resumed = subprocess.run(command(data, tmp_path, "--max_steps", "1", "--resume", "auto"), capture_output=True,
                             text=True, timeout=300, env=_env())  # fmt: skip
    assert "in use" not in resumed.stderr, resumed.stderr[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_the_nonfinite_stop_with_two_loader_workers_ends_in_its_one_line(tmp_path, data):
    """With --num_workers 2 the exit after the non-finite stop used to print its traceback and then "Exception ignored
    in atexit callback ... DataLoader worker (pid X) is killed by signal: Killed" (torch's SIGCHLD handler, as the
    workers were ended): the stop is one line, the last, and every process ends."""
    flags = ["--learning_rate", "1e30", "--min_lr", "0", "--max_nonfinite_steps", "1", "--max_steps", "6"]
    cmd = command(data, tmp_path, *flags, "--num_workers", "2")  # the last --num_workers counts
    code, output, alive = run_in_session(cmd, ENDS_WITHIN)
    assert code == 2 and not alive, (code, list(alive.values()), output[-3000:])
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: 1 optimizer steps in a row had a non-finite gradient norm"), output[-3000:]


def test_a_second_signal_during_a_save_says_in_one_line_that_it_was_not_saved(tmp_path, capsys):
    """A second Ctrl-C during a save used to raise KeyboardInterrupt from inside torch's writer, a traceback: it ends
    in one line that names the checkpoint that was not saved, with exit code 130."""
    import torch

    from lit_gpt.signals import StopSignal

    stop = StopSignal(torch.device("cpu"))
    try:
        with pytest.raises(SystemExit) as exit:
            with stop.saving(tmp_path / "step-00000004.pth"):
                signal.raise_signal(signal.SIGINT)  # recorded: stop after this step
                signal.raise_signal(signal.SIGINT)  # at once
    finally:
        stop.restore()
    assert exit.value.code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "Received SIGINT while saving step-00000004.pth: stopped at once, and step-00000004.pth was not saved (its "
        "partial step-00000004.pth.tmp is never resumed from; the next save removes it). The checkpoints saved before "
        "are intact: resume with --resume auto"
    )
    # a run without a checkpoint yet has none to resume from: it says so instead of naming intact ones
    stop = StopSignal(torch.device("cpu"), saved_before=lambda: False)
    try:
        with pytest.raises(SystemExit):
            with stop.saving(tmp_path / "step-00000004.pth"):
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
    finally:
        stop.restore()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("the next save removes it). No checkpoint of this run was saved before: run it again"), last


def test_a_two_process_run_whose_launcher_is_killed_leaves_no_process_behind(tmp_path, data):
    """SIGKILL to the launching process (rank 0) used to leave rank 1 and its loader worker running on, orphaned."""
    cmd = command(data, tmp_path, "--max_steps", "200", devices=2)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step 1/"):
                break
        assert len(psutil.Process(proc.pid).children(recursive=True)) >= 3, "".join(lines)[-3000:]  # rank 1, workers
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.monotonic() + ENDS_WITHIN / 2
        while left_behind(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = left_behind(proc.pid)
    finally:
        for p in left_behind(proc.pid):
            p.kill()
    assert not alive, list(alive.values())


def entry_points() -> list:
    """Every script with a command line (`cli(NAME)` in its `__main__` block)."""
    folders = ("pretrain", "finetune", "scripts", "generate", "eval", "dev")
    return sorted(p for folder in folders for p in (ROOT / folder).glob("*.py") if "cli(" in p.read_text())


def test_an_empty_path_is_refused_for_every_path_flag_of_every_entry_point():
    """`--out_dir ''` used to write checkpoints and the lock into the working directory, `finetune/lora.py --data ''`
    to scan it, `scripts/plot_logs.py --output ''` to write `.png`: every flag that takes a path refuses an empty one,
    naming the flag, before any work."""
    from lit_gpt.cli import entry_stand_in, is_path_flag

    cases = []
    for script in entry_points():
        function = entry_stand_in(ast.parse(script.read_text(encoding="utf-8")))
        flags = [name for name, p in inspect.signature(function).parameters.items() if is_path_flag(name, p.annotation)]
        cases += [(script, flag, form) for flag in flags for form in ("separate", "joined")]
    assert len({script for script, _, _ in cases}) >= 15, cases  # the test walks every entry point
    running = []
    try:
        for script, flag, form in cases:
            args = [f"--{flag}", ""] if form == "separate" else [f"--{flag}="]
            cmd = [sys.executable, str(script), *args]
            running.append((script, flag, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                           text=True, cwd=ROOT, env=_env())))  # fmt: skip
            if len(running) >= 4 or (script, flag, form) == cases[-1]:
                for done_script, done_flag, proc in running:
                    _, stderr = proc.communicate(timeout=120)
                    where = f"{done_script.relative_to(ROOT)} --{done_flag}: {stderr[-1500:]}"
                    assert proc.returncode == 2, where
                    refusal = f"error: --{done_flag} '' is an empty path"
                    assert stderr.strip().splitlines()[-1].startswith(refusal), where
                running = []
    finally:
        for _, _, proc in running:
            proc.kill()
            proc.wait()


def test_an_empty_input_or_training_folder_is_refused_not_read_as_the_working_directory(tmp_path):
    """`train_tokenizer.py --input=` and `prepare_text.py --input "['']"` used to scan the working directory, and
    `--train_data "{'': 1.0}"` to train on it: refused in the one line of every other empty path."""
    from lit_gpt.cli import UserError
    from lit_gpt.data.loaders import data_sources
    from lit_gpt.data.readers import find_inputs

    cmd = [sys.executable, str(ROOT / "scripts/train_tokenizer.py"), "--input=", "--output_dir", str(tmp_path / "t")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --input '' is an empty path"), proc.stderr[-2000:]
    assert not (tmp_path / "t").exists()
    with pytest.raises(UserError, match=r"^--input '' is an empty path, which would mean the current folder"):
        find_inputs([str(tmp_path), ""])
    with pytest.raises(UserError, match=r"^--train_data: a folder ' ' is an empty path, which would mean the current"):
        data_sources("data", (0.5, 0.5), {str(tmp_path): 1.0, " ": 1.0})


def test_a_lock_file_the_project_did_not_write_is_refused_not_overwritten_or_followed(tmp_path, data):
    """`echo notes > OUT/.lock` used to be overwritten by the run's lock record, and a `.lock` symbolic link made the
    run overwrite the file it points to, outside the out dir. Both are refused in one line, left as they were; the
    record of an earlier run is taken over."""
    notes, linked, outside = tmp_path / "notes", tmp_path / "linked", tmp_path / "outside.txt"
    notes.mkdir()
    (notes / ".lock").write_text("notes\n")
    linked.mkdir()
    outside.write_text("precious\n")
    (linked / ".lock").symlink_to(outside)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / ".lock").write_text("pid 12 on host-a, started 2026-01-01 00:00:00 UTC\n")
    # the three runs at once, each in its own out dir (one Python start with lightning each: several seconds here)
    procs = [
        subprocess.Popen(
            command(data, d, "--max_steps", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )  # fmt: skip
        for d in (notes, linked, earlier)
    ]
    try:
        (_, notes_err), (_, linked_err), (_, earlier_err) = (proc.communicate(timeout=300) for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, stderr, out_dir, what in (
        (procs[0], notes_err, notes, "holds something other than this project's lock record"),
        (procs[1], linked_err, linked, "symbolic link"),
    ):
        assert proc.returncode == 2, stderr[-2000:]
        refusal = stderr.strip().splitlines()[-1]
        assert refusal.startswith(f"error: {out_dir}/.lock ") and what in refusal, stderr[-2000:]
        assert "Move it away, or pass another --out_dir" in refusal or "Remove it, or pass another" in refusal
        assert not list(out_dir.glob("step-*"))
    assert (notes / ".lock").read_text() == "notes\n"
    assert outside.read_text() == "precious\n" and (linked / ".lock").is_symlink()
    assert procs[2].returncode == 0, earlier_err[-2000:]  # the record of an earlier run is taken over


@pytest.mark.parametrize(
    "sig, after, code",
    [(signal.SIGINT, "micro-llama: ", 130), (signal.SIGTERM, "{'model_name'", 143)],
    ids=["ctrl-c-before-the-loop", "sigterm-at-the-settings"],
)
def test_a_stop_signal_before_the_first_step_says_nothing_was_saved(tmp_path, data, sig, after, code):
    """Ctrl-C during start-up used to end in a KeyboardInterrupt traceback, a SIGTERM before the training loop in
    exit code 143 with no word: both say in one line what happened and that nothing was saved, and exit with the
    code a shell expects."""
    cmd = command(data, tmp_path, "--max_steps", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(after):
                os.killpg(proc.pid, sig)  # every process of the run, as Ctrl-C in a terminal
                break
        lines.append(proc.communicate(timeout=ENDS_WITHIN)[0])  # a process left hanging keeps the output open
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "".join(lines)
    assert proc.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last == f"Stopped by {signal.Signals(sig).name} before the first training step: nothing was saved", output
    assert not list(tmp_path.glob("step-*"))


def test_a_second_ctrl_c_stops_at_once_and_leaves_no_process_behind(tmp_path, data):
    """The stop message offers a second Ctrl-C to "stop at once": with the default loader worker the run used to
    print its KeyboardInterrupt and then wait forever for the worker; then to end in the KeyboardInterrupt's
    traceback. It ends in one line that says what was not saved, exit code 130, every process ended."""
    cmd = command(data, tmp_path, "--max_steps", "200", "--global_batch_size", "32")  # a few seconds a step
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step 1/"):
                os.killpg(proc.pid, signal.SIGINT)
                time.sleep(0.5)  # the first is recorded: stop after this step, with a checkpoint
                os.killpg(proc.pid, signal.SIGINT)
                break
        lines.append(proc.communicate(timeout=ENDS_WITHIN)[0])  # a process left hanging keeps the output open
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    alive = still_alive_after(proc.pid, 1.0)
    for p in alive:
        p.kill()
    output = "".join(lines)
    assert proc.returncode == 130 and "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("Received SIGINT ") and " stopped at once" in last, output[-3000:]
    # stopped in its first steps, the run has no checkpoint: it says so rather than naming intact ones
    assert last.endswith("No checkpoint of this run was saved before: run it again"), output[-3000:]
    assert not alive, list(alive.values())


def test_a_stop_during_start_up_prints_no_finalizer_noise_after_its_line():
    """A Ctrl-C that lands inside litdata's BinaryReader.__init__ left the reader half-built: its __del__ then printed
    "Exception ignored in ... AttributeError: 'BinaryReader' object has no attribute '_item_loader'" (a traceback)
    after the one line. An object stopped the same way here: nothing follows the line."""
    program = (
        "import signal, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from lit_gpt.cli import stop_quietly_before_training\n"
        "stop_quietly_before_training('__main__')\n"
        "class Reader:\n"
        "    def __init__(self):\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "        self.item_loader = None\n"
        "    def __del__(self):\n"
        "        self.item_loader.close()\n"
        "Reader()\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "Stopped by SIGINT before the first training step: nothing was saved", proc.stderr
