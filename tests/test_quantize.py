"""Int8 drafts for CPU decoding: every linear layer quantized, the caller's model untouched, outputs close to float32;
speculative decoding stays exact with an int8 draft (greedy equal to the target's, sampled pairs distributed as the
target's, a pruned draft too); why the target is not quantized (its output depends on the rows sharing a call); the
CLI and its refusals."""

import json

import pytest
import torch
from test_draft_vocab import _pruned
from test_spec_decoder import ALPHA, _chi2_pvalue, _exact_pair_probs, _hf_greedy, _pair_counts, _perturbed, _prompts

from seqkd.config import SpeculateConfig
from seqkd.errors import SeqkdError
from seqkd.models import load_model
from seqkd.models.quantize import maybe_quantize, quantize_int8
from seqkd.speculative import autoregressive_generate, speculative_generate


def _linears(model) -> int:
    return sum(type(m) is torch.nn.Linear for m in model.modules())


def _quantized(model) -> int:
    return sum(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in model.modules())


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_every_linear_layer_becomes_int8_and_the_original_stays(which, tiny_lm_model, tiny_mt_model):
    model = load_model(tiny_lm_model if which == "lm" else tiny_mt_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = _linears(model)
    q = quantize_int8(model)
    assert n > 0 and _quantized(q) == n and _linears(q) == 0
    assert _linears(model) == n and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert q.seqkd_quantization == "int8" and maybe_quantize(model, "none") is model
    ids = torch.tensor([[5, 9, 17, 30, 3]])
    with torch.no_grad():
        if which == "lm":
            ref, got = model(ids).logits, q(ids).logits
        else:
            kw = dict(input_ids=ids, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id, 7, 8]]))
            ref, got = model(**kw).logits, q(**kw).logits
    err = (got - ref).abs().max().item()
    # int8 weights and 8-bit activation scales on a 64-wide toy model: near float32 (measured ~0.1 of the logits'
    # spread at worst), not equal (it did quantize)
    assert 0 < err < 0.2 * ref.std().item()


def test_quantize_refuses_what_it_cannot_do(tiny_lm_model):
    with pytest.raises(ValueError, match="float32"):
        quantize_int8(load_model(tiny_lm_model, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="unknown quantization"):
        maybe_quantize(load_model(tiny_lm_model), "int4")


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_greedy_with_an_int8_draft_equals_the_float_target(which, tiny_lm_model, tiny_mt_model):
    target = load_model(tiny_lm_model if which == "lm" else tiny_mt_model)
    draft = quantize_int8(_perturbed(target, 0.3, 4))
    accepted = 0
    for ids in _prompts(8, target.config.vocab_size, seed=11):
        out = speculative_generate(target, draft, ids, gamma=3, temperature=0, max_new_tokens=20)
        assert out.new_tokens == _hf_greedy(target, ids, 20)
        accepted += out.stats.accepted
    assert accepted > 0


def test_a_pruned_int8_draft_keeps_its_map_and_decoding_stays_exact(tiny_lm_model):
    target = load_model(tiny_lm_model)
    draft = quantize_int8(_pruned(_perturbed(target, 0.3, 2), [3] + list(range(4, target.config.vocab_size, 2))))
    assert draft.seqkd_vocab_map is not None
    for ids in _prompts(8, target.config.vocab_size, seed=12):
        ref = autoregressive_generate(target, ids, temperature=0, max_new_tokens=20).new_tokens
        assert speculative_generate(target, draft, ids, gamma=4, temperature=0, max_new_tokens=20).new_tokens == ref


def test_why_the_target_stays_float_an_int8_models_rows_depend_on_their_call(tiny_lm_model):
    """Dynamic int8 scales a call's activations by that call's range: the same position scored alone and beside
    other rows gives other logits (a float model's differ by rounding only). So an int8 target is not one function
    of its input, and speculation could not be exact with respect to it."""
    model = load_model(tiny_lm_model)
    q = quantize_int8(model)
    ids = torch.tensor([[5, 9, 17, 30, 8, 11]])
    with torch.no_grad():
        alone = q(ids, logits_to_keep=1).logits[0, -1]
        beside = q(ids, logits_to_keep=4).logits[0, -1]  # the output layer sees 4 rows in one call
        f_alone, f_beside = model(ids, logits_to_keep=1).logits[0, -1], model(ids, logits_to_keep=4).logits[0, -1]
    assert (alone - beside).abs().max() > 100 * (f_alone - f_beside).abs().max().clamp(min=1e-7)


@pytest.mark.slow
def test_sampled_pairs_with_an_int8_draft_follow_the_target(tiny_pair):
    target, draft, ids = tiny_pair
    counts = _pair_counts(target, quantize_int8(draft), ids, 2, 1.0, 1.0)
    assert _chi2_pvalue(counts, _exact_pair_probs(target, ids, 1.0, 1.0)) > ALPHA


@pytest.fixture(scope="module")
def tiny_pair():
    from test_spec_decoder import _tiny

    return _tiny(0, 2), _tiny(1, 1), torch.tensor([[1, 5, 2]])


def test_speculate_quantizes_copies_and_reports_it(tiny_lm_model, tmp_path):
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative.runners import speculate

    target = load_model(tiny_lm_model)
    draft = _perturbed(target, 0.3, 3)
    cfg = SpeculateConfig(target="t", draft="d", gamma=2, temperature=0.0, max_new_tokens=8, warmup=0,
                          prompt_format="translation", draft_quantize="int8", out=str(tmp_path / "r.json"))
    r = speculate(cfg, progress=False, target=target, draft=draft, tokenizers=load_tokenizers(tiny_lm_model),
                  prompts=["a b c", "d e f", "g h"])
    assert r["identical_outputs"] == 1.0 and r["draft_quantize"] == "int8"
    assert r["params"]["draft"] == sum(p.numel() for p in draft.parameters())  # counted before quantizing
    assert _linears(draft) > 0  # the caller's draft was not quantized in place
    assert json.loads((tmp_path / "r.json").read_text())["draft_quantize"] == "int8"


def test_bad_quantization_settings_are_one_line(tiny_lm_model, capsys):
    from seqkd.cli import main

    for kw, match in ((dict(engine="vllm"), "use --engine seqkd or hf"), (dict(device="cuda"), "--device cpu"),
                      (dict(dtype="bfloat16"), "--dtype float32")):
        with pytest.raises(SeqkdError, match=match):
            SpeculateConfig(target="t", draft="d", draft_quantize="int8", **kw)
    args = ["speculate", "--target", str(tiny_lm_model), "--draft", str(tiny_lm_model), "--input", "nowhere.txt",
            "--draft-quantize", "int4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "int4" in err and len(err.strip().splitlines()) == 1
