"""Batched speculative decoding: every row's greedy output equals that row's target greedy decoding (rows of
different lengths, rows that finish early); sampled rows are distributed as the target's; the batched target-only
baseline decodes what the target decodes alone."""

import pytest
import torch
from test_spec_decoder import ALPHA, V, _chi2_pvalue, _exact_pair_probs, _hf_greedy, _perturbed, _prompts, _tiny

from seqkd.models import build_model, load_model
from seqkd.speculative.batch import autoregressive_generate_batch, speculative_generate_batch


@pytest.fixture(scope="module")
def lm(tiny_lm_model):
    target = load_model(tiny_lm_model)
    fresh = build_model("llama-tiny", vocab_size=target.config.vocab_size, seed=3).eval()
    return target, {"fresh": fresh, "noisy": _perturbed(target, 0.5, 1), "self": target}


@pytest.mark.parametrize("gamma", [1, 3])
def test_batched_greedy_equals_each_rows_target_greedy(lm, gamma):
    target, drafts = lm
    prompts = _prompts(6, target.config.vocab_size, seed=10 + gamma, lo=2, hi=14)  # left padding up to 11 columns
    refs = [_hf_greedy(target, ids, 24) for ids in prompts]
    assert len({len(r) for r in refs}) > 1  # rows finish at different steps
    for name, draft in drafts.items():
        out = speculative_generate_batch(target, draft, prompts, gamma=gamma, temperature=0, max_new_tokens=24)
        assert out.new_tokens == refs, name
        accepted = sum(r.accepted for r in out.rows)
        if name == "self":
            assert accepted == sum(r.drafted for r in out.rows)
        assert out.stats.generated == sum(len(r) for r in refs)
        assert out.stats.target_calls <= max(len(r) for r in refs)  # one batched call per block, not per row
    assert autoregressive_generate_batch(target, prompts, temperature=0, max_new_tokens=24).new_tokens == refs


def test_a_batch_of_one_matches_the_single_row_decoder(lm):
    from seqkd.speculative import speculative_generate

    target, drafts = lm
    for ids in _prompts(4, target.config.vocab_size, seed=21):
        one = speculative_generate(target, drafts["noisy"], ids, gamma=3, temperature=0, max_new_tokens=20)
        batch = speculative_generate_batch(target, drafts["noisy"], [ids], gamma=3, temperature=0, max_new_tokens=20)
        assert batch.new_tokens == [one.new_tokens]
        r = batch.rows[0]
        assert (r.drafted, r.accepted, r.emitted, r.target_calls) == (one.stats.drafted, one.stats.accepted,
                                                                      one.stats.emitted, one.stats.target_calls)


@pytest.mark.slow
def test_sampled_rows_follow_the_target():
    """Every row of a batch of identical prompts is an independent draw: pairs (t1, t2) follow the target."""
    target, draft, ids = _tiny(0, 2), _tiny(1, 1), torch.tensor([[1, 5, 2]])
    probs = _exact_pair_probs(target, ids, 1.0, 1.0)
    counts = torch.zeros(V * V, dtype=torch.float64)
    for s in range(250):
        out = speculative_generate_batch(target, draft, [ids] * 16, gamma=3, temperature=1.0, max_new_tokens=2,
                                         seed=s)
        for t in out.new_tokens:
            counts[t[0] * V + t[1]] += 1
    assert _chi2_pvalue(counts, probs) > ALPHA


def test_encoder_decoder_is_refused(tiny_mt_model):
    m = load_model(tiny_mt_model)
    with pytest.raises(ValueError, match="decoder-only"):
        speculative_generate_batch(m, m, [torch.tensor([[5, 6, 3]])], temperature=0)


def test_cli_batched_speculation(tiny_lm_model, tmp_path, capsys):
    import json

    from seqkd.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a b c\nd e\nf g h i j\ng\nh i\n")
    report = tmp_path / "r.json"
    base = ["speculate", "--target", str(tiny_lm_model), "--draft", str(tiny_lm_model), "--input", str(prompts),
            "--temperature", "0", "--max-new-tokens", "12", "--gamma", "3"]
    assert main([*base, "--batch-size", "2", "--passes", "2", "--out", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["batch_size"] == 2 and r["identical_outputs"] == 1.0 and r["acceptance_rate"] == 1.0
    assert r["batched_calls"]["verification"] < r["target_calls"]  # one call served several rows
    assert len(r["tokens_per_s"]["seqkd_speculative"]["per_pass"]) == 2 and r["cost_ratio"] > 0
    capsys.readouterr()
    for extra in (["--engine", "hf"], ["--compare-hf"], ["--adaptive-gamma"]):
        assert main([*base, "--batch-size", "2", *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_batched_greedy_with_a_pruned_draft_is_exact(lm):
    from seqkd.models.draft_vocab import prune_output_layer

    target, drafts = lm
    vocab = target.config.vocab_size
    import copy

    pruned = copy.deepcopy(drafts["noisy"])
    prune_output_layer(pruned, [3] + list(range(4, vocab, 3)))
    prompts = _prompts(5, vocab, seed=31, lo=2, hi=10)
    out = speculative_generate_batch(target, pruned, prompts, gamma=3, temperature=0, max_new_tokens=20)
    assert out.new_tokens == [_hf_greedy(target, ids, 20) for ids in prompts]
    assert sum(r.accepted for r in out.rows) > 0
