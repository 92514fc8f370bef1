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
# lm-evaluation-harness and what the device lacks of its requirements (dev/device/harness_speed.sh); three of them
# are source distributions only, built into pure-Python wheels here
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device/evalwhl lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 nltk==3.10.4 \
  defusedxml==0.7.1 absl-py==2.5.1 six==1.17.0 pytablewriter==1.2.1 DataProperty==1.1.1 mbstrdecoder==1.1.5 \
  pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 python-dateutil==2.9.0.post0 \
  pytz==2026.6 more-itertools==11.2.1
python3 -m pip wheel -q --no-deps -w .device/evalwhl rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1
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
