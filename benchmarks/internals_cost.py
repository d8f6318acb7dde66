"""Benchmark (issue 16): what internals transfer adds to a distillation step, in time and memory.

The small Multi30k student (``marian-student-small``) distilled from the marian-teacher (issue 13's, or any
``--teacher``) on Multi30k train, each variant ``--steps`` optimizer steps in a fresh process (peak resident memory
is per process), the variants alternated over ``--passes`` passes after a warm-up pass:

* ``ce``: seq-KD / baseline step, no teacher in memory;
* ``online KD``: + the teacher's forward and forward KL (w = 0.5): what internals are added to;
* ``+ hidden mse`` / ``+ hidden cosine``: + hidden-state loss on every student layer (uniform map, learned
  projection 128 -> 256);
* ``+ attention kl``: + self-attention KL (both models switched to eager attention);
* ``+ value relation``: + MiniLM's value-relation KL.

Training tokens/s (the trainer's own count) and peak RSS, median (min-max) over passes, and each variant's cost
relative to ``online KD``. Writes benchmarks/results/internals_cost.{json,md}.

    python benchmarks/internals_cost.py       # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ce": dict(kd_mode="none", kd_weight=0.0),
    "online KD": dict(kd_mode="online", kd_weight=0.5),
    "+ hidden mse": dict(kd_mode="online", kd_weight=0.5, hidden_loss="mse"),
    "+ hidden cosine": dict(kd_mode="online", kd_weight=0.5, hidden_loss="cosine"),
    "+ attention kl": dict(kd_mode="online", kd_weight=0.5, attention_loss="kl"),
    "+ value relation": dict(kd_mode="online", kd_weight=0.5, attention_loss="value_relation"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(ROOT / "data" / "models" / "multi30k-de-en-marian-teacher"))
    p.add_argument("--student-preset", default="marian-student-small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--name", default="internals_cost")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 6 or a.passes < 1:
        p.error("--steps must be >= 6 (tokens/s is measured between logs) and --passes >= 1")
    return a


def worker(a, variant: str) -> dict:
    """One variant's run in this process: tokens/s from the run summary, peak RSS of this process."""
    from seqkd.config import DistillConfig
    from seqkd.student.distill import distill

    with tempfile.TemporaryDirectory() as tmp:
        summary = distill(DistillConfig(
            out=str(Path(tmp) / "s"), model=a.student_preset, teacher=a.teacher, data="multi30k:de-en",
            max_steps=a.steps, eval_steps=0, bleu_samples=0, logging_steps=max(1, min(10, a.steps // 3)),
            progress=False, lr=1e-3, warmup_steps=10, max_tokens=4096, seed=0, overwrite=True, **VARIANTS[variant]))
    return {"tokens_per_s": summary["train_tokens_per_s"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(a, a.worker)), flush=True)
        return
    if not Path(a.teacher).is_dir():
        sys.exit(f"{a.teacher} is missing: run benchmarks/teacher_multi30k.py --families marian first")
    runs: dict[str, list[dict]] = {v: [] for v in a.variants}
    for pass_ in range(a.passes + 1):  # pass 0 warms up (page cache, first-run costs)
        for v in a.variants:
            cmd = [sys.executable, __file__, "--worker", v, "--teacher", a.teacher, "--student-preset",
                   a.student_preset, "--steps", str(a.steps)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not lines:
                sys.exit(f"{v}: {(p.stderr.strip().splitlines() or ['no output'])[-1]}")
            if pass_:
                runs[v].append(json.loads(lines[-1][len("RESULT "):]))
        print(f"pass {pass_} done" + (" (warm-up)" if not pass_ else ""), flush=True)
    rows = {v: {"tokens_per_s": common.summary([r["tokens_per_s"] for r in rs]),
                "peak_rss_mib": common.summary([r["peak_rss_mib"] for r in rs])} for v, rs in runs.items()}
    base = rows.get("online KD")
    lines = ["# internals_cost: what internals transfer adds to a distillation step", "",
             f"`{a.student_preset}` from `{Path(a.teacher).name}` on Multi30k train, {a.steps} steps per run, each "
             f"run a fresh process, variants alternated, {a.passes} passes after a warm-up; median (min–max).", "",
             "| variant | training tokens/s | time vs online KD | peak RSS (MiB) | memory vs online KD |",
             "|---|---:|---:|---:|---:|"]
    for v, r in rows.items():
        t, m = r["tokens_per_s"]["median"], r["peak_rss_mib"]["median"]
        vs_t = f"{base['tokens_per_s']['median'] / t:.2f}×" if base else "-"
        vs_m = f"{m - base['peak_rss_mib']['median']:+.0f} MiB" if base else "-"
        lines.append(f"| {v} | {common.fmt_summary(r['tokens_per_s'], '.0f')} | {vs_t} | "
                     f"{common.fmt_summary(r['peak_rss_mib'], '.0f')} | {vs_m} |")
    common.write_results(a.name, {"rows": rows, "settings": common.rel_args(a)}, "\n".join(lines))


if __name__ == "__main__":
    main()
