"""Plot a pretraining run from its logs: train and validation loss, and tokens/s, against optimizer steps; and the
benchmark scores of `pretrain/tinyllama.py --eval_tasks` against tokens seen.

    python scripts/plot_logs.py --log_dir out/tiny-llama-1.1b/logs --output out/tiny-llama-1.1b/loss.png
    python scripts/plot_logs.py --log_dir out/cosine/logs --compare "[out/wsd/logs, out/wsd-anneal/logs]" \
        --output schedules.png

With `--compare`, the runs are drawn together (train and validation loss, and the learning rate below), each
labelled by the folder that holds its logs: a schedule against another, or an anneal branched off a run.

Reads every `metrics.csv` (`pretrain/tinyllama.py --logger_name csv`) and every TensorBoard event file (the default
logger) under `--log_dir`. A resumed run logs into a new `version_N` folder; the versions are read in order and a
later one's value for a step replaces an earlier one's. Prints where the PNG went and a one-line loss summary; a
run that evaluated tasks also gets `scores.png` beside it (`--scores_output`) and a line per score.
"""

import csv
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

# support running without installing as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_gpt.cli import IMAGE_SUFFIXES, UserError, check_command_line, check_suffix  # noqa: E402

check_command_line(__name__, __file__)  # a bad flag or a missing package is refused before the imports below

Series = Dict[str, Dict[int, float]]  # metric name -> step -> value
METRICS = ("loss", "val_loss", "tokens_per_sec")
SCORES = "eval/"  # the prefix of the task scores that pretrain/tinyllama.py --eval_tasks logs (lit_gpt/harness.py)


def main(
    log_dir: Path = Path("out/tiny-llama-1.1b/logs"),
    output: Optional[Path] = None,
    compare: Optional[List[Path]] = None,
    scores_output: Optional[Path] = None,
) -> dict:
    """Write the plot and print the summary.

    Args:
        log_dir: A run's log folder (`<out_dir>/logs`), or any folder above its `metrics.csv` / event files.
        output: The PNG to write. Default: `loss.png` next to `log_dir`.
        compare: Other runs' log folders to draw with `log_dir`'s: the loss and validation loss of each, and their
            learning rates below (instead of tokens/s). The summary then has a line per run.
        scores_output: The PNG of `--log_dir`'s task scores against tokens, for a run with --eval_tasks. Default:
            `scores.png` next to `output`.
    """
    check_suffix("output", output, IMAGE_SUFFIXES)
    check_suffix("scores_output", scores_output, IMAGE_SUFFIXES)
    runs = [log_dir, *(compare or [])]
    series = {}
    for folder in runs:
        flag = "--log_dir" if folder == log_dir else "--compare's"
        series[folder] = read_run(folder, flag, (*METRICS, "learning_rate") if compare else METRICS)
    output = output or log_dir.parent / "loss.png"
    if compare:
        plot_runs({label(folder, runs): s for folder, s in series.items()}, output)
    else:
        plot(series[log_dir], output, title=str(log_dir.parent))
    summaries = {folder: summarize(s) for folder, s in series.items()}
    print(f"Wrote {output}")
    for folder, summary in summaries.items():
        print(f"{label(folder, runs)}: " * bool(compare) + format_summary(summary))
    scores = score_series(series[log_dir])
    if scores:
        scores_output = scores_output or output.parent / "scores.png"
        plot_scores(scores, scores_output, title=str(log_dir.parent))
        print(f"Wrote {scores_output}")
        summaries[log_dir]["scores"] = {}
        for name, points in scores.items():
            tokens, value = points[-1]
            summaries[log_dir]["scores"][name] = value
            print(f"{name} {value:.4f} at {tokens:,} tokens")
    return summaries[log_dir] if not compare else {str(folder): s for folder, s in summaries.items()}


def read_run(log_dir: Path, flag: str, names=METRICS) -> Series:
    """The run's logged `names`, refused in one line where the folder or its losses are missing."""
    if not log_dir.is_dir():
        raise UserError(
            f"{flag} {log_dir} does not exist; pass the `logs` folder of a run of pretrain/tinyllama.py "
            "(`<out_dir>/logs`)"
        )
    series = read_logs(log_dir, names)
    if not series["loss"]:
        raise UserError(
            f"no `loss` values in a metrics.csv or TensorBoard event file under {log_dir}; pass the `logs` "
            "folder of a run of pretrain/tinyllama.py (it logs from its first --log_interval steps)"
        )
    return series


def label(folder: Path, runs: List[Path]) -> str:
    """A run's name in a comparison: its out dir's name (the folder above `logs`), or its whole path where two
    runs' names are the same."""
    name = (folder.parent if folder.name == "logs" else folder).name
    names = [(f.parent if f.name == "logs" else f).name for f in runs]
    return name if names.count(name) == 1 else str(folder)


def read_logs(log_dir: Path, names=METRICS) -> Series:
    series: Series = {name: {} for name in (*names, "tokens")}
    files = list(log_dir.rglob("metrics.csv")) + list(log_dir.rglob("events.out.tfevents.*"))
    for path in sorted(files, key=_version_key):
        values = _read_csv(path, names) if path.name == "metrics.csv" else _read_tensorboard(path, names)
        for name, points in values.items():
            series.setdefault(name, {}).update(points)
    return series


def _wanted(name: str, names) -> bool:
    """`names`, and what the scores need: `tokens` and every `eval/` metric."""
    return name in names or name == "tokens" or name.startswith(SCORES)


def score_series(series: Series) -> Dict[str, List[tuple]]:
    """Each task score as (tokens seen, value) points, in order; a step whose tokens were not logged is left out."""
    tokens = series.get("tokens", {})
    scores = {}
    for name in sorted(n for n in series if n.startswith(SCORES)):
        points = [(int(tokens[step]), value) for step, value in sorted(series[name].items()) if step in tokens]
        if points:
            scores[name[len(SCORES) :]] = points
    return scores


def _version_key(path: Path) -> tuple:
    # `.../version_10/...` after `.../version_9/...`; event files of one version in the order they were written
    match = re.search(r"version_(\d+)", path.as_posix())
    return (int(match.group(1)) if match else -1, path.name)


def _read_csv(path: Path, names=METRICS) -> Series:
    values: Series = {}
    with open(path, newline="", encoding="utf-8") as fp:
        for row in csv.DictReader(fp):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            for name, value in row.items():
                if value and _wanted(name, names):
                    values.setdefault(name, {})[step] = float(value)
    return values


def _read_tensorboard(path: Path, names=METRICS) -> Series:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    tags = set(events.Tags()["scalars"])
    return {name: {e.step: e.value for e in events.Scalars(name)} for name in tags if _wanted(name, names)}


def plot(series: Series, output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_speed) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[2, 1])
    train, val, speed = (sorted(series[name].items()) for name in METRICS)
    ax_loss.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax_loss.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_loss.set_title(title)
    if speed:
        ax_speed.plot(*zip(*speed), color="tab:green")
    ax_speed.set_ylabel("tokens/s")
    ax_speed.set_xlabel("optimizer step")
    ax_speed.grid(alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def plot_runs(runs: Dict[str, Series], output: Path) -> None:
    """Several runs in one figure: train loss (thin) and validation loss (dots) above, learning rate below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[2, 1])
    for i, (name, series) in enumerate(runs.items()):
        color = f"C{i}"
        ax_loss.plot(*zip(*sorted(series["loss"].items())), color=color, alpha=0.35, linewidth=0.8)
        if series["val_loss"]:
            ax_loss.plot(*zip(*sorted(series["val_loss"].items())), "o-", color=color, label=f"{name} (validation)")
        if series.get("learning_rate"):
            ax_lr.plot(*zip(*sorted(series["learning_rate"].items())), color=color, label=name)
    ax_loss.set_ylabel("loss (nats/token)\nthin: train, dots: validation")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def plot_scores(scores: Dict[str, List[tuple]], output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in scores.items():
        ax.plot(*zip(*points), "o-", label=name)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def summarize(series: Series) -> dict:
    train, val, speed = (sorted(series.get(name, {}).items()) for name in METRICS)
    summary = {
        "first_step": train[0][0],
        "first_loss": train[0][1],
        "last_step": train[-1][0],
        "last_loss": train[-1][1],
    }
    if val:
        summary.update(val_step=val[-1][0], val_loss=val[-1][1])
    if speed:
        summary["median_tokens_per_sec"] = sorted(v for _, v in speed)[len(speed) // 2]
    return summary


def format_summary(s: dict) -> str:
    train = (
        f"train loss {s['first_loss']:.3f} at step {s['first_step']} -> {s['last_loss']:.3f} at step {s['last_step']}"
    )
    parts: List[str] = [train]
    if "val_loss" in s:
        ppl = math.exp(min(s["val_loss"], 100))
        parts.append(f"val loss {s['val_loss']:.3f} (ppl {ppl:.1f}) at step {s['val_step']}")
    if "median_tokens_per_sec" in s:
        parts.append(f"median {s['median_tokens_per_sec']:,.0f} tokens/s")
    return "; ".join(parts)


if __name__ == "__main__":
    from lit_gpt.cli import cli

    cli(main)
