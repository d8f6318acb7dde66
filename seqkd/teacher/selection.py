"""Turn a distillation corpus into student training data (Kim & Rush 2016, arXiv 1606.07947).

Strategies, per corpus record (one source and its teacher hypotheses, best first — see :mod:`seqkd.teacher.corpus`):

* ``top``: the record's first hypothesis, i.e. the teacher's best: beam search's first n-best entry (ranked by the
  beam's length-penalised score, exactly what ``model.generate`` returns first; this is Kim & Rush's seq-KD
  target), the greedy output, or the sample with the highest total log-prob. Weight 1.
* ``seq-inter``: the hypothesis with the highest sentence-level sacrebleu BLEU (``metric="bleu"``: 13a tokens,
  exponential smoothing, effective order — sacrebleu's ``sentence_bleu``) or chrF (``metric="chrf"``) against the
  record's reference: Kim & Rush's sequence-level interpolation. Ties go to the better-ranked hypothesis.
  Every record needs a reference (from the corpus or ``references``). Weight 1.
* ``all``: every distinct hypothesis (identical token sequences, e.g. repeated samples, are kept once) as its own
  example, weighted by its teacher probability renormalised over the distinct hypotheses of the record:
  ``softmax(logprob)``. A record's weights sum to 1.

Each training example is a dict: ``id`` (the record's), ``source``, ``target`` (the hypothesis text), ``reference``
(the human reference, or None; the student trainer can mix it in), ``weight``,
``rank`` (the hypothesis's index in the record), ``token_ids`` (the teacher's target ids, eos included when
``finished``), ``logprob``, ``norm_logprob``, ``finished``, and, when the corpus has them, ``token_logprobs``,
``topk_ids`` and ``topk_logprobs`` (for offline token-level KD); ``seq-inter`` adds ``score`` (the sentence metric).
Written as JSONL, the file is also a plain parallel corpus for ``seqkd.data.files.read_parallel`` (which reads
``source`` / ``target`` and ignores the rest).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from seqkd.errors import SeqkdError

STRATEGIES = ("top", "seq-inter", "all")
METRICS = ("bleu", "chrf")
_CARRIED = ("token_logprobs", "topk_ids", "topk_logprobs")


def sentence_metric(metric: str):
    """``f(hypothesis, reference) -> float``: sacrebleu sentence BLEU or chrF (0..100)."""
    from sacrebleu.metrics import BLEU, CHRF

    if metric == "bleu":
        m = BLEU(effective_order=True)  # what sacrebleu.sentence_bleu uses; plain BLEU is 0 for short sentences
    elif metric == "chrf":
        m = CHRF()
    else:
        raise SeqkdError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return lambda hyp, ref: m.sentence_score(hyp, [ref]).score


def _example(rec: dict, rank: int, weight: float, reference: str | None) -> dict[str, Any]:
    h = rec["hypotheses"][rank]
    ex: dict[str, Any] = {
        "id": rec["id"],
        "source": rec["source"],
        "target": h["text"],
        "reference": reference,
        "weight": weight,
        "rank": rank,
        "token_ids": h["token_ids"],
        "logprob": h["logprob"],
        "norm_logprob": h["norm_logprob"],
        "finished": h.get("finished", True),
    }
    for key in _CARRIED:
        if key in h:
            ex[key] = h[key]
    return ex


def _reference(rec: dict, references: Sequence[str] | Mapping[int, str] | None) -> str | None:
    if references is None:
        return rec.get("reference")
    rid = rec["id"]
    if isinstance(references, Mapping):
        return references.get(rid)
    if not 0 <= rid < len(references):
        raise SeqkdError(f"record id {rid} has no reference: the references have {len(references)} lines "
                         "(line i must be the reference of id i, the 0-based line of the source file)")
    return references[rid]


def select(
    records: Iterable[dict],
    strategy: str = "top",
    metric: str = "bleu",
    *,
    references: Sequence[str] | Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Training examples from corpus records (see the module docstring). ``references`` replaces the records' own
    references: a sequence indexed by record id (the lines of a reference file) or a mapping id -> text."""
    if strategy not in STRATEGIES:
        raise SeqkdError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    score = sentence_metric(metric) if strategy == "seq-inter" else None
    out: list[dict[str, Any]] = []
    for rec in records:
        hyps = rec.get("hypotheses") or []
        if not hyps:
            raise SeqkdError(f"record id {rec.get('id')} has no hypotheses")
        ref = _reference(rec, references)
        if strategy == "top":
            out.append(_example(rec, 0, 1.0, ref))
        elif strategy == "seq-inter":
            if ref is None:
                raise SeqkdError(f"seq-inter needs a reference for every record; id {rec['id']} has none "
                                 "(decode a parallel corpus, or give the references)")
            scores = [score(h["text"], ref) for h in hyps]
            best = max(range(len(hyps)), key=lambda k: (scores[k], -k))  # ties: the better-ranked hypothesis
            ex = _example(rec, best, 1.0, ref)
            ex["score"] = scores[best]
            out.append(ex)
        else:
            seen: set[tuple[int, ...]] = set()
            keep = []
            for k, h in enumerate(hyps):
                key = tuple(h["token_ids"])
                if key not in seen:
                    seen.add(key)
                    keep.append(k)
            lps = [hyps[k]["logprob"] for k in keep]
            top = max(lps)
            z = math.fsum(math.exp(lp - top) for lp in lps)
            for k, lp in zip(keep, lps):
                out.append(_example(rec, k, math.exp(lp - top) / z, ref))
    return out


def write_training_data(examples: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write training examples as JSONL, atomically (a reader never sees a partial file)."""
    from seqkd.io import atomic_write_lines

    p = Path(path)
    atomic_write_lines(p, (json.dumps(ex, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                           for ex in examples))
    return p


def select_to_file(corpus: str, out: str, strategy: str = "top", metric: str = "bleu", *,
                   references: str | None = None) -> dict[str, Any]:
    """``seqkd select``: a corpus (directory or corpus.jsonl) -> training data at ``out``; returns what was written
    (examples, strategy and, where every example has a reference, the selected targets' BLEU / chrF against them)."""
    from seqkd.data.files import read_lines
    from seqkd.teacher.corpus import read_corpus

    refs = read_lines(references, keep_empty=True)[0] if references else None
    examples = select(read_corpus(corpus), strategy, metric, references=refs)
    write_training_data(examples, out)
    result: dict[str, Any] = {"examples": len(examples), "strategy": strategy, "out": str(out)}
    pairs = [(ex["target"], ex["reference"]) for ex in examples if strategy != "all"]
    if pairs and all(r is not None for _, r in pairs):
        from seqkd.evaluate import score

        result["scores"] = score([h for h, _ in pairs], [r for _, r in pairs]).as_dict()
    return result
