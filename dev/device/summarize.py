"""One line per measurement in the device logs: the benchmark's JSON lines (ours and peers), the real scripts' mean
tokens/s over their later log lines, litgpt's finetuning throughput from the time-stamped log (`stamp.py`)."""

import json
import re
import statistics
import sys
from pathlib import Path

STEP_LINE = re.compile(r"^step (\d+)/\d+ .*?\| ([\d,]+) tok/s .*?ms/step.*?peak mem ([\d.]+) GiB", re.M)
LITGPT_LINE = re.compile(r"^([\d.]+) Epoch \d+ \| iter (\d+) step (\d+)", re.M)
LITGPT_TOKENS = re.compile(r"Total Tokens \(w/ Padding\)\s*:\s*(\d+)")
LITGPT_REPORT = re.compile(r"Tok/sec\s*:\s*([\d.]+)")
LITGPT_MEMORY = re.compile(r"Memory Used\s*:\s*([\d.]+) GB")


def benchmark_lines(name: str, text: str) -> None:
    for line in text.splitlines():
        if not (line.startswith("{") and "tokens_per_s" in line):
            continue
        r = json.loads(line)
        kernels = (
            f"{r.get('attention')}/{r.get('fp8') or 'bf16'} acc={r.get('accumulation')}" if r["impl"] == "ours" else ""
        )
        print(f"{name}: {r['impl']} {kernels} mbs={r['mbs']} {r['tokens_per_s']:,.0f} tok/s, "
              f"peak {r.get('peak_mem_gb') or 0:.1f} GiB, step {r['step_s'] * 1000:.0f} ms")  # fmt: skip


def real_script(name: str, text: str) -> None:
    """The mean of the log lines after the first two (compilation), less any below 0.8x the median."""
    steps = [(int(s), float(t.replace(",", "")), float(m)) for s, t, m in STEP_LINE.findall(text)]
    if len(steps) < 3:
        return
    median = statistics.median(t for _, t, _ in steps)
    kept = [t for _, t, _ in steps[2:] if t > 0.8 * median]
    print(f"{name}: real script, {len(steps)} log lines (steps {steps[0][0]}..{steps[-1][0]}); mean of {len(kept)} "
          f"later ones {statistics.mean(kept):,.0f} tok/s (min {min(kept):,.0f}, max {max(kept):,.0f}), "
          f"peak {steps[-1][2]:.1f} GiB")  # fmt: skip


def litgpt_finetune(name: str, text: str) -> None:
    """Tokens/s between the log line a quarter into the run and the last one (padding included)."""
    lines, total = LITGPT_LINE.findall(text), LITGPT_TOKENS.findall(text)
    if len(lines) < 2 or not total:
        return
    per_iter = int(total[-1]) / int(lines[-1][1])
    a, b = lines[len(lines) // 4], lines[-1]
    tps = (int(b[1]) - int(a[1])) * per_iter / (float(b[0]) - float(a[0]))
    memory = LITGPT_MEMORY.findall(text)
    print(f"{name}: litgpt, {per_iter:,.0f} tokens per micro-batch; iterations {a[1]}..{b[1]}: {tps:,.0f} tok/s "
          f"(its report over the whole run: {LITGPT_REPORT.findall(text)}); memory {memory} GB")  # fmt: skip


def main(paths: list) -> None:
    for path in paths:
        if not Path(path).is_file():
            print(f"{path}: missing")
            continue
        text = Path(path).read_text(errors="replace")
        benchmark_lines(path, text)
        real_script(path, text)
        litgpt_finetune(path, text)


if __name__ == "__main__":
    main(sys.argv[1:])
