"""pretrain/tinyllama.py on CPU: real litdata chunks, real Fabric processes (1 and 2), real checkpoints."""

import csv
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pretrain" / "tinyllama.py"
BLOCK = 32
# micro-llama with 32-token sequences; 8 sequences per step in micro-batches of 2 (4 per process on 1 process)
COMMON = [
    "--model_name", "micro-llama", "--block_size", str(BLOCK), "--accelerator", "cpu", "--precision", "32-true",
    "--global_batch_size", "8", "--micro_batch_size", "2", "--learning_rate", "3e-3", "--min_lr", "3e-4",
    "--warmup_steps", "2", "--logger_name", "csv", "--num_workers", "1", "--eval_iters", "2",
]  # fmt: skip


def same_tokens(index: int):
    """Every (BLOCK + 1)-token sample identical: the loss cannot depend on which process reads which sample."""
    return (torch.arange(BLOCK + 1, dtype=torch.int32) * 7 % 500).repeat(4)


def _write_chunks(fn, n_docs: int, output_dir: Path) -> None:
    """litdata chunks of `fn(0) ... fn(n_docs - 1)`, in-process with the writer that `litdata.optimize` uses."""
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    output_dir.mkdir(parents=True)
    writer = BinaryWriter(str(output_dir), chunk_size=(BLOCK + 1) * 8, item_loader=TokensLoader())
    for i in range(n_docs):
        writer.add_item(i, fn(i))
    writer.done()
    writer.merge()


def _build(root: Path, fn, n_train: int) -> Path:
    for sub, n in (("slimpajama/train", n_train), ("starcoder", n_train), ("slimpajama/val", 8)):
        _write_chunks(fn, n, root / sub)
    return root


@pytest.fixture(scope="session")
def same_data_dir(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("same-data"), same_tokens, 40)


def run(out_dir: Path, data_dir: Path, *args: str, devices: int = 1) -> subprocess.CompletedProcess:
    return finish(start(out_dir, data_dir, *args, devices=devices))


def start(out_dir: Path, data_dir: Path, *args: str, devices: int = 1) -> subprocess.Popen:
    """`run` in the background, for a run that the test reads only later: it goes on beside the test's other runs (a
    run of one process computes on one thread, and the machine has at least two cores). `finish` waits for it."""
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data_dir), "--out_dir", str(out_dir)]
    cmd += ["--devices", str(devices), *args]
    # files, not pipes: a run that nobody reads yet must not stop on a full pipe
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, env=_env())
    proc.output_files = stdout, stderr
    return proc


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for a run of `start` (as `run` does: 300 s at most) and check that it succeeded."""
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    texts = []
    for file in proc.output_files:
        file.seek(0)
        texts.append(file.read())
        file.close()
    out, err = texts
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# /proc/cpuinfo of the two kinds of x86 CPU the suite runs on: without bf16 instructions (AVX2 only, as an AMD EPYC
# 7B13) and with them
CPUINFO = {
    "avx2-only": "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2 sha_ni\n",
    "bf16": "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU\n"
    "flags\t\t: fpu sse sse2 avx f16c fma avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n",
}


def simulate_cpu(monkeypatch, tmp_path: Path, kind: str) -> None:
    """Run this test, and the scripts it starts, as on a CPU of `kind` (a key of CPUINFO):
    `lit_gpt.training.launch.cpu_has_bf16` reads the file that LIT_GPT_CPUINFO names instead of /proc/cpuinfo."""
    path = tmp_path / f"cpuinfo-{kind}"
    path.write_text(CPUINFO[kind])
    monkeypatch.setenv("LIT_GPT_CPUINFO", str(path))


def metrics(out_dir: Path, key: str = "loss") -> dict:
    """step -> value of `key` over every run (version) that logged into out_dir, later runs overriding earlier."""
    values = {}
    for path in sorted((out_dir / "logs" / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    values[int(row["step"])] = float(row[key])
    return values


def checkpoints(out_dir: Path) -> list:
    return sorted(p.name for p in out_dir.glob("step-*"))


def model_weights(path: Path) -> dict:
    from lit_gpt.training.checkpoint import training_checkpoint_tensors

    return dict(training_checkpoint_tensors(path))


def load_script():
    spec = importlib.util.spec_from_file_location("tinyllama", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_explains_every_flag():
    from prepared_data import help_text

    # in-process (the script's __main__ block is this call): a Python start with lightning costs ~10 s here
    assert "Stop earlier, after this many optimizer steps" in help_text(load_script().setup)


def test_bad_flags_and_missing_data_give_clear_errors(tmp_path, data_dir):
    setup = load_script().setup
    common = dict(model_name="micro-llama", accelerator="cpu", devices=1, out_dir=tmp_path, data_dir=str(data_dir))
    with pytest.raises(ValueError, match="--micro_batch_size 3 does not divide the per-device batch 8.*such as 2 or 4"):
        setup(**common, global_batch_size=8, micro_batch_size=3)
    with pytest.raises(ValueError, match="--global_batch_size 9 is not divisible by the 2 processes.*such as 8 or 10"):
        setup(**{**common, "devices": 2}, global_batch_size=9, micro_batch_size=1)
    # a zero interval used to end the first step in `ZeroDivisionError: integer modulo by zero`, and --eval_iters 0
    # in "The validation set is empty"
    for flag in ("log_interval", "eval_interval", "eval_iters", "save_interval", "max_nonfinite_steps"):
        with pytest.raises(ValueError, match=f"--{flag} 0 must be at least 1"):
            setup(**common, global_batch_size=8, micro_batch_size=2, **{flag: 0})
    with pytest.raises(ValueError, match="--eval_interval 0 .*pass a value above --max_steps to validate only at the"):
        setup(**common, global_batch_size=8, micro_batch_size=2, eval_interval=0)
    # these used to train 0 steps and report "Done"
    with pytest.raises(ValueError, match="--max_tokens 1,000 is less than one optimizer step of 2,048 tokens"):
        setup(**common, global_batch_size=8, micro_batch_size=2, max_tokens=1000)
    with pytest.raises(ValueError, match="--max_steps 0 must be at least 1"):
        setup(**common, global_batch_size=8, micro_batch_size=2, max_steps=0)
    with pytest.raises(FileNotFoundError, match="lacks prepared litdata chunks in: slimpajama/train, starcoder"):
        setup(**{**common, "data_dir": str(tmp_path / "nothing")}, global_batch_size=8, micro_batch_size=2)
    with pytest.raises(ValueError, match="not a known model name"):
        setup(**{**common, "model_name": "micro-lama"}, global_batch_size=8, micro_batch_size=2)
    earlier = tmp_path / "earlier"  # an out_dir with a checkpoint: a fresh run would overwrite it
    earlier.mkdir()
    (earlier / "step-00000040.pth").touch()
    with pytest.raises(FileExistsError, match="earlier run.*step-00000040.pth.*--resume auto"):
        setup(**{**common, "out_dir": earlier}, global_batch_size=8, micro_batch_size=2)
    (earlier / "step-00000020.pth").touch()  # resuming from an earlier step there: it would mix the two runs
    with pytest.raises(FileExistsError, match=r"later steps than step-00000020.pth \(step-00000040.pth\).*--out_dir"):
        setup(
            **{**common, "out_dir": earlier},
            global_batch_size=8,
            micro_batch_size=2,
            resume=earlier / "step-00000020.pth",
        )


@pytest.mark.parametrize("cpu", ["avx2-only", "bf16"])
def test_notes_come_after_every_check_and_the_settings_name_the_data_the_run_reads(
    tmp_path, data_dir, capsys, monkeypatch, cpu
):
    """A refused run prints its error alone (the note on bf16 without bf16 instructions used to come first, on such
    CPUs only); a run that goes ahead notes a slow precision (on such CPUs only), a warmup longer than the run and a
    model of more token ids than the data's tokenizer (32,000 beside 1,024: seen only in generation before), and its
    settings do not show --data_dir and --data_weights that --train_data and --val_data replace."""
    simulate_cpu(monkeypatch, tmp_path, cpu)
    setup = load_script().setup
    # --accelerator auto on a machine without a GPU is the CPU: the note on a slow precision is printed there too
    accelerator = "cpu" if torch.cuda.is_available() else "auto"
    run = dict(model_name="micro-llama", accelerator=accelerator, devices=1, out_dir=tmp_path / "out",
               precision="bf16-mixed", data_dir=str(tmp_path / "unused"), global_batch_size=8, micro_batch_size=8,
               max_tokens=81920, train_data={str(data_dir / "starcoder"): 1.0},
               val_data=str(data_dir / "slimpajama" / "val"))  # fmt: skip
    with pytest.raises(ValueError, match="--attention fa4: flash-attn-4 needs a CUDA GPU"):
        setup(**run, attention="fa4")
    assert capsys.readouterr().err == ""
    # goes ahead until the validation split, checked once Fabric runs: its 6 blocks of 257 tokens are too few for one
    # micro-batch of 8
    with pytest.raises(ValueError, match="slimpajama/val has fewer than 8 blocks of 257 tokens.*micro_batch_size"):
        setup(**run)
    out, err = capsys.readouterr()
    note = "Note: --precision bf16-mixed on a CPU without bf16 instructions is slow; pass 32-true"
    assert (note in err) == (cpu == "avx2-only"), err
    assert "--warmup_steps 2000 is longer than the 40 steps this run trains: the learning rate peaks at 8e-06" in err
    vocab = "Note: --model_name micro-llama has 32,000 token ids, the tokenizer of the data 1,024 ("
    assert err.count(vocab) == 1 and "the other 30,976 never occur in training" in err, err
    assert "'data_dir'" not in out and "'data_weights'" not in out, out
    assert f"'train_sources': [['{data_dir / 'starcoder'}', 1.0]]" in out and "'val_data': " in out

    from lit_gpt.data.loaders import vocab_note

    assert vocab_note([str(data_dir / "starcoder")], 1024, "test-llama") is None  # the tokenizer's size: no note
    assert vocab_note([str(tmp_path)], 32000, "micro-llama") is None  # prepared before the size was recorded


def test_world_size_of_devices_auto(monkeypatch):
    from lit_gpt.training.launch import num_processes

    assert num_processes("auto", 2, "cpu") == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a machine where CUDA sees no GPU
    # not "--devices 0", a flag the user never passed: the missing GPU is the problem
    message = "--accelerator cuda with --devices auto.*no visible CUDA GPU.*--accelerator cpu"
    with pytest.raises(ValueError, match=message):
        num_processes("auto", 1, "cuda")


def test_train_validate_checkpoint_and_exact_resume_after_sigkill(tmp_path, data_dir):
    flags = ["--max_steps", "8", "--save_interval", "4", "--eval_interval", "4"]
    full = tmp_path / "full"
    uninterrupted = start(full, data_dir, *flags)  # beside the interrupted run below, which it is compared with

    # the same run, killed with SIGKILL during step 6 (after the step-4 checkpoint), then resumed
    killed = tmp_path / "killed"
    code, _ = run_until_signal(killed, data_dir, "step 5/8", signal.SIGKILL, *flags)
    assert code == -signal.SIGKILL
    assert checkpoints(killed) == ["step-00000004.pth"]

    proc = finish(uninterrupted)
    losses = metrics(full)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 1.0, losses
    assert sorted(metrics(full, "val_loss")) == [4, 8]
    assert metrics(full, "val_loss")[8] < metrics(full, "val_loss")[4]
    assert "val ppl" in proc.stdout
    assert checkpoints(full) == ["step-00000004.pth", "step-00000008.pth"]
    # Lightning's announcement of a process group, which one process does not need (kept for two: below)
    assert "Initializing distributed" not in proc.stderr and "distributed_backend" not in proc.stderr, proc.stderr

    # a single-file checkpoint: the full lit state dict and everything needed to resume, loadable weights-only
    ckpt = torch.load(full / "step-00000008.pth", weights_only=True)
    assert {"model", "optimizer", "hparams", "train_dataloader", "rng", "iter_num", "step_count"} <= ckpt.keys()
    assert "transformer.h.0.attn.attn.weight" in ckpt["model"]
    assert ckpt["step_count"] == 8 and ckpt["iter_num"] == 32 and ckpt["tokens_seen"] == 8 * 8 * BLOCK
    assert ckpt["hparams"]["model_config"]["block_size"] == BLOCK

    # the killed run resumed, and stopped by SIGTERM (a scheduler's) after the step in progress: a checkpoint of that
    # step, the command to resume, exit code 0; --keep_last 1 deletes the step-4 checkpoint once the new one is complete
    code, out = run_until_signal(killed, data_dir, "step 5/8", signal.SIGTERM, *flags, "--resume", "true",
                                 "--keep_last", "1")  # fmt: skip
    assert code == 0, out[-3000:]
    assert "Resumed at step 4" in out and "Traceback" not in out
    stopped_at = int(re.search(r"Stopped by SIGTERM after step (\d) of 8", out)[1])
    assert stopped_at in (5, 6, 7), out[-2000:]
    assert checkpoints(killed) == [f"step-0000000{stopped_at}.pth"]
    assert "Deleted step-00000004.pth (--keep_last 1)" in out
    assert re.search(r"Resume with:\n    python \S+tinyllama.py .*--out_dir \S+killed .*--resume auto\n", out), out

    proc = run(killed, data_dir, *flags, "--resume", "auto")
    assert f"Resumed at step {stopped_at}" in proc.stdout
    resumed = metrics(killed)
    for step in range(5, 9):
        assert resumed[step] == losses[step], (step, resumed[step], losses[step])
    final, final_resumed = model_weights(full / "step-00000008.pth"), model_weights(killed / "step-00000008.pth")
    assert final.keys() == final_resumed.keys()
    for name in final:
        assert torch.equal(final[name], final_resumed[name]), name


def run_until_signal(out_dir: Path, data_dir: Path, line: str, sig: int, *args: str, devices: int = 1, group=True):
    """Run the script and send `sig` once it prints a line that starts with `line`: to every process of the run
    (`group`, as Ctrl-C in a terminal or SIGKILL does), else to the launching process (rank 0) only. Returns the exit
    code and the output."""
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data_dir), "--out_dir", str(out_dir)]
    cmd += ["--devices", str(devices), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        for text in proc.stdout:
            lines.append(text)
            if text.startswith(line):
                os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return proc.returncode, "".join(lines)


@pytest.mark.gpu
def test_bf16_compiled_run_on_cuda_trains_and_resumes(tmp_path, same_data_dir):
    """The GPU defaults (bf16-mixed, compiled blocks, FSDP2 on one device): the loss falls, the weights stay float32
    masters, and a run resumed from its step-3 checkpoint repeats the uninterrupted run's losses (within the GPU's
    non-deterministic reductions)."""
    gpu = [a for a in COMMON if a not in ("--accelerator", "cpu", "--precision", "32-true")]
    gpu += ["--accelerator", "cuda", "--max_steps", "6", "--save_interval", "3", "--eval_interval", "3"]

    def run_gpu(out_dir: Path, *args: str) -> str:
        cmd = [sys.executable, str(SCRIPT), *gpu, "--data_dir", str(same_data_dir), "--out_dir", str(out_dir), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    out = run_gpu(full)
    assert "'precision': 'bf16-mixed'" in out and "'compile': True" in out, out[-3000:]
    losses = metrics(full)
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1] - 1.0, losses
    weights = model_weights(full / "step-00000006.pth")
    assert {w.dtype for w in weights.values()} == {torch.float32}

    assert "Resumed at step 3" in run_gpu(resumed, "--resume", str(full / "step-00000003.pth"))
    again = metrics(resumed)
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(losses[step], rel=2e-3), (step, again[step], losses[step])


def test_run_stopped_by_max_steps_and_resumed_is_the_run_that_did_not_stop(tmp_path, pretrain_runs):
    """--max_steps stops early but the schedule spans --max_tokens: stopping at step 3 and resuming to 6 repeats the
    6-step run's learning rates and losses exactly (a schedule over --max_steps would have decayed faster in the
    first part and jumped back up after the resume)."""
    import shutil

    plan, same_data_dir = SIX_STEP_PLAN, pretrain_runs["data"]
    through, staged = tmp_path / "through", tmp_path / "staged"
    uninterrupted = start(through, same_data_dir, *plan)  # beside the resumed run
    shutil.copytree(pretrain_runs["one"], staged)  # the plan stopped by --max_steps 3 (SHARDED_FLAGS)
    assert "Done: 6 steps" in run(staged, same_data_dir, *plan, "--resume", "auto").stdout
    finish(uninterrupted)
    for key in ("learning_rate", "loss"):
        assert metrics(staged, key) == metrics(through, key), key
    lrs = metrics(through, "learning_rate")
    assert lrs[1] == lrs[2] == 3e-3 > lrs[3] > lrs[4] > lrs[5] > lrs[6] > 3e-4, lrs  # one cosine after the warmup
    # the checkpoints of step 6 are the same field by field: the saved torch RNG state differed (issue 28), as the
    # resumed run's loader iterator and the staged run's validation at step 3 drew seeds from torch's generator
    final = [torch.load(d / "step-00000006.pth", map_location="cpu", weights_only=True) for d in (through, staged)]
    assert final[0].keys() == final[1].keys()
    for key in final[0]:
        if key == "hparams":  # the flags of each command: only --resume and --out_dir differ
            differ = {k for k in final[0][key] if final[0][key][k] != final[1][key].get(k)}
            assert differ == {"resume", "out_dir"}, differ
        else:
            assert_same(final[0][key], final[1][key], key)


def assert_same(a, b, where: str) -> None:
    """`a` and `b` (a checkpoint's nested dicts, lists, tensors and plain values) are bit-identical."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def test_a_resume_with_another_precision_says_that_the_weights_are_cast(tmp_path, pretrain_runs):
    """A checkpoint of a 32-true run resumed with --precision bf16-true was cast to bfloat16 without a word."""
    import shutil

    staged = tmp_path / "staged"
    shutil.copytree(pretrain_runs["one"], staged)  # 3 steps of SIX_STEP_PLAN at 32-true
    proc = run(staged, pretrain_runs["data"], *SIX_STEP_PLAN, "--max_steps", "4", "--resume", "auto",
               "--precision", "bf16-true")  # fmt: skip
    notes = [line for line in proc.stderr.splitlines() if "was written with --precision" in line]
    assert notes == [
        "Note: step-00000003.pth was written with --precision 32-true, this run has --precision bf16-true: its "
        "weights and optimizer states are cast from float32 to bfloat16. Resume with --precision 32-true to continue "
        "as before"
    ], proc.stderr[-3000:]
    assert {w.dtype for w in model_weights(staged / "step-00000004.pth").values()} == {torch.bfloat16}
    from lit_gpt.training.checkpoint import precision_note

    assert precision_note(staged, "32-true", "32-true") is None
    assert "the weights stay float32, the computation changes" in precision_note(staged, "32-true", "bf16-mixed")


def test_resume_with_another_global_batch_size_trains_up_to_max_tokens(tmp_path, pretrain_runs):
    import shutil

    # the shared 1-process run up to its step-2 checkpoint: 2 steps of 8 sequences, 512 tokens
    shutil.copytree(pretrain_runs["one"], tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("step-00000003*"))
    # twice the batch: 2 more steps of 512 tokens reach --max_tokens (not 1536 // 512 = 3 steps in all)
    proc = run(tmp_path, pretrain_runs["data"], "--resume", "auto", "--global_batch_size", "16", "--max_tokens", "1536")
    assert "Done: 4 steps, 1,536 tokens" in proc.stdout, proc.stdout[-2000:]
    assert sorted(metrics(tmp_path)) == [1, 2, 3, 4]


def test_initial_checkpoint_of_another_architecture_is_refused_or_continued(tmp_path, same_data_dir, capsys):
    from test_cli import refusal

    from lit_gpt.config import Config
    from lit_gpt.model import GPT

    # micro-llama's shapes, but another rope_base (an architecture the registry does not have): the weights would
    # load into --model_name micro-llama and train a model they were not made for
    lit_dir = tmp_path / "lit"
    lit_dir.mkdir()
    config = Config(**{**Config.from_name("micro-llama").to_dict(), "name": "custom-llama", "block_size": BLOCK})
    config.rope_base = 500_000
    config.to_file(lit_dir / "lit_config.json")
    torch.save(GPT(config).state_dict(), lit_dir / "lit_model.pth")
    args = [*COMMON, "--data_dir", str(same_data_dir), "--out_dir", str(tmp_path / "out")]
    args += ["--initial_checkpoint_dir", str(lit_dir), "--max_steps", "1"]
    # refused in-process, through the script's own `cli(setup)` (a Python start with lightning costs ~10 s here)
    line = refusal(capsys, load_script().setup, *args)
    assert "--model_name 'micro-llama' has rope_base=10000 but" in line
    assert "lit_config.json says 500000; pass the --model_name of the model in --initial_checkpoint_dir" in line
    assert not (tmp_path / "out").exists()  # refused before a model was built or anything written
    # without --model_name, the model is the one lit_config.json describes
    i = args.index("--model_name")
    cmd = [sys.executable, str(SCRIPT), *args[:i], *args[i + 2 :]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "custom-llama: 8,930,432 parameters" in proc.stdout and f"Initialized the weights from {lit_dir}" in proc.stdout
    )
    saved = torch.load(tmp_path / "out" / "step-00000001.pth", weights_only=True)["hparams"]
    assert saved["model_config"]["rope_base"] == 500_000 and saved["model_name"] == "custom-llama"


# a 6-step schedule; the shared runs of conftest.py's `pretrain_runs` stop it after step 3
SIX_STEP_PLAN = ["--max_tokens", str(6 * 8 * BLOCK), "--warmup_steps", "1"]
SHARDED_FLAGS = ["--max_steps", "3", "--save_interval", "2", "--eval_interval", "3", *SIX_STEP_PLAN]


def test_two_process_sharded_run_matches_one_process_and_resumes_after_sigint_and_sigkill(tmp_path, pretrain_runs):
    flags, same_data_dir = SHARDED_FLAGS, pretrain_runs["data"]
    one, two, resumed = pretrain_runs["one"], pretrain_runs["two"], tmp_path / "resumed"
    for key in ("loss", "grad_norm", "val_loss"):
        expected, actual = metrics(one, key), metrics(two, key)
        assert expected.keys() == actual.keys() and expected, key
        for step in expected:
            assert actual[step] == pytest.approx(expected[step], rel=1e-4), (key, step)
    # sharded checkpoints: a directory of shards per step
    assert checkpoints(two) == ["step-00000002.pth", "step-00000003.pth"]
    assert (two / "step-00000002.pth").is_dir() and (two / "step-00000002.pth" / "meta.pt").is_file()
    weights_one, weights_two = model_weights(one / "step-00000003.pth"), model_weights(two / "step-00000003.pth")
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-4, atol=1e-5)

    # the 2-process run again, stopped by a SIGINT to rank 0 alone before its first step ends (rank 1 learns of it
    # through the all-reduce at the step boundary): both save a sharded step-1 checkpoint and exit 0
    code, out = run_until_signal(resumed, same_data_dir, "3 steps of", signal.SIGINT, *flags, devices=2, group=False)
    assert code == 0 and "Stopped by SIGINT after step 1 of 3" in out and "Traceback" not in out, out[-3000:]
    # Lightning says that both processes joined (silenced for one process only)
    assert "MEMBER: 2/2" in out and "All distributed processes registered. Starting with 2 processes" in out, out
    assert checkpoints(resumed) == ["step-00000001.pth"] and (resumed / "step-00000001.pth" / "meta.pt").is_file()
    # resumed, keeping the gathered weights through the step (instead of gathering them again for every forward and
    # backward), and killed with SIGKILL in both processes while they write the sharded step-3 checkpoint (its `.tmp`
    # directory exists): the step-2 checkpoint stays the newest complete one
    resume_flags = ["--resume", "auto", "--reshard_after_forward", "false", "--reshard_after_backward", "false"]
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(same_data_dir), "--out_dir", str(resumed)]
    cmd += [*flags, *resume_flags, "--devices", "2"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True
    )
    saving = resumed / "step-00000003.pth.tmp"
    try:
        while proc.poll() is None and not saving.exists():  # the save takes far longer than one look
            time.sleep(0.001)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoints(resumed) == ["step-00000001.pth", "step-00000002.pth", "step-00000003.pth.tmp"]
    # the killed run's lock does not outlive it, and `--resume auto` ends with the uninterrupted run's weights: neither
    # the interruptions nor the weights kept gathered changed a bit
    proc = run(resumed, same_data_dir, *flags, *resume_flags, devices=2)
    assert "Resumed at step 2" in proc.stdout
    assert checkpoints(resumed) == ["step-00000001.pth", "step-00000002.pth", "step-00000003.pth"]
    assert metrics(resumed, "loss") == metrics(two, "loss")
    weights_resumed = model_weights(resumed / "step-00000003.pth")
    assert weights_resumed.keys() == weights_two.keys()
    for name in weights_two:
        assert torch.equal(weights_resumed[name], weights_two[name]), name


def test_resume_refuses_another_model_or_world_size(tmp_path):
    from lit_gpt.config import Config
    from lit_gpt.training.checkpoint import check_compatible

    config = Config.from_name("micro-llama").to_dict()
    meta = {"hparams": {"model_config": config, "world_size": 2, "model_name": "micro-llama"}}
    check_compatible(tmp_path, meta, config, world_size=2)
    with pytest.raises(ValueError, match="different model configuration.*n_layer"):
        check_compatible(tmp_path, meta, {**config, "n_layer": 2}, world_size=2)
    with pytest.raises(ValueError, match="written by 2 processes, this run has 1"):
        check_compatible(tmp_path, meta, config, world_size=1)
    # litdata refuses these itself, after the model is set up, in words that name none of the flags
    run = {**meta["hparams"], "micro_batch_size": 2, "num_workers": 1, "seed": 3407}
    meta["hparams"] = {**run, "micro_batch_size": 4, "num_workers": 2}
    check_compatible(tmp_path, meta, config, world_size=2, run_hparams=meta["hparams"])
    with pytest.raises(ValueError, match="with --micro_batch_size 4 --num_workers 2, this run has --micro_batch_size 2 "
                       "--num_workers 1.*resume with --micro_batch_size 4 --num_workers 2"):  # fmt: skip
        check_compatible(tmp_path, meta, config, world_size=2, run_hparams=run)
    # a lit checkpoint (weights only, e.g. lit_model.pth) is not a run to resume
    with pytest.raises(ValueError, match="not a training checkpoint.*--initial_checkpoint_dir"):
        check_compatible(tmp_path, {"transformer.wte.weight": torch.zeros(1)}, config, world_size=1)


def test_find_latest_ignores_incomplete_saves(tmp_path):
    from lit_gpt.training.checkpoint import checkpoint_path, find_latest

    assert find_latest(tmp_path / "missing") is None
    assert find_latest(tmp_path) is None
    checkpoint_path(tmp_path, 9).touch()
    (tmp_path / "step-00000100.pth").mkdir()
    (tmp_path / "step-00000200.pth.tmp").touch()  # a save interrupted by a crash
    (tmp_path / "step-abc.pth").touch()
    assert find_latest(tmp_path) == tmp_path / "step-00000100.pth"


def test_cosine_lr_and_flops():
    from lit_gpt.config import Config
    from lit_gpt.flops import flops_per_token, mfu, num_parameters
    from lit_gpt.training.lr import cosine_lr

    lrs = [cosine_lr(s, 1.0, 0.1, warmup_steps=4, max_steps=12) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[8] == pytest.approx(0.55) and lrs[12] == lrs[13] == 0.1
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))

    config = Config.from_name("tiny-llama-1.1b")
    n = num_parameters(config)
    assert n == num_parameters(config, include_embedding=True) - 32000 * 2048
    assert 0.96e9 < n < 1.04e9
    assert flops_per_token(config) == 6 * n + 12 * 22 * 2048 * 2048
    assert mfu(1000.0, 1e9, torch.device("cpu")) is None


def test_training_step_skips_non_finite_gradients():
    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from lit_gpt.training.fabric import L
    from lit_gpt.training.step import training_step

    fabric = L.Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    model = GPT(Config.from_name("micro-llama", n_layer=1, block_size=16))
    model.fused_loss = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model, optimizer = fabric.setup(model, optimizer)
    batches = [torch.randint(0, 100, (2, 17)) for _ in range(2)]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    hook = model.lm_head.weight.register_hook(lambda grad: grad * float("inf"))
    loss, grad_norm = training_step(fabric, model, optimizer, batches, grad_clip=1.0)
    assert torch.isfinite(loss) and not torch.isfinite(grad_norm)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no update
    assert all(not s for s in optimizer.state.values()) or all(s["step"] == 0 for s in optimizer.state.values())

    hook.remove()
    loss, grad_norm = training_step(fabric, model, optimizer, batches, grad_clip=1.0)
    assert torch.isfinite(grad_norm)
    assert not torch.equal(before["lm_head.weight"], model.lm_head.weight)
    assert all(s["step"] == 1 for s in optimizer.state.values())


def test_a_second_run_on_the_same_out_dir_is_refused(tmp_path, same_data_dir):
    """A job started twice (by a scheduler, say) must not share an out dir: the second run is refused, naming the
    first, whose checkpoints stay its own. The first is paused (SIGSTOP) while the second runs, so that they overlap
    whatever the speed of the machine."""
    flags = ["--max_steps", "4", "--save_interval", "2", "--eval_interval", "4", "--resume", "auto"]
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(same_data_dir), "--out_dir", str(tmp_path), *flags]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    output = []
    try:
        for line in first.stdout:
            output.append(line)
            if line.startswith("step 1/4"):
                first.send_signal(signal.SIGSTOP)
                break
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
        first.send_signal(signal.SIGCONT)
        output += first.stdout.readlines()
        assert first.wait(timeout=300) == 0, "".join(output)[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode != 0, second.stdout[-2000:]
    refusal = second.stderr.strip().splitlines()[-1]
    assert f"is in use by another training run (pid {first.pid} on " in refusal, second.stderr[-2000:]
    assert "pass another --out_dir" in refusal
    assert checkpoints(tmp_path) == ["step-00000002.pth", "step-00000004.pth"]
    assert torch.load(tmp_path / "step-00000004.pth", weights_only=True)["step_count"] == 4
    assert sorted(metrics(tmp_path)) == [1, 2, 3, 4]
    assert len(list((tmp_path / "logs" / "csv").glob("version_*"))) == 1  # the second run logged nothing
    assert "Done: 4 steps" in "".join(output)


def test_an_out_dir_lock_that_cannot_be_taken_is_named_and_one_without_locks_warns(tmp_path, monkeypatch, capsys):
    """A `.lock` that cannot be opened (here a directory) is refused with one line naming it; a filesystem without
    `flock` (Lustre mounted without it, which this machine cannot have: a mock) does not stop the run, it warns."""
    import errno
    import fcntl

    from lit_gpt.training.checkpoint import own_out_dir
    from lit_gpt.training.fabric import L

    fabric = L.Fabric(accelerator="cpu", devices=1)
    (tmp_path / ".lock").mkdir()
    with pytest.raises(FileExistsError, match=r"cannot take .*\.lock \(.*Is a directory.*remove it, or pass another"):
        with own_out_dir(fabric, tmp_path):
            pass
    (tmp_path / ".lock").rmdir()

    def no_locks(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = False
    with own_out_dir(fabric, tmp_path):
        ran = True
    assert ran
    assert "cannot lock" in capsys.readouterr().out


def test_a_hard_linked_lock_file_is_refused_not_written_through(tmp_path):
    """An empty `.lock` hard-linked to a file elsewhere used to receive the run's lock record, written into that other
    file too: refused in one line, both names left as they were."""
    from lit_gpt.training.checkpoint import own_out_dir
    from lit_gpt.training.fabric import L

    outside, out_dir = tmp_path / "outside.txt", tmp_path / "out"
    outside.write_text("")
    out_dir.mkdir()
    os.link(outside, out_dir / ".lock")
    with pytest.raises(FileExistsError, match=r"out/\.lock is a hard link \(2 names of one file\).*Remove it, or pass"):
        with own_out_dir(L.Fabric(accelerator="cpu", devices=1), out_dir):
            pass
    assert outside.read_text() == "" and (out_dir / ".lock").stat().st_nlink == 2


def test_data_of_a_larger_vocabulary_than_the_model_is_refused_up_front(tmp_path):
    """Token ids the model has no embedding for used to fail at the first step, with an IndexError."""
    data = _build(tmp_path / "data", lambda i: same_tokens(i) + 40_000, 8)  # micro-llama: 32,000 ids
    setup = load_script().setup
    with pytest.raises(ValueError, match=r"chunk-0-0.bin holds token id 40\d{3}, but --model_name micro-llama has "
                       r"embeddings for 32,000 ids.*Prepare it with the model's tokenizer"):  # fmt: skip
        setup(model_name="micro-llama", data_dir=str(data), accelerator="cpu", devices=1, out_dir=tmp_path / "out",
              global_batch_size=8, micro_batch_size=2, block_size=BLOCK)  # fmt: skip


@pytest.mark.parametrize("devices", [1, 2])
def test_an_id_outside_the_vocabulary_in_a_later_chunk_of_an_old_folder_stops_in_one_line(tmp_path, devices):
    """A folder prepared before prepare.json recorded its largest id has only its first chunk checked at the start: an
    id the model has no embedding for in a later chunk ended in an IndexError traceback at the step that read it. Each
    batch of such a folder is checked on the host: one `error:` line naming the folder and how to prepare it again.
    On two processes the check is agreed (a collective): the process that found the id used to stop alone, without a
    word (rank 0 speaks), and rank 0 then failed in its next collective with a gloo traceback."""
    data = _build(tmp_path / "data", same_tokens, 40)
    shutil.rmtree(data / "starcoder")
    _write_chunks(lambda i: same_tokens(i) + (40_000 if i >= 2 else 0), 40, data / "starcoder")  # chunk 0 clean
    assert not (data / "starcoder" / "prepare.json").exists()
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(tmp_path / "out")]
    line = refusal([*cmd, "--max_steps", "3", "--eval_interval", "100", "--devices", str(devices)])
    assert re.fullmatch(
        r"error: a batch holds token id 40\d{3}, but micro-llama has embeddings for 32,000 ids \(0 to 31999\): it "
        rf"comes from one of .*{re.escape(str(data / 'starcoder'))}.*Prepare it again with the model's tokenizer "
        r"\(the prepare scripts' --tokenizer_path, --overwrite true\).*",
        line,
    ), line


def test_keep_last_deletes_only_older_checkpoints_of_its_own_names(tmp_path):
    from lit_gpt.training.checkpoint import checkpoint_path, prune_checkpoints

    for step in (2, 4, 6):
        checkpoint_path(tmp_path, step).touch()
    (tmp_path / "step-00000008.pth").mkdir()  # a sharded checkpoint, the newest
    others = ["step-00000010.pth.tmp", "step-1.pth", "step-00000003.pth.bak", "notes.txt"]
    for name in others:  # an unfinished save, names of another scheme, another file: never ours to delete
        (tmp_path / name).touch()
    assert prune_checkpoints(tmp_path, None) == []
    assert prune_checkpoints(tmp_path, 2) == [tmp_path / "step-00000002.pth", tmp_path / "step-00000004.pth"]
    assert prune_checkpoints(tmp_path, 1) == [tmp_path / "step-00000006.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "step-00000008.pth"])
    assert prune_checkpoints(tmp_path, 1) == []


def test_keep_last_after_a_resume_from_an_older_checkpoint_keeps_the_one_just_saved(tmp_path):
    """A run resumed from step 10 of a run that reached step 20 saves step 15: with --keep_last 1 that save was deleted
    (step 20 was the newest), so that a kill then resumed from the other run's step 20."""
    from lit_gpt.training.checkpoint import checkpoint_path, prune_checkpoints

    for step in (10, 15, 20):
        checkpoint_path(tmp_path, step).touch()
    assert prune_checkpoints(tmp_path, 1, checkpoint_path(tmp_path, 15)) == [checkpoint_path(tmp_path, 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000015.pth", "step-00000020.pth"]


def test_default_model_on_cpu_is_refused_up_front(tmp_path):
    """TinyLlama-1.1B on CPU used to train until the memory ran out (23.3 of 24 GB, no step in 2 minutes)."""
    from lit_gpt.config import Config
    from lit_gpt.training.resources import MAX_CPU_STEP_HOURS, available_memory, cpu_flops_per_second, estimate

    # refused on a machine whose memory or speed does not suffice: most, but not a large fast server (the refusal's
    # words are checked with given machine figures by test_a_cpu_run_is_judged_by_the_memory_and_speed_of_the_machine)
    e = estimate(Config.from_name("tiny-llama-1.1b"), "bf16-mixed", 4, 512, 1, 1, False, cpu_flops_per_second())
    if e.total_bytes < 1.5 * available_memory() and e.step_seconds < 1.5 * MAX_CPU_STEP_HOURS * 3600:
        pytest.skip(
            f"this machine ({available_memory() / 1e9:.0f} GB available, {e.step_seconds / 3600:.1f} hours a step) may "
            "take TinyLlama-1.1B on CPU: the refusal needs a smaller or slower one"
        )
    cmd = [sys.executable, str(SCRIPT), "--accelerator", "cpu", "--out_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: --model_name tiny-llama-1.1b on CPU ")
    assert "python pretrain/tinyllama.py --model_name micro-llama --accelerator cpu" in line
    assert not (tmp_path / "out").exists()


def test_a_cpu_run_is_judged_by_the_memory_and_speed_of_the_machine():
    from lit_gpt.cli import UserError
    from lit_gpt.config import Config
    from lit_gpt.training.resources import check_cpu_run

    run = (Config.from_name("tiny-llama-1.1b"), "32-true", 4, 512, 1, 1, False)
    # a laptop: 16 GB, 100 GFLOP/s
    with pytest.raises(
        UserError,
        match=r"needs about 4\d\.\d GB of memory .* this machine has 16.0 GB available; and "
        r"one optimizer step of 512 × 2048 tokens would take about \d\d hours at the 100 GFLOP/s",
    ):
        check_cpu_run(*run, flops_per_second=1e11, available=16e9)
    # a server: 512 GB, 10 TFLOP/s
    assert check_cpu_run(*run, flops_per_second=1e13, available=512e9).step_seconds < 3600
    assert check_cpu_run(Config.from_name("micro-llama"), "32-true", 4, 8, 1, 1, False, 1e10, 4e9).total_bytes < 1e9


def test_training_memory_estimate_of_tinyllama():
    from lit_gpt.config import Config
    from lit_gpt.training.resources import estimate

    config = Config.from_name("tiny-llama-1.1b")
    e = estimate(
        config, "32-true", 4, 512, devices=1, num_nodes=1, activation_checkpointing=False, flops_per_second=1e11
    )
    assert 17e9 < e.state_bytes < 18e9  # 1.1e9 parameters × 16 bytes
    assert 20e9 < e.activation_bytes < 40e9 and 5 < e.step_seconds / 3600 < 100
    sharded = estimate(config, "32-true", 4, 512, devices=2, num_nodes=2, activation_checkpointing=True,
                       flops_per_second=1e11)  # fmt: skip
    assert sharded.state_bytes == e.state_bytes / 2 and sharded.activation_bytes < e.activation_bytes / 2


def test_warmup_longer_than_the_run_is_warned_about_when_the_run_goes_ahead(tmp_path, capsys):
    from lit_gpt.training.lr import warmup_warning

    # 40 steps with the default --warmup_steps 2000: the learning rate used to peak at 8e-6, and the loss barely moved
    message = "--warmup_steps 2000 is longer than the 40 steps this run trains: the learning rate peaks at 8e-06"
    assert message in warmup_warning(2000, 40, 4e-4)
    assert warmup_warning(4, 40, 4e-4) is None
    # a run refused (here for its missing data) prints its error alone; the warning of one that goes ahead is checked
    # by test_notes_come_after_every_check_and_the_settings_name_the_data_the_run_reads
    setup = load_script().setup
    with pytest.raises(FileNotFoundError, match="lacks prepared litdata chunks"):
        setup(model_name="micro-llama", accelerator="cpu", devices=1, out_dir=tmp_path, data_dir=str(tmp_path),
              global_batch_size=8, micro_batch_size=4, max_tokens=81920)  # fmt: skip
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"min_lr": 1e-3, "learning_rate": 4e-4}, "--min_lr 0.001 must be between 0 and --learning_rate 0.0004"),
        ({"learning_rate": -1e-3}, "--learning_rate -0.001 must not be negative"),
        ({"weight_decay": -0.1}, "--weight_decay -0.1 must not be negative"),
        ({"warmup_steps": -5}, "--warmup_steps -5 must not be negative"),
        ({"grad_clip": -1.0}, "--grad_clip -1.0 must not be negative"),
        ({"beta1": 1.0}, r"--beta1 1.0 must be in \[0, 1\)"),
        ({"beta2": -0.5}, r"--beta2 -0.5 must be in \[0, 1\)"),
        ({"seed": -1}, "--seed -1 must not be negative"),
    ],
)
def test_optimizer_flags_are_refused_before_fabric_starts(tmp_path, flags, message):
    # accepted silently, or failed inside AdamW or the seeding after Fabric had started
    setup = load_script().setup
    with pytest.raises(ValueError, match=message):
        setup(model_name="micro-llama", accelerator="cpu", devices=1, out_dir=tmp_path, data_dir=str(tmp_path), **flags)


def test_cpu_bf16_flags(tmp_path, monkeypatch):
    from lit_gpt.training.launch import cpu_has_bf16

    line = "flags\t\t: fpu vme sse avx2 avx512f avx512bw"
    assert not cpu_has_bf16(f"processor\t: 0\n{line}\n")
    assert cpu_has_bf16(f"processor\t: 0\n{line} avx512_bf16 avx512vnni\n")
    assert cpu_has_bf16(f"{line} amx_bf16 amx_tile\n")
    # LIT_GPT_CPUINFO names the file read instead of /proc/cpuinfo: a test or CI runs as on another CPU
    for kind, has_bf16 in [("avx2-only", False), ("bf16", True)]:
        simulate_cpu(monkeypatch, tmp_path, kind)
        assert cpu_has_bf16() is has_bf16
    monkeypatch.setenv("LIT_GPT_CPUINFO", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"LIT_GPT_CPUINFO=\S+missing cannot be read .* unset it to read this"):
        cpu_has_bf16()


def test_document_positions_without_a_document_mask_is_refused_by_pretraining_and_the_benchmark(
    tmp_path, same_data_dir
):
    """The benchmark measured the causal step without a word, as if positions restarted per document."""
    from prepared_data import load_script as load_scripts_module

    message = "--document_positions true restarts positions at each document of --document_mask: pass --document_m"
    with pytest.raises(ValueError, match=message):
        load_scripts_module("benchmark", "dev").main(
            model_name="micro-llama", document_positions=True, out_dir=str(tmp_path)
        )
    with pytest.raises(ValueError, match=message):
        load_script().setup(model_name="micro-llama", accelerator="cpu", devices=1, out_dir=tmp_path,
                            data_dir=str(same_data_dir), document_positions=True)  # fmt: skip


def test_eos_id_without_a_document_mask_is_refused_by_pretraining_and_the_benchmark(tmp_path, same_data_dir):
    """`--eos_id` was taken and ignored: a user who meant attention within documents trained causally without a
    word."""
    from prepared_data import load_script as load_scripts_module

    message = "--eos_id 7 is the token where --document_mask splits documents: pass --document_mask true as well"
    with pytest.raises(ValueError, match=message):
        load_scripts_module("benchmark", "dev").main(model_name="micro-llama", eos_id=7, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=message):
        load_script().setup(model_name="micro-llama", accelerator="cpu", devices=1, out_dir=tmp_path,
                            data_dir=str(same_data_dir), eos_id=7)  # fmt: skip


def test_document_mask_run_records_it_and_a_resume_that_changes_it_is_refused(tmp_path, same_data_dir, capsys):
    """--document_mask trains (eos id 7 ends a document every 33 tokens of these samples), is in the checkpoint's
    hparams, and a resume with another mask is refused in one line before any step."""
    from test_cli import refusal

    proc = run(tmp_path, same_data_dir, "--max_steps", "1", "--document_mask", "true", "--eos_id", "7")
    assert "attention within documents (eos id 7)" in proc.stdout
    hparams = torch.load(checkpoints_path := tmp_path / checkpoints(tmp_path)[-1], weights_only=True)["hparams"]
    assert (hparams["document_mask"], hparams["document_positions"], hparams["eos_id"]) == (True, False, 7)
    # refused through the script's own `cli(setup)` in-process (a Python start with lightning costs ~10 s here): exit
    # code 2 and this one line on stderr, nothing else
    args = [
        *COMMON,
        "--data_dir",
        str(same_data_dir),
        "--out_dir",
        str(tmp_path),
        "--max_steps",
        "2",
        "--resume",
        "auto",
    ]
    assert refusal(capsys, load_script().setup, *args) == (
        f"error: {checkpoints_path} was trained with --document_mask true --document_positions false --eos_id 7, "
        "this run has --document_mask false. Resume with --document_mask true --document_positions false --eos_id "
        "7, or start a new run (another --out_dir, --initial_checkpoint_dir for its weights)\n"
    )
    assert checkpoints(tmp_path) == [checkpoints_path.name]  # no step of the refused run


def flip_byte(path: Path) -> None:
    """Flip every bit of the byte in the middle of `path` (in a tensor's bytes: the file is almost all weights)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def strip_digest(path: Path) -> None:
    """Take away the SHA-256 written with a checkpoint: a single file's zip comment (its length set to 0, its bytes cut
    off, as a zip tool that rewrites the comment does), a sharded one's checksums.json."""
    if path.is_dir():
        (path / "checksums.json").unlink()
        return
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")  # the end-of-central-directory record: 22 bytes, then the comment
    data[end + 20 : end + 22] = b"\0\0"
    path.write_bytes(bytes(data[: end + 22]))


def refusal(cmd: list) -> str:
    """The one `error:` line of a command refused with exit code 2."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("devices", [1, 2])
def test_a_flipped_byte_in_a_checkpoint_is_refused_and_resume_auto_takes_the_one_before(
    tmp_path, pretrain_runs, export_tokenizer_dir, devices
):
    out_dir = tmp_path / "run"
    shutil.copytree(pretrain_runs["one" if devices == 1 else "two"], out_dir)
    newest = out_dir / "step-00000003.pth"
    corrupt = newest if devices == 1 else max(newest.glob("*.distcp"), key=lambda p: p.stat().st_size)
    flip_byte(corrupt)
    data, cmd = pretrain_runs["data"], [sys.executable, str(SCRIPT), *COMMON, *SHARDED_FLAGS]
    cmd += ["--data_dir", str(data), "--out_dir", str(out_dir), "--devices", str(devices)]
    # a resume from it, and its conversion, are refused in one line that names the file
    line = refusal([*cmd, "--resume", str(newest)])
    assert f"{corrupt} is corrupt" in line, line
    convert = [sys.executable, str(ROOT / "scripts" / "convert_pretrained_checkpoint.py"), "--checkpoint_file"]
    convert += [str(newest), "--tokenizer_dir", str(export_tokenizer_dir), "--output_dir", str(tmp_path / "lit")]
    assert f"{corrupt} is corrupt" in refusal(convert)
    assert not (tmp_path / "lit").exists()
    # --resume auto passes over it, says so, and replays step 3 from step 2: the weights of the run that was whole
    proc = run(out_dir, data, *SHARDED_FLAGS, "--resume", "auto", devices=devices)
    warning = f"Warning: {corrupt} is corrupt"
    assert warning in proc.stdout and "step-00000003.pth passed over, resuming from step-00000002.pth" in proc.stdout
    assert "Resumed at step 2" in proc.stdout
    expected = model_weights(pretrain_runs["one" if devices == 1 else "two"] / "step-00000003.pth")
    resumed = model_weights(newest)
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


@pytest.mark.parametrize("devices", [1, 2])
def test_a_checkpoint_whose_digest_was_stripped_is_refused_and_resume_auto_takes_the_one_before(
    tmp_path, pretrain_runs, devices
):
    """A flipped byte in a checkpoint whose digest was then taken away (a zip comment stripped, a checksums.json
    deleted) used to be read as a checkpoint written before digests: resumed and converted. Its hparams say that it
    had one: a resume from it and its conversion refuse it, `--resume auto` passes over it, saying so."""
    from lit_gpt.files import CorruptFile
    from lit_gpt.training.checkpoint import latest_to_resume, verify_checkpoint

    out_dir = tmp_path / "out"
    shutil.copytree(pretrain_runs["one" if devices == 1 else "two"], out_dir)
    newest = out_dir / "step-00000003.pth"
    flip_byte(newest if devices == 1 else max(newest.glob("*.distcp"), key=lambda p: p.stat().st_size))
    strip_digest(newest)
    what = "its zip comment" if devices == 1 else "checksums.json"
    with pytest.raises(
        CorruptFile, match=f"{newest} has no SHA-256 though one was written with it \\({what} is missing"
    ):
        verify_checkpoint(newest)  # what a resume from it and the conversion call first
    said = []
    assert latest_to_resume(out_dir, say=said.append) == out_dir / "step-00000002.pth"
    assert "has no SHA-256 though one was written" in said[0] and "resuming from step-00000002.pth" in said[0], said
    assert verify_checkpoint(out_dir / "step-00000002.pth")
    # one written before digests were recorded (none, and no record of one in its hparams) is read as it is
    old = tmp_path / "old.pth"
    if devices == 1:
        state = torch.load(out_dir / "step-00000002.pth", weights_only=True)
    else:
        shutil.copytree(out_dir / "step-00000002.pth", old)
        (old / "checksums.json").unlink()
        state = torch.load(old / "meta.pt", weights_only=True)
    del state["hparams"]["checkpoint_digests"]
    torch.save(state, old if devices == 1 else old / "meta.pt")
    assert verify_checkpoint(old) is False


def test_a_flipped_byte_in_the_initial_checkpoint_is_refused(tmp_path, same_data_dir):
    from lit_gpt.config import Config
    from lit_gpt.model import GPT
    from lit_gpt.weights import save_lit_checkpoint

    config = Config.from_name("micro-llama", block_size=BLOCK)
    lit_dir = tmp_path / "lit"
    lit_dir.mkdir()
    save_lit_checkpoint(GPT(config).state_dict(), config, lit_dir)
    flip_byte(lit_dir / "lit_model.pth")
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(same_data_dir), "--out_dir", str(tmp_path / "out")]
    line = refusal([*cmd, "--max_steps", "1", "--initial_checkpoint_dir", str(lit_dir)])
    assert f"{lit_dir / 'lit_model.pth'} is corrupt" in line, line


def test_a_resume_on_training_data_prepared_again_is_refused_naming_the_folder(tmp_path):
    data = _build(tmp_path / "data", same_tokens, 40)
    out_dir = tmp_path / "out"
    run(out_dir, data, "--max_steps", "1", "--save_interval", "1", "--eval_interval", "100")
    assert torch.load(out_dir / "step-00000001.pth", weights_only=True)["hparams"]["train_fingerprints"]
    # starcoder prepared again from other documents (as `--overwrite true` does: a new folder in its place)
    starcoder = data / "starcoder"
    shutil.rmtree(starcoder)
    _write_chunks(lambda i: same_tokens(i)[: BLOCK * 3 + i], 41, starcoder)
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(out_dir)]
    line = refusal([*cmd, "--max_steps", "2", "--eval_interval", "100", "--resume", "auto"])
    assert f"{starcoder} has changed since {out_dir / 'step-00000001.pth'} was saved" in line, line


def test_a_resume_on_a_chunk_edited_in_its_middle_is_refused_in_one_line(tmp_path, export_tokenizer_dir):
    """Four tokens changed in the middle of a prepared chunk, its size kept, between a save and `--resume auto`: the
    digest of each chunk's first and last 64 KiB resumed without a word. The chunk differs from the SHA-256 that its
    prepare.json records: refused in one line naming it."""
    from lit_gpt.data.prepare import prepare
    from lit_gpt.data.readers import TextOptions

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text((ROOT / "lit_gpt" / "model.py").read_text() * 40)
    train = tmp_path / "train"
    prepare("text", None, str(train), export_tokenizer_dir, 2049 * 64, num_workers=1, verbose=False,
            inputs=[str(tmp_path / "corpus")], text_options=TextOptions())  # fmt: skip
    val = _build(tmp_path / "data", same_tokens, 8) / "slimpajama" / "val"
    out_dir = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--train_data", f"{{{train}: 1.0}}", "--val_data", str(val)]
    cmd += ["--out_dir", str(out_dir), "--eval_interval", "100"]
    proc = subprocess.run([*cmd, "--max_steps", "1", "--save_interval", "1"], capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    chunk = train / "chunk-0-0.bin"
    with open(chunk, "r+b") as f:
        f.seek(chunk.stat().st_size // 2)
        f.write(bytes(16))
    line = refusal([*cmd, "--max_steps", "2", "--resume", "auto"])
    assert line == (
        f"error: {chunk} was modified after its preparation: its SHA-256 differs ({train / 'prepare.json'}): its "
        f"tokens are not those that were prepared. Prepare {train} again, or restore the chunk"
    ), line


def test_training_data_replaced_while_read_stops_the_run_and_other_tokens_of_the_same_counts_refuse_its_resume(
    tmp_path,
):
    """Starcoder prepared again, while the run reads it, from text of the same token counts (words swapped): the run
    used to go on with the new data, and a resume to accept it (its index.json is byte-identical). The run stops in
    one line at the next log step; the resume is refused on the tokens of the chunks."""
    data = _build(tmp_path / "data", same_tokens, 40)
    starcoder, out_dir = data / "starcoder", tmp_path / "out"
    index = (starcoder / "index.json").read_bytes()
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--data_dir", str(data), "--out_dir", str(out_dir)]
    run = subprocess.Popen([*cmd, "--max_steps", "5000", "--save_interval", "1", "--eval_interval", "10000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    try:
        for line in run.stdout:
            if line.startswith("Saved") and "step-00000002.pth" in line:
                break
        # as `prepare_text.py --overwrite true` does: the new folder written beside, renamed into place
        _write_chunks(lambda i: (same_tokens(i) + 1) % 500, 40, tmp_path / "new")
        (tmp_path / "new" / "index.json").write_bytes(index)  # a preparation writes it byte-reproducibly
        os.rename(starcoder, tmp_path / "old")
        os.rename(tmp_path / "new", starcoder)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {starcoder} changed while this run read it (prepared again"), stderr[-3000:]
    assert (starcoder / "index.json").read_bytes() == index  # the same counts: only the tokens differ
    line = refusal([*cmd, "--max_steps", "5000", "--eval_interval", "10000", "--resume", "auto"])
    assert f"{starcoder} has changed since {out_dir}/step-" in line, line
    assert "the tokens in its chunks differ, its index.json does not" in line, line
