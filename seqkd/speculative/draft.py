"""``seqkd draft init``: a speculative-decoding draft that starts from its target; ``seqkd draft vocab``: the same
draft with its output layer pruned to the target's most frequent tokens (:mod:`seqkd.models.draft_vocab`).

A draft trained from scratch on a target's outputs must first learn the language; one made of the target's own
embeddings, output layer and a few of its layers starts out agreeing with the target wherever those layers carry
the prediction (early-exit / layer-skipping drafts: LayerSkip, Elhoushi et al. 2024; Draft & Verify, Zhang et
al. 2023). It is then trained (``seqkd distill --model DRAFT``) and aligned (``seqkd align``) like any draft, at the
target's width: its cost per token is the target's times the fraction of layers kept, plus the output layer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from seqkd.config import DraftInitConfig, DraftVocabConfig
from seqkd.errors import SeqkdError

log = logging.getLogger(__name__)


def init_draft(cfg: DraftInitConfig) -> dict:
    """Build the draft ``cfg`` describes and save it (with the target's tokenizer) in ``cfg.out``; returns what it
    made: the layers kept, the target's layer count and both parameter counts. With several ``cfg.layers`` choices,
    each is measured on ``cfg.choose_on`` and the fastest is saved (``choices`` and ``chosen`` in the result)."""
    from seqkd.io import atomic_write_json, is_model_dir, staged_dir
    from seqkd.models import count_non_embedding, count_parameters, family, load_model, save_model
    from seqkd.models.student_init import draft_from_target, parse_layers
    from seqkd.models.tokenizer import load_tokenizers

    out = Path(cfg.out)
    _check_out(out, cfg.target, cfg.overwrite)
    choices = cfg.layers.split()
    config = Path(cfg.target) / "config.json"
    if Path(cfg.target).is_dir() and not is_model_dir(cfg.target):
        raise SeqkdError(f"{cfg.target}: not a model directory (config.json + weights)")
    if config.is_file():  # a local model: check the layer choices before loading any weights
        meta = json.loads(config.read_text())
        if meta.get("is_encoder_decoder"):
            raise SeqkdError(f"{cfg.target} is an encoder-decoder model; `seqkd draft init` makes drafts of "
                             "decoder-only targets (for a Marian target, train a preset student with "
                             "--init-from-teacher)")
        for choice in choices:
            parse_layers(choice, int(meta.get("num_hidden_layers", 0)))
    prompts = _choice_prompts(cfg) if len(choices) > 1 else None  # read (and checked) before the weights load
    target = load_model(cfg.target)
    if family(target) != "causal":
        raise SeqkdError(f"{cfg.target} is an encoder-decoder model; `seqkd draft init` makes drafts of decoder-only "
                         "targets")
    n = target.config.num_hidden_layers
    tokenizers = load_tokenizers(cfg.target)
    rows = [_measure_choice(cfg, target, tokenizers, prompts, c) for c in choices] if prompts is not None else []
    chosen = max(rows, key=lambda r: r["speedup"])["layers_spec"] if rows else choices[0]
    layers = parse_layers(chosen, n)
    draft = draft_from_target(target, layers)
    with staged_dir(out) as staged:
        save_model(draft, tokenizers, staged)
        if rows:
            atomic_write_json(staged / LAYER_CHOICE_FILE, {"chosen": chosen, "choose_on": cfg.choose_on,
                                                           "gamma": cfg.gamma, "choices": rows})
    made = {"layers": layers, "target_layers": n, "params": count_parameters(draft),
            "non_embedding_params": count_non_embedding(draft), "target_params": count_parameters(target)}
    return made | ({"chosen": chosen, "choices": rows} if rows else {})


LAYER_CHOICE_FILE = "layer_choice.json"


def _choice_prompts(cfg: DraftInitConfig) -> list[str]:
    from seqkd.speculative.runners import read_prompts

    if not Path(cfg.choose_on).is_file():
        raise SeqkdError(f"--choose-on {cfg.choose_on}: no such file")
    return read_prompts(_choice_config(cfg, "-"))


def _choice_config(cfg: DraftInitConfig, name: str):
    from seqkd.config import SpeculateConfig

    # greedy: a choice is judged by whether the draft predicts the target's own next token, without sampling noise
    return SpeculateConfig(target=cfg.target, draft=name, input=cfg.choose_on, limit=cfg.limit, gamma=cfg.gamma,
                           temperature=0.0, max_new_tokens=cfg.max_new_tokens, prompt_format=cfg.prompt_format,
                           warmup=1, passes=1)


def _measure_choice(cfg: DraftInitConfig, target, tokenizers, prompts: list[str], choice: str) -> dict:
    """One layer choice as an untrained draft, speculating for ``target`` on ``prompts`` (seqkd's decoder)."""
    from seqkd.models import count_parameters
    from seqkd.models.student_init import draft_from_target, parse_layers
    from seqkd.speculative.runners import speculate

    layers = parse_layers(choice, target.config.num_hidden_layers)
    draft = draft_from_target(target, layers)
    r = speculate(_choice_config(cfg, f"layers {choice}"), progress=False, target=target, draft=draft,
                  tokenizers=tokenizers, prompts=prompts)
    keys = ("acceptance_rate", "verified_acceptance_rate", "block_efficiency", "cost_ratio", "verification_cost",
            "speedup", "per_position_acceptance")
    log.info("layers %s: acceptance %.3f, c %s, speedup %.2fx", choice, r["acceptance_rate"], r.get("cost_ratio"),
             r["speedup"])
    return {"layers_spec": choice, "layers": layers, "params": count_parameters(draft)} | {k: r.get(k) for k in keys}


def _check_out(out: Path, source: str, overwrite: bool) -> None:
    from seqkd.io import check_writable

    if out.resolve() == Path(source).resolve():
        raise SeqkdError("--out is the input model's own directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SeqkdError(f"{out} already exists and is not empty (--overwrite replaces it)")
    check_writable(out, directory=True)


def prune_draft_vocab(cfg: DraftVocabConfig) -> dict:
    """Count token frequencies over every hypothesis of the target's corpus, keep the ``cfg.top`` most frequent
    output rows of the draft (its eos ids always), save the pruned draft in ``cfg.out``; returns what it did."""
    from seqkd.io import is_model_dir, staged_dir
    from seqkd.models import count_parameters, load_model, save_model
    from seqkd.models.draft_vocab import prune_output_layer, refuse_training, token_frequencies, top_tokens
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative.decoder import eos_ids
    from seqkd.teacher.corpus import read_corpus

    out = Path(cfg.out)
    _check_out(out, cfg.draft, cfg.overwrite)
    if not is_model_dir(cfg.draft):
        raise SeqkdError(f"{cfg.draft}: not a model directory (config.json + weights)")
    refuse_training(cfg.draft, "pruning")  # already pruned: prune the original draft again instead
    meta = json.loads((Path(cfg.draft) / "config.json").read_text())
    if meta.get("is_encoder_decoder"):
        raise SeqkdError(f"{cfg.draft} is an encoder-decoder model; `seqkd draft vocab` prunes decoder-only drafts")
    vocab = int(meta.get("vocab_size", 0))
    if not 0 < cfg.top <= vocab:
        raise SeqkdError(f"--top must be in 1..{vocab} (the draft's vocabulary), got {cfg.top}")
    counts = token_frequencies(h["token_ids"] for rec in read_corpus(cfg.corpus) for h in rec["hypotheses"])
    if not counts:
        raise SeqkdError(f"{cfg.corpus}: the corpus has no tokens to count")
    draft = load_model(cfg.draft)
    before = count_parameters(draft)
    ids = top_tokens(counts, cfg.top, vocab, always=eos_ids(draft))
    prune_output_layer(draft, ids)
    with staged_dir(out) as staged:
        save_model(draft, load_tokenizers(cfg.draft), staged)
    total = sum(counts.values())
    return {"top": cfg.top, "vocab_size": vocab, "corpus_tokens": total,
            "coverage": sum(counts[t] for t in ids) / total, "params": count_parameters(draft),
            "params_before": before}
