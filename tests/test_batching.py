import numpy as np

from seqkd.data.batching import TokenBudgetBatchSampler


def test_batches_respect_budget_and_cover_every_example_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=500).tolist()
    s = TokenBudgetBatchSampler(lengths, max_tokens=256, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 256
    assert len(batches) == len(s)


def test_overlong_example_gets_its_own_batch():
    s = TokenBudgetBatchSampler([5, 500, 5], max_tokens=100, shuffle=False)
    assert sorted(map(sorted, s)) == [[0, 2], [1]]


def test_epochs_differ_but_are_reproducible():
    lengths = list(range(1, 200))
    a = TokenBudgetBatchSampler(lengths, 300, seed=3)
    b = TokenBudgetBatchSampler(lengths, 300, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert list(a) != list(b)
    assert len(list(b)) == len(a)  # the batch count does not depend on the epoch
    assert a.sampler is a  # accelerate forwards set_epoch through `.sampler` when it shards batches


def test_max_sentences():
    s = TokenBudgetBatchSampler([1] * 10, max_tokens=1000, max_sentences=4, shuffle=False)
    assert [len(b) for b in s] == [4, 4, 2]
