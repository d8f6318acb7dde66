"""The speculative decoder: greedy output equals the target's (HF generate) for both families, many prompts and
gammas; sampled outputs are distributed as the target's (chi-square; a wrong rule fails it); measured acceptance
agrees with 1 - TVD on the same contexts."""

import math

import pytest
import torch
from scipy.stats import chisquare

from seqkd.models import build_model, load_model
from seqkd.speculative import autoregressive_generate, speculative_generate
from seqkd.speculative import decoder as spec_decoder


def _perturbed(model, scale: float, seed: int):
    """A copy of ``model`` with Gaussian noise on every weight: a draft that agrees often, not always."""
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().nan_to_num(0.0))
    return m


def _prompts(n: int, vocab: int, seed: int, lo: int = 3, hi: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        out.append(torch.randint(4, vocab, (1, length), generator=g))  # ids 0-3 are special tokens
    return out


def _hf_greedy(model, ids: torch.Tensor, max_new: int) -> list[int]:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                         max_new_tokens=max_new, min_new_tokens=0)
    new = out[0, ids.shape[1]:] if not model.config.is_encoder_decoder else out[0, 1:]
    eos = model.generation_config.eos_token_id
    toks = new.tolist()
    return toks[: toks.index(eos) + 1] if eos in toks else toks


@pytest.fixture(scope="module", params=["causal", "seq2seq"])
def pair(request, tiny_lm_model, tiny_mt_model):
    """(target, drafts by name): a fresh small draft (rarely agrees), a noisy copy (often), the target itself."""
    target = load_model(tiny_lm_model if request.param == "causal" else tiny_mt_model)
    preset = "llama-tiny" if request.param == "causal" else "marian-tiny"
    fresh = build_model(preset, vocab_size=target.config.vocab_size, seed=3).eval()
    return target, {"fresh": fresh, "noisy": _perturbed(target, 0.5, 1), "self": target}


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_speculation_equals_target_greedy(pair, gamma):
    target, drafts = pair
    vocab = target.config.vocab_size
    accepted = 0
    for i, ids in enumerate(_prompts(12, vocab, seed=gamma)):
        ref = _hf_greedy(target, ids, 24)
        for name, draft in drafts.items():
            out = speculative_generate(target, draft, ids, gamma=gamma, temperature=0, max_new_tokens=24)
            assert out.new_tokens == ref, (name, i)
            if name == "self":
                assert out.stats.acceptance_rate == 1.0 or len(ref) < gamma + 1
            accepted += out.stats.accepted
    assert accepted > 0
    assert autoregressive_generate(target, ids, temperature=0, max_new_tokens=24).new_tokens == ref


def test_adaptive_gamma_is_exact_and_grows_after_full_blocks(pair):
    target, drafts = pair
    for ids in _prompts(6, target.config.vocab_size, seed=9):
        ref = _hf_greedy(target, ids, 30)
        out = speculative_generate(target, drafts["noisy"], ids, gamma=2, temperature=0, max_new_tokens=30,
                                   adaptive_gamma=True)
        assert out.new_tokens == ref
    out = speculative_generate(target, target, ids, gamma=2, temperature=0, max_new_tokens=30, adaptive_gamma=True)
    assert out.stats.gamma > 2 or len(out.new_tokens) <= 3


def test_sampling_is_seeded(pair):
    target, drafts = pair
    ids = _prompts(1, target.config.vocab_size, seed=4)[0]
    a = speculative_generate(target, drafts["noisy"], ids, gamma=3, temperature=1.0, max_new_tokens=20, seed=11)
    b = speculative_generate(target, drafts["noisy"], ids, gamma=3, temperature=1.0, max_new_tokens=20, seed=11)
    assert a.new_tokens == b.new_tokens
    outs = {tuple(speculative_generate(target, drafts["noisy"], ids, gamma=3, max_new_tokens=20, seed=s).new_tokens)
            for s in range(6)}
    assert len(outs) > 1


# --- distribution tests on a tiny random pair (vocabulary 8, no eos: every 2-token sequence is possible) --------
V = 8
N = 4000
ALPHA = 1e-4  # false-alarm rate of the chi-square test


def _tiny(seed: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, eos_token_id=None,
                      bos_token_id=None, pad_token_id=None)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights: peaked, distinct distributions rather than near-uniform ones
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(25)
    return m


@pytest.fixture(scope="module")
def tiny_pair():
    return _tiny(0, 2), _tiny(1, 1), torch.tensor([[1, 5, 2]])


def _exact_pair_probs(target, ids, temperature, top_p):
    """P(t1, t2) under target-only sampling, from the target's own processed distributions: [V * V]."""
    with torch.no_grad():
        p1 = spec_decoder.processed_probs(target(ids).logits[0, -1], temperature, top_p)
        seqs = torch.cat([ids.expand(V, -1), torch.arange(V)[:, None]], 1)
        p2 = spec_decoder.processed_probs(target(seqs).logits[:, -1], temperature, top_p)
    return (p1[:, None] * p2).reshape(-1).double()


def _pair_counts(target, draft, ids, gamma, temperature, top_p):
    counts = torch.zeros(V * V, dtype=torch.float64)
    for s in range(N):
        t = speculative_generate(target, draft, ids, gamma=gamma, temperature=temperature, top_p=top_p,
                                 max_new_tokens=2, seed=s).new_tokens
        counts[t[0] * V + t[1]] += 1
    return counts


def _chi2_pvalue(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0  # nothing outside the target's support (top-p)
    probs = probs[keep] / probs[keep].sum()
    return chisquare(counts[keep].numpy(), (probs * counts.sum()).numpy()).pvalue


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_p,gamma", [(1.0, 1.0, 3), (0.7, 0.9, 1)])
def test_sampled_two_token_sequences_follow_the_target(tiny_pair, temperature, top_p, gamma):
    target, draft, ids = tiny_pair
    probs = _exact_pair_probs(target, ids, temperature, top_p)
    counts = _pair_counts(target, draft, ids, gamma, temperature, top_p)
    assert _chi2_pvalue(counts, probs) > ALPHA


@pytest.mark.slow
def test_a_wrong_acceptance_rule_fails_the_distribution_test(tiny_pair, monkeypatch):
    """Resampling from p instead of norm(max(0, p - q)) after a rejection biases towards the draft: caught."""
    target, draft, ids = tiny_pair
    real = spec_decoder.sample_accept

    def wrong(drafts, q, p, *, generator=None, lenience=1.0):
        v = real(drafts, q, p, generator=generator)
        n = int(v.num_accepted[0])
        if n < drafts.shape[1]:
            v.tokens[0, n] = int(torch.multinomial(p[0, n], 1, generator=generator))
        return v

    monkeypatch.setattr(spec_decoder, "sample_accept", wrong)
    probs = _exact_pair_probs(target, ids, 1.0, 1.0)
    assert _chi2_pvalue(_pair_counts(target, draft, ids, 3, 1.0, 1.0), probs) < ALPHA


def test_verified_acceptance_agrees_with_one_minus_tvd(tiny_pair):
    """Per tested token, P(accept | context) = sum_x min(p, q) exactly, so the verified acceptance rate and the
    analytic estimate on the same contexts agree within binomial noise (4 standard errors)."""
    target, draft, ids = tiny_pair
    from seqkd.speculative import SpecStats

    total = SpecStats()
    for s in range(300):
        total += speculative_generate(target, draft, ids, gamma=4, temperature=1.0, max_new_tokens=12, seed=s).stats
    a, est, n = total.verified_acceptance_rate, total.analytic_acceptance, total.verified
    se = math.sqrt(est * (1 - est) / n)
    assert 0.05 < est < 0.95  # a pair that neither always nor never agrees
    assert abs(a - est) < 4 * se, (a, est, n)
    assert total.acceptance_rate <= a  # drafted tokens after a rejection are never tested


def test_bad_input_is_refused(tiny_pair):
    target, draft, ids = tiny_pair
    with pytest.raises(ValueError, match="gamma"):
        speculative_generate(target, draft, ids, gamma=0)
    with pytest.raises(ValueError, match="empty prompt"):
        speculative_generate(target, draft, ids[:, :0])
    other = build_model("llama-tiny", vocab_size=V + 4, seed=0)
    with pytest.raises(ValueError, match="vocabulary sizes"):
        speculative_generate(target, other, ids)
