#!/usr/bin/env bash
# Saves the embedded default model's tokenizer to .carry/tokenizer (git-ignored, ~3 MB), for the
# GPU machine, where the 98 MB GGUF is over the carry limit: benchmark/gpu_suite.sh points the
# tests' tokenizer fixture at it (LMDEPLOY_TEST_TOKENIZER).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
from lmdeploy.adapters.loaders.model_source import embedded_model_file
from lmdeploy.adapters.tokenizers.hf_tokenizer import _gguf_tokenizer

_gguf_tokenizer(embedded_model_file()).save_pretrained(".carry/tokenizer")
PY
du -sh .carry/tokenizer
