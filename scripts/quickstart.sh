#!/usr/bin/env bash
# The whole pipeline on the embedded default (`make demo`), with the real scripts and the flags a user would type:
# sample corpus -> 32000-token tokenizer -> litdata chunks -> pretraining micro-llama (validation, checkpoints) ->
# resume -> lit and Hugging Face exports -> generated text -> test perplexity -> loss plot.
#
#   bash scripts/quickstart.sh                  # everything under out/demo (~6 min on 2 CPU cores)
#   bash scripts/quickstart.sh --smoke          # every stage with tiny sizes, under out/demo-smoke (~2 min; CI)
#   bash scripts/quickstart.sh --root /tmp/demo # another output root (a relative one is taken from the current folder)
#
# Re-running is safe: a stage whose output exists is skipped, so a second run only generates text and plots again.
# Delete the root folder to start over. On a machine with a CUDA GPU, pretraining runs on it in bf16-mixed.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/.."

SMOKE=0
ROOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --root) ROOT="$2"; shift ;;
    --root=*) ROOT="${1#--root=}" ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (use --smoke, --root DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$ROOT" ]; then
  ROOT=$([ "$SMOKE" = 1 ] && echo out/demo-smoke || echo out/demo)  # in the repository, git-ignored
elif [ "${ROOT#/}" = "$ROOT" ]; then
  ROOT=$CALLER_DIR/$ROOT  # the scripts run from the repository root: --root is the caller's
fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python

DATA=$ROOT/data
TOKENIZER=$ROOT/checkpoints/sample-tokenizer
RUN=$ROOT/micro-llama
LIT=$ROOT/checkpoints/lit-micro-llama
HF=$ROOT/checkpoints/hf-micro-llama
LOGS=$ROOT/logs
mkdir -p "$LOGS"

if [ "$SMOKE" = 1 ]; then
  # the first 2 files of each split, 4 + 2 steps of 4 sequences
  FAST=(--fast_dev_run true)
  STEPS=4 MORE_STEPS=6
  TRAIN=(--global_batch_size 4 --micro_batch_size 4 --max_tokens $((6 * 4 * 256)) --log_interval 1 --eval_interval 2
         --eval_iters 2 --save_interval 2 --warmup_steps 2)
  GENERATE=(--max_new_tokens 20)
  EVAL_BLOCKS=8
else
  FAST=()
  # a run of 100 steps of 8 sequences of 256 tokens (205k tokens: the cosine schedule's length), stopped after 80
  # and resumed; validation and checkpoints every 40 steps
  STEPS=80 MORE_STEPS=100
  TRAIN=(--global_batch_size 8 --micro_batch_size 8 --max_tokens $((100 * 8 * 256)) --log_interval 5
         --eval_interval 40 --eval_iters 8 --save_interval 40 --warmup_steps 10)
  GENERATE=(--max_new_tokens 60 --num_samples 2)
  EVAL_BLOCKS=64
fi
# pretrain.py's defaults pick the GPU when there is one (bf16-mixed, compiled blocks); on CPU float32 is the fast choice
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
PRECISION=()
[ "$DEVICE" = cpu ] && PRECISION=(--precision 32-true)
PRETRAIN=(pretrain/tinyllama.py --model_name micro-llama --data_dir "$DATA" --out_dir "$RUN" --devices 1
          "${PRECISION[@]}" "${TRAIN[@]}" --learning_rate 3e-3 --min_lr 3e-4 --num_workers 1)

STAGE=0
TOTAL_STAGES=13
START=$SECONDS

# stage NAME MARKER FILTER CMD...: run CMD unless MARKER exists; show the lines of its output matching FILTER (all of
# it goes to $LOGS/NN-name.log), and the log's tail if it fails
stage() {
  local name=$1 marker=$2 filter=$3
  shift 3
  STAGE=$((STAGE + 1))
  local log
  log=$LOGS/$(printf %02d "$STAGE")-${name// /-}.log
  if [ -n "$marker" ] && [ -e "$marker" ]; then
    printf '\n==> [%d/%d] %s: skipped, %s exists\n' "$STAGE" "$TOTAL_STAGES" "$name" "$marker"
    return
  fi
  printf '\n==> [%d/%d] %s\n$ %s\n' "$STAGE" "$TOTAL_STAGES" "$name" "$PY $*"
  local t0=$SECONDS
  if ! "$PY" "$@" 2>&1 | tee "$log" | { grep -E --line-buffered "$filter" || true; }; then
    printf '\nerror: stage "%s" failed; the end of its output (all of it is in %s):\n' "$name" "$log" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  printf '    done in %ds (output in %s)\n' "$((SECONDS - t0))" "$log"
}

DONE_LINE='^(SlimPajama|Starcoder|[0-9]+ files|[0-9]+ chunks|Trained|Wrote|Converting|Resum|No checkpoint|Done)'
stage "sample corpus" "$DATA/.sample-corpus-complete" "$DONE_LINE" \
  scripts/prepare_sample_data.py --output_dir "$DATA" --overwrite true
touch "$DATA/.sample-corpus-complete"
stage "tokenizer" "$TOKENIZER/tokenizer.model" "$DONE_LINE" \
  scripts/train_tokenizer.py --input_dir "$DATA" --output_dir "$TOKENIZER" --overwrite true
for split in train validation test; do
  out=$([ "$split" = validation ] && echo val || echo "$split")
  stage "slimpajama $split" "$DATA/slimpajama/$out/index.json" "$DONE_LINE" \
    scripts/prepare_slimpajama.py --input_dir "$DATA/slimpajama-raw/$split" --output_dir "$DATA/slimpajama/$out" \
    --tokenizer_path "$TOKENIZER" "${FAST[@]}" --overwrite true
done
stage "starcoder" "$DATA/starcoder/index.json" "$DONE_LINE" \
  scripts/prepare_starcoder.py --input_dir "$DATA/starcoderdata-raw" --output_dir "$DATA/starcoder" \
  --tokenizer_path "$TOKENIZER" "${FAST[@]}" --overwrite true

TRAIN_LINE='^(step |Resum|Saved|Done|micro-llama:|[0-9]+ steps of)'
LAST=$(printf '%s/step-%08d.pth' "$RUN" "$MORE_STEPS")
stage "pretrain" "$(printf '%s/step-%08d.pth' "$RUN" "$STEPS")" "$TRAIN_LINE" "${PRETRAIN[@]}" --max_steps "$STEPS" --resume auto
stage "resume" "$LAST" "$TRAIN_LINE" "${PRETRAIN[@]}" --resume auto
stage "convert to lit" "$LIT/lit_model.pth" "$DONE_LINE" \
  scripts/convert_pretrained_checkpoint.py --checkpoint_file "$LAST" --tokenizer_dir "$TOKENIZER" \
  --config_name micro-llama --output_dir "$LIT" --overwrite true
stage "export to Hugging Face" "$HF/config.json" "$DONE_LINE|^Warning" \
  scripts/convert_lit_checkpoint.py --checkpoint_dir "$LIT" --output_dir "$HF" --overwrite true
stage "generate" "" "." \
  generate/base.py --checkpoint_dir "$LIT" --prompt "The" --temperature 0.8 --top_k 50 "${GENERATE[@]}"
stage "test perplexity" "" "blocks of" \
  eval/perplexity.py --checkpoint_dir "$LIT" --data_dir "$DATA/slimpajama/test" --num_blocks "$EVAL_BLOCKS" \
  --out_file "$RUN/test_perplexity.json"
stage "plot" "" "." scripts/plot_logs.py --log_dir "$RUN/logs" --output "$RUN/loss.png"

ELAPSED=$((SECONDS - START))
TUTORIAL_PATHS=""  # finetune_lora.md's commands read out/demo, make demo's root
if [ "$(cd "$ROOT" && pwd -P)" != "$(pwd -P)/out/demo" ]; then
  TUTORIAL_PATHS=" (its commands read out/demo: write $ROOT in its place)"
fi
TENSORBOARD=$(dirname "$PY")/tensorboard
[ -x "$TENSORBOARD" ] || TENSORBOARD=tensorboard
cat <<EOF

==> Demo finished in $((ELAPSED / 60))m$((ELAPSED % 60))s ($DEVICE)
    losses          $(grep -h '^train loss' "$LOGS"/*-plot.log | tail -n 1)
    test split      $(grep -h 'blocks of' "$LOGS"/*-test-perplexity.log | tail -n 1)
    raw corpus      $DATA/slimpajama-raw, $DATA/starcoderdata-raw
    tokenizer       $TOKENIZER
    litdata chunks  $DATA/slimpajama/{train,val,test}, $DATA/starcoder
    checkpoints     $RUN/step-*.pth (resume with --resume auto)
    logs            $RUN/logs/tensorboard; every stage's output in $LOGS
    loss plot       $RUN/loss.png
    lit checkpoint  $LIT
    Hugging Face    $HF
    TensorBoard     $TENSORBOARD --logdir $RUN/logs/tensorboard   (then open http://localhost:6006)
Next: tutorials/pretrain_tinyllama.md runs the same stages on SlimPajama and Starcoder;
      tutorials/finetune_lora.md finetunes this lit checkpoint on instructions (LoRA or all weights)$TUTORIAL_PATHS.
EOF
