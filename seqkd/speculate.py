"""``seqkd speculate``: a target and its draft on a prompt set, with acceptance, block efficiency, cost ratio,
latency and speedup over target-only decoding, in seqkd's exact decoder, HF assisted generation or vLLM.

The dataclass is the CLI (``seqkd speculate --help``); :func:`speculate` is the Python entry point.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import _help
from .errors import SeqkdError

log = logging.getLogger(__name__)
ENGINES = ("seqkd", "hf", "vllm")


@dataclass
class SpeculateConfig:
    """Speculative decoding of a prompt set with a draft for a target (Leviathan et al. 2023)."""

    target: str = _help("Target model directory (the large model whose output distribution is kept).")
    draft: str = _help("Draft model directory (same tokenizer as the target).")
    input: str | None = _help("Prompt file, one prompt (or source sentence) per line.", default=None)
    data: str | None = _help("Instead of --input: a registered parallel dataset (e.g. multi30k:de-en); its "
                             "sources are the prompts.", default=None)
    split: str = _help("Split of --data.", default="val")
    limit: int | None = _help("Use the first N prompts only.", default=None)
    engine: str = field(default="seqkd", metadata={"choices": ENGINES, "help": (
        "seqkd (exact decoder, full metrics), hf (transformers assisted generation: the draft as assistant_model) "
        "or vllm (draft-model speculative decoding; decoder-only).")})
    gamma: int = _help("Draft tokens per target call.", default=4)
    adaptive_gamma: bool = _help("Grow gamma by 2 after a fully accepted block, shrink by 1 otherwise (as HF's "
                                 "'heuristic' schedule).", default=False)
    temperature: float = _help("Sampling temperature for both models; 0 = greedy.", default=0.0)
    top_p: float = _help("Nucleus sampling for both models (1 = off).", default=1.0)
    max_new_tokens: int = _help("New tokens per prompt at most.", default=64)
    seed: int = _help("Seed of the sampling (prompt i uses seed + i).", default=0)
    lenience: float = _help("DistillSpec's lossy acceptance min(1, p / (lenience q)); 1 = exact (seqkd engine "
                            "only).", default=1.0)
    prompt_format: str = _help("auto, translation, plain or chat (see seqkd generate).", default="auto")
    device: str = _help("cpu or cuda (seqkd and hf engines).", default="cpu")
    dtype: str = _help("float32, bfloat16 or float16.", default="float32")
    warmup: int = _help("Prompts decoded first and not timed (both ways).", default=1)
    out: str | None = _help("Write the report (JSON) here.", default=None)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise SeqkdError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if bool(self.input) == bool(self.data):
            raise SeqkdError("give either --input FILE or --data NAME")
        if self.gamma < 1:
            raise SeqkdError(f"--gamma must be >= 1, got {self.gamma}")
        if self.temperature < 0:
            raise SeqkdError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SeqkdError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 < self.lenience <= 1:
            raise SeqkdError(f"--lenience must be in (0, 1], got {self.lenience}")
        if self.lenience < 1 and self.engine != "seqkd":
            raise SeqkdError("--lenience < 1 (lossy acceptance) exists in the seqkd engine only")
        if self.max_new_tokens < 1:
            raise SeqkdError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise SeqkdError(f"--limit must be a positive integer, got {self.limit}")


def check_pair(target_dir: str, draft_dir: str):
    """Load both tokenizers and fail clearly unless their vocabularies are the same token -> id map."""
    from .tokenizer import load_tokenizers, same_vocab

    t_src, t_tgt = load_tokenizers(target_dir)
    d_src, d_tgt = load_tokenizers(draft_dir)
    if not (same_vocab(t_tgt, d_tgt) and same_vocab(t_src, d_src)):
        raise SeqkdError(f"target {target_dir} and draft {draft_dir} have different tokenizers "
                         f"({len(t_tgt)} vs {len(d_tgt)} tokens, or the same size with other ids): a draft must share "
                         "the target's vocabulary")
    return t_src, t_tgt


def read_prompts(cfg) -> list[str]:
    """The prompt texts of ``cfg.input`` or ``cfg.data``/``cfg.split`` (first ``cfg.limit``); never empty."""
    from .data import read_lines
    from .datasets import load_parallel

    if cfg.data:
        texts = load_parallel(cfg.data, cfg.split)[0]
    else:
        texts, _ = read_lines(cfg.input, max_chars=None)  # empty lines are skipped
    texts = [t for t in texts if t.strip()][: cfg.limit]
    if not texts:
        raise SeqkdError(f"no prompts: {cfg.input or cfg.data} has no non-empty lines")
    return texts


def _load(path: str, cfg: SpeculateConfig):
    from .models import count_parameters, load_model

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.dtype not in dtypes:
        raise SeqkdError(f"--dtype must be one of {', '.join(dtypes)}, got {cfg.dtype!r}")
    model = load_model(path, dtype=dtypes[cfg.dtype], device=cfg.device)
    return model, count_parameters(model)


def speculate(cfg: SpeculateConfig, progress: bool = True) -> dict[str, Any]:
    """Decode the prompts target-only and speculatively; returns the report (also written to ``cfg.out``)."""
    from .engines import TextCodec

    src_tok, tgt_tok = check_pair(cfg.target, cfg.draft)
    texts = read_prompts(cfg)
    if cfg.engine == "vllm":
        from .spec.vllm_spec import vllm_speculate

        report = vllm_speculate(cfg, texts)
    else:
        target, t_params = _load(cfg.target, cfg)
        draft, d_params = _load(cfg.draft, cfg)
        family = "seq2seq" if target.config.is_encoder_decoder else "causal"
        if bool(draft.config.is_encoder_decoder) != (family == "seq2seq"):
            raise SeqkdError("target and draft must be of the same family (both decoder-only or both encoder-decoder)")
        codec = TextCodec(family, src_tok, tgt_tok, prompt_format=cfg.prompt_format)
        prompts = [torch.tensor([ids]) for ids in codec.encode(texts)]
        run = _run_seqkd if cfg.engine == "seqkd" else _run_hf
        report = run(cfg, target, draft, prompts, progress)
        report["params"] = {"target": t_params, "draft": d_params}
        if d_params > t_params:
            log.warning("the draft (%d parameters) is larger than the target (%d): measured cost ratio c = %.2f",
                        d_params, t_params, report.get("cost_ratio") or float("nan"))
    report.update(engine=cfg.engine, target=cfg.target, draft=cfg.draft, prompts=len(texts), gamma=cfg.gamma,
                  temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                  adaptive_gamma=cfg.adaptive_gamma, lenience=cfg.lenience)
    if cfg.out:
        import json

        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(cfg.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(cfg.out)
    return report


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="prompt")


def _run_seqkd(cfg: SpeculateConfig, target, draft, prompts: list[torch.Tensor], progress: bool) -> dict[str, Any]:
    """Target-only and speculative decoding of each prompt, interleaved (machine noise hits both alike)."""
    from .spec import SpecStats, autoregressive_generate, speculative_generate

    kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    for ids in prompts[: cfg.warmup]:
        autoregressive_generate(target, ids, **kw, seed=cfg.seed)
        speculative_generate(target, draft, ids, gamma=cfg.gamma, **kw, seed=cfg.seed)
    base, spec = SpecStats(), SpecStats()
    same = 0
    with _bar(len(prompts), progress, "speculate") as bar:
        for i, ids in enumerate(prompts):
            b = autoregressive_generate(target, ids, **kw, seed=cfg.seed + i)
            s = speculative_generate(target, draft, ids, gamma=cfg.gamma, adaptive_gamma=cfg.adaptive_gamma,
                                     lenience=cfg.lenience, **kw, seed=cfg.seed + i)
            base += b.stats
            spec += s.stats
            same += b.new_tokens == s.new_tokens
            bar.update()
            bar.set_postfix(accept=f"{spec.acceptance_rate:.2f}", tau=f"{spec.block_efficiency:.2f}")
    out = spec.summary()
    if not cfg.adaptive_gamma:  # the bound for the gamma asked for (blocks near the end draft fewer)
        out["leviathan_bound"] = spec.bound(cfg.gamma)
    out.update(target_only_tokens_per_s=base.tokens_per_s, speculative_tokens_per_s=spec.tokens_per_s,
               speedup=spec.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0,
               target_step_seconds=base.target_seconds / max(base.target_calls, 1),
               identical_outputs=same / len(prompts))
    return out


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
    sample = cfg.temperature > 0
    gen_kw: dict[str, Any] = dict(do_sample=sample, max_new_tokens=cfg.max_new_tokens, num_beams=1)
    if sample:
        gen_kw.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    draft.generation_config.num_assistant_tokens = cfg.gamma
    draft.generation_config.num_assistant_tokens_schedule = "heuristic" if cfg.adaptive_gamma else "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0  # draft gamma tokens, as the other engines

    def run(ids, assisted: bool, seed: int) -> tuple[int, float]:
        ids = ids.to(target.device)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kw,
                              **({"assistant_model": draft} if assisted else {}))
        dt = time.perf_counter() - t0
        n = out.shape[1] - (1 if target.config.is_encoder_decoder else ids.shape[1])
        return n, dt

    for ids in prompts[: cfg.warmup]:
        run(ids, False, cfg.seed)
        run(ids, True, cfg.seed)
    base_tok = spec_tok = 0
    base_s = spec_s = 0.0
    tc, dc = _CallCounter(target), _CallCounter(draft)
    drafted = target_calls = 0
    try:
        with _bar(len(prompts), progress, "speculate (hf)") as bar:
            for i, ids in enumerate(prompts):
                n, dt = run(ids, False, cfg.seed + i)
                base_tok, base_s = base_tok + n, base_s + dt
                tc.calls = dc.calls = 0
                n, dt = run(ids, True, cfg.seed + i)
                spec_tok, spec_s = spec_tok + n, spec_s + dt
                target_calls += tc.calls
                drafted += dc.calls
                bar.update()
    finally:
        tc.remove()
        dc.remove()
    accepted = max(spec_tok - target_calls, 0)
    return {
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "block_efficiency": spec_tok / target_calls if target_calls else 0.0,
        "target_calls": target_calls, "drafted": drafted, "accepted": accepted, "generated": spec_tok,
        "target_only_tokens_per_s": base_tok / base_s if base_s else 0.0,
        "speculative_tokens_per_s": spec_tok / spec_s if spec_s else 0.0,
        "speedup": (spec_tok / spec_s) / (base_tok / base_s) if spec_s and base_s and base_tok else 0.0,
        "counted_from": "forward calls (accepted = generated - target calls; drafted = draft calls)",
    }
