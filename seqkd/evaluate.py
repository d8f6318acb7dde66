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
    engine: str = "hf"  # what decoded: hf (PyTorch generate) or ct2 (CTranslate2)
    batch_size: int | None = None
    beam_size: int | None = None
    threads: int | None = None  # CPU threads the engine computed with

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.seconds if self.seconds > 0 else float("inf")

    @property
    def words_per_s(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        return {**asdict(self), "sentences_per_s": self.sentences_per_s, "words_per_s": self.words_per_s}

    def __str__(self) -> str:
        """The rate with what it was measured with: a words/s figure means nothing without them."""
        return (f"{self.words_per_s:.0f} words/s, {self.sentences_per_s:.1f} sentences/s ({self.sentences} sentences "
                f"in {self.seconds:.1f}s; engine {self.engine}, batch {self.batch_size}, beam {self.beam_size}, "
                f"{self.threads} threads)")


class HFTranslator:
    """A model and its tokenizers, decoding with HF ``generate`` (:func:`seqkd.teacher.decoding.translate`)."""

    engine = "hf"

    def __init__(self, model, src_tok, tgt_tok):
        self.model, self.src_tok, self.tgt_tok = model, src_tok, tgt_tok

    @property
    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def translate(self, sources: Sequence[str], **kw) -> list[str] | list[list[str]]:
        from seqkd.teacher.decoding import translate

        return translate(self.model, self.src_tok, self.tgt_tok, sources, **kw)


class EnsembleTranslator:
    """Teachers that share a tokenizer, decoding as one model (per step, the mean of their log-probabilities: the HF
    engine's ensemble, :mod:`seqkd.teacher.ensemble`); greedy or beam search, the best output per source."""

    engine = "hf"

    def __init__(self, model_dirs: Sequence[str], *, batch_size: int = 64):
        from seqkd.teacher.engines import get_engine

        self.dirs = list(model_dirs)
        self.teacher = get_engine("hf", self.dirs[0], ensemble=self.dirs[1:], batch_size=batch_size)
        self.model = None  # parameters: see parameters()

    @property
    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def translate(self, sources: Sequence[str], *, beam_size: int = 1, max_new_tokens: int = 128, **kw) -> list[str]:
        from seqkd.teacher.engines import DecodeSettings

        settings = DecodeSettings(mode="beam" if beam_size > 1 else "greedy", beam_size=beam_size, nbest=1,
                                  max_new_tokens=max_new_tokens) if beam_size > 1 else \
            DecodeSettings(mode="greedy", max_new_tokens=max_new_tokens)
        out = self.teacher.generate(self.teacher.encode(list(sources)), settings)
        return [c[0].text for c in out]

    def parameters(self) -> int:
        from seqkd.models import count_parameters, load_model

        return sum(count_parameters(load_model(d)) for d in self.dirs)


def load_translator(model_dir: str, *, engine: str = "hf", threads: int = 0):
    """A model directory ready to translate in ``engine``: ``hf`` (a saved HF model, PyTorch) or ``ct2`` (a
    CTranslate2 export, :mod:`seqkd.deploy.ct2`). ``threads`` > 0 sets the engine's CPU threads."""
    from seqkd.deploy.ct2 import CT2Translator, is_ct2_export

    if engine == "ct2":
        return CT2Translator(model_dir, threads=threads)
    if engine != "hf":
        raise SeqkdError(f"--engine must be hf or ct2, got {engine!r}")
    if is_ct2_export(model_dir):
        raise SeqkdError(f"{model_dir} is a CTranslate2 export: decode it with --engine ct2")
    import torch

    from seqkd.models import load_model
    from seqkd.models.tokenizer import load_tokenizers

    if threads:
        torch.set_num_threads(threads)
    return HFTranslator(load_model(model_dir), *load_tokenizers(model_dir))


def timed(translator, sources: Sequence[str], **kw) -> tuple[list[str], Speed]:
    """Translate with a translator (:func:`load_translator`) and time it (wall clock, the whole batch loop); words
    are counted on the output side."""
    t0 = time.perf_counter()
    hyps = translator.translate(sources, **kw)
    dt = time.perf_counter() - t0
    return hyps, Speed(dt, len(hyps), sum(len(h.split()) for h in hyps), engine=translator.engine,
                       batch_size=kw.get("batch_size", 64), beam_size=kw.get("beam_size", 1),
                       threads=translator.threads)


def timed_translate(model, src_tok, tgt_tok, sources: Sequence[str], **kw) -> tuple[list[str], Speed]:
    """:func:`timed` for a model in memory, decoded with HF ``generate``."""
    return timed(HFTranslator(model, src_tok, tgt_tok), sources, **kw)


def evaluate_models(cfg, *, progress: bool = False) -> dict:
    """Every model of an :class:`~seqkd.config.EvaluateConfig` on its test set at each beam size: sacrebleu BLEU /
    chrF (with signatures), words/s with the engine, batch size and thread count, and the parameter count. A
    CTranslate2 export decodes with ct2, any other directory with HF. One timed pass per model and beam size, after an
    untimed warm-up on 16 sentences (a benchmark repeats passes; a report shows one). Written to ``cfg.out`` (JSON)
    and returned."""
    from pathlib import Path

    from seqkd.data.files import read_lines
    from seqkd.deploy.ct2 import is_ct2_export
    from seqkd.io import atomic_write_json

    if cfg.data:
        from seqkd.data.registry import load_parallel

        srcs, refs = load_parallel(cfg.data, cfg.split)
    else:
        srcs, refs = read_lines(cfg.src, keep_empty=True)[0], read_lines(cfg.ref, keep_empty=True)[0]
    rows = []
    for name, path in cfg.named_models():
        if "+" in path:  # an ensemble of teachers: A+B
            engine, translator = "hf", EnsembleTranslator(path.split("+"), batch_size=cfg.batch_size)
            params = translator.parameters()
        else:
            engine = "ct2" if is_ct2_export(path) else "hf"
            translator = load_translator(path, engine=engine, threads=cfg.threads)
            params = _parameters(translator, path)
        translator.translate(srcs[:16], beam_size=max(cfg.beam_sizes), batch_size=cfg.batch_size,
                             max_new_tokens=cfg.max_new_tokens)  # warm-up, untimed: first-call costs are not speed
        for beam in cfg.beam_sizes:
            kw = dict(beam_size=beam, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
            if progress:
                print(f"  {name} ({engine}) beam {beam}: {len(srcs)} sentences", flush=True)
            hyps, speed = timed(translator, srcs, **kw)
            rows.append({"model": name, "path": str(path), "engine": engine, "beam_size": beam, "parameters": params,
                         **score(hyps, refs).as_dict(), "speed": speed.as_dict(), "words_per_s": speed.words_per_s})
    result = {"sentences": len(srcs), "test": f"{cfg.data}:{cfg.split}" if cfg.data else Path(cfg.src).name,
              "rows": rows}
    atomic_write_json(cfg.out, result)
    return result


def _parameters(translator, path) -> int | None:
    """Parameters of an HF model in memory, or of the model a CTranslate2 export came from (None if unknown)."""
    model = getattr(translator, "model", None)
    if model is not None and hasattr(model, "parameters"):
        from seqkd.models import count_parameters

        return count_parameters(model)
    import json
    from pathlib import Path

    meta = Path(path) / "seqkd_export.json"
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf-8")).get("parameters")
    return None
