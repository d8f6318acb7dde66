#!/usr/bin/env bash
# Issue 13's whole CPU path, stage by stage: the marian teacher (trained until validation BLEU stops improving or
# 35 min), its beam-5 corpus and the small students (benchmarks/distill_multi30k.py), then their speed in HF and
# CTranslate2 (benchmarks/cpu_speed.py). Every stage is resumable: after a kill, the same command continues where
# it stopped (trained models, corpus chunks and finished speed passes are kept under data/ and benchmarks/work/).
# The first two students are measured for speed before the other three train, so a run cut short still shows the
# deployment comparison. About 4-5 hours on 2 cores; run it at low priority and nothing else heavy beside it:
#   nohup nice -n 5 bash benchmarks/kim_rush_cpu.sh > benchmarks/work/kim_rush_cpu.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export SEQKD_DATA_DIR=${SEQKD_DATA_DIR:-$(cd .. && pwd)/shared/data}
export VLLM_CPU_NUM_OF_RESERVED_CPU=0
$py benchmarks/teacher_multi30k.py --families marian --max-minutes 35 --lr 1e-3 --warmup-steps 400 \
    --eval-steps 250 --patience 3 --reuse
$py benchmarks/distill_multi30k.py --students baseline seq-kd
$py benchmarks/cpu_speed.py
$py benchmarks/distill_multi30k.py --students baseline seq-kd seq-inter seq-kd+word-kd word-kd
$py benchmarks/cpu_speed.py
