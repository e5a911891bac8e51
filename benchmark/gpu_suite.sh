#!/usr/bin/env bash
# The GPU check-and-benchmark, for one device call (see benchmark/NOTES.md). On the device:
#   bash benchmark/gpu_suite.sh tests|kernels|generation|grammar|sampling|moe|profile|throughput|families|w8a8|lora|lora_hook|quant|w4gemv|w4tc|dense_gemv|gemm_rows|pipeline_profile|decode_attention|tp|tp_profile|vlm|norm_links|kv_headroom|kv_transposed|engine_after_engine ...
# Results (JSON and logs) go to $OUT, else benchmark/results.
#   LMDEPLOY_ROOT=DIR  import the checkout in DIR as `lmdeploy` (e.g. a baseline tree) while
#                      the benchmark scripts come from this one; TAG=_x suffixes the outputs.
#   POLICIES="0 8"     quant_policy values of `kv_headroom` (default 0 8 4).
#   BATCHES="1 16 64"  batch sizes of `generation` and `families` (default 1 16 64 256) and of
#                      `quant` (default 1 64).
#   FAMILIES="mixtral-8x7b qwen3-30b-a3b"  shapes of `families` (default: all of gpu_families.py's).
#   HF_REQUESTS=N      requests transformers runs in `throughput` (default 64; 0 for ours only).
#   LMDEPLOY_DECODE_AHEAD=0  the engine without decode steps started ahead (A/B runs).
#   VLM_MODEL=llava-1.5-7b  the shape of `vlm` (default qwen2-vl-7b); without the default GGUF on the
#                      device, LMDEPLOY_VLM_TOKENIZER=DIR names its saved tokenizer (gpu_vlm.py).
#   GRAMMAR_MODEL=DIR  a local HF Llama directory with a tokenizer for `grammar` (random weights do).
set -uo pipefail
OUT=${OUT:-benchmark/results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: a part may run from another directory
TAG=${TAG:-}
ROOT=$(cd "${LMDEPLOY_ROOT:-$PWD}" && pwd)
if [ -d .whl ] && [ ! -d /tmp/site ]; then  # the device image lacks a few pure-Python dependencies
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
fi
# Import the checkout as `lmdeploy` without installing it (the device has no package index).
mkdir -p /tmp/shim && ln -sfn "$ROOT/src" /tmp/shim/lmdeploy && ln -sfn ../lmdeploy_kernels "$ROOT/src/kernels"
export PYTHONPATH=/tmp/shim:/tmp/site PYTHONUNBUFFERED=1
if [ -f /root/g/part_aa ] && [ -f .gguf/part_ab ]; then  # the default model, carried in two parts
  cat /root/g/part_aa .gguf/part_ab > /tmp/smollm2.gguf && export LMDEPLOY_EMBEDDED_GGUF=/tmp/smollm2.gguf
fi
if [ -d .carry/tokenizer ]; then  # the default model's tokenizer alone (scripts/save_test_tokenizer.sh)
  export LMDEPLOY_TEST_TOKENIZER=$PWD/.carry/tokenizer
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
echo "lmdeploy from $ROOT (tag '${TAG}')"
for part in "$@"; do
  case "$part" in
    tests) python3 -m pytest -q -p no:cacheprovider tests/integration/test_cuda_engine.py tests/integration/test_cuda_swap.py tests/integration/test_cache_swap.py tests/integration/test_quantized_checkpoints.py tests/integration/test_smooth_quant.py 2>&1 | tee "$OUT/cuda_tests$TAG.log" ;;
    kernels) python3 -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/kernel_tests$TAG.log" ;;
    generation) python3 benchmark/profile_generation.py --device cuda --load-format dummy --model-config llama-3-8b \
        --batch-sizes ${BATCHES:-1 16 64 256} --output "$OUT/profile_generation_cuda$TAG.json" ;;
    grammar) python3 benchmark/gpu_grammar_check.py "${GRAMMAR_MODEL:-.gpucheck/tiny}" --output "$OUT/grammar_cuda$TAG.json" ;;
    sampling) python3 benchmark/gpu_sampling.py --output "$OUT/sampling_cuda$TAG.json" ;;
    moe) python3 benchmark/gpu_fused_moe.py --out "$OUT/fused_moe_cuda$TAG.json" ;;
    profile) python3 benchmark/gpu_profile.py --out-dir "$OUT" --tag "$TAG" ;;
    families) python3 benchmark/gpu_families.py ${FAMILIES:-} --batch-sizes ${BATCHES:-1 16 64 256} \
        --output "$OUT/gpu_families$TAG.json" 2>&1 | tee "$OUT/gpu_families$TAG.log" ;;
    w8a8) python3 benchmark/gpu_w8a8.py --output "$OUT/gpu_w8a8$TAG.json" 2>&1 | tee "$OUT/gpu_w8a8$TAG.log" ;;
    lora) python3 benchmark/gpu_lora.py --output "$OUT/gpu_lora$TAG.json" 2>&1 | tee "$OUT/gpu_lora$TAG.log" ;;
    lora_hook) python3 benchmark/gpu_lora_hook.py --output "$OUT/gpu_lora_hook$TAG.json" 2>&1 | tee "$OUT/gpu_lora_hook$TAG.log" ;;
    throughput) python3 benchmark/profile_throughput.py --device cuda --load-format dummy --model llama-3-8b \
        --hf-requests ${HF_REQUESTS:-64} --output "$OUT/profile_throughput_cuda$TAG.json" 2>&1 | tee "$OUT/profile_throughput_cuda$TAG.log" ;;
    tp_profile) python3 benchmark/gpu_tp_profile.py --out-dir "$OUT" 2>&1 | tee "$OUT/tp_profile$TAG.log" ;;  # 2 GPUs
    tp) (cd benchmark && python3 gpu_tp.py --requests 1000 --case-timeout 230 --output "$OUT/gpu_tp$TAG.json" 2>&1 | tee "$OUT/gpu_tp$TAG.log") ;;  # needs 2 GPUs
    vlm) python3 benchmark/gpu_vlm.py --model ${VLM_MODEL:-qwen2-vl-7b} --out "$OUT/gpu_vlm$TAG.json" 2>&1 | tee "$OUT/gpu_vlm$TAG.log" ;;
    w4tc) python3 benchmark/gpu_w4a16_tc.py --sweep --output "$OUT/gpu_w4a16_tc$TAG.json" 2>&1 | tee "$OUT/gpu_w4a16_tc$TAG.log" ;;
    w4gemv) python3 benchmark/gpu_w4a16_gemv.py --sweep --output "$OUT/gpu_w4a16_gemv$TAG.json" 2>&1 | tee "$OUT/gpu_w4a16_gemv$TAG.log" ;;
    gemm_rows) python3 benchmark/gpu_gemm_rows.py --output "$OUT/gpu_gemm_rows$TAG.json" 2>&1 | tee "$OUT/gpu_gemm_rows$TAG.log" ;;
    pipeline_profile) python3 benchmark/gpu_pipeline_profile.py --output "$OUT/pipeline_profile$TAG.json" 2>&1 | tee "$OUT/pipeline_profile$TAG.log" ;;
    decode_attention) python3 benchmark/gpu_decode_attention.py --output "$OUT/gpu_decode_attention$TAG.json" 2>&1 | tee "$OUT/gpu_decode_attention$TAG.log" ;;
    dense_gemv) python3 benchmark/gpu_dense_gemv.py --sweep --output "$OUT/gpu_dense_gemv$TAG.json" 2>&1 | tee "$OUT/gpu_dense_gemv$TAG.log" ;;
    norm_links) python3 benchmark/gpu_dense_gemv.py --rows 1 --variants --output "$OUT/gpu_dense_gemv_variants$TAG.json" \
        2>&1 | tee "$OUT/gpu_dense_gemv_variants$TAG.log"
      for on in 0 1; do  # the batch-1 A/B of the one-row norm links (layers/norm.py's link_norms)
        LMDEPLOY_FUSED_NORM=$on python3 benchmark/gpu_families.py ${FAMILIES:-llama-3-8b qwen2.5-7b mistral-7b} \
          --batch-sizes 1 --log-level INFO --output "$OUT/gpu_families_b1_norm$on$TAG.json" 2>&1 \
          | tee "$OUT/gpu_families_b1_norm$on$TAG.log" | grep -v "\[info"
      done ;;
    quant) python3 benchmark/gpu_quant.py --batch-sizes ${BATCHES:-1 64} \
        --output "$OUT/gpu_quant$TAG.json" 2>&1 | tee "$OUT/gpu_quant$TAG.log" ;;
    kv_headroom)  # KV rows with the admission headroom off, then at its default (twice each: ~15% spread)
      for run in a b; do
        for headroom in 0 16; do
          LMDEPLOY_ADMISSION_HEADROOM=$headroom python3 benchmark/gpu_kv_quant.py --policies ${POLICIES:-0 8 4} \
            --output "$OUT/gpu_kv_quant_headroom$headroom$run$TAG.json" 2>&1 | tail -n 5 | tee "$OUT/gpu_kv_quant_headroom$headroom$run$TAG.log"
        done
      done ;;
    kv_transposed)  # the quantized caches' transposed tile loop against the engine's (issue 16)
      for c in 160:600 256:1024; do
        python3 benchmark/gpu_decode_attention.py --no-sweep --cases $c --quant-bits 8 4 \
          --output "$OUT/attn_loop_${c/:/x}$TAG.json" 2>&1 | grep -v '^{'
        python3 benchmark/gpu_decode_attention.py --no-sweep --cases $c --quant-bits 8 4 --transposed \
          --output "$OUT/attn_transposed_${c/:/x}$TAG.json" 2>&1 | grep -v '^{'
      done
      python3 benchmark/gpu_decode_attention.py --cases 160:600 --quant-bits 8 4 --transposed \
        --output "$OUT/attn_transposed_sweep$TAG.json" 2>&1 | grep -v '^{' | tee "$OUT/attn_transposed_sweep$TAG.log"
      LMDEPLOY_KV_ATTN_TRANSPOSED=1 python3 benchmark/gpu_kv_quant.py --policies ${POLICIES:-0 8 4} \
        --output "$OUT/gpu_kv_quant_transposed$TAG.json" 2>&1 | tail -n 5 | tee "$OUT/gpu_kv_quant_transposed$TAG.log" ;;
    engine_after_engine) python3 benchmark/gpu_engine_after_engine.py --output "$OUT/gpu_engine_after_engine$TAG.json" \
        2>&1 | tee "$OUT/gpu_engine_after_engine$TAG.log" ;;
  esac
done
