"""A draft with a pruned output layer (FR-Spec): the token choice, the logits it spreads back over the target's
vocabulary, exact decoding (greedy equal to the target's; sampled pairs distributed as the target's), saving and
loading, the CLI, and the engines and jobs that must refuse it."""

import copy
import json

import pytest
import torch
from test_spec_decoder import ALPHA, _chi2_pvalue, _exact_pair_probs, _hf_greedy, _pair_counts, _perturbed, _prompts

from seqkd.errors import SeqkdError
from seqkd.models import count_parameters, load_model, save_model
from seqkd.models.draft_vocab import DRAFT_VOCAB_FILE, expand_logits, prune_output_layer, token_frequencies, top_tokens
from seqkd.speculative import speculative_generate
from seqkd.speculative.decoder import processed_probs


def test_top_tokens_ranks_by_frequency_and_keeps_eos():
    counts = token_frequencies([[5, 7, 5, 3], [7, 9, 5, 7, 3, 3, 3]])  # 3:4, 5:3, 7:3, 9:1
    assert top_tokens(counts, 3, 12, always=[1]) == [1, 3, 5]  # 5 and 7 tie at 3: the smaller id ranks first
    assert top_tokens(counts, 5, 12, always=[1]) == [1, 3, 5, 7, 9]
    assert top_tokens(token_frequencies([[5]]), 3, 12, always=[1]) == [0, 1, 5]  # too few distinct: smallest ids
    for k, vocab, seqs, match in ((0, 12, [[5]], "--top must be"), (13, 12, [[5]], "--top must be"),
                                  (2, 12, [[12]], "outside the target's vocabulary")):
        with pytest.raises(SeqkdError, match=match):
            top_tokens(token_frequencies(seqs), k, vocab)
    with pytest.raises(SeqkdError, match="smaller than"):
        top_tokens(counts, 1, 12, always=[1, 2])


def test_expanded_logits_give_zero_probability_outside_the_kept_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    full = expand_logits(logits, torch.tensor([4, 0, 2]), 6)
    assert full[0, [4, 0, 2]].tolist() == [2.0, -1.0, 0.5] and torch.isinf(full[0, [1, 3, 5]]).all()
    for t, top_p in ((1.0, 1.0), (0.7, 0.9), (0.0, 1.0)):
        probs = processed_probs(full, t, top_p)
        assert probs[0, [1, 3, 5]].sum() == 0 and probs.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(processed_probs(full, 1.0)[0, [4, 0, 2]], logits.softmax(-1)[0])


def _pruned(model, ids):
    m = copy.deepcopy(model)
    prune_output_layer(m, ids)
    return m


def test_a_pruned_draft_scores_only_its_rows(tiny_lm_model):
    draft = load_model(tiny_lm_model)
    ids = list(range(0, draft.config.vocab_size, 3))
    pruned = _pruned(draft, ids)
    x = torch.tensor([[2, 7, 9, 30]])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, draft(x).logits[..., ids])
    assert pruned.get_output_embeddings().weight.shape[0] == len(ids)
    assert pruned.get_input_embeddings().weight.shape[0] == draft.config.vocab_size  # reads every target token
    assert count_parameters(pruned) < count_parameters(draft) or draft.config.tie_word_embeddings


def test_greedy_with_a_pruned_draft_equals_target_greedy(tiny_lm_model):
    """Most of the target's tokens are outside the kept rows: they are never drafted, yet the output is exact."""
    target = load_model(tiny_lm_model)
    vocab = target.config.vocab_size
    draft = _pruned(_perturbed(target, 0.3, 2), [3] + list(range(4, vocab, 4)))  # eos (3) and a quarter of the rest
    accepted = 0
    for ids in _prompts(10, vocab, seed=5):
        ref = _hf_greedy(target, ids, 24)
        out = speculative_generate(target, draft, ids, gamma=3, temperature=0, max_new_tokens=24)
        assert out.new_tokens == ref
        accepted += out.stats.accepted
    assert accepted > 0


@pytest.mark.slow
def test_sampled_pairs_with_a_pruned_draft_follow_the_target(tiny_pair):
    """q = 0 outside the kept tokens: the residual max(0, p - q) must supply their whole target probability."""
    target, draft, ids = tiny_pair
    pruned = _pruned(draft, [0, 2, 5, 7])
    probs = _exact_pair_probs(target, ids, 1.0, 1.0)
    assert _chi2_pvalue(_pair_counts(target, pruned, ids, 3, 1.0, 1.0), probs) > ALPHA


@pytest.fixture(scope="module")
def tiny_pair():
    from test_spec_decoder import _tiny

    return _tiny(0, 2), _tiny(1, 1), torch.tensor([[1, 5, 2]])


def test_save_and_load_keep_the_map(tiny_lm_model, tmp_path):
    from seqkd.models.tokenizer import load_tokenizers

    pruned = _pruned(load_model(tiny_lm_model), [0, 3, 9, 40])
    save_model(pruned, load_tokenizers(tiny_lm_model), tmp_path / "d")
    meta = json.loads((tmp_path / "d" / DRAFT_VOCAB_FILE).read_text())
    assert meta == {"target_ids": [0, 3, 9, 40], "target_vocab_size": pruned.config.vocab_size}
    back = load_model(tmp_path / "d")
    assert back.seqkd_vocab_map.tolist() == [0, 3, 9, 40]
    x = torch.tensor([[2, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, pruned(x).logits)


@pytest.fixture(scope="module")
def corpus(tiny_lm_model, tmp_path_factory):
    from seqkd.cli import main

    d = tmp_path_factory.mktemp("corpus")
    (d / "src.txt").write_text("".join(f"{w} {w} {v}\n" for w in "abcdefgh" for v in "xyz"))
    assert main(["generate", "--teacher", str(tiny_lm_model), "--input", str(d / "src.txt"), "--out", str(d / "c"),
                 "--mode", "greedy", "--max-new-tokens", "12"]) == 0
    return d / "c"


def test_cli_prunes_a_draft_and_speculate_uses_it(tiny_lm_model, corpus, tmp_path, capsys):
    from seqkd.cli import main
    from seqkd.teacher.corpus import read_corpus

    out = tmp_path / "pruned"
    assert main(["draft", "vocab", "--draft", str(tiny_lm_model), "--corpus", str(corpus), "--top", "16",
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    counts = token_frequencies(h["token_ids"] for r in read_corpus(corpus) for h in r["hypotheses"])
    kept = json.loads((out / DRAFT_VOCAB_FILE).read_text())["target_ids"]
    assert len(kept) == 16 and 3 in kept  # eos kept
    coverage = sum(counts[t] for t in kept) / sum(counts.values())
    assert f"covering {coverage:.1%}" in said and coverage > 0.5
    prompts = tmp_path / "p.txt"
    prompts.write_text("a a x\nb b y\nc c z\n")
    report = tmp_path / "r.json"
    args = ["speculate", "--target", str(tiny_lm_model), "--draft", str(out), "--input", str(prompts),
            "--gamma", "2", "--temperature", "0", "--max-new-tokens", "10", "--out", str(report)]
    assert main(args) == 0
    r = json.loads(report.read_text())
    assert r["drafted"] > 0 and r["accepted"] > 0 and r["identical_outputs"] == 1.0  # exact, greedy
    capsys.readouterr()
    for engine in ("hf", "vllm"):
        assert main([*args[:-2], "--engine", engine]) == 2
        err = capsys.readouterr().err
        assert "pruned output layer" in err and len(err.strip().splitlines()) == 1


def test_training_jobs_refuse_a_pruned_draft(tiny_lm_model, corpus, tmp_path, capsys):
    from seqkd.cli import main

    out = tmp_path / "pruned"
    assert main(["draft", "vocab", "--draft", str(tiny_lm_model), "--corpus", str(corpus), "--top", "16",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    prompts = tmp_path / "p.txt"
    prompts.write_text("a a x\nb b y\n")
    cases = [["distill", "--model", str(out), "--teacher", str(tiny_lm_model), "--train-source", str(prompts),
              "--train-target", str(prompts), "--out", str(tmp_path / "s"), "--max-steps", "1"],
             ["align", "--target", str(tiny_lm_model), "--draft", str(out), "--prompts", str(prompts),
              "--out", str(tmp_path / "a")],
             ["draft", "vocab", "--draft", str(out), "--corpus", str(corpus), "--top", "8", "--out",
              str(tmp_path / "again")]]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "pruned output layer" in err and len(err.strip().splitlines()) == 1, err
