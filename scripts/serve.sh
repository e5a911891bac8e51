#!/usr/bin/env bash
# Sets up, then serves the embedded default model on the OpenAI-compatible API (port 23333).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lmdeploy serve api_server "$@"
