"""An exact speculative decoder for HF models of both families, with KV caches on both models.

Decoder-only: ``input_ids`` is the prompt. Encoder-decoder: ``input_ids`` is the source; each model's encoder runs
once and the two decoders speculate. Each round the draft proposes ``gamma`` tokens one at a time (its cache
grows), the target scores all of them in one forward pass, :mod:`seqkd.speculative.acceptance` decides, and both caches
are cropped back to the accepted prefix (a rejected suffix never stays in a cache). Temperature and top-p are
applied identically to both models' logits; temperature 0 is greedy (output = the target's greedy output).

Batch size 1 (latency is what speculative decoding buys; a batch's rows would accept different lengths).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from seqkd.speculative.acceptance import greedy_accept, sample_accept
from seqkd.speculative.metrics import SpecStats, acceptance_probability


@dataclass
class SpecOutput:
    sequences: Tensor  # [1, L] like HF generate: prompt + new tokens (decoder-only), start token + new (enc-dec)
    new_tokens: list[int]  # the generated tokens (eos included when it was generated)
    stats: SpecStats


def processed_probs(logits: Tensor, temperature: float, top_p: float = 1.0) -> Tensor:
    """``logits [..., V]`` -> the float32 distribution tokens are drawn from. Temperature 0: one-hot argmax.
    Top-p keeps the smallest prefix of the sorted distribution with mass >= top_p (HF's TopPLogitsWarper)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=False)
        drop_sorted = sorted_p.cumsum(-1) <= (1.0 - top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """Incremental forward passes of one model over a growing sequence, with a cache that can be cropped."""

    def __init__(self, model, input_ids: Tensor):
        from transformers import DynamicCache, EncoderDecoderCache

        self.model = model
        self.device = next(model.parameters()).device
        self.enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        # a draft with a pruned output layer (seqkd.models.draft_vocab) scores K tokens: spread them over the target's
        # vocabulary, -inf elsewhere, so the rule sees q = 0 there (never drafted; the residual covers them)
        from seqkd.models.draft_vocab import expand_logits

        self.expand = expand_logits
        self.vocab_map = getattr(model, "seqkd_vocab_map", None)
        self.vocab_size = model.config.get_text_config().vocab_size
        if self.enc_dec:
            src = input_ids.to(self.device)
            self.src_mask = torch.ones_like(src)
            with torch.no_grad():
                self.encoder_outputs = model.get_encoder()(input_ids=src, attention_mask=self.src_mask)
            self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        else:
            self.cache = DynamicCache()

    @property
    def cached(self) -> int:
        return self.cache.get_seq_length()

    @torch.no_grad()
    def logits(self, seq: Tensor, keep: int) -> Tensor:
        """Feed ``seq[:, cached:]`` (``seq`` ``[1, L]``); returns the next-token logits after its last ``keep``
        positions, ``[keep, V]``. Decoder-only models compute the output layer for those positions only
        (``logits_to_keep``, as HF ``generate`` does): a prompt's prefill would otherwise pay a ``[L, V]`` product."""
        new = seq[:, self.cached:].to(self.device)
        if self.enc_dec:
            out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.src_mask,
                             decoder_input_ids=new, past_key_values=self.cache, use_cache=True)
        elif self.keeps_logits:
            out = self.model(input_ids=new, past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
        else:
            out = self.model(input_ids=new, past_key_values=self.cache, use_cache=True)
        logits = out.logits[0, -keep:]
        if self.vocab_map is not None:
            logits = self.expand(logits, self.vocab_map, self.vocab_size)  # [keep, K] -> [keep, V]
        return logits

    def crop(self, length: int) -> None:
        """Keep the cache of the first ``length`` positions only."""
        if self.cached > length:
            self.cache.crop(length - self.cached)  # negative: remove that many (old and new transformers alike)


def start_sequence(model, input_ids: Tensor) -> Tensor:
    """What the decoder is fed first: the prompt (decoder-only) or ``[[decoder_start_token_id]]`` (enc-dec)."""
    if getattr(model.config, "is_encoder_decoder", False):
        start = model.generation_config.decoder_start_token_id
        if start is None:
            start = model.config.decoder_start_token_id
        return torch.tensor([[start]], dtype=torch.long)
    return input_ids.detach().cpu().long()


def eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))


def _check_inputs(input_ids: Tensor, gamma: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, L] (batch size 1), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("empty prompt: input_ids has no tokens")
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def _draw(probs: Tensor, greedy: bool, generator: torch.Generator | None) -> int:
    if greedy:
        return int(probs.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))


def speculative_generate(
    target,
    draft,
    input_ids: Tensor,
    *,
    gamma: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int | None = None,
    adaptive_gamma: bool = False,
    lenience: float = 1.0,
) -> SpecOutput:
    """Speculative decoding of one prompt (``input_ids [1, L]``; the source ids for encoder-decoder models).

    ``gamma`` drafted tokens per target call (``adaptive_gamma``: +2 after a fully accepted block, -1 otherwise,
    as HF's assisted generation). ``temperature=0``: greedy, output equal to the target's greedy decoding.
    ``seed`` makes sampling reproducible. ``lenience < 1``: DistillSpec's lossy acceptance (not exact).
    Returns the sequences (HF ``generate`` layout), the new tokens and :class:`SpecStats`.
    """
    _check_inputs(input_ids, gamma, temperature, top_p, max_new_tokens)
    if lenience != 1.0 and temperature == 0:
        raise ValueError("lenience applies to sampling (temperature > 0); greedy acceptance is exact agreement with "
                         "the target's argmax")
    if target.config.get_text_config().vocab_size != draft.config.get_text_config().vocab_size:
        raise ValueError("target and draft have different vocabulary sizes "
                         f"({target.config.get_text_config().vocab_size} vs "
                         f"{draft.config.get_text_config().vocab_size})")
    greedy = temperature == 0
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = eos_ids(target)
    tgt, drf = Stepper(target, input_ids), Stepper(draft, input_ids)
    seq = base = start_sequence(target, input_ids)
    stats = SpecStats()
    new: list[int] = []
    g_now = gamma
    t_wall = time.perf_counter()
    while len(new) < max_new_tokens:
        g = max(0, min(g_now, max_new_tokens - len(new) - 1))  # tokens past the budget would be thrown away
        cur, drafts, qs = seq, [], []
        for _ in range(g):
            t0 = time.perf_counter()
            q = processed_probs(drf.logits(cur, 1)[-1], temperature, top_p).cpu()
            _sync(drf.device)
            stats.add_time("draft", time.perf_counter() - t0)
            stats.draft_steps += 1
            tok = _draw(q, greedy, gen)
            drafts.append(tok)
            qs.append(q)
            cur = torch.cat([cur, torch.tensor([[tok]], dtype=torch.long)], dim=1)
            if tok in eos:
                break
        g = len(drafts)
        t0 = time.perf_counter()
        p_logits = tgt.logits(cur, g + 1).float()  # [g + 1, V]
        _sync(tgt.device)
        stats.add_time("target", time.perf_counter() - t0)  # the first: prefill + the first verification
        p = processed_probs(p_logits, temperature, top_p).cpu()  # [g + 1, V]
        d = torch.tensor([drafts], dtype=torch.long)  # [1, g]
        if greedy:
            verdict = greedy_accept(d, p[None])
        else:
            verdict = sample_accept(d, torch.stack(qs)[None] if g else p.new_zeros(1, 0, p.shape[-1]), p[None],
                                    generator=gen, lenience=lenience)
        n = int(verdict.num_accepted[0])
        kept = 0
        for t in verdict.tokens[0, : n + 1].tolist():  # the accepted run + the correction / bonus token
            if len(new) == max_new_tokens:
                break
            new.append(t)
            kept += 1
            if t in eos:  # nothing after an accepted eos reaches the output (nor counts as emitted)
                break
        stats.record_block(g, n, kept)
        for i in range(min(n + 1, g)):  # the positions the rule actually tested: accepted ones + the first rejection
            stats.overlap_sum += float(acceptance_probability(p[i], qs[i], lenience))  # greedy: one-hot agreement
            stats.overlap_count += 1
            stats.verified += 1
        seq = torch.cat([base, torch.tensor([new], dtype=torch.long)], dim=1)
        tgt.crop(seq.shape[1] - 1)
        drf.crop(seq.shape[1] - 1)
        if new and new[-1] in eos:
            break
        if adaptive_gamma:
            g_now = g_now + 2 if n == g else max(1, g_now - 1)
    stats.wall_seconds = time.perf_counter() - t_wall
    stats.generated = len(new)
    return SpecOutput(seq, new, stats)


def autoregressive_generate(
    model,
    input_ids: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int | None = None,
) -> SpecOutput:
    """Target-only decoding with the same cache, sampling and timing code: the baseline speculation is compared to.
    ``stats`` holds ``generated``, ``wall_seconds`` and, as ``target_calls``/``target_seconds``, the per-token steps."""
    _check_inputs(input_ids, 1, temperature, top_p, max_new_tokens)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = eos_ids(model)
    step = Stepper(model, input_ids)
    seq = start_sequence(model, input_ids)
    stats = SpecStats()
    new: list[int] = []
    t_wall = time.perf_counter()
    while len(new) < max_new_tokens:
        t0 = time.perf_counter()
        p = processed_probs(step.logits(seq, 1)[-1], temperature, top_p).cpu()
        _sync(step.device)
        stats.add_time("target", time.perf_counter() - t0)
        stats.target_calls += 1
        tok = _draw(p, temperature == 0, gen)
        new.append(tok)
        seq = torch.cat([seq, torch.tensor([[tok]], dtype=torch.long)], dim=1)
        if tok in eos:
            break
    stats.wall_seconds = time.perf_counter() - t_wall
    stats.generated = stats.emitted = len(new)
    return SpecOutput(seq, new, stats)
