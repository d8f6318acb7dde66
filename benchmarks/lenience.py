"""Lossy speculative decoding (DistillSpec's lenience): what accepting more costs in quality.

Target = the Multi30k llama-teacher, draft = its DistillSpec-TVD-aligned draft (made by benchmarks/speculative.py),
sampling at temperature 1, gamma 4, on ``--prompts`` test_2016 sources. For each lenience l (1 = exact; the rule
accepts with min(1, p / (l q))): acceptance, tokens per target call, speedup over target-only sampling (interleaved
prompt by prompt) and the BLEU / chrF of the sampled translations against the references. Exact speculative
sampling has the target's distribution, so its BLEU is the target's sampling BLEU; the drop at l < 1 is the cost.
Each setting uses the same seeds; ``--seeds`` repeats the whole set to show the sampling noise of BLEU.

    python benchmarks/lenience.py            # writes benchmarks/results/lenience.{json,md}
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--gamma", type=int, default=4)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    exs, _ = read_parallel(*parallel_files("multi30k:de-en", "test_2016_flickr"), strict=True, max_chars=None)
    exs = exs[: a.prompts]
    target, draft = load_model(TARGET), load_model(DRAFT)
    src_tok, tgt_tok = load_tokenizers(TARGET)
    codec = TextCodec("causal", src_tok, tgt_tok)
    prompts = [torch.tensor([ids]) for ids in codec.encode([e.source for e in exs])]
    refs = [e.target for e in exs]
    rows = []
    for lenience in a.lenience:
        for seed in range(a.seeds):
            base, spec = SpecStats(), SpecStats()
            hyps = []
            for i, ids in enumerate(prompts):
                s = seed * 100_000 + i
                base += autoregressive_generate(target, ids, temperature=1.0, max_new_tokens=64, seed=s).stats
                out = speculative_generate(target, draft, ids, gamma=a.gamma, temperature=1.0, max_new_tokens=64,
                                           seed=s, lenience=lenience)
                spec += out.stats
                hyps.append(codec.decode(out.new_tokens))
            sc = score(hyps, refs)
            rows.append({"lenience": lenience, "seed": seed, "acceptance_rate": spec.acceptance_rate,
                         "per_token_acceptance": spec.verified_acceptance_rate,
                         "block_efficiency": spec.block_efficiency,
                         "speedup": spec.tokens_per_s / base.tokens_per_s, "bleu": sc.bleu, "chrf": sc.chrf,
                         "bleu_signature": sc.bleu_signature})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": common.machine_line(), "torch": torch.__version__,
            "prompts": len(prompts), "gamma": a.gamma, "minutes": (time.perf_counter() - t0) / 60,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    lines = ["# Lossy speculative decoding: lenience vs quality", "",
             f"{meta['machine']}; target llama-teacher, draft DistillSpec-TVD; {len(prompts)} test_2016 prompts, "
             f"temperature 1, gamma {a.gamma}; run took {meta['minutes']:.1f} min ({meta['date']}).", "",
             "| lenience | seed | acceptance | per-token | tau | speedup | BLEU | chrF |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lenience']:g} | {r['seed']} | {r['acceptance_rate']:.3f} | "
                     f"{r['per_token_acceptance']:.3f} "
                     f"| {r['block_efficiency']:.2f} | {r['speedup']:.2f}x | {r['bleu']:.2f} | {r['chrf']:.2f} |")
    lines += ["", f"BLEU signature: `{rows[0]['bleu_signature']}`" if rows else ""]
    common.write_results("lenience", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
