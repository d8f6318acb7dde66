"""Translation as model inputs, for both families: the one place that defines the prompt format.

Encoder-decoder (``seq2seq``, Marian-style)::

    encoder:  src_1 .. src_n </s>
    decoder:  <pad> tgt_1 .. tgt_m          (decoder_start_token_id = pad, as Marian)
    labels:         tgt_1 .. tgt_m </s>

Decoder-only (``causal``, Llama-style)::

    input:    <s> src_1 .. src_n <sep> tgt_1 .. tgt_m </s>
    labels:   -100 ... (prompt masked) ..  tgt_1 .. tgt_m </s>    (the model shifts labels itself)
    prompt for decoding: <s> src_1 .. src_n <sep>; decoding stops at </s>.

Tokenizers add no special tokens themselves (see :mod:`seqkd.tokenizer`); this module adds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE_INDEX = -100
SEP_TOKEN = "<sep>"


PROMPT_FORMATS = ("auto", "translation", "plain", "chat")


@dataclass(frozen=True)
class Format:
    """Token ids a family's format needs, read from the (target) tokenizer.

    ``style`` ``translation`` is the format above. A decoder-only model with a pretrained LLM's tokenizer (no
    ``<sep>``) takes ``plain`` (the source wrapped in the special tokens the tokenizer adds itself) or ``chat`` (the
    source as one user turn of the tokenizer's chat template, with the generation prompt): ``prefix + src +
    suffix``, the same ids :class:`seqkd.engines.TextCodec` gives the teacher, so a student trains on exactly the
    prompts its teacher was decoded from."""

    family: str  # "causal" | "seq2seq"
    pad_id: int
    bos_id: int
    eos_id: int
    sep_id: int | None
    style: str = "translation"  # "translation" | "plain" | "chat"
    prefix: tuple[int, ...] = ()  # plain / chat: ids before the source
    suffix: tuple[int, ...] = ()  # plain / chat: ids after it

    @classmethod
    def from_tokenizer(cls, family: str, tokenizer, prompt_format: str = "translation") -> "Format":
        """``prompt_format``: translation, plain, chat, or auto (translation for encoder-decoder models and
        tokenizers with ``<sep>``, plain otherwise)."""
        from .errors import SeqkdError

        if family not in ("causal", "seq2seq"):
            raise ValueError(f"unknown model family {family!r}")
        if prompt_format not in PROMPT_FORMATS:
            raise SeqkdError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
        sep_id = tokenizer.convert_tokens_to_ids(SEP_TOKEN)
        if sep_id is None or sep_id == tokenizer.unk_token_id:
            sep_id = None
        if prompt_format == "auto":
            prompt_format = "translation" if family == "seq2seq" or sep_id is not None else "plain"
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if prompt_format == "translation":
            if family == "causal" and sep_id is None:
                raise SeqkdError(
                    f"the tokenizer has no {SEP_TOKEN} token, which decoder-only translation needs "
                    "(train one with `seqkd tokenizer train`, or use the 'plain' or 'chat' prompt format)"
                )
            return cls(family, pad, tokenizer.bos_token_id, tokenizer.eos_token_id, sep_id)
        if family != "causal":
            raise SeqkdError(f"prompt format {prompt_format!r} is for decoder-only models; an encoder-decoder "
                             "model takes the 'translation' format")
        if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
            raise SeqkdError("prompt format 'chat': the tokenizer has no chat template (use 'plain')")
        if tokenizer.eos_token_id is None:
            raise SeqkdError("the tokenizer has no eos token: generation could never end")
        prefix, suffix = _wrapping(tokenizer, prompt_format)
        return cls(family, pad, tokenizer.bos_token_id, tokenizer.eos_token_id, None, prompt_format, prefix, suffix)

    # --- ids ---------------------------------------------------------------------------------------
    def prompt_ids(self, src_ids: Sequence[int]) -> list[int]:
        """What the model is given to translate: encoder input (seq2seq) or decoder prompt (causal)."""
        if self.family == "seq2seq":
            return list(src_ids) + [self.eos_id]
        if self.style != "translation":
            return [*self.prefix, *src_ids, *self.suffix]
        return [self.bos_id] + list(src_ids) + [self.sep_id]

    def example(self, src_ids: Sequence[int], tgt_ids: Sequence[int]) -> dict[str, list[int]]:
        """A training example: ``input_ids`` and ``labels`` (target tokens + eos; everything else -100)."""
        prompt = self.prompt_ids(src_ids)
        target = list(tgt_ids) + [self.eos_id]
        if self.family == "seq2seq":
            return {"input_ids": prompt, "labels": target}
        return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}

    def length(self, ex: dict[str, list[int]]) -> int:
        """Tokens an example costs in a batch (encoder + decoder for seq2seq), for token-budget batching."""
        if self.family == "seq2seq":
            return len(ex["input_ids"]) + len(ex["labels"])
        return len(ex["input_ids"])


# A message whose ids occur unchanged inside the wrapped text: the ids around them are the prefix and suffix.
_PROBE = "Probe message 12345."


def _wrapping(tokenizer, style: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prefix, suffix) ids that the tokenizer (plain) or its chat template (chat) puts around a text's ids."""
    from .errors import SeqkdError

    bare = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    if style == "plain":
        full = tokenizer(_PROBE)["input_ids"]
    else:
        full = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], add_generation_prompt=True,
                                             tokenize=True)
        full = full["input_ids"] if hasattr(full, "keys") else full  # transformers 5 returns a BatchEncoding
    full = list(full)
    for i in range(len(full) - len(bare) + 1):
        if full[i: i + len(bare)] == bare:
            return tuple(full[:i]), tuple(full[i + len(bare):])
    raise SeqkdError(f"prompt format {style!r}: the tokenizer's wrapping changes the message's own tokens, so a "
                     "prompt cannot be built from source ids")


def encode_pairs(
    fmt: Format,
    src_tok,
    tgt_tok,
    sources: Sequence[str],
    targets: Sequence[str],
    *,
    max_len: int = 256,
) -> list[dict[str, list[int]]]:
    """Tokenize parallel text into training examples; each side is truncated to ``max_len`` tokens."""
    src = src_tok(list(sources), add_special_tokens=False)["input_ids"]
    tgt = tgt_tok(list(targets), add_special_tokens=False)["input_ids"]
    return [fmt.example(s[:max_len], t[:max_len]) for s, t in zip(src, tgt)]


class Collator:
    """Pads a list of examples into a batch: input_ids/attention_mask ``[B, S]``, labels ``[B, T]``.

    For seq2seq models (``decoder_start_id`` given) it also builds ``decoder_input_ids`` ``[B, T]``: the labels
    shifted right behind the start token, so the model need not see labels (and computes no loss of its own).
    Padding is on the right for training; :mod:`seqkd.decoding` left-pads prompts itself.
    """

    def __init__(self, pad_id: int, decoder_start_id: int | None = None):
        self.pad_id = pad_id
        self.decoder_start_id = decoder_start_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        inputs = pad([ex["input_ids"] for ex in examples], self.pad_id)
        # The mask comes from lengths, not `!= pad`: a tokenizer may reuse pad as another special token.
        lengths = torch.tensor([len(ex["input_ids"]) for ex in examples])
        batch = {"input_ids": inputs}
        batch["attention_mask"] = (torch.arange(inputs.shape[1])[None, :] < lengths[:, None]).long()
        batch["labels"] = pad([ex["labels"] for ex in examples], IGNORE_INDEX)
        if self.decoder_start_id is not None:
            dec = batch["labels"].roll(1, dims=1)
            dec[:, 0] = self.decoder_start_id
            batch["decoder_input_ids"] = dec.masked_fill(dec == IGNORE_INDEX, self.pad_id)
        return batch


def pad(seqs: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    """Right- (or left-) pad lists of ids into a ``[B, max_len]`` long tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if left:
                out[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            else:
                out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
