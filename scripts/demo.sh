#!/usr/bin/env bash
# The main job on the embedded default: set up .venv (first run: ~10 min of installs), then `seqkd demo`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/seqkd demo "$@"
