"""Teacher decoding engines: one protocol, one module per engine (``hf``, ``vllm``), chosen by name.

An engine turns prompt token ids into candidates (token ids, text, teacher log-probs, optional top-k
distributions). Everything that is the same for every engine lives here: the decoding settings and their
validation, the candidate record, the prompt format (:class:`TextCodec`) and the lazy engine registry.

Contract of :meth:`Engine.generate` (every engine keeps it; the corpus and the tests rely on it):

* ``result[i]`` belongs to ``prompts[i]`` and holds ``settings.num_return`` candidates: the n-best best first
  (beam; ranked by the engine's beam score, length penalty included), the samples in generation order
  (sample), or the one greedy output.
* ``token_ids`` are the generated tokens exactly as the teacher produced them, **including the final eos** when
  the hypothesis finished (``finished=True``); a hypothesis cut at ``max_new_tokens`` has no eos. ``text`` is
  their decoding without special tokens.
* ``token_logprobs[t]`` is ``log p_teacher(token_ids[t] | prompt, token_ids[:t])`` under the teacher's own
  distribution (temperature 1, no top-k / top-p truncation: what distillation wants, not the sampling
  distribution), computed in float32; ``logprob`` is their sum and ``norm_logprob = logprob / len(token_ids)``.
* With ``settings.topk_logprobs = k > 0``, ``topk_ids[t]`` / ``topk_logprobs[t]`` are the teacher's k most
  likely tokens at position ``t`` and their log-probs (same distribution), most likely first.
* Same prompts + same settings (``seed`` included) give the same candidates: exactly for greedy and beam;
  for sampling as far as the engine allows (the HF engine: exactly, on the same machine and batch size).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from seqkd.config import DecodeSettings
from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN
from seqkd.errors import SeqkdError

# name -> module; each module defines ``create(model_dir, **options) -> Engine``.
ENGINE_MODULES = {"hf": "seqkd.teacher.engines.hf", "vllm": "seqkd.teacher.engines.vllm"}




@dataclass
class Candidate:
    """One teacher output for one prompt (see the module docstring for the exact meaning of each field)."""

    token_ids: list[int]
    text: str
    logprob: float
    norm_logprob: float
    token_logprobs: list[float]
    finished: bool = True
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The corpus form: top-k fields only when present."""
        d: dict[str, Any] = {
            "text": self.text,
            "token_ids": self.token_ids,
            "logprob": self.logprob,
            "norm_logprob": self.norm_logprob,
            "token_logprobs": self.token_logprobs,
            "finished": self.finished,
        }
        if self.topk_ids is not None:
            d["topk_ids"] = self.topk_ids
            d["topk_logprobs"] = self.topk_logprobs
        return d


@runtime_checkable
class Engine(Protocol):
    """A loaded teacher that decodes. ``options`` are the engine's own settings that can change its outputs
    (dtype, device, batch size, ...): the corpus manifest records them."""

    name: str  # "hf" | "vllm"
    family: str  # "causal" | "seq2seq"
    model_dir: str
    src_tok: Any
    tgt_tok: Any
    codec: "TextCodec"
    options: dict[str, Any]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt ids for source texts (the teacher's prompt format)."""
        ...

    def generate(self, prompts: list[list[int]], settings: DecodeSettings) -> list[list[Candidate]]:
        ...

    def close(self) -> None:
        ...


# --- the prompt format, shared by every engine -----------------------------------------------------------------------
@dataclass
class TextCodec:
    """Source text -> prompt ids, generated ids -> text, and the special ids that end generation.

    ``prompt_format``:

    * ``translation``: seqkd's format (:mod:`seqkd.data.prompts`): encoder ``src </s>`` or decoder-only prompt
      ``<s> src <sep>``; generation stops at ``</s>``.
    * ``plain`` (decoder-only only): the text wrapped in the special tokens the tokenizer adds itself (e.g. a
      pretrained LLM's bos), continued until the tokenizer's eos; for prompt files and pretrained LLMs.
    * ``chat`` (decoder-only only): the text as one user turn of the tokenizer's chat template with the generation
      prompt (an instruct teacher such as SmolLM2-Instruct); continued until the tokenizer's eos.
    * ``auto``: ``translation`` for encoder-decoder models and for tokenizers that have ``<sep>`` (every
      seqkd-trained tokenizer), ``plain`` otherwise.

    :meth:`encode` is :meth:`seqkd.data.prompts.Format.encode`, the prompt encoder training and ``translate`` use
    too: in every format the source is cut to ``max_source_len`` tokens before it is wrapped, and the wrapping is
    never cut.
    """

    family: str
    src_tok: Any
    tgt_tok: Any
    prompt_format: str = "auto"
    max_source_len: int = DEFAULT_MAX_SOURCE_LEN
    fmt: Any = field(init=False)  # seqkd.data.prompts.Format: pad/bos/eos ids (sep_id None for plain)

    def __post_init__(self) -> None:
        from seqkd.data.prompts import Format

        if not isinstance(self.max_source_len, int) or isinstance(self.max_source_len, bool) or \
                self.max_source_len < 1:
            raise SeqkdError(f"max_source_len must be a positive integer, got {self.max_source_len!r}")
        self.fmt = Format.from_tokenizer(self.family, self.tgt_tok, self.prompt_format)
        self.prompt_format = self.fmt.style

    @property
    def eos_id(self) -> int:
        return self.fmt.eos_id

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt ids for source texts (:meth:`seqkd.data.prompts.Format.encode`)."""
        return self.fmt.encode(self.src_tok, texts, self.max_source_len)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tgt_tok.decode(list(token_ids), skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the tokenizer(s) and prompt format."""
        d = {
            "name": getattr(self.tgt_tok, "name_or_path", None),
            "vocab_size": len(self.tgt_tok),
            "prompt_format": self.prompt_format,
            "max_source_len": self.max_source_len,
            "eos_id": self.fmt.eos_id,
        }
        if self.src_tok is not self.tgt_tok:
            d["source_name"] = getattr(self.src_tok, "name_or_path", None)
            d["source_vocab_size"] = len(self.src_tok)
        return d


def check_vocab(model_config, src_tok, tgt_tok, where: str) -> None:
    """A tokenizer with more ids than the model's embeddings would index out of range (or be silently wrong)."""
    dec_vocab = getattr(model_config, "decoder_vocab_size", None) or model_config.vocab_size
    sides = [(tgt_tok, dec_vocab, "tokenizer" if src_tok is tgt_tok else "target tokenizer")]
    if src_tok is not tgt_tok:
        sides.append((src_tok, model_config.vocab_size, "source tokenizer"))
    for tok, size, what in sides:
        if len(tok) > size:
            raise SeqkdError(f"{where}: the {what} has {len(tok)} tokens but the model's vocabulary is {size} "
                             "(tokenizer and model do not belong together)")


# --- registry ---------------------------------------------------------------------------------------------------------
def get_engine(name: str, model_dir: str, **options: Any) -> Engine:
    """Load the teacher in ``model_dir`` with engine ``name`` (``hf`` or ``vllm``); ``options`` go to the engine
    (HF: ``device``, ``dtype``, ``batch_size``, ``prompt_format``, ``max_source_len``, ``trust_remote_code``).
    The engine module is imported only here, so vLLM is never imported unless asked for."""
    module_name = ENGINE_MODULES.get(name)
    if module_name is None:
        raise SeqkdError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_MODULES)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise SeqkdError(f"the {name} engine is not available in this seqkd installation "
                             f"(module {module_name} is missing); use --engine hf") from None
        if e.name and e.name.split(".")[0] == "vllm":
            raise SeqkdError("the vllm engine needs vLLM, which is not installed (pip install 'seqkd[gpu]', or "
                             "'seqkd[cpu]' for the CPU build); use --engine hf") from None
        raise
    create = getattr(module, "create", None)
    if create is None:
        raise SeqkdError(f"{module_name} defines no create(model_dir, **options)")
    try:
        inspect.signature(create).bind(model_dir, **options)
    except TypeError as e:
        raise SeqkdError(f"engine {name}: {e}") from None
    return create(model_dir, **options)
