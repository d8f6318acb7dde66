#!/usr/bin/env bash
# Issue 13's whole CPU path, stage by stage: the marian teacher (trained until validation BLEU stops improving or
# 35 min), its beam-5 corpus and the small students (benchmarks/distill_multi30k.py), then their speed in HF and
# CTranslate2 (benchmarks/cpu_speed.py). Every stage is resumable: after a kill, the same command continues where
# it stopped (trained models, corpus chunks and finished speed passes are kept under data/ and benchmarks/work/).
# Students train in two one-thread slots (a slot freed by a finished student takes the next): on 2 cores that is
# 1.39x the throughput of one 2-thread run (measured on the AMD EPYC: 1.25 + 1.30 steps/s against 1.84), and no
# result depends on it (a last 2-thread run of distill_multi30k.py collects the students, scores them and writes the
# table). The baseline and seq-KD students are measured for speed before the other three train, so a run cut short
# still shows the deployment comparison. About 9 hours on 2 cores (the word-KD students run the teacher online at
# every step: about twice a CE student's time); run it at low priority and nothing else heavy beside it:
#   nohup nice -n 5 bash benchmarks/kim_rush_cpu.sh > benchmarks/work/kim_rush_cpu.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export SEQKD_DATA_DIR=${SEQKD_DATA_DIR:-$(cd .. && pwd)/shared/data}
export VLLM_CPU_NUM_OF_RESERVED_CPU=0
mkdir -p benchmarks/work
$py benchmarks/teacher_multi30k.py --families marian --max-minutes 35 --lr 1e-3 --warmup-steps 400 \
    --eval-steps 250 --patience 3 --reuse
$py benchmarks/distill_multi30k.py --corpus-only

is_done() { [ -f "data/models/students/multi30k-de-en-$1/train_summary.json" ]; }
is_running() { pgrep -f -- "distill_multi30k.py --students ${1//+/\\+}\$" > /dev/null; }
slots() {  # train the given students in two one-thread slots; logs in benchmarks/work/
  declare -A starts=()
  while true; do
    local todo=0 running=0 s
    for s in "$@"; do
      is_done "$s" && continue
      todo=$((todo + 1))
      is_running "$s" && running=$((running + 1))
    done
    [ "$todo" -eq 0 ] && return
    for s in "$@"; do
      [ "$running" -ge 2 ] && break
      if ! is_done "$s" && ! is_running "$s"; then
        starts[$s]=$(( ${starts[$s]:-0} + 1 ))
        if [ "${starts[$s]}" -gt 3 ]; then  # it stopped three times without finishing: a failure, not a kill
          echo "student $s failed 3 times: see benchmarks/work/distill_${s}.log" >&2
          exit 1
        fi
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $py benchmarks/distill_multi30k.py --students "$s" \
            >> "benchmarks/work/distill_${s}.log" 2>&1 &
        running=$((running + 1))
        sleep 5
      fi
    done
    sleep 60
  done
}

slots baseline seq-kd
$py benchmarks/distill_multi30k.py --students baseline seq-kd
$py benchmarks/cpu_speed.py
slots seq-inter seq-kd+word-kd word-kd
$py benchmarks/distill_multi30k.py --students baseline seq-kd seq-inter seq-kd+word-kd word-kd
$py benchmarks/cpu_speed.py
