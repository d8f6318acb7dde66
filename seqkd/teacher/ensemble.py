"""Ensembles of teachers that share a tokenizer: one next-token distribution per step from several models.

``mix_logprobs`` is the rule (pure, no models): per step, the weighted mean of the teachers' log-probabilities
(``logprob``: a normalised weighted geometric mean of the distributions, what Marian's and fairseq's ensembles
decode with) or of their probabilities (``prob``: a mixture, what multi-teacher KD matches). :class:`EnsembleProcessor`
puts it inside HF ``generate``: the model ``generate`` runs is the first teacher, and the processor runs every other
teacher on the same rows with its own KV cache, so greedy, sampling and beam search (n-best, length penalty, early
stopping) are HF's own, unchanged; only the distribution they see is the ensemble's.

Beam search reorders rows between steps; a follower finds each row's parent by its prefix (rows with the same prefix
have the same cache, so any of them will do) and reorders its cache the same way.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

EnsembleMode = Literal["logprob", "prob"]


def ensemble_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``weights`` checked and normalised to sum 1 (equal weights when None); one line on bad input."""
    from seqkd.errors import SeqkdError

    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise SeqkdError(f"{len(w)} teacher weights for {n} teachers: give one weight per --teacher")
    if any(x < 0 or x != x for x in w) or sum(w) <= 0:
        raise SeqkdError(f"teacher weights must be >= 0 with a positive sum, got {','.join(map(str, weights))}")
    return [x / sum(w) for x in w]


def mix_logprobs(logprobs: Sequence[Tensor], weights: Sequence[float], mode: EnsembleMode = "logprob") -> Tensor:
    """The ensemble's log-probabilities ``[..., V]`` from each teacher's log-probabilities ``[..., V]``.

    ``logprob``: ``log_softmax(sum_i w_i log p_i)``; ``prob``: ``log(sum_i w_i p_i)``. ``weights`` sum to 1.
    Teachers with weight 0 are left out, and a single remaining teacher's log-probs are returned as they are, so the
    endpoints are exact (weights (1, 0) are that teacher)."""
    kept = [(lp.float(), w) for lp, w in zip(logprobs, weights) if w > 0]
    if len(kept) == 1:
        return kept[0][0]
    if mode == "logprob":
        # a weighted geometric mean sums to <= 1: renormalise (a -inf of any teacher stays -inf)
        return torch.stack([w * lp for lp, w in kept]).sum(0).log_softmax(-1)
    if mode == "prob":
        # log(sum w p) in log space: no teacher's small probabilities underflow
        logw = torch.tensor([w for _, w in kept], device=kept[0][0].device).log().view(-1, *[1] * kept[0][0].dim())
        return (torch.stack([lp for lp, _ in kept]) + logw).logsumexp(0)
    raise ValueError(f"unknown ensemble mode {mode!r}: logprob or prob")


class Follower:
    """A teacher that decodes along with the model HF ``generate`` runs: it is fed the same rows, keeps its own KV
    cache, and returns its next-token log-probs ``[R, V]`` (float32) for the rows ``generate`` scores.

    ``prompt_ids`` / ``prompt_mask`` ``[B, P]``: the batch as given to ``generate`` (decoder-only prompts left-padded;
    encoder-decoder: the sources); ``generate`` decodes ``B * expand`` rows (beams or returned samples), row ``r`` of
    prompt ``r // expand``."""

    def __init__(self, model, prompt_ids: Tensor, prompt_mask: Tensor, expand: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.enc_dec = bool(model.config.is_encoder_decoder)
        self.expand = expand
        self.prompts = prompt_ids.repeat_interleave(expand, 0).to(self.device)  # [R, P]
        self.mask = prompt_mask.long().repeat_interleave(expand, 0).to(self.device)  # [R, P] (decoder-only: grows)
        self.cache = None
        self.keys: dict[tuple[int, bytes], int] = {}  # (prompt, previous row's tokens) -> previous row
        self.encoder_outputs = None

    def _remember(self, ids: Tensor) -> None:
        rows = ids.cpu().numpy()
        self.keys = {(r // self.expand, rows[r].tobytes()): r for r in range(len(rows))}

    def _parents(self, ids: Tensor) -> Tensor:
        """For each row of ``ids [R, L]``, a row of the previous call of the same prompt whose tokens are this row's
        prefix ``ids[:, :-1]``: ``[R]``. Rows with the same prompt and prefix have the same cache."""
        prefix = ids[:, :-1].cpu().numpy()
        try:
            return torch.tensor([self.keys[(r // self.expand, prefix[r].tobytes())] for r in range(len(prefix))])
        except KeyError:
            raise RuntimeError("an ensemble row has no parent in the previous step: the generation loop fed rows this "
                               "follower cannot track") from None

    @torch.no_grad()
    def logprobs(self, ids: Tensor) -> Tensor:
        """``ids [R, L]``: the rows ``generate`` is scoring (decoder-only: prompt + generated; enc-dec: decoder ids)."""
        from transformers import DynamicCache, EncoderDecoderCache

        ids = ids.to(self.device)
        if self.cache is None:  # the first step: prefill
            if self.enc_dec:
                self.encoder_outputs = self.model.get_encoder()(input_ids=self.prompts, attention_mask=self.mask)
                self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
                out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask,
                                 decoder_input_ids=ids, past_key_values=self.cache, use_cache=True)
            else:
                if not torch.equal(ids, self.prompts):
                    raise RuntimeError("the first ensemble step must see the prompts the follower was given")
                self.cache = DynamicCache()
                # position ids as HF generate makes them for left-padded prompts: count real tokens only
                pos = (self.mask.cumsum(-1) - 1).masked_fill(self.mask == 0, 0)
                out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos,
                                 past_key_values=self.cache, use_cache=True)
        else:
            parents = self._parents(ids).to(self.device)  # [R]
            if not torch.equal(parents, torch.arange(len(parents), device=self.device)):
                self.cache.reorder_cache(parents)  # rows move within their prompt: the sources stay aligned
                if not self.enc_dec:
                    self.mask = self.mask[parents]
            if self.enc_dec:
                out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask,
                                 decoder_input_ids=ids[:, -1:], past_key_values=self.cache, use_cache=True)
            else:
                self.mask = torch.cat([self.mask, self.mask.new_ones(len(ids), 1)], 1)  # [R, L]
                pos = self.mask.sum(-1, keepdim=True) - 1  # [R, 1]
                out = self.model(input_ids=ids[:, -1:], attention_mask=self.mask, position_ids=pos,
                                 past_key_values=self.cache, use_cache=True)
        self._remember(ids)
        return out.logits[:, -1].float().log_softmax(-1)


class EnsembleProcessor:
    """A ``transformers`` logits processor that replaces the running model's next-token scores ``[R, V]`` by the
    ensemble's log-probs: the running model's (``log_softmax`` of its scores) mixed with every follower's.

    Sampling settings are applied here, after the mix (``warpers``: HF's temperature / top-k / top-p processors in
    HF's order), because HF applies its own before any custom processor; ``generate`` then runs with temperature 1
    and no truncation. Entries an earlier HF processor set to ``-inf`` (a forced or suppressed token) stay ``-inf``.
    """

    def __init__(self, followers: list[Follower], weights: Sequence[float], mode: EnsembleMode,
                 warpers: Sequence = ()) -> None:
        self.followers = followers
        self.weights = list(weights)  # the running model's first
        self.mode = mode
        self.warpers = list(warpers)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        own = scores.float().log_softmax(-1)  # [R, V]; beam search already passes log-probs (idempotent)
        mixed = mix_logprobs([own] + [f.logprobs(input_ids).to(own.device) for f in self.followers], self.weights,
                             self.mode)  # [R, V]
        mixed = mixed.masked_fill(torch.isneginf(scores), float("-inf"))
        for warp in self.warpers:
            mixed = warp(input_ids, mixed)
        return mixed


class TeacherMixture(torch.nn.Module):
    """Several teachers as one teacher for word-level KD: its ``logits`` are ``T * log(sum_i w_i softmax(l_i / T))``,
    so a divergence that divides its teacher's logits by ``T`` sees exactly the weighted mixture of the teachers'
    tempered distributions (multi-teacher KD matches the mixture, whatever ``--ensemble`` a corpus decoded with).

    It takes a batch as its members do (``logits_to_keep`` passed to members that take it; the others' logits are
    cut the same way) and returns an object with ``logits`` ``[B, S, V]``. Frozen, eval mode, no output layer of its
    own: the fused loss sees it as a teacher whose logits come whole."""

    def __init__(self, members: Sequence[torch.nn.Module], weights: Sequence[float], temperature: float = 1.0):
        super().__init__()
        import inspect

        self.members = torch.nn.ModuleList(members)
        self.weights = list(weights)
        self.temperature = float(temperature)
        self._keeps = [("logits_to_keep" in inspect.signature(m.forward).parameters) for m in members]

    def forward(self, logits_to_keep: int | None = None, **inputs):
        from types import SimpleNamespace

        lps = []
        for m, keeps in zip(self.members, self._keeps):
            if logits_to_keep is not None and keeps:
                logits = m(**inputs, logits_to_keep=logits_to_keep).logits
            else:
                logits = m(**inputs).logits
                if logits_to_keep is not None:
                    logits = logits[:, -logits_to_keep:]
            lps.append((logits.float() / self.temperature).log_softmax(-1))
        return SimpleNamespace(logits=self.temperature * mix_logprobs(lps, self.weights, "prob"))  # [B, S, V]
