#!/usr/bin/env bash
# Sets up, then runs every check CI runs: ruff, the layer contracts, the built wheel installed
# into a fresh environment (scripts/check_wheel.sh) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src lmdeploy_kernels tests features benchmark
ruff format --check src lmdeploy_kernels tests features benchmark
lint-imports
bash scripts/check_wheel.sh
export TRITON_INTERPRET=1
python -m pytest -q -p no:cacheprovider "$@"
