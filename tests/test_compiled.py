"""`speculate --compile`: target and draft through torch.compile (inductor, frozen weights, dynamic shapes). Decoding
stays exact: the compiled target's greedy tokens equal the eager target's and HF generate's, and speculation with
the compiled pair equals target-only decoding with the compiled target, with a pruned draft too; sampled, the compiled
pair draws what the eager one does."""

import copy
import dataclasses

import pytest
import torch
from test_spec_decoder import _hf_greedy, _perturbed

from seqkd.config import SpeculateConfig
from seqkd.errors import SeqkdError
from seqkd.models import load_model
from seqkd.models.compiled import compile_for_decoding
from seqkd.models.draft_vocab import prune_output_layer
from seqkd.speculative import autoregressive_generate, speculative_generate


@pytest.mark.slow  # inductor compiles each graph once: about a minute on 2 cores
def test_compiled_models_decode_exactly_what_the_eager_target_does(tiny_lm_model, monkeypatch):
    target = load_model(tiny_lm_model).eval()
    draft = _perturbed(target, 0.3, 3).eval()
    prompts = [torch.tensor([ids]) for ids in ([3, 9, 14, 22], [5, 7, 30], [11, 4, 19, 8, 27, 6])]
    with torch.no_grad():
        eager = [autoregressive_generate(target, p, temperature=0.0, max_new_tokens=12).new_tokens for p in prompts]
        ct, cd = compile_for_decoding(target), compile_for_decoding(draft)
        compiled = [autoregressive_generate(ct, p, temperature=0.0, max_new_tokens=12).new_tokens for p in prompts]
        spec = [speculative_generate(ct, cd, p, gamma=g, temperature=0.0, max_new_tokens=12).new_tokens
                for p in prompts for g in (2, 3)]
        # a pruned draft (FR-Spec: its output layer covers a third of the vocabulary, mapped to target ids) compiled
        vocab = target.config.vocab_size
        pruned = copy.deepcopy(draft)
        prune_output_layer(pruned, [3] + [i for i in range(vocab) if i % 3 == 0 and i != 3])
        cp = compile_for_decoding(pruned)
        spec_pruned = [speculative_generate(ct, cp, p, gamma=3, temperature=0.0, max_new_tokens=12).new_tokens
                       for p in prompts]
        # sampling (T=1): the compiled pair draws what the eager pair draws with the same seed (the same logits up to
        # float32 rounding, far from any of the draws' thresholds here)
        sampled = {name: [speculative_generate(t, d, p, gamma=3, temperature=1.0, max_new_tokens=12, seed=7 + i)
                          for i, p in enumerate(prompts)] for name, (t, d) in (("eager", (target, draft)),
                                                                                ("compiled", (ct, cd)))}
    assert compiled == eager
    assert eager == [_hf_greedy(target, p, 12) for p in prompts]
    assert spec == [e for e in eager for _ in (2, 3)]
    assert spec_pruned == eager
    assert sum(len(e) for e in eager) > 0
    assert [r.new_tokens for r in sampled["compiled"]] == [r.new_tokens for r in sampled["eager"]]
    assert [r.stats.accepted for r in sampled["compiled"]] == [r.stats.accepted for r in sampled["eager"]]
    assert sum(r.stats.drafted - r.stats.accepted for r in sampled["eager"]) > 0  # some rejections: residual draws
    # through speculate(): the same compiled models for target-only and speculative decoding, recorded as compiled
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative.runners import speculate

    cfg = SpeculateConfig(target="t", draft="d", gamma=2, temperature=0.0, max_new_tokens=8, warmup=1, compile=True,
                          prompt_format="translation")
    r = speculate(cfg, progress=False, target=target, draft=draft, tokenizers=load_tokenizers(tiny_lm_model),
                  prompts=["a b c", "d e f", "g h"])
    assert r["compile"] is True and r["identical_outputs"] == 1.0
    # the compiled target with an int8 draft, which stays eager (dynamo cannot trace torch.ao's int8 products):
    # only the target goes through compile_for_decoding, and decoding is exact
    import seqkd.models.compiled as compiled_module

    seen = []
    monkeypatch.setattr(compiled_module, "compile_for_decoding", lambda m: seen.append(m) or compile_for_decoding(m))
    int8 = speculate(dataclasses.replace(cfg, draft_quantize="int8"), progress=False, target=target, draft=draft,
                     tokenizers=load_tokenizers(tiny_lm_model), prompts=["a b c", "d e f", "g h"])
    assert seen == [target]
    assert int8["compile"] is True and int8["draft_quantize"] == "int8" and int8["identical_outputs"] == 1.0


def test_compile_settings_that_cannot_work_are_one_line():
    for kw, match in ((dict(engine="hf"), "--engine seqkd"), (dict(compare_hf=True), "without --compare-hf"),
                      (dict(warmup=0), "--warmup >= 1")):
        with pytest.raises(SeqkdError, match=match):
            SpeculateConfig(target="t", draft="d", compile=True, **kw)
