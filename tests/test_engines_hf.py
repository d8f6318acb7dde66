"""The HF engine: its outputs are exactly model.generate's, its scores exactly the teacher's own log-softmax."""

import json
import math
import shutil

import pytest
import torch

import seqkd.teacher.engines as engines
from seqkd.data.synthetic import synthetic_pairs
from seqkd.errors import SeqkdError
from seqkd.teacher.engines import Candidate, DecodeSettings, Engine, TextCodec, get_engine

# Stored log-probs are float32 values; the engine's batched, padded forward pass and the reference unpadded
# single-sequence pass differ by float32 rounding only (measured: < 2e-6 on these models).
ATOL = 1e-5


@pytest.fixture(scope="module", params=["tiny_mt_model", "tiny_lm_model"])
def engine(request):
    e = get_engine("hf", str(request.getfixturevalue(request.param)), batch_size=3)
    yield e
    e.close()


def _sources(n, seed):
    srcs, _ = synthetic_pairs(n, seed=seed, multimodality=0.0)
    return srcs


def _reference_generate(engine, prompt, **kw):
    """HF generate on one unpadded prompt: (token id rows with eos kept, HF sequence scores or None)."""
    fmt = engine.codec.fmt
    ids = torch.tensor([prompt])
    out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=fmt.eos_id,
                                pad_token_id=fmt.pad_id, max_new_tokens=30, return_dict_in_generate=True,
                                output_scores=True, **kw)
    seqs = out.sequences[:, len(prompt):] if engine.family == "causal" else out.sequences[:, 1:]
    rows = []
    for row in seqs.tolist():
        rows.append(row[: row.index(fmt.eos_id) + 1] if fmt.eos_id in row else row)
    return rows, getattr(out, "sequences_scores", None)


def _teacher_log_softmax(engine, prompt, token_ids):
    """The teacher's own log-softmax (float32) at every position of one candidate: one unbatched forward pass."""
    model = engine.model
    with torch.no_grad():
        if engine.family == "seq2seq":
            dec = torch.tensor([[model.config.decoder_start_token_id] + token_ids[:-1]])
            logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=dec).logits[0]
        else:
            logits = model(input_ids=torch.tensor([prompt + token_ids[:-1]])).logits[0, len(prompt) - 1:]
    return logits.float().log_softmax(-1)


def test_beam_nbest_equals_model_generate_token_for_token(engine):
    assert isinstance(engine, Engine) and engine.name == "hf" and engine.family in ("causal", "seq2seq")
    srcs = _sources(7, seed=21)  # 7 prompts, batch_size 3: padded batches of mixed lengths
    prompts = engine.encode(srcs)
    settings = DecodeSettings(mode="beam", beam_size=4, nbest=3, max_new_tokens=30)
    out = engine.generate(prompts, settings)
    assert len(out) == len(prompts)
    for prompt, cands in zip(prompts, out):
        rows, hf_scores = _reference_generate(engine, prompt, num_beams=4, num_return_sequences=3,
                                              early_stopping=True, do_sample=False)
        assert [c.token_ids for c in cands] == rows
        for c, hf in zip(cands, hf_scores.tolist()):
            assert c.finished == (c.token_ids[-1] == engine.codec.eos_id)
            assert c.text == engine.tgt_tok.decode(c.token_ids, skip_special_tokens=True)
            # HF ranks beams by logprob / length ** length_penalty (1.0): our teacher-forced re-score agrees.
            assert c.norm_logprob == pytest.approx(hf, abs=ATOL)


def test_greedy_equals_model_generate_and_sampling_is_seeded(engine):
    prompts = engine.encode(_sources(5, seed=22))
    greedy = engine.generate(prompts, DecodeSettings(mode="greedy", max_new_tokens=30))
    for prompt, cands in zip(prompts, greedy):
        rows, _ = _reference_generate(engine, prompt, do_sample=False)
        assert len(cands) == 1 and cands[0].token_ids == rows[0]
    sample = DecodeSettings(mode="sample", num_samples=3, temperature=1.5, seed=7, max_new_tokens=30)
    a = engine.generate(prompts, sample)
    b = engine.generate(prompts, sample)
    c = engine.generate(prompts, DecodeSettings(mode="sample", num_samples=3, temperature=1.5, seed=8,
                                                max_new_tokens=30))
    ids = lambda out: [[h.token_ids for h in hs] for hs in out]  # noqa: E731
    assert all(len(hs) == 3 for hs in a)
    assert ids(a) == ids(b) and [[h.logprob for h in hs] for hs in a] == [[h.logprob for h in hs] for hs in b]
    assert ids(a) != ids(c)
    assert engine.generate([], sample) == []


def test_scores_and_topk_equal_the_teachers_own_log_softmax(engine):
    prompts = engine.encode(_sources(4, seed=23))
    k = 5
    worst = 0.0
    for settings in (DecodeSettings(mode="beam", beam_size=3, nbest=2, topk_logprobs=k, max_new_tokens=30),
                     DecodeSettings(mode="sample", num_samples=2, temperature=2.0, topk_logprobs=k, seed=3,
                                    max_new_tokens=12),
                     DecodeSettings(mode="greedy", topk_logprobs=k, max_new_tokens=30)):
        for prompt, cands in zip(prompts, engine.generate(prompts, settings)):
            for c in cands:
                n = len(c.token_ids)
                assert len(c.token_logprobs) == len(c.topk_ids) == len(c.topk_logprobs) == n
                assert c.logprob == math.fsum(c.token_logprobs)
                assert c.norm_logprob == pytest.approx(c.logprob / n, rel=1e-12)
                ref = _teacher_log_softmax(engine, prompt, c.token_ids)
                for t in range(n):
                    row = ref[t]
                    stored_ids = torch.tensor(c.topk_ids[t])
                    stored = torch.tensor(c.topk_logprobs[t])
                    ref_top = row.topk(k).values
                    # the stored ids carry the stored log-probs, and they are the k largest, most likely first
                    worst = max(worst, float((row[stored_ids] - stored).abs().max()),
                                float((ref_top - stored).abs().max()),
                                abs(float(row[c.token_ids[t]]) - c.token_logprobs[t]))
                    assert torch.all(stored[:-1] >= stored[1:])
                if settings.mode == "greedy":  # greedy picks the argmax: the chosen token is top-1
                    assert [ids[0] for ids in c.topk_ids] == c.token_ids
                if not c.finished:
                    assert n == settings.max_new_tokens and c.token_ids[-1] != engine.codec.eos_id
    assert worst < ATOL, worst
    # without top-k the fields are absent from the corpus form
    c = engine.generate(prompts[:1], DecodeSettings(mode="greedy", max_new_tokens=30))[0][0]
    assert c.topk_ids is None and "topk_ids" not in c.as_dict() and "token_logprobs" in c.as_dict()
    json.dumps(c.as_dict(), allow_nan=False)


def test_settings_are_validated_with_one_line_errors():
    cases = [
        (dict(mode="beam", beam_size=2, nbest=3), "nbest=3 > beam_size=2"),
        (dict(mode="greedy", nbest=2), "beam search only"),
        (dict(mode="beam", num_samples=4), "sampling only"),
        (dict(mode="nucleus"), "mode must be one of"),
        (dict(mode="sample", temperature=0), "temperature"),
        (dict(mode="sample", top_p=1.5), "top_p"),
        (dict(topk_logprobs=-1), "topk_logprobs"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(beam_size=True), "beam_size"),
    ]
    for kw, needle in cases:
        with pytest.raises(SeqkdError, match=needle) as e:
            DecodeSettings(**kw)
        assert "\n" not in str(e.value)
    assert DecodeSettings(mode="sample", num_samples=4).num_return == 4
    assert DecodeSettings(mode="beam", beam_size=5, nbest=5).num_return == 5


def test_engine_registry_and_bad_teachers(tiny_lm_model, tmp_path, monkeypatch):
    with pytest.raises(SeqkdError, match="unknown engine 'onnx'"):
        get_engine("onnx", str(tiny_lm_model))
    with pytest.raises(SeqkdError, match="engine hf: .*beams"):
        get_engine("hf", str(tiny_lm_model), beams=4)
    # an engine whose module is not there (the vLLM engine before it lands): a clear error, not a traceback
    monkeypatch.setitem(engines.ENGINE_MODULES, "vllm", "seqkd.teacher.engines._not_installed")
    with pytest.raises(SeqkdError, match="vllm engine is not available.*seqkd.teacher.engines._not_installed"):
        get_engine("vllm", str(tiny_lm_model))

    # a teacher directory without a tokenizer
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_lm_model / name, bare / name)
    with pytest.raises(SeqkdError, match="no tokenizer files"):
        get_engine("hf", str(bare))
    # a tokenizer with more ids than the model's vocabulary
    from seqkd.models import build_model, save_model
    from seqkd.models.tokenizer import load_tokenizer

    small = tmp_path / "small"
    save_model(build_model("llama-tiny", vocab_size=40, seed=0), None, small)
    load_tokenizer(tiny_lm_model).save_pretrained(small)
    with pytest.raises(SeqkdError, match="tokenizer has 1\\d\\d tokens but the model's vocabulary is 40"):
        get_engine("hf", str(small))
    with pytest.raises(SeqkdError, match="dtype"):
        get_engine("hf", str(tiny_lm_model), dtype="float8")


def test_prompt_formats(tiny_lm_model, tiny_mt_model):
    from seqkd.models.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_lm_model)
    auto = TextCodec("causal", tok, tok)
    assert auto.prompt_format == "translation"  # seqkd tokenizers have <sep>
    src = tok("lesko sush", add_special_tokens=False)["input_ids"]
    assert auto.encode(["lesko sush"]) == [[tok.bos_token_id] + src + [auto.fmt.sep_id]]
    plain = TextCodec("causal", tok, tok, prompt_format="plain", max_source_len=1)
    assert plain.encode(["lesko sush"]) == [src[:1]] and plain.fmt.sep_id is None
    with pytest.raises(SeqkdError, match="decoder-only"):
        TextCodec("seq2seq", tok, tok, prompt_format="plain")
    mt_tok = load_tokenizer(tiny_mt_model)
    assert TextCodec("seq2seq", mt_tok, mt_tok).encode(["lesko"])[0][-1] == mt_tok.eos_token_id
    c = Candidate([5, 3], "x", -1.0, -0.5, [-0.25, -0.75])
    assert set(c.as_dict()) == {"text", "token_ids", "logprob", "norm_logprob", "token_logprobs", "finished"}


def test_chat_prompt_format(tiny_lm_model, tmp_path):
    from seqkd.models.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_lm_model)
    with pytest.raises(SeqkdError, match="no chat template"):
        TextCodec("causal", tok, tok, prompt_format="chat")
    tok.chat_template = ("{% for m in messages %}<s>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<sep>{% endif %}")
    chat = TextCodec("causal", tok, tok, prompt_format="chat")
    src = tok("lesko sush", add_special_tokens=False)["input_ids"]
    assert chat.encode(["lesko sush"]) == [[tok.bos_token_id] + src + [tok.convert_tokens_to_ids("<sep>")]]
    assert chat.eos_id == tok.eos_token_id
