"""Everything a training run needs before the first step: data, tokenizers, model, encoded examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .errors import SeqkdError


@dataclass
class Run:
    model: object
    src_tok: object
    tgt_tok: object
    train_examples: list[dict]
    valid: tuple[list[dict], list[str], list[str]] | None  # (examples, sources, references)
    data_stats: dict


def load_pairs(cfg: TrainConfig) -> tuple[list[str], list[str], list[str] | None, list[str] | None, dict]:
    """Training and validation text from a registered dataset, the synthetic task, or files."""
    from . import data as data_mod
    from . import datasets, synthetic

    stats: dict = {}
    if cfg.data == "synthetic":
        src, tgt = synthetic.synthetic_pairs(cfg.synthetic_size, seed=cfg.seed,
                                             multimodality=cfg.synthetic_multimodality)
        vsrc, vtgt = synthetic.synthetic_pairs(500, seed=cfg.seed + 10_000, multimodality=0.0)
        return src, tgt, vsrc, vtgt, {"train": len(src), "valid": len(vsrc), "source": "synthetic"}
    if cfg.data is not None:
        src, tgt = datasets.load_parallel(cfg.data, "train")
        vsrc, vtgt = datasets.load_parallel(cfg.data, "val")
        return src, tgt, vsrc, vtgt, {"train": len(src), "valid": len(vsrc), "source": cfg.data}
    exs, st = data_mod.read_parallel(cfg.train_source, cfg.train_target, strict=cfg.strict)
    stats["train"] = str(st)
    src, tgt = [e.source for e in exs], [e.target for e in exs]
    vsrc = vtgt = None
    if cfg.valid_source:
        vexs, vst = data_mod.read_parallel(cfg.valid_source, cfg.valid_target, strict=cfg.strict)
        vsrc, vtgt = [e.source for e in vexs], [e.target for e in vexs]
        stats["valid"] = str(vst)
    if not src:
        raise SeqkdError(f"no training pairs left in {cfg.train_source} after skipping empty lines")
    return src, tgt, vsrc, vtgt, stats


def tokenizers_for(cfg: TrainConfig, sources: list[str], targets: list[str]):
    """The run's tokenizers: given, the model directory's own, or newly trained into ``out/tokenizer``."""
    from .tokenizer import load_tokenizers, train_translation_tokenizers

    if cfg.tokenizer:
        return load_tokenizers(cfg.tokenizer)
    if Path(cfg.model).is_dir():
        return load_tokenizers(cfg.model)
    tok_dir = Path(cfg.out) / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():  # a resumed run keeps the tokenizer it started with
        return load_tokenizers(tok_dir)
    return train_translation_tokenizers(sources, targets, tok_dir, joint=True, vocab_size=cfg.vocab_size,
                                        model_type=cfg.tokenizer_type)


def model_for(cfg: TrainConfig, src_tok, tgt_tok):
    from .models import PRESETS, build_model, load_model

    if cfg.model in PRESETS:
        # Llama has no residual dropout; its one dropout knob is on attention probabilities.
        key = "attention_dropout" if cfg.model.startswith("llama") else "dropout"
        overrides = {} if cfg.dropout is None else {key: cfg.dropout}
        separate = src_tok is not tgt_tok
        return build_model(cfg.model, vocab_size=len(src_tok), decoder_vocab_size=len(tgt_tok) if separate else None,
                           pad_id=tgt_tok.pad_token_id, bos_id=tgt_tok.bos_token_id, eos_id=tgt_tok.eos_token_id,
                           seed=cfg.seed, **overrides)
    model = load_model(cfg.model)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tgt_tok) > vocab:
        raise SeqkdError(f"tokenizer has {len(tgt_tok)} tokens but {cfg.model} embeds only {vocab}")
    return model


def check_model_name(name: str) -> None:
    """A preset, an existing directory, or an ``org/name`` hub id; anything else fails before any work."""
    from .models import PRESETS

    if name in PRESETS or Path(name).is_dir():
        return
    if Path(name).exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise SeqkdError(f"--model {name!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                         "nor a model directory (nor an org/name hub id)")


def prepare_run(cfg: TrainConfig) -> Run:
    from .models import family
    from .translation import Format, encode_pairs

    check_model_name(cfg.model)
    src, tgt, vsrc, vtgt, stats = load_pairs(cfg)
    src_tok, tgt_tok = tokenizers_for(cfg, src, tgt)
    model = model_for(cfg, src_tok, tgt_tok)
    fmt = Format.from_tokenizer(family(model), tgt_tok, cfg.prompt_format)
    train_ex = encode_pairs(fmt, src_tok, tgt_tok, src, tgt, max_len=cfg.max_len)
    valid = None
    if vsrc:
        valid = (encode_pairs(fmt, src_tok, tgt_tok, vsrc, vtgt, max_len=cfg.max_len), vsrc, vtgt)
    return Run(model, src_tok, tgt_tok, train_ex, valid, stats)
