"""Benchmark (issue 16): more than one teacher, a teacher assistant, and internals transfer, on Multi30k de->en with
issue 13's small students and budget — a thin caller of the ``multi30k-teachers`` recipe.

The recipe (``seqkd run multi30k-teachers``; see its description) trains teacher A (issue 13's teacher: the same stage
as ``multi30k-de-en``'s) and teacher B (another seed), decodes a beam-5 corpus with each and with the A+B ensemble,
distils ``marian-student-small`` from each corpus, runs a teacher-assistant chain (A -> ``marian-student`` -> the
small student) and seq-KD from A with hidden-state MSE transfer, and scores every model on test_2016_flickr greedy
and with beam 5. This script runs it in ``benchmarks/work/recipes/multi30k``, the run directory of
``benchmarks/recipe.py multi30k-de-en`` too, so the stages the two recipes share run once (cached stage by stage: a
killed run continues), then writes the issue's table and comparisons from the recipe's report to
``benchmarks/results/teachers_multi30k.{json,md}``. Extra arguments are the recipe's ``STAGE.FIELD=VALUE`` overrides.

    python benchmarks/teachers_multi30k.py              # hours on 2 CPU cores; minutes on a GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
# the recipe's evaluate names -> (what the row is, the stage that trained it)
ROWS = {"teacher-a": ("teacher A", "teacher"), "teacher-b": ("teacher B (seed 1)", "teacher-b"),
        "teacher-a+b": ("ensemble A+B", None), "assistant": ("assistant (marian-student, seq-KD from A)", "assistant"),
        "seq-kd-a": ("seq-KD from A", "student-seq-kd"), "seq-kd-b": ("seq-KD from B", "student-b"),
        "seq-kd-a+b": ("seq-KD from the A+B ensemble", "student-ab"),
        "ta-chain": ("TA chain A -> assistant -> student", "student-ta"),
        "seq-kd-a+hidden-mse": ("seq-KD from A + hidden MSE", "student-hidden")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="STAGE.FIELD=VALUE, as seqkd run takes them")
    # the run directory of `benchmarks/recipe.py multi30k-de-en` too: the stages the two recipes share run once
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "work" / "recipes" / "multi30k"))
    p.add_argument("--name", default="teachers_multi30k")
    p.add_argument("--jobs", type=int, default=2, help="seqkd run --jobs: training stages ready together run N at a "
                   "time, each with 1/N of the cores (on 2 CPU cores two one-thread students side by side: 1.39x the "
                   "throughput of one two-thread run, measured; 1 on a GPU)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


def comparisons(by: dict) -> list[str]:
    """What the issue asks: does the ensemble help, does the assistant, does hidden-state transfer (greedy and beam
    5 BLEU differences, with the numbers they rest on)."""
    def d(a: str, b: str, beam: int) -> str:
        return f"{by[a][beam]['bleu'] - by[b][beam]['bleu']:+.2f}"

    out = []
    if {"teacher-a", "teacher-b", "teacher-a+b"} <= by.keys():
        best = max(("teacher-a", "teacher-b"), key=lambda n: by[n][1]["bleu"])
        out.append(f"- The ensemble teacher vs its better member ({best}): {d('teacher-a+b', best, 1)} BLEU greedy, "
                   f"{d('teacher-a+b', best, 5)} beam 5.")
    if {"seq-kd-a", "seq-kd-b", "seq-kd-a+b"} <= by.keys():
        best = max(("seq-kd-a", "seq-kd-b"), key=lambda n: by[n][1]["bleu"])
        ok = all(by["seq-kd-a+b"][b]["bleu"] >= max(by["seq-kd-a"][b]["bleu"], by["seq-kd-b"][b]["bleu"])
                 for b in (1, 5))
        out.append(f"- The student of the ensemble's corpus vs the better single-teacher student ({best}): "
                   f"{d('seq-kd-a+b', best, 1)} greedy, {d('seq-kd-a+b', best, 5)} beam 5; at least as good as "
                   f"either at both: **{'yes' if ok else 'no'}**.")
    if {"ta-chain", "seq-kd-a"} <= by.keys():
        out.append(f"- The teacher-assistant chain vs direct distillation from A: {d('ta-chain', 'seq-kd-a', 1)} "
                   f"greedy, {d('ta-chain', 'seq-kd-a', 5)} beam 5.")
    if {"seq-kd-a+hidden-mse", "seq-kd-a"} <= by.keys():
        out.append(f"- Hidden-state MSE transfer on vs off (seq-KD from A): {d('seq-kd-a+hidden-mse', 'seq-kd-a', 1)} "
                   f"greedy, {d('seq-kd-a+hidden-mse', 'seq-kd-a', 5)} beam 5.")
    return out


def main(argv=None) -> None:
    a = parse_args(argv)
    t0 = time.perf_counter()
    report = common.run_recipe("multi30k-teachers", a.out, a.overrides, a.jobs)
    runs = report.get("training", {}).get("runs", {})
    by: dict[str, dict[int, dict]] = {}
    for r in report["models"]["rows"]:
        by.setdefault(r["model"], {})[r["beam_size"]] = r
    lines = ["# teachers_multi30k: several teachers, a teacher assistant, internals transfer (Multi30k de->en)", "",
             "The `multi30k-teachers` recipe (`seqkd run multi30k-teachers`): students `marian-student-small`, "
             "validated on val BLEU (500 sentences, greedy) every 250 steps, the best validation checkpoint scored; "
             "the recipe trains them for at most 30 epochs with early stopping (patience 3)"
             + (f", here with the overrides `{' '.join(a.overrides)}` (the table says how long each trained and why "
                "it stopped)" if a.overrides else "")
             + f"; test_2016_flickr ({next(iter(by.values()))[1]['sentences']} sentences).", "",
             "| model | params | epochs run (best step; why it stopped) | val BLEU | BLEU greedy | BLEU beam 5 | "
             "chrF beam 5 |", "|---|---|---|---:|---:|---:|---:|"]
    for name, (what, stage) in ROWS.items():
        if name not in by:
            continue
        s, t = by[name], runs.get(stage or "", {})
        train = (f"{t['epochs']:.1f} ({t['best_step']}; {t['stop_reason']})" if t.get("epochs") is not None
                 else "-")
        val = f"{t['best_metric']:.2f}" if t.get("best_metric") is not None else "-"
        lines.append(f"| {what} | {s[1]['parameters'] / 1e6:.2f}M | {train} | {val} | {s[1]['bleu']:.2f} | "
                     f"{s[5]['bleu']:.2f} | {s[5]['chrf']:.2f} |")
    lines += ["", *comparisons(by), "", f"BLEU signature: `{next(iter(by.values()))[1]['bleu_signature']}`", "",
              f"This command: {(time.perf_counter() - t0) / 60:.0f} min; the recipe's stages: "
              f"{sum(s['seconds'] for s in report['stages'].values()) / 60:.0f} min."]
    common.write_results(a.name, {"report": report, "overrides": a.overrides}, "\n".join(lines),
                         results_dir=a.results)
    print(f"{Path(a.results) / a.name}.md")


if __name__ == "__main__":
    main()
