#!/usr/bin/env bash
# LoRA finetuning of tiny-llama-1.1b at sequence 2048: ours (FA4, then SDPA) against litgpt 0.5.13's finetune_lora,
# same data, rank 8 on query and value, micro-batch 4, 16 examples per step. STEPS=40 by default.
source dev/device/common.sh
mkdir -p /tmp/lgsite
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/lgsite .device/lgwhl/*.whl
python dev/device/lora_checkpoints.py --instructions .device/inst.json.xz --tokenizer_dir .device/tok --root /tmp/ck
STEPS=${STEPS:-40}
COMMON="--data /tmp/ck/inst.json --max_seq_length 2048 --global_batch_size 16 --micro_batch_size 4 --max_steps $STEPS
  --warmup_steps 5 --log_interval 5 --eval_interval 1000 --save_interval 1000 --val_fraction 0.02"
ours() {  # NAME FLAGS...
  local name=$1
  shift
  timeout 300 python finetune/lora.py --checkpoint_dir /tmp/ck/ours --out_dir /tmp/o-$name $COMMON "$@" \
    > $OUT/lora-$name.log 2>&1
  grep -E "^(step |attention|Done|Saved|tiny)|Error" $OUT/lora-$name.log | tail -12
}
ours fa4 --attention auto
# litgpt's log lines carry no time: dev/device/stamp.py prefixes each with the wall clock
PYTHONPATH=/tmp/lgsite:$PYTHONPATH timeout 300 python -m litgpt finetune_lora /tmp/ck/litgpt --data JSON \
  --data.json_path /tmp/ck/inst.json --data.val_split_fraction 0.02 --data.mask_prompt true \
  --train.max_seq_length 2048 --train.global_batch_size 16 --train.micro_batch_size 4 --train.max_steps $STEPS \
  --train.lr_warmup_steps 5 --train.log_interval 4 --eval.interval 1000 --eval.final_validation false \
  --out_dir /tmp/o-lg --precision bf16-true --logger_name csv 2>&1 | python3 -u dev/device/stamp.py \
  > $OUT/lora-litgpt.log
echo "litgpt rc=${PIPESTATUS[0]}"
grep -E "iter [0-9]+ step|Memory Used|Error|Traceback" $OUT/lora-litgpt.log | tail -6
ours sdpa --attention sdpa
python dev/device/summarize.py $OUT/lora-fa4.log $OUT/lora-litgpt.log $OUT/lora-sdpa.log
