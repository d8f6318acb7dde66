"""The acceptance rule on crafted probabilities, seeded repeats, and a chi-square test that the emitted token is
distributed as the target's (with a deliberately wrong rule that the same test catches)."""

import pytest
import torch
from scipy.stats import chisquare

from seqkd.speculative.acceptance import greedy_accept, sample_accept

V = 6


def onehot(ids, v=V):
    return torch.nn.functional.one_hot(torch.tensor(ids), v).float()


def test_greedy_all_accepted_emits_gamma_plus_one():
    drafts = torch.tensor([[1, 2, 3]])
    target = onehot([1, 2, 3, 5])[None]  # argmax agrees everywhere; bonus = 5
    v = greedy_accept(drafts, target)
    assert v.num_accepted.tolist() == [3]
    assert v.tokens.tolist() == [[1, 2, 3, 5]]
    assert v.num_emitted.tolist() == [4]


def test_greedy_first_rejected_emits_the_target_argmax():
    drafts = torch.tensor([[1, 2, 3], [1, 2, 4]])
    target = torch.stack([onehot([4, 2, 3, 5]), onehot([1, 2, 3, 0])])
    v = greedy_accept(drafts, target)
    assert v.num_accepted.tolist() == [0, 2]
    assert v.tokens.tolist() == [[4, -1, -1, -1], [1, 2, 3, -1]]


def test_sample_identical_distributions_accept_everything():
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(1, 3, V, generator=g), -1)
    p = torch.cat([q, onehot([4])[None]], dim=1)  # [1, 4, V]; bonus position one-hot at 4
    drafts = torch.tensor([[0, 5, 2]])
    for seed in range(20):
        v = sample_accept(drafts, q, p, generator=torch.Generator().manual_seed(seed))
        assert v.tokens.tolist() == [[0, 5, 2, 4]]


def test_sample_first_rejected_draws_from_the_residual():
    p = torch.tensor([[[0.0, 0.5, 0.5, 0, 0, 0], [1, 0, 0, 0, 0, 0]]])  # p(x=0) = 0: certain rejection
    q = torch.tensor([[[0.5, 0.5, 0.0, 0, 0, 0]]])
    # residual max(0, p - q) = [0, 0, .5, 0...] -> token 2 with certainty
    for seed in range(20):
        v = sample_accept(torch.tensor([[0]]), q, p, generator=torch.Generator().manual_seed(seed))
        assert v.num_accepted.tolist() == [0]
        assert v.tokens.tolist() == [[2, -1]]


def test_sample_greedy_draft_without_probs():
    p_sure = torch.stack([onehot([3]), onehot([1])], dim=1)  # p(3) = 1 at position 0, bonus 1
    v = sample_accept(torch.tensor([[3]]), None, p_sure, generator=torch.Generator().manual_seed(0))
    assert v.tokens.tolist() == [[3, 1]]
    # p(x) = 0.5: the residual of a one-hot q is p without x, so a rejection never re-emits x
    p = torch.tensor([[[0.5, 0.0, 0.0, 0.5, 0, 0], [0, 0, 0, 0, 0, 1.0]]])
    seen = {tuple(sample_accept(torch.tensor([[3]]), None, p, generator=torch.Generator().manual_seed(s))
                  .tokens[0].tolist()) for s in range(60)}
    assert seen == {(3, 5), (0, -1)}


def test_seeded_repeats_are_identical_and_seeds_differ():
    g = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(64, 4, V, generator=g), -1)
    p = torch.softmax(torch.randn(64, 5, V, generator=g), -1)
    d = torch.multinomial(q.view(-1, V), 1, generator=g).view(64, 4)
    a = sample_accept(d, q, p, generator=torch.Generator().manual_seed(7))
    b = sample_accept(d, q, p, generator=torch.Generator().manual_seed(7))
    c = sample_accept(d, q, p, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)
    assert not torch.equal(a.tokens, c.tokens)


def test_bad_shapes_and_lenience_are_refused():
    p = torch.full((1, 3, V), 1 / V)
    with pytest.raises(ValueError, match=r"\[B, G\+1, V\]"):
        greedy_accept(torch.tensor([[1, 2, 3]]), p)
    with pytest.raises(ValueError, match="draft_probs"):
        sample_accept(torch.tensor([[1, 2]]), torch.full((1, 3, V), 1 / V), p)
    with pytest.raises(ValueError, match="lenience"):
        sample_accept(torch.tensor([[1, 2]]), None, p, lenience=0.0)


def _wrong_rule(drafts, q, p, generator):
    """A classic bug: on rejection, resample from p instead of norm(max(0, p - q))."""
    b = drafts.shape[0]
    p_x = p[:, 0].gather(1, drafts)[:, 0]
    q_x = q[:, 0].gather(1, drafts)[:, 0]
    u = torch.rand(b, generator=generator)
    resampled = torch.multinomial(p[:, 0], 1, generator=generator)[:, 0]
    return torch.where(u * q_x < p_x, drafts[:, 0], resampled)


def _pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit of ``counts`` to ``probs`` (renormalised in float64)."""
    probs = probs.double() / probs.double().sum()
    return chisquare(counts.numpy(), (probs * counts.sum()).numpy()).pvalue


N = 40_000
ALPHA = 1e-4  # false-alarm rate of each chi-square test


@pytest.mark.parametrize("rule", ["ours", "wrong"])
def test_emitted_token_is_distributed_as_the_target(rule):
    """x ~ q, one drafted position: the first emitted token must be ~ p. Chi-square at false-alarm rate 1e-4;
    the wrong rule emits min(p, q) + (rejected mass) * p instead, far from p at N = 40,000."""
    p1 = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.07, 0.03])
    q1 = torch.tensor([0.10, 0.10, 0.30, 0.30, 0.10, 0.10])
    g = torch.Generator().manual_seed(123)
    drafts = torch.multinomial(q1.expand(N, V), 1, replacement=True, generator=g)  # [N, 1]
    q = q1.expand(N, 1, V)
    p = torch.stack([p1, torch.full((V,), 1 / V)]).expand(N, 2, V)
    if rule == "ours":
        first = sample_accept(drafts, q, p, generator=g).tokens[:, 0]
    else:
        first = _wrong_rule(drafts, q, p, g)
    counts = torch.bincount(first, minlength=V).double()
    pval = _pvalue(counts, p1)
    if rule == "ours":
        assert pval > ALPHA, pval
    else:
        assert pval < ALPHA, pval


def test_two_token_sequences_are_distributed_as_the_target():
    """Two drafted positions with context-dependent p and q: the pair (t1, t2) emitted follows p(t1) p(t2 | t1)
    (chi-square over all V*V pairs, false-alarm 1e-4). Rows whose first token is a correction continue from it."""
    g = torch.Generator().manual_seed(5)
    v = 4
    p1 = torch.softmax(torch.randn(v, generator=g), -1)
    p2 = torch.softmax(torch.randn(v, v, generator=g), -1)  # p2[t1] = p(. | t1)
    q1 = torch.softmax(torch.randn(v, generator=g), -1)
    q2 = torch.softmax(torch.randn(v, v, generator=g), -1)
    n = 60_000
    d1 = torch.multinomial(q1.expand(n, v), 1, replacement=True, generator=g)[:, 0]
    d2 = torch.multinomial(q2[d1], 1, generator=g)[:, 0]
    drafts = torch.stack([d1, d2], 1)
    q = torch.stack([q1.expand(n, v), q2[d1]], 1)
    p = torch.stack([p1.expand(n, v), p2[d1], p2[d2]], 1)  # the bonus row is never the 2nd token: unused here
    out = sample_accept(drafts, q, p, generator=g)
    t1 = out.tokens[:, 0]
    # the second token: accepted draft, correction, or (first rejected) a fresh draw from the target given t1
    t2 = torch.where(out.num_accepted >= 1, out.tokens[:, 1], torch.multinomial(p2[t1], 1, generator=g)[:, 0])
    counts = torch.bincount(t1 * v + t2, minlength=v * v).double()
    assert _pvalue(counts, (p1[:, None] * p2).reshape(-1)) > ALPHA


def test_lenience_accepts_more_and_one_is_exact():
    g = torch.Generator().manual_seed(2)
    q = torch.softmax(torch.randn(2000, 3, V, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(2000, 4, V, generator=g) * 2, -1)
    d = torch.multinomial(q.view(-1, V), 1, generator=g).view(2000, 3)
    exact = sample_accept(d, q, p, generator=torch.Generator().manual_seed(0))
    same = sample_accept(d, q, p, generator=torch.Generator().manual_seed(0), lenience=1.0)
    lossy = sample_accept(d, q, p, generator=torch.Generator().manual_seed(0), lenience=0.3)
    assert torch.equal(exact.tokens, same.tokens)
    assert lossy.num_accepted.float().mean() > exact.num_accepted.float().mean() + 0.2
