#!/usr/bin/env bash
# The test suite: set up .venv, then pytest (all tests, slow and vLLM ones included; extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow and not vllm"` for the quick loop).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
export SEQKD_DATA_DIR=${SEQKD_DATA_DIR:-$(cd "$root/.." && pwd)/shared/data}
exec .venv/bin/python -m pytest "$@"
