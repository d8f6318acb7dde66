"""Batched translation with HF ``generate`` for both families: greedy, beam (n-best) and sampling.

Batches are formed over inputs sorted by length (less padding, and the batch's longest input bounds the
work), and results are put back in input order: output ``i`` always belongs to input ``i``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from seqkd.data.batching import pad
from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN, Format
from seqkd.models import family


@dataclass
class Hypothesis:
    """One decoded output: the generated token ids exactly as the model produced them, up to (not including) the
    eos; ``finished`` says whether it ended with eos (else it was cut at the length limit). For beam search, its
    score."""

    ids: list[int]
    score: float | None = None  # total log-prob (beam) — None for greedy/sampling
    finished: bool = False


def generation_config(
    model,
    fmt: Format,
    *,
    beam_size: int = 1,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
) -> GenerationConfig:
    """A complete GenerationConfig for translation (ids from the format, nothing inherited by surprise)."""
    if num_return_sequences > max(beam_size, 1) and not do_sample:
        raise ValueError(f"num_return_sequences={num_return_sequences} > beam_size={beam_size}")
    kw = dict(
        max_new_tokens=max_new_tokens,
        num_beams=beam_size,
        num_return_sequences=num_return_sequences,
        do_sample=do_sample,
        eos_token_id=fmt.eos_id,
        pad_token_id=fmt.pad_id,
        bos_token_id=fmt.bos_id,
        early_stopping=True if beam_size > 1 else False,
        return_dict_in_generate=True,
        output_scores=beam_size > 1,  # beam search then reports each hypothesis's sequence score
        length_penalty=length_penalty,
    )
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p, top_k=top_k)
    if fmt.family == "seq2seq":
        kw["decoder_start_token_id"] = model.config.decoder_start_token_id
    return GenerationConfig(**kw)


@torch.no_grad()
def generate_ids(
    model,
    fmt: Format,
    prompts: Sequence[Sequence[int]],
    gen: GenerationConfig,
    *,
    batch_size: int = 64,
    max_len_ratio: float | None = None,
    progress: bool = False,
    desc: str = "decoding",
    logits_processor: Callable[[torch.Tensor, torch.Tensor, int], Any] | None = None,
) -> list[list[Hypothesis]]:
    """Decode prompt id lists (from :meth:`Format.prompt_ids`); returns, per prompt, ``num_return_sequences``
    hypotheses (target ids with eos and padding removed), best first for beam search.

    ``max_len_ratio`` (translation): a batch stops at ``ratio * longest prompt + 10`` new tokens if that is below
    ``gen.max_new_tokens`` — an untrained model that never emits eos then costs little.
    ``logits_processor(ids [B, P], mask [B, P], rows_per_prompt)``: makes a processor for each batch (an ensemble's,
    :class:`seqkd.teacher.ensemble.EnsembleProcessor`); HF runs it after its own.
    """
    from transformers import LogitsProcessorList

    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[list[Hypothesis] | None] = [None] * len(prompts)
    n_ret = gen.num_return_sequences or 1
    want_scores = (gen.num_beams or 1) > 1
    bar = tqdm(total=len(prompts), desc=desc, unit="sent", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [list(prompts[i]) for i in idx]
        left = fmt.family == "causal"  # decoder-only prompts are left-padded so generation continues them
        ids = pad(batch, fmt.pad_id, left=left).to(device)
        lengths = torch.tensor([len(p) for p in batch], device=device)
        pos = torch.arange(ids.shape[1], device=device)[None, :]
        mask = (pos >= ids.shape[1] - lengths[:, None]) if left else (pos < lengths[:, None])
        g = copy.deepcopy(gen)
        new = gen.max_new_tokens
        if max_len_ratio is not None:
            new = min(new, int(max_len_ratio * int(lengths.max())) + 10)
        # max_length, not max_new_tokens: HF would otherwise also inherit the model's max_length and warn.
        g.max_new_tokens = None
        g.max_length = new + (ids.shape[1] if left else 1)
        extra = {}
        if logits_processor is not None:
            rows = g.num_beams if (g.num_beams or 1) > 1 else n_ret  # rows generate decodes per prompt
            extra["logits_processor"] = LogitsProcessorList([logits_processor(ids, mask, rows)])
        out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=g, **extra)
        seqs = out.sequences
        # Generated part only: after the prompt (causal) or after decoder_start (seq2seq).
        seqs = seqs[:, ids.shape[1] :] if left else seqs[:, 1:]
        scores = getattr(out, "sequences_scores", None) if want_scores else None
        for j, i in enumerate(idx):
            hyps = []
            for r in range(n_ret):
                row = seqs[j * n_ret + r].tolist()
                ids, finished = _cut(row, fmt)
                hyps.append(Hypothesis(ids=ids, score=_score(scores, j * n_ret + r), finished=finished))
            results[i] = hyps
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


def _cut(row: list[int], fmt: Format) -> tuple[list[int], bool]:
    """(the tokens before the first eos, whether there was one). HF pads a finished row after its eos only, so
    nothing else is removed: a pad id the model itself produced before its eos is one of its tokens (a tokenizer may
    use one id as pad and as a real token), and on-policy training must see the sample exactly as drawn."""
    if fmt.eos_id in row:
        return row[: row.index(fmt.eos_id)], True
    return row, False


def _score(scores, k: int) -> float | None:
    return None if scores is None else float(scores[k])


def translate(
    model,
    src_tok,
    tgt_tok,
    sources: Sequence[str],
    *,
    beam_size: int = 1,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = 128,
    max_source_len: int = DEFAULT_MAX_SOURCE_LEN,
    max_len_ratio: float | None = None,
    progress: bool = False,
    seed: int | None = None,
    prompt_format: str = "auto",
) -> list[str] | list[list[str]]:
    """Translate ``sources``; returns one string per source (or a list of ``num_return_sequences``).
    An empty (or whitespace) source translates to ``""`` without being decoded. ``prompt_format``: see
    :class:`~seqkd.data.prompts.Format` (auto: translation, or plain for a tokenizer without ``<sep>``). Prompts
    are :meth:`Format.encode`'s, as in training and in every engine: each source cut to ``max_source_len`` tokens,
    then wrapped."""
    keep = [i for i, s in enumerate(sources) if s.strip()]
    fmt = Format.from_tokenizer(family(model), tgt_tok, prompt_format)
    prompts = fmt.encode(src_tok, [sources[i] for i in keep], max_source_len)
    gen = generation_config(
        model, fmt, beam_size=beam_size, num_return_sequences=num_return_sequences, do_sample=do_sample,
        temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
    )
    if seed is not None:
        torch.manual_seed(seed)
    decoded = generate_ids(model, fmt, prompts, gen, batch_size=batch_size, max_len_ratio=max_len_ratio,
                           progress=progress)
    hyps: list[list[Hypothesis]] = [[Hypothesis(ids=[])] * num_return_sequences for _ in sources]
    for i, hs in zip(keep, decoded):
        hyps[i] = hs
    texts = [[tgt_tok.decode(h.ids, skip_special_tokens=True) for h in hs] for hs in hyps]
    return [t[0] for t in texts] if num_return_sequences == 1 else texts
