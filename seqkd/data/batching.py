"""Batching: token-budget batches of similar-length examples (:class:`TokenBudgetBatchSampler`), padding, and the
collators that turn examples into tensors (:class:`Collator`; :class:`DistillCollator` adds weights and stored
top-k)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from seqkd.data.prompts import IGNORE_INDEX


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices; ``len(batch) * max_length_in_batch <= max_tokens`` (a single example
    longer than the budget forms a batch of its own).

    Examples are sorted by length with random tie-breaking, cut into batches, and the batch order shuffled;
    the randomness comes from ``(seed, epoch)`` only, so an epoch's batches are the same after a resume and on
    every process (the HF Trainer / accelerate call :meth:`set_epoch`, and shard the batches across processes).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        *,
        max_sentences: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        # accelerate's BatchSamplerShard forwards set_epoch only to `.sampler`; point that at ourselves.
        self.sampler = self
        self._n = len(self._batches(np.random.default_rng(0)))  # batch count does not depend on tie order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, rng: np.random.Generator) -> list[list[int]]:
        n = len(self.lengths)
        tie = rng.permutation(n) if self.shuffle else np.arange(n)
        order = tie[np.argsort(self.lengths[tie], kind="stable")]
        batches, cur, cur_max = [], [], 0
        for i in order.tolist():
            new_max = max(cur_max, int(self.lengths[i]))
            full = self.max_sentences is not None and len(cur) >= self.max_sentences
            if cur and (new_max * (len(cur) + 1) > self.max_tokens or full):
                batches.append(cur)
                cur, new_max = [], int(self.lengths[i])
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._batches(rng)
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        return iter(batches)

    def __len__(self) -> int:
        return self._n


class Collator:
    """Pads a list of examples into a batch: input_ids/attention_mask ``[B, S]``, labels ``[B, T]``.

    For seq2seq models (``decoder_start_id`` given) it also builds ``decoder_input_ids`` ``[B, T]``: the labels
    shifted right behind the start token, so the model need not see labels (and computes no loss of its own).
    Padding is on the right for training; :mod:`seqkd.teacher.decoding` left-pads prompts itself.
    """

    def __init__(self, pad_id: int, decoder_start_id: int | None = None):
        self.pad_id = pad_id
        self.decoder_start_id = decoder_start_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        inputs = pad([ex["input_ids"] for ex in examples], self.pad_id)
        # The mask comes from lengths, not `!= pad`: a tokenizer may reuse pad as another special token.
        lengths = torch.tensor([len(ex["input_ids"]) for ex in examples])
        batch = {"input_ids": inputs}
        batch["attention_mask"] = (torch.arange(inputs.shape[1])[None, :] < lengths[:, None]).long()
        batch["labels"] = pad([ex["labels"] for ex in examples], IGNORE_INDEX)
        if self.decoder_start_id is not None:
            dec = batch["labels"].roll(1, dims=1)
            dec[:, 0] = self.decoder_start_id
            batch["decoder_input_ids"] = dec.masked_fill(dec == IGNORE_INDEX, self.pad_id)
        return batch


def pad(seqs: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    """Right- (or left-) pad lists of ids into a ``[B, max_len]`` long tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if left:
                out[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            else:
                out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class DistillCollator(Collator):
    """:class:`Collator` plus ``weight`` ``[B]``, ``prompt_len`` ``[B]`` and, when the examples have them,
    ``topk_ids`` / ``topk_logprobs`` ``[B, T, k]`` aligned with ``labels`` (zeros elsewhere)."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        batch["weight"] = torch.tensor([float(ex.get("weight", 1.0)) for ex in examples])
        batch["prompt_len"] = torch.tensor([int(ex.get("prompt_len", 0)) for ex in examples])
        if all("topk_ids" in ex for ex in examples) and examples:
            b, t = batch["labels"].shape
            k = len(examples[0]["topk_ids"][0])
            ids = torch.zeros(b, t, k, dtype=torch.long)
            lps = torch.zeros(b, t, k, dtype=torch.float32)
            for i, ex in enumerate(examples):
                start = len(ex["labels"]) - len(ex["topk_ids"])  # the target's first label position
                n = len(ex["topk_ids"])
                ids[i, start : start + n] = torch.tensor(ex["topk_ids"], dtype=torch.long)
                lps[i, start : start + n] = torch.tensor(ex["topk_logprobs"], dtype=torch.float32)
            batch["topk_ids"], batch["topk_logprobs"] = ids, lps
        return batch
