#!/usr/bin/env bash
# Create .venv with everything the project needs, without a CUDA download on a CPU machine.
#   bash scripts/install.sh          # runtime + test dependencies into .venv
#   VENV=/path bash scripts/install.sh
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# The tested torch. On a machine with an NVIDIA GPU set TORCH_SPEC to the CUDA build you want (e.g. torch==2.11.0);
# on a CPU machine torch==2.13.0 is the CPU build (pip finds it in the machine's local wheel store).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# litdata needs torchvision unpinned: left to pip, that either upgrades torch to a multi-GB CUDA build or
# installs a torchvision that breaks `import lightning` ("operator torchvision::nms does not exist").
# Training never uses torchvision, so litdata goes in with --no-deps after its other requirements.
LITDATA_SPEC=${LITDATA_SPEC:-litdata==0.2.76}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[install] $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
fi
TORCH_NOW=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
echo "[install] runtime and test requirements (torch $TORCH_NOW kept)"
# the constraint keeps every later install from touching torch
echo "torch==$TORCH_NOW" > "$VENV/torch-constraint.txt"
"${PIP[@]}" -c "$VENV/torch-constraint.txt" -r requirements/base.txt -r requirements/test.txt
"${PIP[@]}" --no-deps "$LITDATA_SPEC"
# litgpt itself, only as the reference that tests load our checkpoints into (its pins would downgrade ours)
"${PIP[@]}" --no-deps litgpt==0.5.13
"${PIP[@]}" --no-deps --no-build-isolation -e . 2>/dev/null || "${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, lightning, litdata, lit_gpt; print('[install] ok: torch', torch.__version__, \
'lightning', lightning.__version__, 'litdata', litdata.__version__)"
