#!/usr/bin/env bash
# The embedded-default pipeline (`make demo`). Until every stage exists, this prints what it will run.
set -euo pipefail
cd "$(dirname "$0")/.."
cat <<'MSG'
The demo will run, on this machine, with the real scripts:
  1. scripts/prepare_sample_data.py   sample corpus in the SlimPajama and Starcoder layouts
  2. scripts/train_tokenizer.py       a 32000-token SentencePiece tokenizer
  3. scripts/prepare_slimpajama.py / scripts/prepare_starcoder.py   litdata chunks
  4. pretrain/tinyllama.py --model_name micro-llama ...   training, validation, checkpoints, resume
  5. scripts/convert_pretrained_checkpoint.py, scripts/convert_lit_checkpoint.py   lit and HF exports
  6. generate/base.py                 a few lines of text
MSG
