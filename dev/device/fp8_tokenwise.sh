#!/usr/bin/env bash
# float8 `tokenwise` (lit_gpt/training/float8.py) beside torchao's `tensorwise` in one call, micro-batch 16 x 4, the
# first with one profiled step (kernels by kind, dev/device/titan/ours_prof.py); then the loss comparison
# (dev/loss_parity.py: ours, its bf16 noise floor, tokenwise) in the seconds left of MAXT. ATT=sdpa when nothing was
# staged (no flash-attn-4). The loss comparison reads .device/lp/slimpajama/train: the sample corpus' Starcoder split
# (scripts/prepare_starcoder.py --output_dir .device/lp/slimpajama/train --tokenizer_path .device/tok).
T0=$(date +%s)
MAXT=${MAXT:-560}
ATT=${ATT:-fa4}
source dev/device/common.sh
P="python dev/device/titan/ours_prof.py --steps 6 --warmup 3 --attention $ATT --micro_batch_sizes [16] --accumulation 4"
timeout 150 $P --fp8 tokenwise --profile true --out_dir /tmp/a > $OUT/fp8t.log 2>&1
echo "tokenwise rc=$? at $(($(date +%s) - T0)) s"
grep -E "^\{|Error" $OUT/fp8t.log | tail -3
sed -n '/^PROFILE one/,/^PROFILE top/p' $OUT/fp8t.log
timeout 120 $P --fp8 tensorwise --out_dir /tmp/b > $OUT/fp8.log 2>&1
echo "tensorwise rc=$? at $(($(date +%s) - T0)) s"
grep -E "^\{|Error" $OUT/fp8.log | tail -3
left=$((MAXT - $(date +%s) + T0))
variant=$([ "$ATT" = fa4 ] && echo fp8t_fa4 || echo fp8t)
if [ "$left" -gt 150 ]; then
  timeout $left python dev/loss_parity.py --steps 200 --micro_batch_size 2 --data_dir .device/lp \
    --cases ours,ours_nudged,$variant --out_dir $OUT > $OUT/parity.log 2>&1
  echo "loss parity rc=$?"
  grep -v -i warn $OUT/parity.log | tail -22
else
  echo "loss parity skipped: ${left} s left"
fi
