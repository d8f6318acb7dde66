"""Regenerate the README's main-job results block from the committed report of ``seqkd run synthetic``
(``benchmarks/results/recipe_synthetic.json``, written by ``python benchmarks/recipe.py synthetic``).

    python scripts/readme_results.py          # rewrite the block between the markers in README.md
    python scripts/readme_results.py --check  # exit 1 if README.md is out of date (tests/test_architecture.py)
"""

from __future__ import annotations

import json
import sys

from architecture import ROOT, update_block

BEGIN, END = "<!-- results:begin (scripts/readme_results.py) -->", "<!-- results:end -->"
RESULT = ROOT / "benchmarks" / "results" / "recipe_synthetic.json"


def render() -> str:
    r = json.loads(RESULT.read_text(encoding="utf-8"))
    rep, run, env = r["report"], r["run"], r["environment"]
    rows = rep["models"]["rows"]
    beams = sorted({x["beam_size"] for x in rows})
    lines = [f"Committed report (`benchmarks/results/recipe_synthetic.md`, `.html`): commit `{run['commit']}`, "
             f"{env['cpu']['model']}, {env['cpu']['usable_cores']} cores; its stages took "
             f"{sum(s['seconds'] for s in rep['stages'].values()) / 60:.1f} minutes. Test set: "
             f"{rows[0]['sentences']} held-out sentences with canonical "
             "references; sacrebleu BLEU; words/s: one pass after a warm-up.", "",
             "| model | engine | parameters | " + " | ".join(f"BLEU beam {b}" for b in beams)
             + " | " + " | ".join(f"words/s beam {b}" for b in beams) + " |",
             "|---|---|---|" + "---|" * (2 * len(beams))]
    for name in dict.fromkeys(x["model"] for x in rows):
        by = {x["beam_size"]: x for x in rows if x["model"] == name}
        first = next(iter(by.values()))
        lines.append(f"| {name} | {first['engine']} | {first['parameters'] / 1e6:.2f}M | "
                     + " | ".join(f"{by[b]['bleu']:.2f}" for b in beams) + " | "
                     + " | ".join(f"{by[b]['words_per_s']:,.0f}" for b in beams) + " |")
    sel = rep["corpus"]["selections"]
    lines += ["", "Selected training data against the (multimodal) references: "
              + ", ".join(f"{v['strategy']} {v['scores']['bleu']:.2f} BLEU" for v in sel.values()) + "."]
    al = rep["drafts"]["align"]["draft"]
    spec = rep["drafts"]["speculate"]
    best = {n: max(v, key=lambda x: x["speedup"]) for n, v in spec.items()}
    lines.append(
        f"Draft (the seq-KD student, aligned: DistillSpec on-policy TVD): acceptance rate "
        f"{al['before']['acceptance_rate']:.3f} → {al['after']['acceptance_rate']:.3f}, tokens per target call "
        f"{al['before']['block_efficiency']:.2f} → {al['after']['block_efficiency']:.2f} at gamma 4, temperature 1; "
        "best speedup " + ", ".join(
            f"{n.replace('speculate-', '')} {b['speedup']:.2f}× (gamma {b['gamma']}; draft/target cost c "
            f"{b['cost_ratio']:.2f}, Leviathan bound {b['leviathan_bound']:.2f}×)" for n, b in best.items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(update_block(ROOT / "README.md", BEGIN, END, render(), check="--check" in sys.argv[1:],
                          how="python scripts/readme_results.py"))
