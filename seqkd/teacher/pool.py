"""Pooled decoding for an ensemble of teachers on an engine that cannot mix their distributions at every step (vLLM):
each teacher decodes the prompts on its own (beam n-best, samples or greedy), the candidates of all teachers are
pooled per prompt (identical token sequences kept once, first teacher first), and every pooled candidate is rescored
by the ensemble with one teacher-forced pass of every teacher (HF, :meth:`seqkd.teacher.engines.hf.HFEngine.score`
with its ensemble): its token log-probs are those of the mixed distribution (``--ensemble logprob|prob``), as the
HF engine's per-step ensemble scores its own outputs. The best ``num_return`` candidates by that score are kept
(beam search: by ``logprob / length ** length_penalty``, as beam search ranks; greedy and sampling: by ``logprob``).

This is not per-step ensemble decoding (the search only ever follows one teacher's distribution); it is what an
engine without per-step mixing can offer: the ensemble chooses among its members' outputs, and scores them exactly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from seqkd.teacher.engines import Candidate, DecodeSettings, get_engine


class PoolEngine:
    """An ensemble that decodes by pooling its teachers' candidates (see the module docstring). ``engine``: the
    engine each teacher decodes with (its ``engine_options``); the HF rescorer runs on ``device`` (HF members too)."""

    def __init__(self, engine: str, teachers: Sequence[str], *, teacher_weights: Sequence[float] | None = None,
                 ensemble_mode: str = "logprob", device: str = "cpu", batch_size: int = 32,
                 prompt_format: str = "auto", max_source_len: int | None = None, **engine_options: Any):
        from seqkd.teacher.engines.hf import HFEngine

        common = {"prompt_format": prompt_format}
        if max_source_len is not None:
            common["max_source_len"] = max_source_len
        # the rescorer first: it checks that every teacher shares one tokenizer before any engine loads
        self.scorer = HFEngine(teachers[0], ensemble=teachers[1:], teacher_weights=teacher_weights,
                               ensemble_mode=ensemble_mode, device=device, batch_size=batch_size, **common)
        if engine == "hf":  # HF members decode where the rescorer runs, in batches of the same size
            engine_options = {"device": device, "batch_size": batch_size, **engine_options}
        self.members = [get_engine(engine, t, **common, **engine_options) for t in teachers]
        self.name, self.family = f"{engine}-pool", self.scorer.family
        self.model_dir, self.ensemble_dirs = self.scorer.model_dir, self.scorer.ensemble_dirs
        self.src_tok, self.tgt_tok, self.codec = self.scorer.src_tok, self.scorer.tgt_tok, self.scorer.codec
        self.options: dict[str, Any] = {"pool": {"engine": engine, "members": [m.options for m in self.members],
                                                 "rescorer": self.scorer.options}}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.scorer.encode(texts)

    def generate(self, prompts: list[list[int]], settings: DecodeSettings) -> list[list[Candidate]]:
        if not prompts:
            return []
        per_member = [m.generate(prompts, settings) for m in self.members]  # [teachers][prompts][candidates]
        pooled: list[list[Candidate]] = []
        for i in range(len(prompts)):
            seen: dict[tuple[int, ...], Candidate] = {}
            for member in per_member:
                for c in member[i]:
                    seen.setdefault(tuple(c.token_ids), c)
            pooled.append(list(seen.values()))
        scores = self.scorer.score(prompts, [[c.token_ids for c in cs] for cs in pooled],
                                   topk=settings.topk_logprobs)
        out = []
        for cs, ss in zip(pooled, scores):
            row = []
            for c, (lps, top_ids, top_lps) in zip(cs, ss):
                total = math.fsum(lps)
                row.append(Candidate(token_ids=list(c.token_ids), text=c.text, logprob=total,
                                     norm_logprob=total / max(len(c.token_ids), 1), token_logprobs=lps,
                                     finished=c.finished, topk_ids=top_ids, topk_logprobs=top_lps))
            if settings.mode == "beam":
                row.sort(key=lambda c: -c.logprob / max(len(c.token_ids), 1) ** settings.length_penalty)
            else:
                row.sort(key=lambda c: -c.logprob)
            out.append(row[: settings.num_return])
        return out

    def close(self) -> None:
        for m in self.members:
            m.close()
        self.scorer.close()
