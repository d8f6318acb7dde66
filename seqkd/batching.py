"""Token-budget batching: batches of similar-length examples whose padded size stays under a token budget."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


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
