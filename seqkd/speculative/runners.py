"""``seqkd speculate``: a target and its draft on a prompt set, with acceptance, block efficiency, cost ratio,
latency and speedup over target-only decoding, in seqkd's exact decoder, HF assisted generation or vLLM.

The dataclass is the CLI (``seqkd speculate --help``); :func:`speculate` is the Python entry point.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch

from seqkd.config import SpeculateConfig
from seqkd.errors import SeqkdError
from seqkd.io import atomic_write_json
from seqkd.speculative.metrics import spread

log = logging.getLogger(__name__)




def check_pair(target_dir: str, draft_dir: str):
    """Load both tokenizers and fail clearly unless their vocabularies are the same token -> id map."""
    from seqkd.models.tokenizer import load_tokenizers, same_vocab

    t_src, t_tgt = load_tokenizers(target_dir)
    d_src, d_tgt = load_tokenizers(draft_dir)
    if not (same_vocab(t_tgt, d_tgt) and same_vocab(t_src, d_src)):
        raise SeqkdError(f"target {target_dir} and draft {draft_dir} have different tokenizers "
                         f"({len(t_tgt)} vs {len(d_tgt)} tokens, or the same size with other ids): a draft must share "
                         "the target's vocabulary")
    return t_src, t_tgt


def read_prompts(cfg) -> list[str]:
    """The prompt texts of ``cfg.input`` or ``cfg.data``/``cfg.split`` (first ``cfg.limit``); never empty."""
    from seqkd.data.files import read_lines
    from seqkd.data.registry import load_parallel

    if not (cfg.input or cfg.data):
        raise SeqkdError("give either --input FILE or --data NAME")
    if cfg.data:
        texts = load_parallel(cfg.data, cfg.split)[0]
    else:
        texts, _ = read_lines(cfg.input, max_chars=None)  # empty lines are skipped
    return _usable(texts, cfg, f"{cfg.input or cfg.data} has no non-empty lines")


def _usable(texts: list[str], cfg, where: str) -> list[str]:
    texts = [t for t in texts if t.strip()][: cfg.limit]
    if not texts:
        raise SeqkdError(f"no prompts: {where}")
    return texts


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load(path: str, cfg: SpeculateConfig):
    from seqkd.models import load_model

    return load_model(path, dtype=_DTYPES[cfg.dtype], device=cfg.device)


def speculate(cfg: SpeculateConfig, progress: bool = True, *, target=None, draft=None, tokenizers=None,
              prompts: list[str] | None = None) -> dict[str, Any]:
    """Decode the prompts target-only and speculatively; returns the report (also written to ``cfg.out``).

    A caller that already holds them passes the loaded ``target`` / ``draft`` models, their ``tokenizers`` ``(source,
    target)`` and the ``prompts`` (texts): then nothing is loaded or read, and ``cfg.target`` / ``cfg.draft`` /
    ``cfg.input`` only name them in the report (the seqkd and hf engines; vLLM loads its own models from paths)."""
    from seqkd.models import count_parameters
    from seqkd.models.draft_vocab import is_pruned_draft
    from seqkd.teacher.engines import TextCodec

    holds = target is not None or draft is not None
    if holds and (target is None or draft is None or tokenizers is None):
        raise SeqkdError("speculate(): pass target, draft and tokenizers together")
    if holds and cfg.engine == "vllm":
        raise SeqkdError("the vllm engine loads its models from directories: pass paths, not loaded models")
    pruned = getattr(draft, "seqkd_vocab_map", None) is not None if holds else is_pruned_draft(cfg.draft)
    if pruned and cfg.engine != "seqkd":
        raise SeqkdError(f"the draft has a pruned output layer (a reduced vocabulary): only --engine seqkd decodes "
                         f"with it; {'HF assisted generation' if cfg.engine == 'hf' else 'vLLM'} needs a draft that "
                         "scores the whole vocabulary")
    texts = _usable(list(prompts), cfg, "the prompt list is empty") if prompts is not None else read_prompts(cfg)
    src_tok, tgt_tok = tokenizers if holds else check_pair(cfg.target, cfg.draft)
    if cfg.engine == "vllm":
        from seqkd.speculative.vllm_runner import vllm_speculate

        report = vllm_speculate(cfg, texts)
    else:
        if not holds:
            target, draft = _load(cfg.target, cfg), _load(cfg.draft, cfg)
        # frozen parameters count too: a target held by a training job has requires_grad off
        t_params, d_params = (count_parameters(m, trainable_only=False) for m in (target, draft))
        if cfg.draft_quantize != "none":  # a copy: a caller's draft stays as it is
            from seqkd.models.quantize import maybe_quantize

            draft = maybe_quantize(draft, cfg.draft_quantize)
        if cfg.compile:  # wrappers: a caller's models stay as they are
            from seqkd.models.compiled import compile_for_decoding

            target, draft = compile_for_decoding(target), compile_for_decoding(draft)
        family = "seq2seq" if target.config.is_encoder_decoder else "causal"
        if bool(draft.config.is_encoder_decoder) != (family == "seq2seq"):
            raise SeqkdError("target and draft must be of the same family (both decoder-only or both encoder-decoder)")
        codec = TextCodec(family, src_tok, tgt_tok, prompt_format=cfg.prompt_format)
        prompt_ids = [torch.tensor([ids]) for ids in codec.encode(texts)]
        was_training = (target.training, draft.training)
        target.eval(), draft.eval()
        run = _run_hf if cfg.engine == "hf" else _run_seqkd if cfg.batch_size == 1 else _run_seqkd_batched
        report = run(cfg, target, draft, prompt_ids, progress)
        target.train(was_training[0]), draft.train(was_training[1])
        report["params"] = {"target": t_params, "draft": d_params}
        if d_params > t_params:
            log.warning("the draft (%d parameters) is larger than the target (%d): measured cost ratio c = %s",
                        d_params, t_params, report.get("cost_ratio"))
    report.update(engine=cfg.engine, target=cfg.target, draft=cfg.draft, prompts=len(texts), gamma=cfg.gamma,
                  temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                  adaptive_gamma=cfg.adaptive_gamma, lenience=cfg.lenience, batch_size=cfg.batch_size,
                  draft_quantize=cfg.draft_quantize, compile=cfg.compile)
    if cfg.out:
        atomic_write_json(cfg.out, report)
    return report


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="prompt")


def _run_seqkd(cfg: SpeculateConfig, target, draft, prompts: list[torch.Tensor], progress: bool) -> dict[str, Any]:
    """Target-only and speculative decoding of each prompt, interleaved (machine noise hits both alike), over
    ``cfg.passes`` passes; with ``cfg.compare_hf`` also HF generate and HF assisted generation on each prompt, all
    four compared on absolute tokens/s against HF generate."""
    from seqkd.speculative import SpecStats, autoregressive_generate, speculative_generate

    kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    hf_kw = _hf_settings(cfg, draft) if cfg.compare_hf else None
    for ids in prompts[: cfg.warmup]:
        autoregressive_generate(target, ids, **kw, seed=cfg.seed)
        speculative_generate(target, draft, ids, gamma=cfg.gamma, **kw, seed=cfg.seed)
        if hf_kw is not None:
            _hf_generate(target, ids, hf_kw, cfg.seed)
            _hf_generate(target, ids, hf_kw, cfg.seed, draft)
    base, spec = SpecStats(), SpecStats()
    same = 0
    streams = ("seqkd_target_only", "seqkd_speculative") + (("hf_generate", "hf_assisted") if hf_kw else ())
    rates: dict[str, list[float]] = {k: [] for k in streams}
    with _bar(len(prompts) * cfg.passes, progress, "speculate") as bar:
        for p in range(cfg.passes):
            tokens = {k: 0 for k in streams}
            seconds = {k: 0.0 for k in streams}
            for i, ids in enumerate(prompts):
                b = autoregressive_generate(target, ids, **kw, seed=cfg.seed + i)
                s = speculative_generate(target, draft, ids, gamma=cfg.gamma, adaptive_gamma=cfg.adaptive_gamma,
                                         lenience=cfg.lenience, **kw, seed=cfg.seed + i)
                for k, st in (("seqkd_target_only", b.stats), ("seqkd_speculative", s.stats)):
                    tokens[k] += st.generated
                    seconds[k] += st.wall_seconds
                if hf_kw is not None:
                    for k, d in (("hf_generate", None), ("hf_assisted", draft)):
                        n, dt = _hf_generate(target, ids, hf_kw, cfg.seed + i, d)
                        tokens[k] += n
                        seconds[k] += dt
                if p == 0:  # the counts are the same every pass (same seeds); the times differ
                    base += b.stats
                    spec += s.stats
                    same += b.new_tokens == s.new_tokens
                bar.update()
                bar.set_postfix(accept=f"{spec.acceptance_rate:.2f}", tau=f"{spec.block_efficiency:.2f}")
            for k in streams:
                rates[k].append(tokens[k] / seconds[k] if seconds[k] else 0.0)
    # the bound for the gamma asked for (blocks near the end draft fewer); adaptive gamma: the largest one used
    out = spec.summary(baseline=base, gamma=None if cfg.adaptive_gamma else cfg.gamma)
    speedups = [s / b if b else 0.0 for s, b in zip(rates["seqkd_speculative"], rates["seqkd_target_only"])]
    out.update(target_only_tokens_per_s=statistics.median(rates["seqkd_target_only"]),
               speculative_tokens_per_s=statistics.median(rates["seqkd_speculative"]),
               speedup=statistics.median(speedups), speedup_spread=spread(speedups), passes=cfg.passes,
               tokens_per_s={k: spread(v) for k, v in rates.items()},
               target_step_seconds=base.target_step_seconds, identical_outputs=same / len(prompts))
    if hf_kw is not None:
        common = rates["hf_generate"]
        out["comparison"] = {
            "baseline": "hf_generate",
            "tokens_per_s": {k: spread(v) for k, v in rates.items()},
            "speedup_over_baseline": {k: spread([x / c if c else 0.0 for x, c in zip(rates[k], common)])
                                      for k in ("seqkd_target_only", "seqkd_speculative", "hf_assisted")},
        }
    return out


def _run_seqkd_batched(cfg: SpeculateConfig, target, draft, prompts: list[torch.Tensor],
                       progress: bool) -> dict[str, Any]:
    """Batches of ``cfg.batch_size`` prompts, target-only and speculative interleaved batch by batch, over
    ``cfg.passes`` passes. Acceptance counts are per row (as at batch size 1); ``c``, ``v`` and the rates are per
    batched call (one call serves every row of the batch)."""
    from seqkd.models import family
    from seqkd.speculative import SpecStats
    from seqkd.speculative.batch import autoregressive_generate_batch, speculative_generate_batch

    if family(target) != "causal":
        raise SeqkdError("--batch-size > 1 (batched speculation) is implemented for decoder-only models")
    kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    batches = [prompts[i: i + cfg.batch_size] for i in range(0, len(prompts), cfg.batch_size)]
    warm = prompts[: cfg.warmup]  # one untimed batch
    if warm:
        autoregressive_generate_batch(target, warm, **kw, seed=cfg.seed)
        speculative_generate_batch(target, draft, warm, gamma=cfg.gamma, **kw, seed=cfg.seed)
    base, rows, times = SpecStats(), SpecStats(), SpecStats()
    same = 0
    rates: dict[str, list[float]] = {"seqkd_target_only": [], "seqkd_speculative": []}
    with _bar(len(batches) * cfg.passes, progress, "speculate (batched)") as bar:
        for p in range(cfg.passes):
            tokens, seconds = [0, 0], [0.0, 0.0]
            for j, chunk in enumerate(batches):
                b = autoregressive_generate_batch(target, chunk, **kw, seed=cfg.seed + j)
                s = speculative_generate_batch(target, draft, chunk, gamma=cfg.gamma, lenience=cfg.lenience, **kw,
                                               seed=cfg.seed + j)
                for k, st in enumerate((b.stats, s.stats)):
                    tokens[k] += st.generated
                    seconds[k] += st.wall_seconds
                if p == 0:
                    base += b.stats
                    times += s.stats
                    for r in s.rows:
                        rows += r
                    same += sum(x == y for x, y in zip(b.new_tokens, s.new_tokens))
                bar.update()
                bar.set_postfix(accept=f"{rows.acceptance_rate:.2f}", tau=f"{rows.block_efficiency:.2f}")
            rates["seqkd_target_only"].append(tokens[0] / seconds[0] if seconds[0] else 0.0)
            rates["seqkd_speculative"].append(tokens[1] / seconds[1] if seconds[1] else 0.0)
    out = rows.summary(baseline=base, gamma=cfg.gamma, times=times)
    speedups = [s / b if b else 0.0 for s, b in zip(rates["seqkd_speculative"], rates["seqkd_target_only"])]
    out.update(target_only_tokens_per_s=statistics.median(rates["seqkd_target_only"]),
               speculative_tokens_per_s=statistics.median(rates["seqkd_speculative"]),
               speedup=statistics.median(speedups), speedup_spread=spread(speedups), passes=cfg.passes,
               tokens_per_s={k: spread(v) for k, v in rates.items()}, batch_size=cfg.batch_size,
               target_step_seconds=base.target_step_seconds, identical_outputs=same / len(prompts),
               batched_calls={"target_only": base.target_calls, "verification": times.target_calls,
                              "draft": times.draft_steps})
    return out


def _hf_settings(cfg: SpeculateConfig, draft) -> dict[str, Any]:
    """``generate`` keywords for HF assisted generation with the same gamma / sampling as the other engines."""
    sample = cfg.temperature > 0
    gen_kw: dict[str, Any] = dict(do_sample=sample, max_new_tokens=cfg.max_new_tokens, num_beams=1)
    if sample:
        gen_kw.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    draft.generation_config.num_assistant_tokens = cfg.gamma
    draft.generation_config.num_assistant_tokens_schedule = "heuristic" if cfg.adaptive_gamma else "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0  # draft gamma tokens, as the other engines
    return gen_kw


def _hf_generate(target, ids: torch.Tensor, gen_kw: dict[str, Any], seed: int, draft=None) -> tuple[int, float]:
    """One prompt with HF ``generate`` (``draft``: assisted generation); returns (new tokens, seconds)."""
    ids = ids.to(target.device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kw,
                          **({"assistant_model": draft} if draft is not None else {}))
    dt = time.perf_counter() - t0
    return out.shape[1] - (1 if target.config.is_encoder_decoder else ids.shape[1]), dt


class _CallCounter:
    """Counts a model's forward calls (HF assisted generation exposes no acceptance counters)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


def _run_hf(cfg: SpeculateConfig, target, draft, prompts: list[torch.Tensor], progress: bool) -> dict[str, Any]:
    """transformers assisted generation (``assistant_model=draft``) vs plain ``generate``, interleaved. Acceptance
    is counted from forward calls: each target call emits its accepted run plus one token."""
    gen_kw = _hf_settings(cfg, draft)

    def run(ids, assisted: bool, seed: int) -> tuple[int, float]:
        return _hf_generate(target, ids, gen_kw, seed, draft if assisted else None)

    for ids in prompts[: cfg.warmup]:
        run(ids, False, cfg.seed)
        run(ids, True, cfg.seed)
    base_rates, spec_rates, speedups = [], [], []
    tc, dc = _CallCounter(target), _CallCounter(draft)
    drafted = target_calls = spec_tok = 0  # counted on the first pass (every pass decodes the same tokens)
    try:
        with _bar(len(prompts) * cfg.passes, progress, "speculate (hf)") as bar:
            for p in range(cfg.passes):
                base_tok = pass_tok = 0
                base_s = spec_s = 0.0
                for i, ids in enumerate(prompts):
                    n, dt = run(ids, False, cfg.seed + i)
                    base_tok, base_s = base_tok + n, base_s + dt
                    tc.calls = dc.calls = 0
                    n, dt = run(ids, True, cfg.seed + i)
                    pass_tok, spec_s = pass_tok + n, spec_s + dt
                    if p == 0:
                        target_calls += tc.calls
                        drafted += dc.calls
                    bar.update()
                spec_tok = spec_tok or pass_tok
                base_rates.append(base_tok / base_s if base_s else 0.0)
                spec_rates.append(pass_tok / spec_s if spec_s else 0.0)
                speedups.append(spec_rates[-1] / base_rates[-1] if base_rates[-1] else 0.0)
    finally:
        tc.remove()
        dc.remove()
    accepted = max(spec_tok - target_calls, 0)
    return {
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "block_efficiency": spec_tok / target_calls if target_calls else 0.0,
        "target_calls": target_calls, "drafted": drafted, "accepted": accepted, "generated": spec_tok,
        "target_only_tokens_per_s": statistics.median(base_rates),
        "speculative_tokens_per_s": statistics.median(spec_rates),
        "speedup": statistics.median(speedups), "speedup_spread": spread(speedups), "passes": cfg.passes,
        "tokens_per_s": {"hf_generate": spread(base_rates), "hf_assisted": spread(spec_rates)},
        "counted_from": "forward calls (accepted = generated - target calls; drafted = draft calls)",
    }
