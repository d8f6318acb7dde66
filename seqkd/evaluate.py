"""Quality (sacrebleu BLEU and chrF, with signatures) and speed (words/s, sentences/s) of translations."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

from seqkd.errors import SeqkdError


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"BLEU {self.bleu:.2f}  chrF {self.chrf:.2f}  ({self.sentences} sentences)\n"
            f"  {self.bleu_signature}\n  {self.chrf_signature}"
        )


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU (13a tokenisation) and chrF of ``hypotheses`` against one reference each."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise SeqkdError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: line i of each must belong together"
        )
    if not hypotheses:
        raise SeqkdError("nothing to score: no hypotheses")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()), len(hypotheses))


@dataclass
class Speed:
    seconds: float
    sentences: int
    words: int  # whitespace-separated words of the output

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.seconds if self.seconds > 0 else float("inf")

    @property
    def words_per_s(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        return {**asdict(self), "sentences_per_s": self.sentences_per_s, "words_per_s": self.words_per_s}


def timed_translate(model, src_tok, tgt_tok, sources: Sequence[str], **kw) -> tuple[list[str], Speed]:
    """Translate and time it (wall clock, whole batch loop); words counted on the output side."""
    from seqkd.teacher.decoding import translate

    t0 = time.perf_counter()
    hyps = translate(model, src_tok, tgt_tok, sources, **kw)
    dt = time.perf_counter() - t0
    return hyps, Speed(dt, len(hyps), sum(len(h.split()) for h in hyps))
