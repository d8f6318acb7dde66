"""The same target and draft in vLLM: draft-model speculative decoding (``speculative_config``) against the target
alone, one prompt at a time (latency, as the other engines), with vLLM's own acceptance counters
(``LLM.get_metrics()``; the engine runs with ``disable_log_stats=False``). Decoder-only models only; the caller
needs a ``__main__`` guard (vLLM starts worker processes)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from seqkd.speculative.metrics import spread

# vLLM's counters (vllm/v1/spec_decode/metrics.py): drafts = target verification steps, draft tokens proposed,
# accepted tokens, and accepted tokens per draft position.
_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
             "vllm:spec_decode_num_accepted_tokens")
_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos"


def spec_counters(llm) -> dict[str, Any]:
    """vLLM's speculative-decoding counters now: {name: int, per_pos: [int]}."""
    found: dict[str, Any] = {name: 0 for name in _COUNTERS}
    found["per_pos"] = []
    for m in llm.get_metrics():
        if m.name in _COUNTERS:
            found[m.name] += m.value
        elif m.name == _PER_POS:
            vals = list(m.values)
            prev = found["per_pos"] + [0] * (len(vals) - len(found["per_pos"]))
            found["per_pos"] = [a + b for a, b in zip(prev, vals)]
    return found


def _timed_run(engine, prompts: list[list[int]], cfg, warmup: int,
               passes: int = 1) -> tuple[list[list[int]], int, list[float], dict]:
    """Warm up on the first ``warmup`` prompts, then decode the prompts ``cfg.batch_size`` per ``generate`` call (1:
    one at a time), ``passes`` times; returns the first pass's outputs, its token count, the seconds of each pass,
    and vLLM's counters summed over the timed passes only (the warm-up's drafts are not counted). Seeds repeat each
    pass (prompt i: seed + i), so every pass decodes the same tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    eos = engine.codec.eos_id

    def params(i: int):
        return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                              stop_token_ids=[eos], seed=cfg.seed + i if cfg.temperature > 0 else None,
                              detokenize=False)

    for p in prompts[:warmup]:
        engine.llm.generate([TokensPrompt(prompt_token_ids=list(p))], params(0), use_tqdm=False)
    before = spec_counters(engine.llm)
    outs, tokens, seconds = [], 0, []
    for k in range(passes):
        secs = 0.0
        size = cfg.batch_size
        for start in range(0, len(prompts), size):
            chunk = range(start, min(start + size, len(prompts)))
            t0 = time.perf_counter()
            out = engine.llm.generate([TokensPrompt(prompt_token_ids=list(prompts[i])) for i in chunk],
                                      [params(i) for i in chunk], use_tqdm=False)
            secs += time.perf_counter() - t0
            if k == 0:
                for o in out:
                    ids = list(o.outputs[0].token_ids)
                    outs.append(ids)
                    tokens += len(ids)
        seconds.append(secs)
    after = spec_counters(engine.llm)
    counters = {k: (after[k] - before[k]) if k != "per_pos" else
                [a - b for a, b in zip(after[k], before[k] + [0] * len(after[k]))] for k in after}
    return outs, tokens, seconds, counters


def vllm_speculate(cfg, texts: list[str]) -> dict[str, Any]:
    """Decode ``texts`` with vLLM speculatively (draft ``cfg.draft``, ``cfg.gamma`` tokens) and target-only."""
    from seqkd.teacher.engines.vllm import VLLMEngine

    spec_cfg = {"method": "draft_model", "model": cfg.draft, "num_speculative_tokens": cfg.gamma,
                # a sampled draft with its probabilities in the ratio test (vLLM's default drafts greedily)
                "draft_sample_method": "probabilistic" if cfg.temperature > 0 else "greedy"}
    runs: dict[str, Any] = {}
    passes = cfg.passes
    for name, extra in (("speculative", {"speculative_config": spec_cfg}), ("target_only", {})):
        engine = VLLMEngine(cfg.target, dtype=cfg.dtype, enforce_eager=True, prompt_format=cfg.prompt_format,
                            engine_args=extra)
        prompts = engine.encode(texts)
        outs, tokens, seconds, counters = _timed_run(engine, prompts, cfg, cfg.warmup, passes)
        runs[name] = {"outputs": outs, "tokens": tokens, "rates": [tokens / s for s in seconds], "counters": counters}
        engine.close()
    c = runs["speculative"]["counters"]
    drafts, drafted, accepted = (c[k] for k in _COUNTERS)
    spec_rates, base_rates = runs["speculative"]["rates"], runs["target_only"]["rates"]
    spec_rate, base_rate = statistics.median(spec_rates), statistics.median(base_rates)
    # the two engines cannot share the process, so their passes are not interleaved: the ratio's range pairs every
    # speculative pass with every target-only pass
    ratios = [s / b for s in spec_rates for b in base_rates]
    same = sum(a == b for a, b in zip(runs["speculative"]["outputs"], runs["target_only"]["outputs"]))
    emitted = runs["speculative"]["tokens"] * passes  # every pass emits the same tokens (same seeds)
    return {
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        # tokens emitted per verification step, counting only tokens that reach the output (as seqkd's tau): each
        # prompt's first token comes from its prefill step, every other one from a verification step
        "block_efficiency": (emitted - len(texts) * passes) / drafts if drafts else 0.0,
        # vLLM's own mean acceptance length, 1 + accepted / drafts: it also counts the bonus token of a step whose
        # output had already ended (eos, length limit), so it runs above the tokens actually emitted
        "mean_acceptance_length": 1 + accepted / drafts if drafts else 0.0,
        "per_position_acceptance": [a / drafts for a in c["per_pos"]] if drafts else [],
        "target_calls": drafts, "drafted": drafted, "accepted": accepted,
        "generated": runs["speculative"]["tokens"], "passes": passes,
        "target_only_tokens_per_s": base_rate, "speculative_tokens_per_s": spec_rate,
        "tokens_per_s": {"vllm_target_only": spread(base_rates), "vllm_speculative": spread(spec_rates)},
        "speedup": spec_rate / base_rate if base_rate else 0.0,
        "speedup_spread": {"median": spec_rate / base_rate if base_rate else 0.0, "min": min(ratios),
                           "max": max(ratios)},
        "identical_outputs": same / len(texts),
        "counted_from": "vLLM get_metrics() spec_decode counters",
    }

