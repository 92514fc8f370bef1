#!/usr/bin/env bash
# Issue 33's GPU figures: tokens/s, MFU and peak memory of each new registry shape on one GPU with dev/benchmark.py
# (bf16-mixed, compiled blocks, the fused loss, FA4 where it imports, 2048-token sequences, random tokens), and
# Llama-3.2-1B beside torchtitan's own Llama 3 "1B" flavor (the same shape: dim 2048, 16 layers, 32/8 heads, SwiGLU
# 8192, vocab 128256, tied embeddings, theta 500000 with Llama 3 scaling) in the same call.
#
# On the device machine, from the repository root, after dev/device/prepare.sh here and a staging call (see
# dev/device/README.md), carry [".whl", ".device"]:
#   LIMIT=575 bash dev/device/new_shapes.sh "SmolLM2-135M SmolLM2-360M Qwen2.5-0.5B Qwen3-0.6B"
#   LIMIT=575 bash dev/device/new_shapes.sh "Llama-3.2-1B titan-1B OLMo-2-0425-1B"
#   LIMIT=575 bash dev/device/new_shapes.sh "SmolLM2-1.7B Qwen3-1.7B Llama-3.2-3B"
# Each case runs only while the call has the time it needs left (LIMIT seconds in all). `titan-1B` needs torchtitan's
# harness in .device/titan (dev/device/titan/README.md) with dev/device/titan/titan_flavor.patch applied as well
# (its `--flavor` flag). Results: one JSON line per case on stdout and in $OUT/new_shapes.jsonl, logs in $OUT.
set -u
T0=$(date +%s)
LIMIT=${LIMIT:-575}
left() { echo $((LIMIT - ($(date +%s) - T0))); }
source dev/device/common.sh
RES=$OUT/new_shapes.jsonl
SEQ=2048
# micro-batch per shape, chosen to fit an 80 GB H100 with float32 master weights and AdamW states; 4 micro-batches per
# optimizer step as pretraining's accumulation
declare -A MBS=(
  [SmolLM2-135M]=16 [SmolLM2-360M]=16 [Qwen2.5-0.5B]=8 [Qwen3-0.6B]=8 [Llama-3.2-1B]=8 [OLMo-2-0425-1B]=8
  [SmolLM2-1.7B]=4 [Qwen3-1.7B]=4 [Llama-3.2-3B]=2
)

ours() {  # ours NAME: dev/benchmark.py on the registry entry NAME
  local name=$1 l; l=$(left)
  if [ "$l" -lt 120 ]; then echo "SKIP $name: ${l}s left < 120s"; return; fi
  echo "=== $name (t=$(( $(date +%s) - T0 ))s)"
  timeout $((l - 5)) python dev/benchmark.py --model_name "$name" --block_size $SEQ --micro_batch_sizes "[${MBS[$name]}]" \
    --accumulation 4 --steps 6 --warmup 3 --out_dir /tmp/ns-$name > "$OUT/ours-$name.log" 2>&1
  echo "rc=$?" >> "$OUT/ours-$name.log"
  grep '^{' "$OUT/ours-$name.log" | while read -r line; do echo "{\"case\": \"$name\", ${line#\{}" | tee -a "$RES"; done
  grep -E "Error|error:" "$OUT/ours-$name.log" | tail -4
}

titan() {  # titan FLAVOR: torchtitan's Trainer on its own llama3 flavor, bf16, the micro-batch and accumulation of ours
  local flavor=$1 l; l=$(left)
  if [ "$l" -lt 200 ]; then echo "SKIP titan-$flavor: ${l}s left < 200s"; return; fi
  if ! grep -q -- "--flavor" .device/titan/titan_step.py 2>/dev/null; then
    echo "SKIP titan-$flavor: .device/titan/titan_step.py lacks --flavor (apply dev/device/titan/titan_flavor.patch)"
    return
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/titan/whl/*.whl >> "$OUT/titan-$flavor.log" 2>&1
  echo "=== titan-$flavor (t=$(( $(date +%s) - T0 ))s)"
  local b=$((l - 15))
  PYTHONPATH=/tmp/site:$PYTHONPATH python3 .device/titan/titan_step.py --flavor "$flavor" --mbs 8 --accum 4 \
    --seq-len $SEQ --steps 6 --warmup 3 --budget $b --timeout $b --out /tmp/titan_ns.jsonl 2>> "$OUT/titan-$flavor.log" \
    | while read -r line; do echo "{\"case\": \"titan-$flavor\", ${line#\{}" | tee -a "$RES"; done
}

for c in ${1:-Llama-3.2-1B titan-1B}; do
  case $c in
    titan-*) titan "${c#titan-}" ;;
    *) if [ -n "${MBS[$c]:-}" ]; then ours "$c"; else echo "unknown case $c"; fi ;;
  esac
done
echo "=== end at $(( $(date +%s) - T0 )) s"
# one line per case; torchtitan's MFU leaves a tied head's product out (6 x (parameters - embedding)), so its line
# also gives the MFU by lit_gpt/flops.py's count of the same shape (Llama-3.2-1B), which ours reports
python - "$RES" <<'EOF'
import json
import sys

from lit_gpt.config import Config
from lit_gpt.flops import PEAK_BF16_FLOPS, flops_per_token

for line in open(sys.argv[1]):
    r = json.loads(line)
    if not r.get("tokens_per_s"):
        print(f"{r['case']}: no figure ({r.get('error', 'see its log')})")
        continue
    memory = r.get("peak_mem_gb") or r.get("peak_mem_gib") or 0
    text = f"{r['case']}: mbs={r['mbs']} {r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu']:.1%}, peak {memory:.1f} GiB"
    if r["case"] == "titan-1B":
        ours_count = r["tokens_per_s"] * flops_per_token(Config.from_name("Llama-3.2-1B"), 2048) / PEAK_BF16_FLOPS["H100"]
        text += f" (MFU {ours_count:.1%} counting the tied head, as ours)"
    print(text)
EOF
