#!/usr/bin/env bash
# float8 + FA4 at micro-batch 16 beside litgpt's compiled GPT; then inductor's coordinate-descent tuning and
# accumulation 8, and the first case again (the spread within the call).
source dev/device/common.sh
B="python dev/benchmark.py --steps 6 --warmup 3 --attention fa4 --fp8 tensorwise --micro_batch_sizes [16]"
$B --accumulation 4 --peers litgpt:1:16 --peer_script .device/bench/peer_throughput.py --out_dir $OUT/c1 > $OUT/c1.log 2>&1
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 $B --accumulation 4 --out_dir $OUT/c2 > $OUT/c2.log 2>&1
$B --accumulation 8 --out_dir $OUT/c3 > $OUT/c3.log 2>&1
$B --accumulation 4 --out_dir $OUT/c4 > $OUT/c4.log 2>&1
python dev/device/summarize.py $OUT/c1.log $OUT/c2.log $OUT/c3.log $OUT/c4.log
