"""`speculate --onednn`: float32 linear layers through oneDNN (weights prepacked once). The prepacked model computes
what the float64 model does to float32 rounding, shares everything but its linear layers with the caller's model
(which stays as it was), and speculative decoding stays exact with respect to it: greedy tokens equal HF generate's on
the same prepacked target (decoder-only and encoder-decoder, with a pruned or an int8 draft), sampled pairs follow
its distribution, and speculate() records it. Bad settings are one line."""

import pytest
import torch
from test_draft_vocab import _pruned
from test_spec_decoder import ALPHA, _chi2_pvalue, _exact_pair_probs, _hf_greedy, _pair_counts, _perturbed, _prompts

from seqkd.config import SpeculateConfig
from seqkd.errors import SeqkdError
from seqkd.models import load_model
from seqkd.models.onednn import OneDNNLinear, prepack_linears
from seqkd.models.quantize import quantize_int8
from seqkd.speculative import autoregressive_generate, speculative_generate


def _count(model, kind: str) -> int:
    """How many modules of ``model`` are float ``nn.Linear`` ("Linear") or oneDNN ("OneDNNLinear") layers."""
    cls = {"Linear": torch.nn.Linear, "OneDNNLinear": OneDNNLinear}[kind]
    return sum(type(m) is cls for m in model.modules())


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_prepacked_linears_compute_the_float64_model_and_share_the_rest(which, tiny_lm_model, tiny_mt_model):
    model = load_model(tiny_lm_model if which == "lm" else tiny_mt_model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = _count(model, "Linear")
    packed = prepack_linears(model)
    assert n > 0 and _count(packed, "OneDNNLinear") == n and _count(packed, "Linear") == 0
    # the caller's model is untouched; the embeddings are the same tensor, not a copy
    assert _count(model, "Linear") == n and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert packed.get_input_embeddings().weight is model.get_input_embeddings().weight
    assert packed.seqkd_linears == "onednn" and packed.config is model.config
    ids = torch.tensor([[5, 9, 17, 30, 3, 12, 40]])
    kw = dict(input_ids=ids)
    if which == "mt":
        kw["decoder_input_ids"] = torch.tensor([[model.config.decoder_start_token_id, 7, 8, 21]])
    ref64 = load_model(tiny_lm_model if which == "lm" else tiny_mt_model, dtype=torch.float64).eval()
    with torch.no_grad():
        exact = ref64(**kw).logits
        got, mkl = packed(**kw).logits, model(**kw).logits
    assert got.dtype == torch.float32
    # float32 rounding only, as torch's own float32 path (a 64-wide model: ~1e-6 of the logits' scale)
    tol = 1e-5 * exact.abs().max().item()
    assert (got.double() - exact).abs().max().item() < tol
    assert (mkl.double() - exact).abs().max().item() < tol


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_greedy_speculation_with_a_prepacked_pair_equals_hf_generate_on_the_prepacked_target(
        which, tiny_lm_model, tiny_mt_model):
    model = load_model(tiny_lm_model if which == "lm" else tiny_mt_model).eval()
    target, draft = prepack_linears(model), prepack_linears(_perturbed(model, 0.3, 4).eval())
    accepted = 0
    with torch.no_grad():
        for ids in _prompts(8, model.config.vocab_size, seed=21):
            ref = _hf_greedy(target, ids, 20)
            assert autoregressive_generate(target, ids, temperature=0, max_new_tokens=20).new_tokens == ref
            for gamma in (2, 4):
                out = speculative_generate(target, draft, ids, gamma=gamma, temperature=0, max_new_tokens=20)
                assert out.new_tokens == ref
                accepted += out.stats.accepted
    assert accepted > 0  # the draft was right sometimes: acceptance was exercised, not only the residual


def test_a_pruned_or_int8_draft_beside_a_prepacked_target_stays_exact(tiny_lm_model):
    model = load_model(tiny_lm_model).eval()
    target = prepack_linears(model)
    rough = _perturbed(model, 0.3, 2).eval()
    pruned = prepack_linears(_pruned(rough, [3] + list(range(4, model.config.vocab_size, 2))))
    assert pruned.seqkd_vocab_map is not None and _count(pruned, "OneDNNLinear") > 0
    int8 = prepack_linears(quantize_int8(rough))  # nothing float is left to prepack: the int8 layers stay
    assert _count(int8, "OneDNNLinear") == 0 and _count(int8, "Linear") == 0
    with torch.no_grad():
        for ids in _prompts(6, model.config.vocab_size, seed=22):
            ref = autoregressive_generate(target, ids, temperature=0, max_new_tokens=16).new_tokens
            for d in (pruned, int8):
                assert speculative_generate(target, d, ids, gamma=3, temperature=0, max_new_tokens=16).new_tokens == ref


@pytest.mark.slow
def test_sampled_pairs_from_a_prepacked_pair_follow_the_prepacked_target():
    from test_spec_decoder import _tiny

    target, draft = prepack_linears(_tiny(0, 2).eval()), prepack_linears(_tiny(1, 1).eval())
    ids = torch.tensor([[1, 5, 2]])
    with torch.no_grad():
        counts = _pair_counts(target, draft, ids, 2, 1.0, 1.0)
    assert _chi2_pvalue(counts, _exact_pair_probs(target, ids, 1.0, 1.0)) > ALPHA


@pytest.mark.parametrize(("engine", "batch"), [("seqkd", 1), ("hf", 1), ("seqkd", 3)])
def test_speculate_prepacks_copies_and_reports_it(engine, batch, tiny_lm_model, tmp_path):
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative.runners import speculate

    target = load_model(tiny_lm_model)
    draft = _perturbed(target, 0.3, 3)
    cfg = SpeculateConfig(target="t", draft="d", gamma=2, temperature=0.0, max_new_tokens=8, warmup=0, engine=engine,
                          batch_size=batch, prompt_format="translation", onednn=True, out=str(tmp_path / "r.json"))
    r = speculate(cfg, progress=False, target=target, draft=draft, tokenizers=load_tokenizers(tiny_lm_model),
                  prompts=["a b c", "d e f", "g h"])
    assert r["onednn"] is True and r["engine"] == engine and r["batch_size"] == batch and r["speedup"] > 0
    if engine == "seqkd":  # (HF assisted generation's report has no token comparison)
        assert r["identical_outputs"] == 1.0
    assert r["params"]["target"] == sum(p.numel() for p in target.parameters())  # counted before prepacking
    assert _count(target, "Linear") > 0 and _count(target, "OneDNNLinear") == 0  # the caller's models as they were
    assert _count(draft, "OneDNNLinear") == 0


def test_onednn_settings_that_cannot_work_are_one_line(tiny_lm_model, capsys):
    from seqkd.cli import main

    for kw in (dict(engine="vllm"), dict(compile=True), dict(device="cuda"), dict(dtype="bfloat16")):
        with pytest.raises(SeqkdError, match="--onednn prepacks float32 linear layers"):
            SpeculateConfig(target="t", draft="d", onednn=True, **kw)
    with pytest.raises(ValueError, match="float32"):
        prepack_linears(load_model(tiny_lm_model, dtype=torch.bfloat16))
    capsys.readouterr()  # (the model's loading bar)
    args = ["speculate", "--target", str(tiny_lm_model), "--draft", str(tiny_lm_model), "--input", "nowhere.txt",
            "--onednn", "--engine", "vllm"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--onednn" in err and len(err.strip().splitlines()) == 1
