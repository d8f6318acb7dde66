"""``seqkd speculate``: a target and its draft on a prompt set, with acceptance, block efficiency, cost ratio,
latency and speedup over target-only decoding, in seqkd's exact decoder, HF assisted generation or vLLM.

The dataclass is the CLI (``seqkd speculate --help``); :func:`speculate` is the Python entry point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from seqkd.config import SpeculateConfig, as_dict
from seqkd.errors import SeqkdError
from seqkd.io import atomic_write_json, fingerprint
from seqkd.speculative.metrics import SpecStats, spread

log = logging.getLogger(__name__)


class PassLog:
    """The finished timed passes of a run, rewritten (atomically) after each pass to ``report.passes.json`` beside the
    first config's ``out``, so that a killed run rerun with ``resume`` continues with the next pass: a sweep on a CPU
    times for hours, and a pass is minutes of it. Each runner stores what it needs to rebuild its state (the rates of
    the pass; the first pass also the acceptance counts, which every pass repeats). The file is used only if it was
    written for the same configs, prompt ids and model files (else the run starts over). It stays after the reports:
    a rerun with ``resume`` then times nothing and rebuilds the same reports (a recipe's sweep measured value by value,
    killed in a later value, redoes none of the finished ones). A resumed process warms up again before timing, so its
    passes are as comparable as one process's."""

    def __init__(self, cfgs: list[SpeculateConfig], prompt_ids: list[torch.Tensor], models: list[str]):
        out = cfgs[0].out
        self.path = Path(out).with_suffix(".passes.json") if out else None
        ignore = {"out", "resume"}
        payload = {"configs": [{k: v for k, v in as_dict(c).items() if k not in ignore} for c in cfgs],
                   "prompts": [ids.tolist() for ids in prompt_ids],
                   "models": {m: fingerprint(m) for m in dict.fromkeys(models) if os.path.exists(m)}}
        self.key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        self.done: list[dict[str, Any]] = []  # one record per finished pass, in order
        if cfgs[0].resume and self.path is not None and self.path.is_file():
            kept = json.loads(self.path.read_text(encoding="utf-8"))
            if kept.get("key") == self.key:
                self.done = kept["passes"]
                log.info("%s: %d finished pass(es) kept; timing the rest", self.path, len(self.done))
            else:
                log.info("%s was written for other settings, prompts or models: starting over", self.path)

    def record(self, rec: dict[str, Any]) -> None:
        """One more pass finished: keep it (a no-op without ``out``)."""
        self.done.append(rec)
        if self.path is not None:
            atomic_write_json(self.path, {"key": self.key, "passes": self.done})


def _compiled_frames() -> int:
    """Frames torch's dynamo has compiled (or tried to) in this process so far; 0 where it was never imported."""
    import sys

    utils = sys.modules.get("torch._dynamo.utils")
    return int(utils.counters["frames"]["total"]) if utils is not None else 0


class Retimer:
    """Calls a timed decode again while torch compiled anything during it. A compiled model meets shapes in a timed
    pass that no warm-up prompt reached (a prompt's own length, a block cut short at the length limit), and a
    compilation takes seconds to minutes on a CPU: timed, it made one config of one pass look about twice as slow
    (SmolLM2, 2 cores: a draft at 0.55x beside one as fast at 1.04x in the same pass). The call repeats with the same
    seed, so the tokens and counts are the same and only the time changes; ``counts[stream]`` says how many calls
    were timed again (at most ``tries`` calls in all per decode; the last one counts, compiled during or not)."""

    def __init__(self, tries: int = 3):
        self.tries = tries
        self.counts: dict[str, int] = {}

    def __call__(self, stream: str, call):
        for attempt in range(self.tries):
            before = _compiled_frames()
            out = call()
            if _compiled_frames() == before or attempt == self.tries - 1:
                return out
            self.counts[stream] = self.counts.get(stream, 0) + 1


def retimed_calls(done: list[dict[str, Any]], streams: list[str]) -> int | None:
    """Calls timed again over the finished passes ``done`` (their ``retimed`` records) in ``streams``; None where a
    pass was timed before runs recorded it (it may hold a compilation)."""
    if any("retimed" not in rec for rec in done):
        return None
    return sum(rec["retimed"].get(k, 0) for rec in done for k in streams)


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
    return speculate_sweep([cfg], progress, target=target, draft=draft, tokenizers=tokenizers, prompts=prompts)[0]


def speculate_sweep(cfgs: list[SpeculateConfig], progress: bool = True, *, target=None, draft=None,
                    tokenizers=None, prompts: list[str] | None = None) -> list[dict[str, Any]]:
    """:func:`speculate` for several gammas and/or drafts against one target-only baseline: ``cfgs`` differ only in
    ``gamma``, ``draft`` (and ``out``). The models load (and compile) once, and each pass decodes every prompt
    target-only once and then with each config, interleaved, so every speedup divides by the same target-only rates
    (seqkd's decoder and HF assisted generation; vLLM builds an engine per config and runs one after another): an
    aligned and an unaligned draft, or several gammas, are compared on one baseline. A caller that holds the models
    passes ``draft`` as one model (for every config) or a list of one per config. One report per config, in order."""
    from seqkd.models import count_parameters
    from seqkd.models.draft_vocab import is_pruned_draft
    from seqkd.teacher.engines import TextCodec

    if not cfgs:
        raise SeqkdError("speculate_sweep(): no configs")
    cfg = cfgs[0]
    others = [dataclasses.replace(c, gamma=cfg.gamma, draft=cfg.draft, out=cfg.out) for c in cfgs[1:]]
    if any(o != cfg for o in others):
        raise SeqkdError("speculate_sweep(): the configs may differ only in gamma, draft and out")
    if len(cfgs) > 1 and cfg.compare_hf:
        raise SeqkdError("--compare-hf measures one gamma and one draft: HF assisted generation would need a run per "
                         "config")
    holds = target is not None or draft is not None
    if holds and (target is None or draft is None or tokenizers is None):
        raise SeqkdError("speculate(): pass target, draft and tokenizers together")
    if holds and cfg.engine == "vllm":
        raise SeqkdError("the vllm engine loads its models from directories: pass paths, not loaded models")
    held = list(draft) if isinstance(draft, (list, tuple)) else [draft] * len(cfgs)
    if holds and len(held) != len(cfgs):
        raise SeqkdError(f"speculate_sweep(): {len(held)} drafts for {len(cfgs)} configs (pass one, or one per config)")
    for c, d in zip(cfgs, held):
        pruned = getattr(d, "seqkd_vocab_map", None) is not None if holds else is_pruned_draft(c.draft)
        if pruned and cfg.engine != "seqkd":
            raise SeqkdError(f"the draft {c.draft} has a pruned output layer (a reduced vocabulary): only --engine "
                             f"seqkd decodes with it; {'HF assisted generation' if cfg.engine == 'hf' else 'vLLM'} "
                             "needs a draft that scores the whole vocabulary")
    texts = _usable(list(prompts), cfg, "the prompt list is empty") if prompts is not None else read_prompts(cfg)
    if holds:
        src_tok, tgt_tok = tokenizers
    else:
        for path in dict.fromkeys(c.draft for c in cfgs):
            src_tok, tgt_tok = check_pair(cfg.target, path)
    params: list[dict[str, int]] | None = None
    if cfg.engine == "vllm":
        from seqkd.speculative.vllm_runner import vllm_speculate

        reports = [vllm_speculate(c, texts) for c in cfgs]
    else:
        if not holds:  # each draft loads once, whichever configs use it
            target, loaded = _load(cfg.target, cfg), {}
            for c in cfgs:
                if c.draft not in loaded:
                    loaded[c.draft] = _load(c.draft, cfg)
            held = [loaded[c.draft] for c in cfgs]
        # frozen parameters count too: a target held by a training job has requires_grad off
        params = [{"target": count_parameters(target, trainable_only=False),
                   "draft": count_parameters(d, trainable_only=False)} for d in held]
        used = {id(d): d for d in held}  # the distinct drafts (by object)
        if cfg.draft_quantize != "none":  # a copy: a caller's draft stays as it is
            from seqkd.models.quantize import maybe_quantize

            used = {k: maybe_quantize(d, cfg.draft_quantize) for k, d in used.items()}
        if cfg.onednn:  # shallow copies: a caller's models stay as they are
            from seqkd.models.onednn import prepack_linears

            target, used = prepack_linears(target), {k: prepack_linears(d) for k, d in used.items()}
        if cfg.compile:  # wrappers: a caller's models stay as they are
            from seqkd.models.compiled import compile_for_decoding

            # an int8 draft stays eager: dynamo cannot trace torch.ao's dynamic int8 products (their output shapes
            # are unknown to its fake tensors), and eager they already cost a third of the compiled fp32 draft's step
            # (SmolLM2's first 4 layers, pruned output layer, 2-core EPYC: 3.2 ms against 5.3-6.5 ms)
            target = compile_for_decoding(target)
            used = {k: d if cfg.draft_quantize != "none" else compile_for_decoding(d) for k, d in used.items()}
        variants = [(used[id(d)], c.gamma) for d, c in zip(held, cfgs)]  # (the draft as decoded, gamma) per config
        family = "seq2seq" if target.config.is_encoder_decoder else "causal"
        if any(bool(d.config.is_encoder_decoder) != (family == "seq2seq") for d in used.values()):
            raise SeqkdError("target and draft must be of the same family (both decoder-only or both encoder-decoder)")
        codec = TextCodec(family, src_tok, tgt_tok, prompt_format=cfg.prompt_format)
        prompt_ids = [torch.tensor([ids]) for ids in codec.encode(texts)]
        was_training = [(m, m.training) for m in (target, *used.values())]
        for m, _ in was_training:
            m.eval()
        passes = PassLog(cfgs, prompt_ids, [] if holds else [cfg.target, *(c.draft for c in cfgs)])
        if cfg.engine == "hf":
            reports = _run_hf(cfg, variants, target, prompt_ids, progress, passes)
        elif cfg.batch_size == 1:
            reports = _run_seqkd(cfg, variants, target, prompt_ids, progress, passes)
        else:
            reports = _run_seqkd_batched(cfg, variants, target, prompt_ids, progress, passes)
        for m, mode in was_training:
            m.train(mode)
        for c, p, r in zip(cfgs, params, reports):
            if p["draft"] > p["target"]:
                log.warning("the draft %s (%d parameters) is larger than the target (%d): measured cost ratio c = %s",
                            c.draft, p["draft"], p["target"], r.get("cost_ratio"))
    for i, (c, report) in enumerate(zip(cfgs, reports)):
        if params is not None:
            report["params"] = params[i]
        report.update(engine=c.engine, target=c.target, draft=c.draft, prompts=len(texts), gamma=c.gamma,
                      temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_new_tokens,
                      adaptive_gamma=c.adaptive_gamma, lenience=c.lenience, batch_size=c.batch_size,
                      draft_quantize=c.draft_quantize, compile=c.compile, onednn=c.onednn)
        if len(cfgs) > 1 and c.engine != "vllm":  # its speedup divides by the same target-only rates
            report["target_only_shared_with"] = [{"draft": x.draft, "gamma": x.gamma} for x in cfgs]
        if c.out:
            atomic_write_json(c.out, report)
    return reports


def _bar(total: int, enabled: bool, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="prompt")


def _run_seqkd(cfg: SpeculateConfig, variants: list[tuple[Any, int]], target, prompts: list[torch.Tensor],
               progress: bool, passes: PassLog) -> list[dict[str, Any]]:
    """Target-only decoding of each prompt, then speculative decoding with each of ``variants`` ((draft, gamma)
    pairs), interleaved prompt by prompt (machine noise hits all alike), over ``cfg.passes`` passes (those ``passes``
    already holds are not redone); one report per variant, every speedup over the same target-only rates. With
    ``cfg.compare_hf`` (one variant) also HF generate and HF assisted generation on each prompt, all four compared on
    absolute tokens/s against HF generate."""
    from seqkd.speculative import autoregressive_generate, speculative_generate

    kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    hf_draft = variants[0][0]  # (--compare-hf: the one variant)
    hf_kw = _hf_settings(cfg, hf_draft) if cfg.compare_hf else None
    spec_keys = [f"seqkd_speculative#{k}" for k in range(len(variants))]  # by position: a variant may repeat
    streams = ["seqkd_target_only", *spec_keys] + (["hf_generate", "hf_assisted"] if hf_kw else [])
    rates: dict[str, list[float]] = {k: [rec["rates"][k] for rec in passes.done] for k in streams}
    # the counts are the same every pass (same seeds), so the first pass keeps them; the times differ
    first = passes.done[0] if passes.done else {"base": {}, "spec": {k: {} for k in spec_keys},
                                                "same": dict.fromkeys(spec_keys, 0)}
    base = SpecStats(**first["base"])
    spec = {k: SpecStats(**v) for k, v in first["spec"].items()}
    same = dict(first["same"])
    start = len(passes.done)
    for ids in prompts[: cfg.warmup] if start < cfg.passes else []:  # (nothing left to time: no warm-up)
        autoregressive_generate(target, ids, **kw, seed=cfg.seed)
        for d, g in variants:
            speculative_generate(target, d, ids, gamma=g, **kw, seed=cfg.seed)
        if hf_kw is not None:
            _hf_generate(target, ids, hf_kw, cfg.seed)
            _hf_generate(target, ids, hf_kw, cfg.seed, hf_draft)
    with _bar(len(prompts) * cfg.passes, progress, "speculate", initial=len(prompts) * start) as bar:
        for p in range(start, cfg.passes):
            tokens = dict.fromkeys(streams, 0)
            seconds = dict.fromkeys(streams, 0.0)
            again = Retimer()
            for i, ids in enumerate(prompts):
                b = again("seqkd_target_only", lambda: autoregressive_generate(target, ids, **kw, seed=cfg.seed + i))
                done = [("seqkd_target_only", b)]
                for k, (d, g) in zip(spec_keys, variants):
                    done.append((k, again(k, lambda: speculative_generate(
                        target, d, ids, gamma=g, adaptive_gamma=cfg.adaptive_gamma, lenience=cfg.lenience, **kw,
                        seed=cfg.seed + i))))
                for k, r in done:
                    tokens[k] += r.stats.generated
                    seconds[k] += r.stats.wall_seconds
                if hf_kw is not None:
                    for k, d in (("hf_generate", None), ("hf_assisted", hf_draft)):
                        n, dt = again(k, lambda: _hf_generate(target, ids, hf_kw, cfg.seed + i, d))
                        tokens[k] += n
                        seconds[k] += dt
                if p == 0:
                    base += b.stats
                    for k, r in done[1:]:
                        spec[k] += r.stats
                        same[k] += b.new_tokens == r.new_tokens
                bar.update()
                last = spec[spec_keys[-1]]
                bar.set_postfix(accept=f"{last.acceptance_rate:.2f}", tau=f"{last.block_efficiency:.2f}")
            for k in streams:
                rates[k].append(tokens[k] / seconds[k] if seconds[k] else 0.0)
            rec: dict[str, Any] = {"rates": {k: rates[k][-1] for k in streams}, "retimed": again.counts}
            if p == 0:
                rec.update(base=dataclasses.asdict(base), spec={k: dataclasses.asdict(v) for k, v in spec.items()},
                           same=same)
            passes.record(rec)
    reports = []
    for k, (_, g) in zip(spec_keys, variants):
        # the bound for the gamma asked for (blocks near the end draft fewer); adaptive gamma: the largest one used
        out = spec[k].summary(baseline=base, gamma=None if cfg.adaptive_gamma else g)
        speedups = [s / b if b else 0.0 for s, b in zip(rates[k], rates["seqkd_target_only"])]
        mine = {"seqkd_target_only": rates["seqkd_target_only"], "seqkd_speculative": rates[k]}
        mine.update({h: rates[h] for h in ("hf_generate", "hf_assisted") if h in rates})
        out.update(target_only_tokens_per_s=statistics.median(rates["seqkd_target_only"]),
                   speculative_tokens_per_s=statistics.median(rates[k]),
                   speedup=statistics.median(speedups), speedup_spread=spread(speedups), passes=cfg.passes,
                   tokens_per_s={s: spread(v) for s, v in mine.items()},
                   target_step_seconds=base.target_step_seconds, identical_outputs=same[k] / len(prompts),
                   retimed_calls=retimed_calls(passes.done, ["seqkd_target_only", k, "hf_generate", "hf_assisted"]))
        if hf_kw is not None:
            common = rates["hf_generate"]
            out["comparison"] = {
                "baseline": "hf_generate",
                "tokens_per_s": {s: spread(v) for s, v in mine.items()},
                "speedup_over_baseline": {s: spread([x / c if c else 0.0 for x, c in zip(mine[s], common)])
                                          for s in ("seqkd_target_only", "seqkd_speculative", "hf_assisted")},
            }
        reports.append(out)
    return reports


def _run_seqkd_batched(cfg: SpeculateConfig, variants: list[tuple[Any, int]], target, prompts: list[torch.Tensor],
                       progress: bool, passes: PassLog) -> list[dict[str, Any]]:
    """Batches of ``cfg.batch_size`` prompts, target-only and speculative with each of ``variants`` ((draft, gamma)
    pairs) interleaved batch by batch, over ``cfg.passes`` passes (those ``passes`` already holds are not redone); one
    report per variant. Acceptance counts are per row (as at batch size 1); ``c``, ``v`` and the rates are per batched
    call (one call serves every row of the batch)."""
    from seqkd.models import family
    from seqkd.speculative.batch import autoregressive_generate_batch, speculative_generate_batch

    if family(target) != "causal":
        raise SeqkdError("--batch-size > 1 (batched speculation) is implemented for decoder-only models")
    kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    batches = [prompts[i: i + cfg.batch_size] for i in range(0, len(prompts), cfg.batch_size)]
    n = len(variants)
    base_rates: list[float] = [rec["base_rate"] for rec in passes.done]
    spec_rates: list[list[float]] = [[rec["spec_rates"][k] for rec in passes.done] for k in range(n)]
    # the counts are the same every pass (same seeds), so the first pass keeps them; the times differ
    first = passes.done[0] if passes.done else {"base": {}, "rows": [{}] * n, "times": [{}] * n, "same": [0] * n}
    base = SpecStats(**first["base"])
    rows = [SpecStats(**r) for r in first["rows"]]  # per variant: acceptance counts, row by row
    times = [SpecStats(**t) for t in first["times"]]  # per variant: batched calls and their times
    same = list(first["same"])
    start = len(passes.done)
    warm = prompts[: cfg.warmup] if start < cfg.passes else []  # one untimed batch (nothing left to time: none)
    if warm:
        autoregressive_generate_batch(target, warm, **kw, seed=cfg.seed)
        for d, g in variants:
            speculative_generate_batch(target, d, warm, gamma=g, **kw, seed=cfg.seed)
    with _bar(len(batches) * cfg.passes, progress, "speculate (batched)", initial=len(batches) * start) as bar:
        for p in range(start, cfg.passes):
            tokens, seconds = [0] * (1 + n), [0.0] * (1 + n)
            again = Retimer()
            for j, chunk in enumerate(batches):
                b = again("base", lambda: autoregressive_generate_batch(target, chunk, **kw, seed=cfg.seed + j))
                runs = [again(str(k), lambda: speculative_generate_batch(target, d, chunk, gamma=g,
                                                                         lenience=cfg.lenience, **kw,
                                                                         seed=cfg.seed + j))
                        for k, (d, g) in enumerate(variants)]
                for k, st in enumerate([b.stats] + [s.stats for s in runs]):
                    tokens[k] += st.generated
                    seconds[k] += st.wall_seconds
                if p == 0:
                    base += b.stats
                    for k, s in enumerate(runs):
                        times[k] += s.stats
                        for r in s.rows:
                            rows[k] += r
                        same[k] += sum(x == y for x, y in zip(b.new_tokens, s.new_tokens))
                bar.update()
                bar.set_postfix(accept=f"{rows[-1].acceptance_rate:.2f}", tau=f"{rows[-1].block_efficiency:.2f}")
            base_rates.append(tokens[0] / seconds[0] if seconds[0] else 0.0)
            for k in range(n):
                spec_rates[k].append(tokens[k + 1] / seconds[k + 1] if seconds[k + 1] else 0.0)
            rec: dict[str, Any] = {"base_rate": base_rates[-1], "spec_rates": [r[-1] for r in spec_rates],
                                   "retimed": again.counts}
            if p == 0:
                rec.update(base=dataclasses.asdict(base), rows=[dataclasses.asdict(r) for r in rows],
                           times=[dataclasses.asdict(t) for t in times], same=same)
            passes.record(rec)
    reports = []
    for k, (_, g) in enumerate(variants):
        out = rows[k].summary(baseline=base, gamma=g, times=times[k])
        speedups = [s / b if b else 0.0 for s, b in zip(spec_rates[k], base_rates)]
        out.update(target_only_tokens_per_s=statistics.median(base_rates),
                   speculative_tokens_per_s=statistics.median(spec_rates[k]),
                   speedup=statistics.median(speedups), speedup_spread=spread(speedups), passes=cfg.passes,
                   tokens_per_s={"seqkd_target_only": spread(base_rates), "seqkd_speculative": spread(spec_rates[k])},
                   batch_size=cfg.batch_size, target_step_seconds=base.target_step_seconds,
                   identical_outputs=same[k] / len(prompts), retimed_calls=retimed_calls(passes.done, ["base", str(k)]),
                   batched_calls={"target_only": base.target_calls, "verification": times[k].target_calls,
                                  "draft": times[k].draft_steps})
        reports.append(out)
    return reports


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


def _run_hf(cfg: SpeculateConfig, variants: list[tuple[Any, int]], target, prompts: list[torch.Tensor],
            progress: bool, passes: PassLog) -> list[dict[str, Any]]:
    """transformers assisted generation (``assistant_model=draft``) with each of ``variants`` ((draft, gamma) pairs)
    vs plain ``generate``, interleaved prompt by prompt (one ``generate`` baseline for every variant), over
    ``cfg.passes`` passes (those ``passes`` already holds are not redone); one report per variant. Acceptance is
    counted from forward calls: each target call emits its accepted run plus one token."""
    for d, _ in variants:  # each draft's generation config (the keywords are the same for every draft)
        gen_kw = _hf_settings(cfg, d)

    def run(ids, k: int | None, seed: int) -> tuple[int, float]:
        if k is None:
            return _hf_generate(target, ids, gen_kw, seed)
        d, g = variants[k]
        d.generation_config.num_assistant_tokens = g  # (the heuristic schedule starts from it)
        return _hf_generate(target, ids, gen_kw, seed, d)

    n = len(variants)
    start = len(passes.done)
    for ids in prompts[: cfg.warmup] if start < cfg.passes else []:  # (nothing left to time: no warm-up)
        run(ids, None, cfg.seed)
        for k in range(n):
            run(ids, k, cfg.seed)
    base_rates: list[float] = [rec["base_rate"] for rec in passes.done]
    spec_rates: list[list[float]] = [[rec["spec_rates"][k] for rec in passes.done] for k in range(n)]
    tc, dcs = _CallCounter(target), {d: _CallCounter(d) for d, _ in variants}
    # counted on the first pass (every pass decodes the same tokens), per variant
    first = passes.done[0]["counts"] if passes.done else {"drafted": [0] * n, "target_calls": [0] * n,
                                                          "generated": [0] * n}
    drafted, target_calls, spec_tok = list(first["drafted"]), list(first["target_calls"]), list(first["generated"])
    try:
        with _bar(len(prompts) * cfg.passes, progress, "speculate (hf)", initial=len(prompts) * start) as bar:
            for p in range(start, cfg.passes):
                base_tok, base_s = 0, 0.0
                pass_tok, spec_s = [0] * n, [0.0] * n
                again = Retimer()
                for i, ids in enumerate(prompts):
                    new, dt = again("base", lambda: run(ids, None, cfg.seed + i))
                    base_tok, base_s = base_tok + new, base_s + dt
                    for k in range(n):
                        dc = dcs[variants[k][0]]

                        def counted(k=k, dc=dc):  # the calls of the timing that counts (a call timed again repeats)
                            tc.calls = dc.calls = 0
                            return run(ids, k, cfg.seed + i)

                        new, dt = again(str(k), counted)
                        pass_tok[k], spec_s[k] = pass_tok[k] + new, spec_s[k] + dt
                        if p == 0:
                            target_calls[k] += tc.calls
                            drafted[k] += dc.calls
                            spec_tok[k] += new
                    bar.update()
                base_rates.append(base_tok / base_s if base_s else 0.0)
                for k in range(n):
                    spec_rates[k].append(pass_tok[k] / spec_s[k] if spec_s[k] else 0.0)
                rec: dict[str, Any] = {"base_rate": base_rates[-1], "spec_rates": [r[-1] for r in spec_rates],
                                       "retimed": again.counts}
                if p == 0:
                    rec["counts"] = {"drafted": drafted, "target_calls": target_calls, "generated": spec_tok}
                passes.record(rec)
    finally:
        tc.remove()
        for dc in dcs.values():
            dc.remove()
    reports = []
    for k in range(n):
        accepted = max(spec_tok[k] - target_calls[k], 0)
        speedups = [x / b if b else 0.0 for x, b in zip(spec_rates[k], base_rates)]
        reports.append({
            "acceptance_rate": accepted / drafted[k] if drafted[k] else 0.0,
            "block_efficiency": spec_tok[k] / target_calls[k] if target_calls[k] else 0.0,
            "target_calls": target_calls[k], "drafted": drafted[k], "accepted": accepted, "generated": spec_tok[k],
            "target_only_tokens_per_s": statistics.median(base_rates),
            "speculative_tokens_per_s": statistics.median(spec_rates[k]),
            "speedup": statistics.median(speedups), "speedup_spread": spread(speedups), "passes": cfg.passes,
            "tokens_per_s": {"hf_generate": spread(base_rates), "hf_assisted": spread(spec_rates[k])},
            "counted_from": "forward calls (accepted = generated - target calls; drafted = draft calls)",
            "retimed_calls": retimed_calls(passes.done, ["base", str(k)]),
        })
    return reports
