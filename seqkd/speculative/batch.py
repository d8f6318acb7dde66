"""Speculative decoding of a batch of prompts (decoder-only), exact per row, for throughput beside vLLM's.

Rows accept different numbers of drafted tokens, but one KV cache holds one length for the whole batch. So nothing
is cropped: every model call appends whole columns to the batch, and a column a row does not use (left padding, a
rejected draft token, anything after the row finished) is masked out of that row's attention. Position ids count
only a row's unmasked columns, so each row sees exactly the sequence it would see alone. A rejected column is only
ever attended to by later draft columns of the same block, which are rejected with it: no kept entry of either
cache was computed with a masked column visible. The cost: masked columns stay in the caches (a block of ``gamma``
drafts grows them by ``gamma + 1`` columns, of which ``tau`` are kept per row).

Each row's tokens follow the rule of :mod:`seqkd.speculative.acceptance` (vectorised over the batch already), so
greedy output equals each row's target greedy decoding and sampled output is distributed as the target's; the
random stream differs from batch-size-1 decoding, so seeded samples do not match :func:`speculative_generate`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from seqkd.speculative.acceptance import greedy_accept, sample_accept
from seqkd.speculative.decoder import _check_inputs, _sync, eos_ids, processed_probs
from seqkd.speculative.metrics import SpecStats, acceptance_probability


@dataclass
class BatchOutput:
    new_tokens: list[list[int]]  # per row: the generated tokens (eos included when generated)
    rows: list[SpecStats]  # per row: acceptance counts (drafted, accepted, emitted, per position); no times
    stats: SpecStats = field(default_factory=SpecStats)  # the batch: one entry per batched call (times, calls), all
    # rows' tokens in ``generated``, ``wall_seconds``


class BatchStepper:
    """Forward passes of one decoder-only model over a batch whose sequences grow by whole columns, with a cache
    that is never cropped (unused columns are masked out instead)."""

    def __init__(self, model):
        from transformers import DynamicCache

        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("batched speculative decoding is implemented for decoder-only models")
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = DynamicCache()
        self.seen = 0  # columns already in the cache
        from seqkd.models.draft_vocab import expand_logits

        self.expand = expand_logits
        self.vocab_map = getattr(model, "seqkd_vocab_map", None)
        self.vocab_size = model.config.get_text_config().vocab_size

    @torch.no_grad()
    def logits(self, seq: Tensor, mask: Tensor, keep: int) -> Tensor:
        """Feed the columns of ``seq [B, T]`` not yet seen (``mask [B, T]``: 1 where a row uses the column); returns
        the next-token logits after the last ``keep`` columns, ``[B, keep, V]``."""
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # [B, T] a row's own positions: its used columns only
        out = self.model(input_ids=seq[:, self.seen:].to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions[:, self.seen:].to(self.device), past_key_values=self.cache,
                         use_cache=True, logits_to_keep=keep)
        self.seen = seq.shape[1]
        logits = out.logits[:, -keep:]  # [B, keep, V or K]
        if self.vocab_map is not None:  # a draft with a pruned output layer: q = 0 outside its rows
            logits = self.expand(logits, self.vocab_map, self.vocab_size)
        return logits


def _left_padded(prompts: Sequence[Tensor], pad: int) -> tuple[Tensor, Tensor]:
    """``prompts`` (each ``[1, L_i]``) -> ``seq [B, L]``, ``mask [B, L]`` (long), padded on the left."""
    width = max(p.shape[1] for p in prompts)
    seq = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(seq)
    for i, p in enumerate(prompts):
        seq[i, width - p.shape[1]:] = p[0].long()
        mask[i, width - p.shape[1]:] = 1
    return seq, mask


def _check_batch(prompts: Sequence[Tensor], gamma: int, temperature: float, top_p: float, max_new: int) -> None:
    if not prompts:
        raise ValueError("no prompts")
    for p in prompts:
        _check_inputs(p, gamma, temperature, top_p, max_new)


def speculative_generate_batch(
    target,
    draft,
    prompts: Sequence[Tensor],
    *,
    gamma: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int | None = None,
    lenience: float = 1.0,
) -> BatchOutput:
    """Speculative decoding of ``prompts`` (each ``[1, L_i]``) as one batch; see the module docstring."""
    _check_batch(prompts, gamma, temperature, top_p, max_new_tokens)
    if lenience != 1.0 and temperature == 0:
        raise ValueError("lenience applies to sampling (temperature > 0)")
    if target.config.get_text_config().vocab_size != draft.config.get_text_config().vocab_size:
        raise ValueError("target and draft have different vocabulary sizes")
    greedy = temperature == 0
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = eos_ids(target)
    pad = next(iter(eos), 0)  # any id: padded columns are masked
    tgt, drf = BatchStepper(target), BatchStepper(draft)
    seq, mask = _left_padded(prompts, pad)  # [B, T]
    b = seq.shape[0]
    new: list[list[int]] = [[] for _ in range(b)]
    rows = [SpecStats() for _ in range(b)]
    stats = SpecStats()
    active = torch.ones(b, dtype=torch.bool)  # [B] rows still generating
    t_wall = time.perf_counter()
    while bool(active.any()):
        left = max(max_new_tokens - len(new[i]) for i in range(b) if active[i])
        g = max(0, min(gamma, left - 1))  # a row with less budget left has its extra tokens cut when emitted
        start = seq.shape[1]  # [B, start + j] holds draft j
        qs = []
        for _ in range(g):
            t0 = time.perf_counter()
            q = processed_probs(drf.logits(seq, mask, 1)[:, -1], temperature, top_p).cpu()  # [B, V]
            _sync(drf.device)
            stats.add_time("draft", time.perf_counter() - t0)
            stats.draft_steps += 1
            tok = q.argmax(-1) if greedy else torch.multinomial(q, 1, generator=gen)[:, 0]  # [B]
            seq = torch.cat([seq, torch.where(active, tok, pad)[:, None]], dim=1)  # [B, T + 1]
            mask = torch.cat([mask, active.long()[:, None]], dim=1)
            qs.append(q)
        t0 = time.perf_counter()
        p = processed_probs(tgt.logits(seq, mask, g + 1).float(), temperature, top_p).cpu()  # [B, g + 1, V]
        _sync(tgt.device)
        stats.add_time("target", time.perf_counter() - t0)
        stats.target_calls += 1
        d = seq[:, start:]  # [B, g] the drafted tokens
        q_all = torch.stack(qs, dim=1) if g else p.new_zeros(b, 0, p.shape[-1])  # [B, g, V]
        verdict = greedy_accept(d, p) if greedy else sample_accept(d, q_all, p, generator=gen, lenience=lenience)
        last = torch.full((b,), pad, dtype=torch.long)  # [B] the correction / bonus token, where a row emits one
        last_used = torch.zeros(b, dtype=torch.long)
        for i in torch.nonzero(active)[:, 0].tolist():
            n = int(verdict.num_accepted[i])
            kept = 0
            for t in verdict.tokens[i, : n + 1].tolist():  # the accepted run + the correction / bonus token
                if len(new[i]) == max_new_tokens:
                    break
                new[i].append(t)
                kept += 1
                if t in eos:
                    break
            # the row's own block, as the single-row decoder drafts it: up to its budget, ending at a drafted eos
            # (later columns of the batch's block are drafted for the batch's sake and not counted)
            own = min(g, max_new_tokens - (len(new[i]) - kept) - 1)
            drafted_eos = [j for j in range(own) if int(d[i, j]) in eos]
            own = drafted_eos[0] + 1 if drafted_eos else own
            n_own = min(n, own)
            rows[i].record_block(own, n_own, kept)
            for j in range(min(n_own + 1, own)):  # the positions the rule tested: accepted ones + the first rejection
                rows[i].overlap_sum += float(acceptance_probability(p[i, j], q_all[i, j], lenience))
                rows[i].overlap_count += 1
                rows[i].verified += 1
            mask[i, start + min(n, kept):] = 0  # rejected drafts (and any cut by eos / budget) leave the row
            if kept == n + 1:  # the target's own token is new: it goes into the next column
                last[i], last_used[i] = verdict.tokens[i, n], 1
            if (new[i] and new[i][-1] in eos) or len(new[i]) == max_new_tokens:
                active[i] = False
                last_used[i] = 0
        seq = torch.cat([seq, last[:, None]], dim=1)
        mask = torch.cat([mask, last_used[:, None]], dim=1)
    stats.wall_seconds = time.perf_counter() - t_wall
    stats.generated = sum(len(t) for t in new)
    for r, t in zip(rows, new):
        r.generated = len(t)
    return BatchOutput(new, rows, stats)


def autoregressive_generate_batch(
    model,
    prompts: Sequence[Tensor],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int | None = None,
) -> BatchOutput:
    """Target-only decoding of ``prompts`` as one batch, with the same stepper, sampling and timing code: the
    baseline batched speculation is compared to (``stats.target_calls``: batched steps)."""
    _check_batch(prompts, 1, temperature, top_p, max_new_tokens)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = eos_ids(model)
    pad = next(iter(eos), 0)
    step = BatchStepper(model)
    seq, mask = _left_padded(prompts, pad)
    b = seq.shape[0]
    new: list[list[int]] = [[] for _ in range(b)]
    stats = SpecStats()
    active = torch.ones(b, dtype=torch.bool)
    t_wall = time.perf_counter()
    while bool(active.any()):
        t0 = time.perf_counter()
        p = processed_probs(step.logits(seq, mask, 1)[:, -1], temperature, top_p).cpu()  # [B, V]
        _sync(step.device)
        stats.add_time("target", time.perf_counter() - t0)
        stats.target_calls += 1
        tok = p.argmax(-1) if temperature == 0 else torch.multinomial(p, 1, generator=gen)[:, 0]  # [B]
        used = active.long()  # [B] the new column belongs to the rows that were still generating
        for i in torch.nonzero(active)[:, 0].tolist():
            new[i].append(int(tok[i]))
            if int(tok[i]) in eos or len(new[i]) == max_new_tokens:
                active[i] = False
        seq = torch.cat([seq, torch.where(used.bool(), tok, pad)[:, None]], dim=1)
        mask = torch.cat([mask, used[:, None]], dim=1)
    stats.wall_seconds = time.perf_counter() - t_wall
    stats.generated = sum(len(t) for t in new)
    return BatchOutput(new, [SpecStats(generated=len(t)) for t in new], stats)
