"""Prompt formats of a pretrained LLM's tokenizer (no <sep>): plain and chat, in training exactly as in decoding."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from seqkd.engines import TextCodec
from seqkd.errors import SeqkdError
from seqkd.train import logits_at_targets
from seqkd.translation import IGNORE_INDEX, Format

CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n"
          "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
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
    from seqkd.tokenizer import load_tokenizer

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
    from seqkd.distill import prepare_distill
    from seqkd.distill_config import DistillConfig

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
    trainer, _, _ = prepare_distill(cfg)
    got = sorted(trainer.train_dataset[i]["input_ids"] for i in range(len(TEXTS)))
    want = sorted(p + o for p, o in zip(codec.encode(TEXTS), outputs))
    assert got == want
    trainer.train()
    assert trainer.state.global_step == 2
    with pytest.raises(SeqkdError, match="--prompt-format must be one of"):
        DistillConfig(out=str(tmp_path / "x"), teacher=str(teacher), train_source=str(sel), prompt_format="chatml")


def test_align_and_train_configs_check_the_prompt_format(tmp_path):
    from seqkd.align import AlignConfig
    from seqkd.config import TrainConfig

    with pytest.raises(SeqkdError, match="--prompt-format must be one of"):
        AlignConfig(target="t", draft="d", out=str(tmp_path), prompts="p.txt", prompt_format="chatml")
    with pytest.raises(SeqkdError, match="--prompt-format must be one of"):
        TrainConfig(out=str(tmp_path), data="synthetic", prompt_format="")
    assert AlignConfig(target="t", draft="d", out=str(tmp_path), prompts="p.txt", prompt_format="chat").prompt_format \
        == "chat"
