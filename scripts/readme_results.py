"""Regenerate the README's results blocks from the committed recipe reports: the main job's (``seqkd run synthetic``,
``benchmarks/results/recipe_synthetic.json``, written by ``python benchmarks/recipe.py synthetic``) and the SmolLM2
draft's (``recipe_smollm2_draft.json``, by ``python benchmarks/recipe.py smollm2-draft``; until it exists the block
says so) and its layer choices' (``recipe_smollm2_layers.json``, by ``python benchmarks/recipe.py smollm2-layers``,
likewise), and the product paths' table (``decode_paths.json``, by ``python benchmarks/decode_paths.py``).

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
LAYERS_BEGIN, LAYERS_END = "<!-- smollm2-layers:begin (scripts/readme_results.py) -->", "<!-- smollm2-layers:end -->"
LAYERS = ROOT / "benchmarks" / "results" / "recipe_smollm2_layers.json"
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
        return ("Not run at full size yet: `python benchmarks/recipe.py smollm2-draft` (about 24 hours on 2 CPU "
                "cores, resumable) writes `benchmarks/results/recipe_smollm2_draft.*`, and this block is generated "
                "from it (`python scripts/readme_results.py`).")
    from seqkd.pipeline.report import speculative_tables, time_table

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
    time_headers, time_rows = time_table(spec)
    if time_rows:
        lines += ["", "Where the time goes (seqkd's decoder, first pass): shares of the speculative wall time, step "
                  "times (ms), measured speedup over Leviathan's bound:", "", *_table(time_headers, time_rows)]
    goals = targets(spec)
    if goals:
        lines += ["", "Issue 14's targets (median, min–max over the passes; a range across the threshold says so):",
                  "", *_table(["target", "measured", "verdict"], goals)]
    lines += ["", f"![acceptance and speedup against gamma, per-position acceptance]({files}/speculative.png)"]
    return "\n".join(lines)


def _verdict(median: float, lo: float, hi: float, threshold: float) -> str:
    """Met, missed, or which side of ``threshold`` the median is on where the passes' range straddles it."""
    if lo >= threshold:
        return "met"
    if hi < threshold:
        return "missed"
    return "met at the median, not in every pass" if median >= threshold else "missed at the median, met in a pass"


def _ratio_per_pass(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den) if b]


def targets(spec: dict[str, list[dict]]) -> list[list[str]]:
    """Issue 14's targets, each checked on the smollm2-draft report's speculate data (stage -> results): the
    target, what was measured (median, min-max over the passes), the verdict. A target whose stage did not run is
    left out."""
    from seqkd.pipeline.report import at_gamma_chosen_on_val

    rows = []

    def add(what: str, values: list[float], median: float, threshold: float, fmt: str = ".2f", unit: str = "x",
            where: str = "") -> None:
        lo, hi = min(values), max(values)
        rows.append([what, f"{median:{fmt}}{unit} ({lo:{fmt}}-{hi:{fmt}}{unit})" + (f", {where}" if where else ""),
                     _verdict(median, lo, hi, threshold)])

    def speedups(r: dict) -> list[float]:
        sp = r.get("speedup_spread") or {}
        return sp.get("per_pass") or [sp.get("min", r["speedup"]), sp.get("max", r["speedup"])]

    # the fp32 drafts compiled, then the int8 drafts eager beside the compiled target (the drafts as deployed)
    for name, temp, threshold in (("speculate", 0, 1.3), ("speculate-t1", 1, 1.15), ("speculate-int8", 0, 1.3),
                                  ("speculate-int8-t1", 1, 1.15)):
        r = at_gamma_chosen_on_val(spec, name)
        if r is not None:
            kind = "int8 draft" if r.get("draft_quantize", "none") == "int8" else "fp32 draft"
            add(f"seqkd's decoder at T={temp}, {kind}, gamma chosen on validation prompts: speedup >= {threshold}x",
                speedups(r), r["speedup"], threshold, where=f"{name}, gamma {r['gamma']}")
            if r.get("leviathan_bound"):
                shares = [x / r["leviathan_bound"] for x in speedups(r)]
                add(f"seqkd's decoder at T={temp}, {kind}, reaches >= 80% of Leviathan's bound (bound "
                    f"{r['leviathan_bound']:.2f}x with c {r['cost_ratio']:.3f})", shares,
                    r["speedup"] / r["leviathan_bound"], 0.8, ".0%", "")
    for name, temp in (("speculate-drafts", 0), ("speculate-drafts-t1", 1)):
        rs = spec.get(name) or []
        if len(rs) >= 2 and all("label" in r for r in rs):
            base, *aligned_drafts = rs  # the draft before alignment first, then each alignment of it
            for aligned in aligned_drafts:
                per = _ratio_per_pass(speedups(aligned), speedups(base))
                add(f"aligned draft ({aligned['label']}) >= 1.15x the unaligned one ({base['label']}) at T={temp} "
                    "(speedup over speedup, same baseline)", per, aligned["speedup"] / base["speedup"], 1.15,
                    where=name)
    for r in spec.get("speculate-hf") or []:
        cmp = (r.get("comparison") or {}).get("tokens_per_s")
        if cmp:
            per = _ratio_per_pass(cmp["seqkd_speculative"]["per_pass"], cmp["hf_assisted"]["per_pass"])
            add(f"seqkd's tokens/s >= HF assisted generation's (same pair, gamma {r['gamma']})", per,
                cmp["seqkd_speculative"]["median"] / cmp["hf_assisted"]["median"], 1.0,
                where=f"{cmp['seqkd_speculative']['median']:.1f} vs {cmp['hf_assisted']['median']:.1f} tok/s")
    for r in spec.get("speculate-vllm") or []:
        if r.get("engine", "seqkd") == "vllm":
            sp = r.get("speedup_spread") or {}
            add(f"vLLM speculative > 1x its own target-only rate (batch {r.get('batch_size', 1)})",
                [sp.get("min", r["speedup"]), sp.get("max", r["speedup"])], r["speedup"], 1.0,
                where="passes not interleaved (two engines)")
    return rows


def layers_of(recipe, draft_stage: str) -> str:
    """The target layers behind a draft stage of ``recipe`` (a pruned draft -> its trained draft -> its draft-init),
    followed through the stages' references."""
    from seqkd.pipeline.recipe import REF

    stages = {s.name: s for s in recipe.stages}
    name = draft_stage
    while stages[name].job != "draft-init":
        name = REF.search(stages[name].settings["draft" if stages[name].job == "draft-vocab" else "model"]).group(1)
    return stages[name].settings["layers"]


def render_smollm2_layers(result: dict | None, baseline: str = "pruned-first4") -> str:
    """The layer choices' block (``smollm2-layers``'s committed result): per choice its layers, size, acceptance, c,
    v and speedup on the validation prompts, and its speedup over ``baseline``'s pass by pass (one target-only
    baseline: the ratio of two speedups is the ratio of their tokens/s); or what to run."""
    if result is None:
        return ("Not run at full size yet: `python benchmarks/recipe.py smollm2-layers` (about 4.5 hours on 2 CPU "
                "cores after smollm2-draft, in its run directory) writes `benchmarks/results/recipe_smollm2_layers.*`, "
                "and this block is generated from it (`python scripts/readme_results.py`).")
    from seqkd.pipeline.recipe import load_recipe

    rep, run, env = result["report"], result["run"], result["environment"]
    recipe = load_recipe("smollm2-layers")
    rows = rep["drafts"]["speculate"]["speculate-layers-val"]
    base = next(r for r in rows if r["label"] == baseline)["speedup_spread"]["per_pass"]
    table = []
    for r in rows:
        ratios = sorted(_ratio_per_pass(r["speedup_spread"]["per_pass"], base))
        sp = r["speedup_spread"]
        table.append([r["label"], layers_of(recipe, r["label"]), f"{r['params']['draft'] / 1e6:.1f}M",
                      " / ".join(f"{a:.2f}" for a in r["per_position_acceptance"]), f"{r['block_efficiency']:.2f}",
                      f"{r['cost_ratio']:.3f}", f"{r['verification_cost']:.2f}",
                      f"{r['speedup']:.2f} ({sp['min']:.2f}–{sp['max']:.2f})×",
                      f"{ratios[len(ratios) // 2]:.3f} ({ratios[0]:.3f}–{ratios[-1]:.3f})×"])
    best = max(rows, key=lambda r: r["speedup"])
    others = [r for r in rows if r is not best]
    ahead = all(a > b for o in others
                for a, b in zip(best["speedup_spread"]["per_pass"], o["speedup_spread"]["per_pass"]))
    r0 = rows[0]
    lines = [f"Committed report (`benchmarks/results/recipe_smollm2_layers.md`): commit `{run['commit']}`, "
             f"{env['cpu']['model']}, {env['cpu']['usable_cores']} cores, no GPU; {r0['prompts']} validation prompts, "
             f"greedy, gamma {r0['gamma']}, every draft pruned to the same tokens and compiled, on one target-only "
             f"baseline; {len(base)} interleaved passes, medians with min–max.", "",
             *_table(["draft", "target layers", "parameters", "acceptance per position", "tokens per call", "c", "v",
                      "speedup", f"over {baseline}, per pass"], table), "",
             f"Fastest: {best['label']} ({layers_of(recipe, best['label'])}), "
             + ("ahead of every other choice in every pass." if ahead else
                "but not ahead of every other choice in every pass: the ranges overlap.")]
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
    rc = rc or update_block(ROOT / "README.md", SMOL_BEGIN, SMOL_END, render_smollm2(smol), check=check, how=how)
    layers = json.loads(LAYERS.read_text(encoding="utf-8")) if LAYERS.exists() else None
    return rc or update_block(ROOT / "README.md", LAYERS_BEGIN, LAYERS_END, render_smollm2_layers(layers),
                              check=check, how=how)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
