"""Batched translation equals one-at-a-time HF generate, for both families; n-best and sampling behave."""

import pytest
import torch

from seqkd.data.prompts import Format
from seqkd.data.synthetic import synthetic_pairs
from seqkd.models import family, load_model
from seqkd.models.tokenizer import load_tokenizers
from seqkd.teacher.decoding import generate_ids, generation_config, translate


@pytest.fixture(params=["tiny_mt_model", "tiny_lm_model"])
def trained(request):
    path = request.getfixturevalue(request.param)
    return load_model(path), *load_tokenizers(path)


def _single_generate(model, fmt, prompt, **kw):
    """The reference: HF generate on one unpadded prompt."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         eos_token_id=fmt.eos_id, pad_token_id=fmt.pad_id, max_new_tokens=30, **kw)
    seq = out[0, len(prompt):] if fmt.family == "causal" else out[0, 1:]
    seq = seq.tolist()
    return seq[: seq.index(fmt.eos_id)] if fmt.eos_id in seq else seq


def test_batched_greedy_equals_single_generate_in_input_order(trained):
    model, src_tok, tgt_tok = trained
    fmt = Format.from_tokenizer(family(model), tgt_tok)
    srcs, _ = synthetic_pairs(10, seed=11, multimodality=0.0)
    prompts = [fmt.prompt_ids(s) for s in src_tok(srcs, add_special_tokens=False)["input_ids"]]
    batched = generate_ids(model, fmt, prompts, generation_config(model, fmt, max_new_tokens=30), batch_size=4)
    for prompt, hyps in zip(prompts, batched):
        assert hyps[0].ids == _single_generate(model, fmt, prompt)
    texts = translate(model, src_tok, tgt_tok, srcs, batch_size=4, max_new_tokens=30)
    assert texts == [tgt_tok.decode(h[0].ids, skip_special_tokens=True) for h in batched]


def test_beam_nbest_equals_hf_generate(trained):
    model, src_tok, tgt_tok = trained
    fmt = Format.from_tokenizer(family(model), tgt_tok)
    srcs, _ = synthetic_pairs(4, seed=12, multimodality=0.0)
    prompts = [fmt.prompt_ids(s) for s in src_tok(srcs, add_special_tokens=False)["input_ids"]]
    gen = generation_config(model, fmt, beam_size=4, num_return_sequences=3, max_new_tokens=30)
    out = generate_ids(model, fmt, prompts, gen, batch_size=1)
    for prompt, hyps in zip(prompts, out):
        assert len(hyps) == 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True) and all(s is not None for s in scores)
        assert hyps[0].ids == _single_generate(model, fmt, prompt, num_beams=4, early_stopping=True)
    with pytest.raises(ValueError, match="num_return_sequences"):
        generation_config(model, fmt, beam_size=2, num_return_sequences=3)


def test_sampling_is_seeded_and_empty_sources_stay_empty(trained):
    model, src_tok, tgt_tok = trained
    srcs, _ = synthetic_pairs(5, seed=13, multimodality=0.0)
    a = translate(model, src_tok, tgt_tok, srcs, do_sample=True, temperature=1.5, seed=4, max_new_tokens=20)
    b = translate(model, src_tok, tgt_tok, srcs, do_sample=True, temperature=1.5, seed=4, max_new_tokens=20)
    assert a == b
    nbest = translate(model, src_tok, tgt_tok, ["", srcs[0], "  "], num_return_sequences=2, beam_size=2,
                      max_new_tokens=20)
    assert nbest[0] == ["", ""] and nbest[2] == ["", ""] and len(nbest[1]) == 2 and nbest[1][0]
