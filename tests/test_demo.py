"""`make demo` in its short form (`scripts/quickstart.sh --smoke`): every stage with the real scripts, then the
tutorials' runnable blocks on what it built; and `scripts/plot_logs.py` on CSV logs.

Re-running the demo (every built stage skipped) is left to `make demo` itself: it would add ~45 s here."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _demo(root: Path) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "scripts" / "quickstart.sh"), "--smoke", "--root", str(root)]
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # ~2.5 min on 2 cores: 14 processes, each importing torch and lightning
def test_demo_smoke(tmp_path):
    root = tmp_path / "demo"
    out = _demo(root).stdout

    data, run = root / "data", root / "micro-llama"
    assert (root / "checkpoints" / "sample-tokenizer" / "tokenizer.model").is_file()
    for split in ("slimpajama/train", "slimpajama/val", "slimpajama/test", "starcoder"):
        assert (data / split / "index.json").is_file(), split
    # two checkpoints in the first run, one more after resuming
    assert sorted(p.name for p in run.glob("step-*.pth")) == [f"step-0000000{i}.pth" for i in (2, 4, 6)]
    assert "Resumed at step 4" in out
    lit, hf = root / "checkpoints" / "lit-micro-llama", root / "checkpoints" / "hf-micro-llama"
    assert {"lit_config.json", "lit_model.pth", "tokenizer.model"} <= {p.name for p in lit.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= {p.name for p in hf.iterdir()}
    assert (run / "loss.png").stat().st_size > 10_000
    assert list((run / "logs" / "tensorboard").rglob("events.out.tfevents.*"))
    result = json.loads((run / "test_perplexity.json").read_text())
    assert result["num_blocks"] == 8 and 0 < result["loss"] < 11
    assert "Sample 1: 20 tokens" in out
    assert "train loss " in out and "val loss " in out and "Demo finished in" in out

    # where the demo sends the user next, with the paths that page's commands read
    assert "tutorials/finetune_lora.md finetunes this lit checkpoint" in out
    assert f"(its commands read out/demo: write {root} in its place)" in out

    # the tutorials' runnable blocks. Those of finetune_lora.md start where `make demo` ends: in the repository root,
    # which holds out/demo (here, the smoke demo's output) and nothing else of the demo's
    from test_tutorials import AFTER_DEMO, DOCS, run_marked_blocks

    after_demo = tmp_path / "after-demo"
    (after_demo / "out").mkdir(parents=True)
    (after_demo / "out" / "demo").symlink_to(root, target_is_directory=True)
    assert run_marked_blocks(after_demo, [doc for doc in DOCS if doc.name in AFTER_DEMO]) == 8
    assert (after_demo / "out" / "lora-merged" / "lit_model.pth").is_file()
    assert (after_demo / "checkpoints" / "lit-micro-llama-full" / "lit_model.pth").is_file()

    # the others, on the sample data and tokenizer the demo built, where the sample-data section of
    # pretrain_tinyllama.md leaves them
    work = tmp_path / "tutorial"
    (work / "checkpoints").mkdir(parents=True)
    (work / "data").symlink_to(data, target_is_directory=True)
    (work / "checkpoints" / "sample-tokenizer").symlink_to(root / "checkpoints" / "sample-tokenizer")
    # pretrain_custom_data.md's corpus: a folder of someone's own text files (here, Python modules as text)
    (work / "my-corpus").mkdir()
    for source in sorted(Path(os.__file__).parent.glob("*.py"))[:40]:
        (work / "my-corpus" / f"{source.stem}.txt").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    assert run_marked_blocks(work, [doc for doc in DOCS if doc.name not in AFTER_DEMO]) >= 3
    assert (work / "checkpoints" / "lit-micro-llama" / "lit_model.pth").is_file()


def test_demo_root_is_taken_from_the_callers_folder(tmp_path):
    """`--root out` from another folder writes there, not into the repository (a Python that fails stops it after
    the root's first folder, before any stage)."""
    name = f"demo-root-{tmp_path.name}"
    cmd = ["bash", str(ROOT / "scripts" / "quickstart.sh"), "--smoke", "--root", name]
    env = {**os.environ, "PYTHON": "/bin/false"}
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        assert not (ROOT / name).exists()
    finally:
        shutil.rmtree(ROOT / name, ignore_errors=True)
    assert proc.returncode != 0
    assert (tmp_path / name / "logs").is_dir(), proc.stderr


def test_demo_default_root_is_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for root in ("out/demo", "out/demo-smoke"):
        proc = subprocess.run(["git", "check-ignore", "-q", f"{root}/logs"], cwd=ROOT)
        assert proc.returncode == 0, f"{root} is not ignored by .gitignore"


def test_plot_logs_csv(tmp_path, capsys):
    """Two CSV versions (a run and its resumption): the later one's values win, the PNG and summary come out."""
    from prepared_data import load_script
    from pytorch_lightning.loggers import CSVLogger

    for version, steps in enumerate([range(1, 11), range(9, 16)]):
        logger = CSVLogger(save_dir=tmp_path / "logs", name="csv", version=version)
        for step in steps:
            loss = 10 - step * 0.4 + version * 0.01
            logger.log_metrics({"loss": loss, "tokens_per_sec": 1000.0 + step}, step=step)
            if step % 5 == 0:
                logger.log_metrics({"val_loss": loss + 0.1, "val_ppl": 2.0}, step=step)
        logger.save()
    summary = load_script("plot_logs").main(log_dir=tmp_path / "logs")

    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert summary["first_step"] == 1 and summary["last_step"] == 15 and summary["val_step"] == 15
    assert abs(summary["first_loss"] - 9.6) < 1e-6 and abs(summary["last_loss"] - 4.01) < 1e-6
    assert "train loss 9.600 at step 1 -> 4.010 at step 15" in capsys.readouterr().out


def test_plot_logs_compares_runs_with_their_learning_rates(tmp_path, capsys):
    """--compare: a run and an anneal branched off it at step 6, in one PNG, a summary line per run by its out dir."""
    from prepared_data import load_script
    from pytorch_lightning.loggers import CSVLogger

    from lit_gpt.cli import UserError

    for run, steps in (("wsd", range(1, 11)), ("wsd-anneal", range(7, 10))):
        logger = CSVLogger(save_dir=tmp_path / run / "logs", name="csv", version=0)
        for step in steps:
            logger.log_metrics({"loss": 10 - step * 0.4, "learning_rate": 1e-3 / step, "val_loss": 9.0}, step=step)
        logger.save()
    logs = [tmp_path / run / "logs" for run in ("wsd", "wsd-anneal")]
    summaries = load_script("plot_logs").main(log_dir=logs[0], compare=logs[1:], output=tmp_path / "runs.png")

    assert (tmp_path / "runs.png").stat().st_size > 10_000
    assert [s["first_step"] for s in summaries.values()] == [1, 7]
    out = capsys.readouterr().out
    assert "wsd: train loss 9.600 at step 1 -> 6.000 at step 10" in out
    assert "wsd-anneal: train loss 7.200 at step 7 -> 6.400 at step 9" in out
    with pytest.raises(UserError, match=f"--compare's {tmp_path / 'nowhere'} does not exist"):
        load_script("plot_logs").main(log_dir=logs[0], compare=[tmp_path / "nowhere"])


def test_plot_logs_on_a_missing_folder_says_it_does_not_exist(tmp_path):
    from prepared_data import load_script

    from lit_gpt.cli import UserError

    with pytest.raises(UserError, match=f"--log_dir {tmp_path / 'nowhere'} does not exist"):
        load_script("plot_logs").main(log_dir=tmp_path / "nowhere")


def test_plot_logs_draws_the_task_scores_against_tokens(tmp_path, capsys):
    """Scores logged by `pretrain/tinyllama.py --eval_tasks` (`eval/<task>/<metric>` beside `tokens`) in CSV and
    TensorBoard logs: `scores.png` and a line per score at its latest tokens."""
    from prepared_data import load_script
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(save_dir=tmp_path / "logs", name="csv", version=0)
    board = TensorBoardLogger(save_dir=tmp_path / "logs", name="tensorboard", version=0)
    for step in range(1, 9):
        csv.log_metrics({"loss": 5.0 - step * 0.1, "tokens": step * 1024}, step=step)
        if step % 4 == 0:
            csv.log_metrics({"eval/tiny_choice/acc": step / 10, "tokens": step * 1024}, step=step)
            board.log_metrics({"eval/tiny_gen/exact_match": step / 20, "tokens": step * 1024}, step=step)
    csv.save()
    board.save()
    summary = load_script("plot_logs").main(log_dir=tmp_path / "logs")

    assert (tmp_path / "scores.png").stat().st_size > 10_000
    assert summary["scores"] == pytest.approx({"tiny_choice/acc": 0.8, "tiny_gen/exact_match": 0.4})  # TB: float32
    out = capsys.readouterr().out
    assert "tiny_choice/acc 0.8000 at 8,192 tokens" in out and "tiny_gen/exact_match 0.4000 at 8,192 tokens" in out
