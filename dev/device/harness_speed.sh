#!/usr/bin/env bash
# lit_gpt/harness.py on TinyLlama-1.1B (random weights) beside lm-eval's `hf` backend on its Hugging Face export, one
# process, bf16, --limit 1000, batch 32 (dev/device/harness_speed.py). HellaSwag cannot be carried (it cannot be
# downloaded on either machine): a HellaSwag-shaped local task of the same size is written instead. Needs
# .device/tok and .device/evalwhl from dev/device/prepare.sh; carry [".whl", ".device"].
source dev/device/common.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/evalsite .device/evalwhl/*.whl \
  || exit 1
export PYTHONPATH=$PYTHONPATH:/tmp/evalsite HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 900 python dev/device/harness_speed.py --tokenizer_dir .device/tok --limit "${LIMIT:-1000}" \
  --batch_size "${BATCH:-32}" 2>&1 | tee $OUT/harness_speed.log | grep -v -E "it/s\]|s/it\]"
