"""Translation as model inputs, for both families: the one place that defines the prompt format.

Encoder-decoder (``seq2seq``, Marian-style)::

    encoder:  src_1 .. src_n </s>
    decoder:  <pad> tgt_1 .. tgt_m          (decoder_start_token_id = pad, as Marian)
    labels:         tgt_1 .. tgt_m </s>

Decoder-only (``causal``, Llama-style)::

    input:    <s> src_1 .. src_n <sep> tgt_1 .. tgt_m </s>
    labels:   -100 ... (prompt masked) ..  tgt_1 .. tgt_m </s>    (the model shifts labels itself)
    prompt for decoding: <s> src_1 .. src_n <sep>; decoding stops at </s>.

Tokenizers add no special tokens themselves (see :mod:`seqkd.models.tokenizer`); this module adds them.

One prompt encoder, one truncation rule. Every path that turns source text into model input calls
:meth:`Format.encode` (or :func:`source_ids` + :meth:`Format.prompt_ids`, which is the same): training
(:func:`encode_pairs`), every teacher engine and speculative decoding (through
:class:`seqkd.teacher.engines.TextCodec`) and :func:`seqkd.teacher.decoding.translate`. The rule:

    **a source is cut to max_source_len tokens before it is wrapped; the wrapping (bos/sep, the encoder's eos,
    the tokenizer's own special tokens, the chat template's prefix and suffix) is never cut.**

The source is tokenized without special tokens, its first ``max_source_len`` ids are kept, and the style's
wrapping goes around them, so a prompt always ends with its ``<sep>`` / eos / chat generation prompt and is at most
``max_source_len + len(wrapping)`` tokens long. The default limit is :data:`DEFAULT_MAX_SOURCE_LEN`. Targets
(training labels) are cut separately (:func:`encode_pairs`' ``max_len``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from seqkd.config import DEFAULT_MAX_SOURCE_LEN, PROMPT_FORMATS

IGNORE_INDEX = -100
SEP_TOKEN = "<sep>"
# Source tokens kept by default, in training and in decoding alike (see the module docstring).


def source_ids(src_tok, texts: Sequence[str], max_source_len: int = DEFAULT_MAX_SOURCE_LEN) -> list[list[int]]:
    """The truncation rule: each text tokenized without special tokens, cut to its first ``max_source_len`` ids
    (still unwrapped: :meth:`Format.prompt_ids` wraps them)."""
    from seqkd.errors import SeqkdError

    if not isinstance(max_source_len, int) or isinstance(max_source_len, bool) or max_source_len < 1:
        raise SeqkdError(f"max_source_len must be a positive integer, got {max_source_len!r}")
    texts = list(texts)
    if not texts:
        return []
    return [list(ids[:max_source_len]) for ids in src_tok(texts, add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class Format:
    """Token ids a family's format needs, read from the (target) tokenizer.

    ``style`` ``translation`` is the format above. A decoder-only model with a pretrained LLM's tokenizer (no
    ``<sep>``) takes ``plain`` (the source wrapped in the special tokens the tokenizer adds itself) or ``chat`` (the
    source as one user turn of the tokenizer's chat template, with the generation prompt): ``prefix + src +
    suffix``, with the prefix and suffix read once from the tokenizer (:func:`_wrapping`). :meth:`encode` is the one
    prompt encoder (training, :class:`seqkd.teacher.engines.TextCodec`, ``translate``), so a student trains on exactly
    the prompts its teacher was decoded from."""

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
        from seqkd.errors import SeqkdError

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
    def encode(self, src_tok, texts: Sequence[str], max_source_len: int = DEFAULT_MAX_SOURCE_LEN) -> list[list[int]]:
        """Prompt ids for source texts: each source cut to ``max_source_len`` tokens, then wrapped (the module's
        truncation rule). ``src_tok`` tokenizes the sources (the target tokenizer unless the model has its own
        source tokenizer)."""
        return [self.prompt_ids(s) for s in source_ids(src_tok, texts, max_source_len)]

    def prompt_ids(self, src_ids: Sequence[int]) -> list[int]:
        """What the model is given to translate: encoder input (seq2seq) or decoder prompt (causal), around source
        ids that are already cut (:func:`source_ids`); nothing here is truncated."""
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
    from seqkd.errors import SeqkdError

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
    max_len: int = DEFAULT_MAX_SOURCE_LEN,
    max_source_len: int | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenize parallel text into training examples. Sources follow the prompt rule (cut to ``max_source_len``
    tokens, ``max_len`` when None, then wrapped: the prompt part of ``input_ids`` is exactly :meth:`Format.encode`'s);
    targets are cut to ``max_len`` tokens before their eos is added."""
    src = source_ids(src_tok, sources, max_len if max_source_len is None else max_source_len)
    targets = list(targets)
    tgt = tgt_tok(targets, add_special_tokens=False)["input_ids"] if targets else []
    return [fmt.example(s, t[:max_len]) for s, t in zip(src, tgt)]
