#!/usr/bin/env bash
# The main job on the embedded default: set up .venv (first run: ~10 min of installs), then `seqkd run synthetic`:
# data -> teacher -> corpus -> students -> CTranslate2 export -> draft -> speculative decoding -> evaluation -> report
# (runs/synthetic/report.html).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/seqkd run synthetic "$@"
