#!/usr/bin/env bash
# One GPU, TinyLlama-1.1B, the real script: how long one checkpoint save stops training, synchronous (--async_save
# false) against in the background (true), and how much slower the steps are while the background write runs.
# Issue 29's targets: stopped <= 10% of a synchronous save's stop; steps during the write <= 5% slower.
# Each run saves at steps 40 and 80 (13 GB each) and keeps one checkpoint on the disk (--keep_last 1).
source dev/device/common.sh
run() {  # NAME FLAGS...
  local name=$1
  shift
  rm -rf /tmp/as-$name
  timeout 290 python pretrain/tinyllama.py --model_name tiny-llama-1.1b --data_dir .device/data \
    --val_data .device/data/slimpajama/train --devices 1 --max_steps 110 --log_interval 1 --eval_interval 1000 --eval_iters 2 \
    --save_interval 40 --keep_last 1 --warmup_steps 10 --logger_name csv --global_batch_size 32 \
    --micro_batch_size 8 --out_dir /tmp/as-$name "$@" > $OUT/async-save-$name.log 2>&1
  echo "$name: exit $?"
  grep -E "^(Saving|Saved|Done)|Error|Traceback" $OUT/async-save-$name.log | tail -8
}
run sync --async_save false
run async --async_save true
python - "$OUT/async-save-sync.log" "$OUT/async-save-async.log" <<'EOF'
"""The stop of a save: the time of the step after it (the log's ms/step of that step includes the save) less the
median step time; steps during a background write: those logged between its `Saving` and `Saved` lines."""
import re
import statistics
import sys

STEP = re.compile(r"^step (\d+)/\d+ .*?\| ([\d.]+) ms/step")


def read(path):
    steps, during, writing, saved_at = {}, set(), False, []
    for line in open(path):
        if m := STEP.match(line):
            steps[int(m[1])] = float(m[2]) / 1000
            if writing:
                during.add(int(m[1]))
        elif line.startswith("Saving ") and "in the background" in line:
            writing = True
            saved_at.append(int(re.search(r"step-(\d+)", line)[1]))
        elif line.startswith("Saved "):
            writing = False
            if "in the background" not in line:
                saved_at.append(int(re.search(r"step-(\d+)", line)[1]))
    return steps, during, saved_at


(sync, _, sync_saves), (bg, during, bg_saves) = read(sys.argv[1]), read(sys.argv[2])
settled = 20  # compilation and warm-up before
for name, steps, saves in (("sync", sync, sync_saves), ("async", bg, bg_saves)):
    quiet = [t for s, t in steps.items() if s > settled and s not in during and s - 1 not in saves]
    median = statistics.median(quiet)
    stops = [steps[s + 1] - median for s in saves if s + 1 in steps]
    print(f"{name}: median step {median:.3f}s over {len(quiet)} steps without a save or a write; stop per save "
          f"{', '.join(f'{x:.2f}s' for x in stops)}")
    if name == "sync":
        sync_stop = statistics.mean(stops)
    else:
        async_stop, async_median = statistics.mean(stops), median
written = [t for s, t in bg.items() if s in during and s - 1 not in bg_saves]
slower = statistics.median(written) / async_median - 1 if written else float("nan")
print(f"stopped by one save: background {async_stop:.2f}s, synchronous {sync_stop:.2f}s: "
      f"{100 * async_stop / sync_stop:.1f}% (target <= 10%)")
print(f"steps during the background write: median {statistics.median(written) if written else float('nan'):.3f}s "
      f"over {len(written)} steps, {100 * slower:+.1f}% against steps without one (target <= +5%)")
EOF
