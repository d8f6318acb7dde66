"""``seqkd draft init``: a speculative-decoding draft that starts from its target.

A draft trained from scratch on a target's outputs must first learn the language; one made of the target's own
embeddings, output layer and a few of its layers starts out agreeing with the target wherever those layers carry
the prediction (early-exit / layer-skipping drafts: LayerSkip, Elhoushi et al. 2024; Draft & Verify, Zhang et
al. 2023). It is then trained (``seqkd distill --model DRAFT``) and aligned (``seqkd align``) like any draft, at the
target's width: its cost per token is the target's times the fraction of layers kept, plus the output layer.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqkd.config import DraftInitConfig
from seqkd.errors import SeqkdError


def init_draft(cfg: DraftInitConfig) -> dict:
    """Build the draft ``cfg`` describes and save it (with the target's tokenizer) in ``cfg.out``; returns what it
    made: the layers kept, the target's layer count and both parameter counts."""
    from seqkd.io import check_writable, is_model_dir, staged_dir
    from seqkd.models import count_non_embedding, count_parameters, family, load_model, save_model
    from seqkd.models.student_init import draft_from_target, parse_layers
    from seqkd.models.tokenizer import load_tokenizers

    out = Path(cfg.out)
    if out.resolve() == Path(cfg.target).resolve():
        raise SeqkdError("--out is the target's own directory")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise SeqkdError(f"{out} already exists and is not empty (--overwrite replaces it)")
    check_writable(out, directory=True)
    config = Path(cfg.target) / "config.json"
    if Path(cfg.target).is_dir() and not is_model_dir(cfg.target):
        raise SeqkdError(f"{cfg.target}: not a model directory (config.json + weights)")
    if config.is_file():  # a local model: check the layer choice before loading any weights
        meta = json.loads(config.read_text())
        if meta.get("is_encoder_decoder"):
            raise SeqkdError(f"{cfg.target} is an encoder-decoder model; `seqkd draft init` makes drafts of "
                             "decoder-only targets (for a Marian target, train a preset student with "
                             "--init-from-teacher)")
        parse_layers(cfg.layers, int(meta.get("num_hidden_layers", 0)))
    target = load_model(cfg.target)
    if family(target) != "causal":
        raise SeqkdError(f"{cfg.target} is an encoder-decoder model; `seqkd draft init` makes drafts of decoder-only "
                         "targets")
    layers = parse_layers(cfg.layers, target.config.num_hidden_layers)
    draft = draft_from_target(target, layers)
    with staged_dir(out) as staged:
        save_model(draft, load_tokenizers(cfg.target), staged)
    return {"layers": layers, "target_layers": target.config.num_hidden_layers, "params": count_parameters(draft),
            "non_embedding_params": count_non_embedding(draft), "target_params": count_parameters(target)}
