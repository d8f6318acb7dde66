"""Model presets (decoder-only Llama, encoder-decoder Marian): shapes, building, parameter counts."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from seqkd.errors import SeqkdError

# --- presets ---------------------------------------------------------------------------------------------------------
# Config kwargs per preset. vocab_size and the special-token ids come from the tokenizer (build_model arguments).
# Parameter counts in the comments are for a joint vocabulary of 8,000 (tied embeddings counted once; Marian's frozen
# sinusoidal position tables not counted); the embedding alone is 8000*d: 0.51M at d=64, 2.05M at 256, 3.07M at 384.
#
# Tiny presets are for tests: 2 heads so that head_dim is 32, the smallest head size vLLM's CPU attention supports.
# Teachers must train on Multi30k (29k pairs) on 2 CPU cores in about 40 minutes. Measured on this machine (AVX2,
# fp32, ~30-60 GFLOP/s): a d=384 3+3 Marian trains at ~640 tokens/s (about 2 epochs in 40 minutes), a d=256 3+3 at
# ~2,600 tokens/s (~7 epochs). On Multi30k epochs matter more than width, so teachers are d=256 and the students
# are made cheaper where decoding time goes: fewer decoder layers (Marian) or fewer layers (Llama).

_LLAMA_COMMON: dict[str, Any] = {
    "tie_word_embeddings": True,  # output projection = input embeddings: fewer parameters, better on small data
    "max_position_embeddings": 512,  # source + <sep> + target for decoder-only translation fits easily
    "rope_theta": 10000.0,  # transformers 5 moves it into rope_parameters
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
}

_MARIAN_COMMON: dict[str, Any] = {
    "max_position_embeddings": 256,  # static sinusoidal tables, as Marian uses (nothing to learn)
    "scale_embedding": True,  # sqrt(d) scaling: token embeddings (init std 0.02) are otherwise drowned by positions
    "activation_function": "swish",  # as Marian's own models
    "share_encoder_decoder_embeddings": True,  # joint vocabulary; build_model turns it off for separate ones
    "tie_word_embeddings": True,  # output projection = decoder embeddings
    "forced_eos_token_id": None,  # MarianConfig defaults to 0, which is <pad> in seqkd's vocabulary
}

PRESETS: dict[str, dict[str, Any]] = {
    # llama-tiny: 0.59M params (vocab 8000)
    "llama-tiny": {
        **_LLAMA_COMMON,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    # llama-tiny-student: llama-tiny with 1 layer (tests' students and drafts)
    "llama-tiny-student": {
        **_LLAMA_COMMON,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    # llama-student: 4.1M params; 2 layers of d 256, also the shape of a fast speculative-decoding draft
    "llama-student": {
        **_LLAMA_COMMON,
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 1024,
    },
    # llama-student-small: 3 layers of d 128 (1.8M params, 0.79M outside the embedding: the teacher's 6.3M / 8)
    "llama-student-small": {
        **_LLAMA_COMMON,
        "hidden_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 512,
    },
    # llama-draft: 1 layer of d 256 (3.1M params at 8k vocabulary): a speculative-decoding draft for llama-teacher
    "llama-draft": {
        **_LLAMA_COMMON,
        "hidden_size": 256,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 1024,
    },
    # llama-teacher: 8.3M params
    "llama-teacher": {
        **_LLAMA_COMMON,
        "hidden_size": 256,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 1024,
    },
    # marian-teacher-large: 6+6 layers x d 512 (transformer-base's shape; 48.2M params, 44.1M outside
    # the embedding): a stronger teacher, trained
    # where a GPU is at hand
    "marian-teacher-large": {
        **_MARIAN_COMMON,
        "d_model": 512,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    },
    # marian-tiny: 0.68M params
    "marian-tiny": {
        **_MARIAN_COMMON,
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    },
    # marian-tiny-student: marian-tiny with a 1-layer decoder (the demo's student, tests' drafts)
    "marian-tiny-student": {
        **_MARIAN_COMMON,
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    },
    # marian-student: 5.5M params; deep encoder, 1-layer decoder (decoding time is spent in the decoder)
    "marian-student": {
        **_MARIAN_COMMON,
        "d_model": 256,
        "encoder_layers": 3,
        "decoder_layers": 1,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 1024,
        "decoder_ffn_dim": 1024,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    },
    # marian-student-small: 2.1M params, 1.06M of them outside the embedding (the teacher's 5.5M / 5.2): a CPU
    # student shaped as shipped MT students are (deep encoder, one decoder layer, narrow): the decoder runs once per
    # output token, the encoder once per sentence
    "marian-student-small": {
        **_MARIAN_COMMON,
        "d_model": 128,
        "encoder_layers": 4,
        "decoder_layers": 1,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 512,
        "decoder_ffn_dim": 512,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    },
    # marian-teacher: 7.6M params (5.5M outside the embedding)
    "marian-teacher": {
        **_MARIAN_COMMON,
        "d_model": 256,
        "encoder_layers": 3,
        "decoder_layers": 3,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 1024,
        "decoder_ffn_dim": 1024,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    },
}



def family(model_or_config: Any) -> str:
    """"causal" or "seq2seq" for a model, a config, or a model directory / hub id."""
    if isinstance(model_or_config, (str, Path)):
        from seqkd.models.loading import _load_config

        config = _load_config(str(model_or_config), trust_remote_code=False)
    else:
        config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "is_encoder_decoder"):
        raise SeqkdError(f"not a model or model config: {type(model_or_config).__name__}")
    return "seq2seq" if config.is_encoder_decoder else "causal"


def build_model(
    preset: str,
    *,
    vocab_size: int,
    pad_id: int = 0,
    bos_id: int = 2,
    eos_id: int = 3,
    decoder_vocab_size: int | None = None,
    seed: int | None = None,
    **overrides: Any,
):
    """A freshly initialised float32 model from a preset.

    vocab_size: the (source, or joint) tokenizer's size. decoder_vocab_size: the target vocabulary's size when it is
    separate (Marian only): encoder and decoder then get their own embeddings and the output projection is tied to
    the decoder's. overrides: config kwargs that replace the preset's. seed: initialise reproducibly without
    touching the global RNG. Marian decodes starting from pad_id, as Marian does.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, MarianConfig, MarianMTModel

    if preset not in PRESETS:
        raise SeqkdError(f"unknown model preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    arch = preset.split("-")[0]
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (MarianConfig, MarianMTModel)

    # PretrainedConfig keeps unknown kwargs silently: a typo would otherwise be ignored without a word.
    known = set(vars(config_cls())) | set(getattr(config_cls, "attribute_map", {})) | set(PRESETS[preset])
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SeqkdError(f"unknown config option(s) for {preset}: {', '.join(unknown)}")
    kwargs = {**PRESETS[preset], **overrides}

    ids = {"pad_id": pad_id, "bos_id": bos_id, "eos_id": eos_id}
    for name, value in ids.items():
        if not 0 <= value < vocab_size:
            raise SeqkdError(f"{name}={value} is outside the vocabulary (size {vocab_size})")
    kwargs.update(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)

    if decoder_vocab_size is not None and decoder_vocab_size != vocab_size:
        if arch != "marian":
            raise SeqkdError(f"{preset} is decoder-only: it needs one joint vocabulary (decoder_vocab_size given)")
        for name, value in ids.items():
            if value >= decoder_vocab_size:
                raise SeqkdError(f"{name}={value} is outside the target vocabulary (size {decoder_vocab_size})")
        kwargs.update(decoder_vocab_size=decoder_vocab_size, share_encoder_decoder_embeddings=False)
    if arch == "marian":
        kwargs["decoder_start_token_id"] = pad_id

    d = kwargs.get("hidden_size", kwargs.get("d_model"))
    for key in ("num_attention_heads", "encoder_attention_heads", "decoder_attention_heads"):
        if key in kwargs and d % kwargs[key]:
            raise SeqkdError(f"{preset}: model width {d} is not divisible by {key}={kwargs[key]}")

    config = config_cls(**kwargs)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    _sync_generation_config(model)
    return model


def count_parameters(model, *, trainable_only: bool = True) -> int:
    """Number of distinct parameters (tied weights counted once); by default only those that train, which leaves
    out Marian's frozen sinusoidal position tables."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_non_embedding(model) -> int:
    """Trainable parameters outside the token embeddings and the output projection (the size that decides compute
    per token, and what "N x smaller student" compares; each tensor counted once, tied or not)."""
    emb = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    if family(model) == "seq2seq":  # Marian with separate vocabularies: the decoder's own embedding
        emb.add(id(model.get_decoder().embed_tokens.weight))
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in emb)


def describe(model) -> str:
    """One line: family, architecture, layers, width, heads, vocabulary and parameter count."""
    c = model.config
    if family(model) == "seq2seq":
        layers = f"{c.encoder_layers}+{c.decoder_layers}"
        d, heads, ffn = c.d_model, c.encoder_attention_heads, c.encoder_ffn_dim
        vocab = str(c.vocab_size)
        if getattr(c, "decoder_vocab_size", c.vocab_size) != c.vocab_size:
            vocab += f"/{c.decoder_vocab_size}"
    else:
        layers = str(c.num_hidden_layers)
        d, heads = c.hidden_size, c.num_attention_heads
        ffn, vocab = getattr(c, "intermediate_size", "?"), str(c.vocab_size)
    return (
        f"{family(model)} {type(model).__name__}: layers {layers}, d {d}, heads {heads}, ffn {ffn}, "
        f"vocab {vocab}, {count_parameters(model) / 1e6:.2f}M params ({count_non_embedding(model) / 1e6:.2f}M "
        "outside the embeddings)"
    )


def _sync_generation_config(model) -> None:
    """Copy the special-token ids from the model config into its generation config (what generate() uses).

    max_length stays HF's default (20): callers pass max_new_tokens (setting both makes generate() warn each call).
    """
    from transformers import GenerationConfig

    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig()
    c, g = model.config, model.generation_config
    names = ["bos_token_id", "eos_token_id", "pad_token_id"]
    if c.is_encoder_decoder:
        names.append("decoder_start_token_id")
    for name in names:
        value = getattr(c, name, None)
        if value is not None:
            setattr(g, name, value)
