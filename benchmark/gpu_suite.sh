#!/usr/bin/env bash
# The GPU check-and-benchmark, for one device call (see benchmark/NOTES.md). On the device:
#   bash benchmark/gpu_suite.sh tests|generation|throughput
# Results (JSON and logs) go to $OUT, else benchmark/results.
set -uo pipefail
OUT=${OUT:-benchmark/results}
mkdir -p "$OUT"
if [ -d .whl ]; then  # the device image lacks a few pure-Python dependencies: carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
fi
# Import the checkout as `lmdeploy` without installing it (the device has no package index).
mkdir -p /tmp/shim && ln -sfn "$PWD/src" /tmp/shim/lmdeploy && ln -sfn ../kernels src/kernels
export PYTHONPATH=/tmp/shim:/tmp/site PYTHONUNBUFFERED=1
if [ -f /root/g/part_aa ] && [ -f .gguf/part_ab ]; then  # the default model, carried in two parts
  cat /root/g/part_aa .gguf/part_ab > /tmp/smollm2.gguf && export LMDEPLOY_EMBEDDED_GGUF=/tmp/smollm2.gguf
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
for part in "$@"; do
  case "$part" in
    tests) python3 -m pytest -q -p no:cacheprovider tests/integration/test_cuda_engine.py 2>&1 | tee "$OUT/cuda_tests.log" ;;
    generation) python3 benchmark/profile_generation.py --device cuda --load-format dummy --model-config llama-3-8b --output "$OUT/profile_generation_cuda.json" 2>&1 | tee "$OUT/profile_generation_cuda.log" ;;
    throughput) python3 benchmark/profile_throughput.py --device cuda --load-format dummy --model llama-3-8b \
        --hf-requests 64 --output "$OUT/profile_throughput_cuda.json" 2>&1 | tee "$OUT/profile_throughput_cuda.log" ;;
  esac
done
