"""Prompt formats of a pretrained LLM's tokenizer (no <sep>): plain and chat, in training exactly as in decoding."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from seqkd.data.prompts import IGNORE_INDEX, Format
from seqkd.errors import SeqkdError
from seqkd.student.trainer import logits_at_targets
from seqkd.teacher.engines import TextCodec

CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
          "<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["Continue this passage: Nay, but speak not maliciously.", "What authority surfeits on would relieve us",
         "  leading spaces and\ttabs", "One word", "numbers 12345 and ünïcödé"]


@pytest.fixture(scope="module")
def chat_tok():
    """A byte-level BPE tokenizer like a pretrained LLM's: ChatML specials, a chat template, no <sep>."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20 + ["system assistant user Be brief."] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def test_chat_format_equals_the_chat_template(chat_tok):
    fmt = Format.from_tokenizer("causal", chat_tok, "chat")
    codec = TextCodec("causal", chat_tok, chat_tok, prompt_format="chat")
    assert fmt.style == "chat" and codec.prompt_format == "chat"
    assert chat_tok.decode(list(fmt.prefix)) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    assert chat_tok.decode(list(fmt.suffix)) == "<|im_end|>\n<|im_start|>assistant\n"
    for text in TEXTS:
        src = chat_tok(text, add_special_tokens=False)["input_ids"]
        assert fmt.prompt_ids(src) == codec.encode([text])[0]
    ex = fmt.example([7, 8], [9])
    n = len(fmt.prefix) + 2 + len(fmt.suffix)
    assert ex["input_ids"] == [*fmt.prefix, 7, 8, *fmt.suffix, 9, chat_tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * n + [9, chat_tok.eos_token_id]


def test_plain_and_auto_formats(chat_tok):
    plain = Format.from_tokenizer("causal", chat_tok, "plain")
    assert Format.from_tokenizer("causal", chat_tok, "auto") == plain  # no <sep>: not a translation tokenizer
    for text in TEXTS:
        assert plain.prompt_ids(chat_tok(text, add_special_tokens=False)["input_ids"]) == chat_tok(text)["input_ids"]
    assert plain.pad_id == chat_tok.pad_token_id and plain.eos_id == chat_tok.eos_token_id


def test_format_errors(chat_tok, tiny_lm_model):
    from seqkd.models.tokenizer import load_tokenizer

    with pytest.raises(SeqkdError, match="no <sep> token.*'plain' or 'chat'"):
        Format.from_tokenizer("causal", chat_tok, "translation")
    with pytest.raises(SeqkdError, match="for decoder-only models"):
        Format.from_tokenizer("seq2seq", chat_tok, "chat")
    with pytest.raises(SeqkdError, match="prompt format must be one of"):
        Format.from_tokenizer("causal", chat_tok, "dialogue")
    seqkd_tok = load_tokenizer(tiny_lm_model)  # no chat template
    with pytest.raises(SeqkdError, match="no chat template"):
        Format.from_tokenizer("causal", seqkd_tok, "chat")
    assert Format.from_tokenizer("causal", seqkd_tok, "auto").style == "translation"


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (older or custom models)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_logits_at_targets_skips_prompts_exactly():
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=2, intermediate_size=64)).eval()
    ids = torch.randint(0, 50, (3, 12))
    labels = ids.clone()
    labels[0, :5] = labels[1, :8] = labels[2, :4] = IGNORE_INDEX  # ragged prompts
    labels[2, 10:] = IGNORE_INDEX  # right padding
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        full = m(input_ids=ids, attention_mask=mask).logits[:, :-1]
    ref_mask = labels[:, 1:] != IGNORE_INDEX
    for model in (m, _NoLogitsToKeep(m)):
        with torch.no_grad():
            logits, targets, _ = logits_at_targets(model, inputs, "causal")
        assert logits.shape == (int(ref_mask.sum()), 50)
        torch.testing.assert_close(logits, full[ref_mask], rtol=1e-5, atol=1e-6)
        assert torch.equal(targets, labels[:, 1:][ref_mask])
    none = {**inputs, "labels": torch.full_like(labels, IGNORE_INDEX)}
    logits, targets, _ = logits_at_targets(m, none, "causal")
    assert logits.shape == (0, 50) and targets.numel() == 0


def test_distill_trains_on_the_teachers_chat_prompts(chat_tok, tmp_path):
    """A student distilled from a chat corpus sees prompt ids identical to those the teacher decoded from."""
    from seqkd.config import DistillConfig
    from seqkd.student.distill import distill_trainer

    teacher = tmp_path / "teacher"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(chat_tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=128, pad_token_id=chat_tok.pad_token_id,
                                 bos_token_id=chat_tok.bos_token_id, eos_token_id=chat_tok.eos_token_id)
                     ).save_pretrained(teacher)
    chat_tok.save_pretrained(teacher)
    codec = TextCodec("causal", chat_tok, chat_tok, prompt_format="chat")
    outputs = [chat_tok(f"Answer {i}.", add_special_tokens=False)["input_ids"] + [chat_tok.eos_token_id]
               for i in range(len(TEXTS))]
    sel = tmp_path / "train.jsonl"
    sel.write_text("".join(json.dumps({"id": i, "source": s, "target": chat_tok.decode(o[:-1]), "reference": None,
                                       "weight": 1.0, "rank": 0, "token_ids": o}) + "\n"
                           for i, (s, o) in enumerate(zip(TEXTS, outputs))))
    cfg = DistillConfig(out=str(tmp_path / "student"), model="llama-tiny-student", teacher=str(teacher),
                        train_source=str(sel), kd_mode="online", kd_weight=0.5, prompt_format="chat", max_steps=2,
                        eval_steps=0, progress=False, warmup_steps=0)
    trainer, _ = distill_trainer(cfg)
    got = sorted(trainer.train_dataset[i]["input_ids"] for i in range(len(TEXTS)))
    want = sorted(p + o for p, o in zip(codec.encode(TEXTS), outputs))
    assert got == want
    trainer.train()
    assert trainer.state.global_step == 2
    with pytest.raises(SeqkdError, match="--prompt-format must be one of"):
        DistillConfig(out=str(tmp_path / "x"), teacher=str(teacher), train_source=str(sel), prompt_format="chatml")


def test_align_and_train_configs_check_the_prompt_format(tmp_path):
    from seqkd.config import TrainConfig
    from seqkd.speculative.align import AlignConfig

    with pytest.raises(SeqkdError, match="--prompt-format must be one of"):
        AlignConfig(target="t", draft="d", out=str(tmp_path), prompts="p.txt", prompt_format="chatml")
    with pytest.raises(SeqkdError, match="--prompt-format must be one of"):
        TrainConfig(out=str(tmp_path), data="synthetic", prompt_format="")
    assert AlignConfig(target="t", draft="d", out=str(tmp_path), prompts="p.txt", prompt_format="chat").prompt_format \
        == "chat"


# --- one prompt encoder: every path gives the same ids, with one truncation rule ------------------------------------
def _causal_dir(tok, path):
    """A tiny random decoder-only model with ``tok`` saved beside it (prompt building never runs it much)."""
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain_tok(chat_tok):
    """``chat_tok`` whose own special tokens wrap every text (bos before, eos after), as some LLM tokenizers do:
    the plain format's prefix and suffix are then both non-empty."""
    from tokenizers import processors

    tok = Tokenizer.from_str(chat_tok.backend_tokenizer.to_str())
    bos, eos = chat_tok.bos_token, chat_tok.eos_token
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, chat_tok.bos_token_id), (eos, chat_tok.eos_token_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def llm_dirs(chat_tok, plain_tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_prompts")
    return {"chat": _causal_dir(chat_tok, root / "chat"), "plain": _causal_dir(plain_tok, root / "plain")}


def _model_dir(case, request, llm_dirs):
    if case == "translation-causal":
        return "translation", request.getfixturevalue("tiny_lm_model")
    if case == "translation-seq2seq":
        return "translation", request.getfixturevalue("tiny_mt_model")
    return case, llm_dirs[case]


def _sources(src_tok):
    """Normal sources and over-long ones (more than DEFAULT_MAX_SOURCE_LEN tokens), checked to be so."""
    from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN

    vocab = {t for t in src_tok.get_vocab() if t.isalpha() and len(t) > 3}
    if len(vocab) > 150:  # the LLM tokenizers of this file
        normal = [t for t in TEXTS if t == t.strip()]
        long = ["numbers 12345 and ünïcödé " * 60 + "end", " ".join(TEXTS) * 12]
    else:  # a seqkd translation tokenizer, trained on the synthetic task
        normal = ["lesko sush", "sush lesko lesko", "lesko"]
        long = [" ".join(["lesko sush"] * 200), " ".join(["sush"] * 300) + " lesko"]
    lens = [len(ids) for ids in src_tok(normal + long, add_special_tokens=False)["input_ids"]]
    assert all(n <= DEFAULT_MAX_SOURCE_LEN for n in lens[: len(normal)]), lens
    assert all(n > DEFAULT_MAX_SOURCE_LEN + 10 for n in lens[len(normal):]), lens
    return normal, long


def _prompts_of_every_path(model_dir, style, texts, limit, tmp_path, monkeypatch) -> dict[str, list[list[int]]]:
    """Prompt ids of ``texts`` as built by training, TextCodec, the HF engine, translate and speculate."""
    import seqkd.speculative.runners as runners
    import seqkd.teacher.decoding as decoding
    from seqkd.config import SpeculateConfig
    from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN, encode_pairs
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.teacher.engines import get_engine

    src_tok, tgt_tok = load_tokenizers(model_dir)
    engine = get_engine("hf", str(model_dir), prompt_format=style, max_source_len=limit)
    fmt = engine.codec.fmt
    got: dict[str, list[list[int]]] = {}
    # (a) training: the prompt part of each example (the -100 labels of a decoder-only one; a seq2seq input)
    exs = encode_pairs(fmt, src_tok, tgt_tok, texts, ["target text"] * len(texts), max_len=limit)
    got["encode_pairs"] = [ex["input_ids"] if fmt.family == "seq2seq"
                           else ex["input_ids"][: ex["labels"].count(IGNORE_INDEX)] for ex in exs]
    got["Format.encode"] = fmt.encode(src_tok, texts, limit)
    # (b) TextCodec, (c) the HF engine
    got["TextCodec"] = TextCodec(fmt.family, src_tok, tgt_tok, prompt_format=style, max_source_len=limit).encode(texts)
    got["engine"] = engine.encode(texts)
    # (d) translate: the prompts it hands to generation
    seen: list[list[int]] = []

    def fake_generate_ids(model, fmt_, prompts, gen, **kw):
        seen.extend(list(p) for p in prompts)
        return [[decoding.Hypothesis(ids=[])] * (gen.num_return_sequences or 1) for _ in prompts]

    monkeypatch.setattr(decoding, "generate_ids", fake_generate_ids)
    decoding.translate(engine.model, src_tok, tgt_tok, texts, prompt_format=style, max_source_len=limit)
    got["translate"] = seen
    # (e) speculative decoding (its prompt limit is the default one)
    if limit == DEFAULT_MAX_SOURCE_LEN:
        spec: list[list[int]] = []

        def fake_run(cfg, variants, target, prompts, progress, passes):
            spec.extend(p[0].tolist() for p in prompts)
            return [{} for _ in variants]

        monkeypatch.setattr(runners, "_run_seqkd", fake_run)
        f = tmp_path / f"prompts-{style}.txt"
        f.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        cfg = SpeculateConfig(target=str(model_dir), draft=str(model_dir), input=str(f), prompt_format=style)
        assert runners.read_prompts(cfg) == texts
        runners.speculate(cfg, progress=False)
        got["speculate"] = spec
    engine.close()
    return got


@pytest.mark.parametrize("limit", ["default", 6])
@pytest.mark.parametrize("case", ["translation-causal", "translation-seq2seq", "plain", "chat"])
def test_one_prompt_encoder_for_every_path(case, limit, request, llm_dirs, tmp_path, monkeypatch):
    """Training, TextCodec, the HF engine, translate and speculative decoding build identical prompt ids for
    every style, and an over-long source is cut to exactly the limit with its wrapping intact."""
    from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN
    from seqkd.models.tokenizer import load_tokenizers

    style, model_dir = _model_dir(case, request, llm_dirs)
    limit = DEFAULT_MAX_SOURCE_LEN if limit == "default" else limit
    src_tok, tgt_tok = load_tokenizers(model_dir)
    normal, long = _sources(src_tok)
    texts = normal + long
    got = _prompts_of_every_path(model_dir, style, texts, limit, tmp_path, monkeypatch)
    paths = {"encode_pairs", "Format.encode", "TextCodec", "engine", "translate"}
    assert set(got) == (paths | {"speculate"} if limit == DEFAULT_MAX_SOURCE_LEN else paths)
    want = got["Format.encode"]
    for path, prompts in got.items():
        assert prompts == want, f"{case}: {path} builds other prompt ids"

    fmt = TextCodec("seq2seq" if case.endswith("seq2seq") else "causal", src_tok, tgt_tok, prompt_format=style).fmt
    if style == "translation":
        head, tail = ([], [fmt.eos_id]) if fmt.family == "seq2seq" else ([fmt.bos_id], [fmt.sep_id])
    else:
        head, tail = list(fmt.prefix), list(fmt.suffix)
        assert tail, "these tokenizers put something after the text (eos, or the chat generation prompt)"
    for text, ids in zip(texts, want):
        src = src_tok(text, add_special_tokens=False)["input_ids"]
        # the rule: the source cut to the limit, then wrapped; the wrapping is never cut
        assert ids == head + src[:limit] + tail
        if len(src) > limit:
            assert len(ids) == limit + len(head) + len(tail) and ids[-len(tail):] == tail
        elif style == "plain":  # uncut: exactly what the tokenizer gives with its own special tokens
            assert ids == src_tok(text)["input_ids"]
        elif style == "chat":  # uncut: exactly the chat template's ids
            full = src_tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
            assert ids == list(full["input_ids"] if hasattr(full, "keys") else full)
    assert any(len(src_tok(t, add_special_tokens=False)["input_ids"]) > limit for t in texts)
    if style == "chat":
        assert tgt_tok.decode(want[-1][-len(tail):]) == "<|im_end|>\n<|im_start|>assistant\n"
    if style == "plain":
        assert want[-1][0] == tgt_tok.bos_token_id and want[-1][-1] == tgt_tok.eos_token_id


def test_chat_wrapping_equals_the_chat_template_directly(chat_tok, plain_tok):
    """Source ids wrapped in the prefix/suffix found once equal apply_chat_template / the tokenizer's own specials
    (not only TextCodec's ids, which now come from the same encoder)."""
    for tok in (chat_tok, plain_tok):
        chat = Format.from_tokenizer("causal", tok, "chat")
        plain = Format.from_tokenizer("causal", tok, "plain")
        prompts = chat.encode(tok, TEXTS)
        for text, ids in zip(TEXTS, prompts):
            full = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True)
            assert ids == list(full["input_ids"] if hasattr(full, "keys") else full)
        assert plain.encode(tok, TEXTS) == tok(TEXTS)["input_ids"]
    assert Format.from_tokenizer("causal", plain_tok, "plain").suffix == (plain_tok.eos_token_id,)
