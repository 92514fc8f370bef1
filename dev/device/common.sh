# Sourced by the device scripts: the Hopper wheels, the paths and litdata's cache folders.
source .whl/hopper_env.sh || exit 1
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 DATA_OPTIMIZER_CACHE_FOLDER=/tmp/c1 DATA_OPTIMIZER_DATA_CACHE_FOLDER=/tmp/c2
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv
