#!/usr/bin/env bash
# Create .venv with everything the project needs, without a CUDA download on a machine without an NVIDIA GPU.
#   bash scripts/install.sh          # runtime + test dependencies into .venv
#   VENV=/path bash scripts/install.sh
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# The tested torch. scripts/torch_source.py picks the build: with an NVIDIA GPU pip's default (the CUDA build), without
# one a CPU build (from pip's configured sources if they offer one, else PyTorch's CPU index). TORCH_BUILD=cuda keeps
# pip's default on a machine without a GPU (a login node building for GPU nodes), TORCH_BUILD=cpu forces the CPU build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_BUILD=${TORCH_BUILD:-auto}
# litdata needs torchvision unpinned: left to pip, that either upgrades torch to a multi-GB CUDA build or
# installs a torchvision that breaks `import lightning` ("operator torchvision::nms does not exist").
# Training never uses torchvision, so litdata goes in with --no-deps after its other requirements.
LITDATA_SPEC=${LITDATA_SPEC:-litdata==0.2.76}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # one pip argument a line; it says on stderr which build and why
  TORCH_OUT=$("$VENV/bin/python" scripts/torch_source.py --spec "$TORCH_SPEC" --build "$TORCH_BUILD")
  TORCH_ARGS=()
  while IFS= read -r arg; do TORCH_ARGS+=("$arg"); done <<<"$TORCH_OUT"
  echo "[install] pip install ${TORCH_ARGS[*]}"
  "${PIP[@]}" "${TORCH_ARGS[@]}"
fi
# read from the installed metadata: importing torch before numpy is installed warns "Failed to initialize NumPy"
TORCH_NOW=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('torch').split('+')[0])")
echo "[install] runtime and test requirements (torch $TORCH_NOW kept)"
# the constraint keeps every later install from touching torch
echo "torch==$TORCH_NOW" > "$VENV/torch-constraint.txt"
"${PIP[@]}" -c "$VENV/torch-constraint.txt" -r requirements/base.txt -r requirements/test.txt
"${PIP[@]}" --no-deps "$LITDATA_SPEC"
# litgpt itself, only as the reference that tests load our checkpoints into (its pins would downgrade ours)
"${PIP[@]}" --no-deps litgpt==0.5.13
"${PIP[@]}" --no-deps --no-build-isolation -e . 2>/dev/null || "${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, lightning, lightning_fabric, litdata, lit_gpt; print('[install] ok: torch', \
torch.__version__, 'lightning', lightning.__version__, 'lightning_fabric', lightning_fabric.__version__, 'litdata', \
litdata.__version__)"
# the optional Hopper kernels (pretrain/tinyllama.py --fp8, --attention fa4) are not installed by default
if "$VENV/bin/python" -c "import sys, torch; sys.exit(not (torch.cuda.is_available() and \
torch.cuda.get_device_capability() >= (8, 9)))" 2>/dev/null; then
  echo "[install] this GPU has float8 matrix units: $VENV/bin/python -m pip install -e \".[hopper]\" adds float8" \
    "training (torchao, --fp8) and FlashAttention-4 (flash-attn-4, --attention fa4)"
fi
