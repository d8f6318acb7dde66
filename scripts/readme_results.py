"""Regenerate the README's results blocks from the committed recipe reports: the main job's (``seqkd run synthetic``,
``benchmarks/results/recipe_synthetic.json``, written by ``python benchmarks/recipe.py synthetic``) and the SmolLM2
draft's (``recipe_smollm2_draft.json``, by ``python benchmarks/recipe.py smollm2-draft``; until it exists the block
says so), and the product paths' table (``decode_paths.json``, by ``python benchmarks/decode_paths.py``).

    python scripts/readme_results.py          # rewrite the blocks between their markers in README.md
    python scripts/readme_results.py --check  # exit 1 if README.md is out of date (tests/test_architecture.py)
"""

from __future__ import annotations

import json
import sys

from architecture import ROOT, update_block

BEGIN, END = "<!-- results:begin (scripts/readme_results.py) -->", "<!-- results:end -->"
RESULT = ROOT / "benchmarks" / "results" / "recipe_synthetic.json"
SMOL_BEGIN, SMOL_END = "<!-- smollm2-draft:begin (scripts/readme_results.py) -->", "<!-- smollm2-draft:end -->"
SMOL = ROOT / "benchmarks" / "results" / "recipe_smollm2_draft.json"
PATHS_BEGIN, PATHS_END = "<!-- decode-paths:begin (scripts/readme_results.py) -->", "<!-- decode-paths:end -->"
PATHS = ROOT / "benchmarks" / "results" / "decode_paths.json"


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


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |"
                                                                              for r in rows]


def render_smollm2(result: dict | None, files: str = "benchmarks/results/recipe_smollm2_draft_files") -> str:
    """The SmolLM2 draft's block from its committed result (``benchmarks/recipe.py``'s JSON), or what to run."""
    if result is None:
        return ("Not run at full size yet: `python benchmarks/recipe.py smollm2-draft` (about 12 hours on 2 CPU "
                "cores, resumable) writes `benchmarks/results/recipe_smollm2_draft.*`, and this block is generated "
                "from it (`python scripts/readme_results.py`).")
    from seqkd.pipeline.report import speculative_tables

    rep, run, env = result["report"], result["run"], result["environment"]
    spec = rep["drafts"]["speculate"]
    prompts = {r["prompts"] for rs in spec.values() for r in rs}
    (headers, rows), (hf_headers, hf_rows) = speculative_tables(spec)
    lines = [f"Committed report (`benchmarks/results/recipe_smollm2_draft.md`, `.html`): commit `{run['commit']}`, "
             f"{env['cpu']['model']}, {env['cpu']['usable_cores']} cores, no GPU; its stages took "
             f"{sum(s['seconds'] for s in rep['stages'].values()) / 3600:.1f} hours. "
             f"{' / '.join(str(p) for p in sorted(prompts))} prompts per stage (validation prompts in the `-val` "
             "stage, held-out test prompts in the others); medians of the passes with min–max.", "",
             " ".join(rep.get("summary", [])), "", *_table(headers, rows)]
    if hf_rows:
        lines += ["", "The same prompts in HF transformers (tokens/s; speedup over HF generate):", "",
                  *_table(hf_headers, hf_rows)]
    lines += ["", f"![acceptance and speedup against gamma, per-position acceptance]({files}/speculative.png)"]
    return "\n".join(lines)


def render_decode_paths(result: dict) -> str:
    """benchmarks/decode_paths.py's table: per product path, rates (median (min-max)) over the default target-only
    rate, step times, c and v."""
    def med(x: dict, spec: str) -> str:
        return f"{x['median']:{spec}}" + (f" ({x['min']:{spec}}–{x['max']:{spec}})" if x["n"] > 1 else "")

    run = result["run"]
    rows = [[r["label"], med(r["target_only_tokens_per_s"], ".1f"), med(r["speculative_tokens_per_s"], ".1f"),
             med(r["target_only_over_baseline"], ".2f") + "×", med(r["speculative_over_baseline"], ".2f") + "×",
             f"{r['target_step_ms']:.1f}", f"{r['verification_ms']:.1f}", f"{r['draft_step_ms']:.1f}",
             f"{r['c']:.3f}", f"{r['v']:.2f}"] for r in result["rows"]]
    headers = ["path", "target-only tok/s", "speculative tok/s", "target-only over default",
               "speculative over default", "target step ms", "verification ms", "draft step ms", "c", "v"]
    return "\n".join([f"Commit `{run['commit']}`, `{run['command']}`; draft: {result['draft']} (acceptance "
                      f"{result['acceptance_rate']:.3f}); gamma {result['gamma']}.", "", *_table(headers, rows)])


def main(argv: list[str]) -> int:
    check = "--check" in argv
    how = "python scripts/readme_results.py"
    smol = json.loads(SMOL.read_text(encoding="utf-8")) if SMOL.exists() else None
    rc = update_block(ROOT / "README.md", BEGIN, END, render(), check=check, how=how)
    rc = rc or update_block(ROOT / "README.md", PATHS_BEGIN, PATHS_END,
                            render_decode_paths(json.loads(PATHS.read_text(encoding="utf-8"))), check=check, how=how)
    return rc or update_block(ROOT / "README.md", SMOL_BEGIN, SMOL_END, render_smollm2(smol), check=check, how=how)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
