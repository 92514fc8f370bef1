#!/usr/bin/env bash
# Here (no GPU): fill the ignored folders that the device scripts carry. See README.md beside this.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
bash ../shared/device/hopper_wheels.sh litdata jsonargparse litgpt==0.5.13 docstring-parser typeshed-client \
  lightning-utilities boto3 botocore s3transfer jmespath filelock zstandard==0.25.0
# litgpt 0.5.13 wants jsonargparse <= 4.41 and psutil: a folder of their own, put first on litgpt's path only
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device/lgwhl jsonargparse==4.41.0 psutil==7.2.2
mkdir -p .device/bench
cp ../shared/bench/peer_throughput.py .device/bench/
export DATA_OPTIMIZER_CACHE_FOLDER=${DATA_OPTIMIZER_CACHE_FOLDER:-/tmp/device-c1}
export DATA_OPTIMIZER_DATA_CACHE_FOLDER=${DATA_OPTIMIZER_DATA_CACHE_FOLDER:-/tmp/device-c2}
RAW=/tmp/device-raw
"$PY" scripts/prepare_sample_data.py --output_dir $RAW --overwrite true
"$PY" scripts/train_tokenizer.py --input_dir $RAW --output_dir .device/tok --vocab_size 32000 --overwrite true
for split in train validation; do
  out=$([ $split = validation ] && echo val || echo $split)
  "$PY" scripts/prepare_slimpajama.py --input_dir $RAW/slimpajama-raw/$split --output_dir .device/data/slimpajama/$out \
    --tokenizer_path .device/tok --overwrite true
done
"$PY" scripts/prepare_starcoder.py --input_dir $RAW/starcoderdata-raw --output_dir .device/data/starcoder \
  --tokenizer_path .device/tok --overwrite true
"$PY" dev/device/instruction_data.py --raw_dir $RAW/slimpajama-raw/train --output .device/inst.json.xz
du -shc .whl .device
