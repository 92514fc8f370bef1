#!/usr/bin/env bash
# The benchmark and the real pretraining script in one call, float8 + FA4 (micro-batch 16) and bf16 + FA4 (24).
source dev/device/common.sh
real() {  # NAME LAST_STEP FLAGS...: pretrain/tinyllama.py until LAST_STEP is logged, then SIGKILL (no 13 GB save)
  local name=$1 last=$2 t=0
  shift 2
  python pretrain/tinyllama.py --model_name tiny-llama-1.1b --data_dir .device/data \
    --val_data .device/data/slimpajama/train --devices 1 --max_steps 100 --log_interval 1 --eval_interval 1000 \
    --save_interval 1000 --warmup_steps 10 --logger_name csv --out_dir /tmp/r-$name "$@" > $OUT/real-$name.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && ! grep -q "^step $last/" $OUT/real-$name.log && [ $t -lt 240 ]; do
    sleep 1; t=$((t + 1))
  done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  grep -E "^(step |attention)|Error|Traceback" $OUT/real-$name.log | tail -14
}
B="python dev/benchmark.py --accumulation 4 --steps 6 --warmup 3 --attention fa4"
$B --fp8 tensorwise --micro_batch_sizes '[16]' --out_dir $OUT/b1 2>&1 | tee $OUT/bench-fp8.log | grep -E "^\{|Error"
real fp8 14 --fp8 tensorwise --attention fa4 --global_batch_size 64 --micro_batch_size 16
$B --micro_batch_sizes '[24]' --out_dir $OUT/b2 2>&1 | tee $OUT/bench-bf16.log | grep -E "^\{|Error"
real bf16 10 --attention fa4 --global_batch_size 96 --micro_batch_size 24
python dev/device/summarize.py $OUT/bench-fp8.log $OUT/real-fp8.log $OUT/bench-bf16.log $OUT/real-bf16.log
