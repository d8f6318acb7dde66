"""Lossy speculative decoding (DistillSpec's lenience): what accepting more costs in quality, and what it buys.

Target = the Multi30k llama-teacher, draft = its DistillSpec-TVD-aligned draft (made by benchmarks/speculative.py),
sampling at temperature 1, gamma 4, on ``--prompts`` test_2016 sources. For each lenience l (1 = exact; the rule
accepts with min(1, p / (l q))): acceptance, tokens per target call, tokens/s and speedup over target-only sampling,
and the BLEU / chrF of the sampled translations against the references. Exact speculative sampling has the target's
distribution, so its BLEU is the target's sampling BLEU; the drop at l < 1 is the cost.

Timing: ``--passes`` passes over the prompts after a warm-up; in every pass, prompt by prompt, target-only sampling
(the one baseline) and speculative sampling at every lenience run back to back, so all of them meet the same noise;
speedups are per pass (each lenience's tokens/s over the baseline's), reported as median (min-max). Pass k samples
with seed set ``k mod --seeds``: outputs depend on the seed only, so BLEU is reported per seed set (its spread is
the sampling noise of BLEU).

    python benchmarks/lenience.py            # writes benchmarks/results/lenience.{json,md}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "data" / "models" / "multi30k-de-en-llama-teacher"
DRAFT = ROOT / "data" / "models" / "spec" / "multi30k-de-en-llama-draft-distillspec-tvd"


def main(argv=None) -> None:
    import torch

    from seqkd.data.files import read_parallel
    from seqkd.data.registry import parallel_files
    from seqkd.evaluate import score
    from seqkd.models import load_model
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative import SpecStats, autoregressive_generate, speculative_generate
    from seqkd.teacher.engines import TextCodec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=150)
    p.add_argument("--lenience", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    p.add_argument("--seeds", type=int, default=2, help="seed sets (BLEU per seed set)")
    p.add_argument("--passes", type=int, default=3, help="timed passes (pass k uses seed set k mod --seeds)")
    p.add_argument("--warmup", type=int, default=2, help="prompts decoded untimed before the passes")
    p.add_argument("--gamma", type=int, default=4)
    a = p.parse_args(argv)
    if a.passes < a.seeds:
        p.error("--passes must be >= --seeds (each seed set is one pass)")
    t0 = time.perf_counter()
    exs, _ = read_parallel(*parallel_files("multi30k:de-en", "test_2016_flickr"), strict=True, max_chars=None)
    exs = exs[: a.prompts]
    target, draft = load_model(TARGET), load_model(DRAFT)
    src_tok, tgt_tok = load_tokenizers(TARGET)
    codec = TextCodec("causal", src_tok, tgt_tok)
    prompts = [torch.tensor([ids]) for ids in codec.encode([e.source for e in exs])]
    refs = [e.target for e in exs]

    def spec(ids, seed, lenience):
        return speculative_generate(target, draft, ids, gamma=a.gamma, temperature=1.0, max_new_tokens=64,
                                    seed=seed, lenience=lenience)

    for ids in prompts[: a.warmup]:  # untimed: first-call allocations and caches
        autoregressive_generate(target, ids, temperature=1.0, max_new_tokens=64, seed=0)
        for le in a.lenience:
            spec(ids, 0, le)
    passes = []  # per pass: {"seed", "base": SpecStats, lenience: (SpecStats, hyps)}
    for k in range(a.passes):
        seed_set = k % a.seeds
        base, runs = SpecStats(), {le: (SpecStats(), []) for le in a.lenience}
        for i, ids in enumerate(prompts):
            s = seed_set * 100_000 + i
            base += autoregressive_generate(target, ids, temperature=1.0, max_new_tokens=64, seed=s).stats
            for le in a.lenience:
                out = spec(ids, s, le)
                stats, hyps = runs[le]
                stats += out.stats  # in place: SpecStats.__iadd__ accumulates into the pass's object
                hyps.append(codec.decode(out.new_tokens))
        passes.append({"seed": seed_set, "base": base, "runs": runs})
        print(f"pass {k}: target-only {base.tokens_per_s:.1f} tok/s; "
              + ", ".join(f"l={le:g} {st.tokens_per_s / base.tokens_per_s:.2f}x" for le, (st, _) in runs.items()),
              flush=True)

    rows = []
    for le in a.lenience:
        quality = {}
        for ps in passes:  # outputs depend on the seed set only: score each seed set once
            if ps["seed"] not in quality:
                st, hyps = ps["runs"][le]
                sc = score(hyps, refs)
                quality[ps["seed"]] = {"seed": ps["seed"], "bleu": sc.bleu, "chrf": sc.chrf,
                                       "acceptance_rate": st.acceptance_rate,
                                       "per_token_acceptance": st.verified_acceptance_rate,
                                       "block_efficiency": st.block_efficiency, "bleu_signature": sc.bleu_signature}
        rows.append({
            "lenience": le,
            "speedup": common.summary(ps["runs"][le][0].tokens_per_s / ps["base"].tokens_per_s for ps in passes),
            "tokens_per_s": common.summary(ps["runs"][le][0].tokens_per_s for ps in passes),
            "target_only_tokens_per_s": common.summary(ps["base"].tokens_per_s for ps in passes),
            "per_seed": list(quality.values()),
        })
    meta = {"machine": common.machine_line(), "torch": torch.__version__, "prompts": len(prompts),
            "gamma": a.gamma, "passes": a.passes, "seeds": a.seeds, "warmup": a.warmup,
            "minutes": (time.perf_counter() - t0) / 60, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write(rows, meta)


def write(rows: list[dict], meta: dict) -> None:
    f = common.fmt_summary
    lines = ["# Lossy speculative decoding: lenience vs quality", "",
             f"{meta['machine']}; target llama-teacher, draft DistillSpec-TVD; {meta['prompts']} test_2016 prompts, "
             f"temperature 1, gamma {meta['gamma']}; {meta['passes']} timed passes after {meta['warmup']} warm-up "
             f"prompts, target-only and every lenience interleaved prompt by prompt; run took "
             f"{meta['minutes']:.1f} min ({meta['date']}).", "",
             "| lenience | speedup, median (min–max) | spec tok/s | target-only tok/s | seed | acceptance | per-token "
             "| tau | BLEU | chrF |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for j, q in enumerate(r["per_seed"]):
            timing = (f"**{f(r['speedup'])}x** | {f(r['tokens_per_s'], '.1f')} | "
                      f"{f(r['target_only_tokens_per_s'], '.1f')}") if j == 0 else " | | "
            lines.append(f"| {r['lenience']:g} | {timing} | {q['seed']} | {q['acceptance_rate']:.3f} | "
                         f"{q['per_token_acceptance']:.3f} | {q['block_efficiency']:.2f} | {q['bleu']:.2f} | "
                         f"{q['chrf']:.2f} |")
    sig = rows[0]["per_seed"][0]["bleu_signature"] if rows else ""
    lines += ["", f"BLEU signature: `{sig}`"]
    common.write_results("lenience", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
