"""A draft whose output layer covers only the target tokens it is likely to propose (FR-Spec, Zhao et al. 2025;
EAGLE-3's draft vocabulary, Li et al. 2025).

A small draft of a large-vocabulary target spends much of its step in the output layer (SmolLM2: 49,152 x 576, more
than a d576 transformer layer). Keeping the rows of the ``K`` target tokens most frequent in the target's own
outputs cuts that product to ``K / V`` of its cost. Decoding stays exact: the draft's distribution is zero outside
the kept tokens (its logits there are ``-inf``), so those tokens are never drafted, and the acceptance rule's
residual ``max(0, p - q)`` gives them exactly their target probability (greedy: the target's argmax is emitted
whether or not the draft could propose it).

Only the output layer shrinks: the input embeddings keep every target token, because the draft reads the target's
tokens, kept or not. The pruned draft is a plain HF model plus :data:`DRAFT_VOCAB_FILE` (the target id of each
output row); :func:`seqkd.models.load_model` restores it, with the map at ``model.seqkd_vocab_map``. Training a
pruned draft is not supported: prune after training and alignment. Engines: seqkd's decoder uses it; HF assisted
generation and vLLM's draft-model speculation expect the draft to score the whole vocabulary and cannot.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from seqkd.errors import SeqkdError

DRAFT_VOCAB_FILE = "draft_vocab.json"  # {"target_ids": [K ids, one per output row], "target_vocab_size": V}


def is_pruned_draft(path: str | os.PathLike) -> bool:
    """A model directory holding a draft with a pruned output layer."""
    return (Path(path) / DRAFT_VOCAB_FILE).is_file()


def refuse_training(path: str | os.PathLike, job: str) -> None:
    """Training jobs take full-vocabulary models: one line for a pruned draft, before anything loads."""
    if is_pruned_draft(path):
        raise SeqkdError(f"{path} is a draft with a pruned output layer ({DRAFT_VOCAB_FILE}); {job} trains "
                         "full-vocabulary models: train or align the unpruned draft, then prune it "
                         "(seqkd draft vocab)")


def token_frequencies(sequences: Iterable[Iterable[int]]) -> Counter:
    """How often each token id occurs in ``sequences`` (e.g. every hypothesis of the target's corpus)."""
    counts: Counter = Counter()
    for seq in sequences:
        counts.update(seq)
    return counts


def top_tokens(counts: Counter, k: int, vocab_size: int, always: Iterable[int] = ()) -> list[int]:
    """The ``k`` most frequent ids (ties broken by the smaller id), always including ``always`` (the eos ids: a
    draft that cannot propose eos never ends a block early), sorted. Ids outside ``[0, vocab_size)`` are an error."""
    must = sorted(set(always))
    if not 0 < k <= vocab_size:
        raise SeqkdError(f"--top must be in 1..{vocab_size} (the target's vocabulary), got {k}")
    if len(must) > k:
        raise SeqkdError(f"--top {k} is smaller than the {len(must)} tokens a draft must keep (eos)")
    bad = [t for t in list(counts) + must if not 0 <= t < vocab_size]
    if bad:
        raise SeqkdError(f"token id {bad[0]} is outside the target's vocabulary (size {vocab_size})")
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    chosen = set(must)
    for t in ranked:
        if len(chosen) == k:
            break
        chosen.add(t)
    for t in range(vocab_size):  # fewer distinct tokens in the corpus than k: fill with the smallest unused ids
        if len(chosen) == k:
            break
        chosen.add(t)
    return sorted(chosen)


@torch.no_grad()
def prune_output_layer(model, target_ids: list[int]) -> None:
    """Keep only the output rows of ``target_ids`` (in that order), in place; untie them from the input embeddings
    (which keep every token) and record the map at ``model.seqkd_vocab_map`` (``[K]`` long)."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    ids = torch.tensor(target_ids, dtype=torch.long)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab or ids.unique().numel() != ids.numel():
        raise SeqkdError(f"a draft vocabulary must be distinct ids in 0..{vocab - 1}")
    pruned = torch.nn.Linear(head.in_features, ids.numel(), bias=head.bias is not None,
                             device=head.weight.device, dtype=head.weight.dtype)
    pruned.weight.copy_(head.weight[ids])  # a copy: tied input embeddings stay whole
    if head.bias is not None:
        pruned.bias.copy_(head.bias[ids])
    model.set_output_embeddings(pruned)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    model.seqkd_vocab_map = ids
    model.seqkd_target_vocab_size = vocab


def expand_logits(logits: Tensor, vocab_map: Tensor, vocab_size: int) -> Tensor:
    """Pruned-draft logits ``[..., K]`` -> full-vocabulary logits ``[..., V]``, ``-inf`` outside the kept tokens (so
    any temperature / top-p / softmax gives them probability exactly 0)."""
    full = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))
    full[..., vocab_map.to(logits.device)] = logits
    return full


def save_vocab_map(model, out_dir: str | os.PathLike) -> None:
    """Write :data:`DRAFT_VOCAB_FILE` for a pruned ``model`` into ``out_dir`` (beside its ``save_pretrained``)."""
    (Path(out_dir) / DRAFT_VOCAB_FILE).write_text(json.dumps(
        {"target_ids": model.seqkd_vocab_map.tolist(), "target_vocab_size": model.seqkd_target_vocab_size}) + "\n")


def load_pruned(model_dir: str | os.PathLike, config, dtype: torch.dtype):
    """A pruned draft saved by seqkd: built from its config, output layer pruned to the saved map, weights loaded
    strictly (every tensor present, every shape as saved)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    d = Path(model_dir)
    meta = json.loads((d / DRAFT_VOCAB_FILE).read_text())
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    prune_output_layer(model, meta["target_ids"])
    state: dict[str, Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        state.update(load_file(f))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SeqkdError(f"cannot load the pruned draft in {d}: {str(e).splitlines()[0]}") from e
    return model.to(dtype)
