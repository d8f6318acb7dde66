"""The Hugging Face engine: transformers ``generate`` for both families, then one teacher-forced scoring pass.

Decoding is :func:`seqkd.teacher.decoding.generate_ids` (length-sorted batches, outputs in input order), so the
engine's greedy / beam outputs are exactly what ``model.generate`` returns. HF's own beam scores are length
penalised and sampling scores are those of the tempered / truncated distribution, so every candidate is then
re-scored with one batched teacher-forced forward pass: per-token log-probs of the chosen tokens (eos included)
from ``log_softmax`` in float32 of the model's logits (the model itself runs in its ``dtype``), and, when asked,
the top-k ids and log-probs at each generated position.

Sampling uses torch's global generator, seeded with ``settings.seed`` at the start of every :meth:`generate`
call (HF ``generate`` takes no generator): the same prompts, settings and ``batch_size`` give the same samples.
The corpus makes this independent of resumption and sharding by decoding fixed chunks with a seed derived from
(seed, chunk index); see :mod:`seqkd.teacher.corpus`.

Stored floats are float32 values written with the shortest decimal that round-trips to the same float32
(``-0.12345679``, not ``-0.12345679104328156``): lossless at float32, half the bytes.
"""

from __future__ import annotations

import gc
import math
from typing import Any, Sequence

import numpy as np
import torch

from seqkd.data.batching import pad
from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN
from seqkd.errors import SeqkdError
from seqkd.teacher.decoding import generate_ids, generation_config
from seqkd.teacher.engines import Candidate, DecodeSettings, TextCodec, check_vocab

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOOR = torch.finfo(torch.float32).min  # -inf log-probs are stored as this (JSON has no -inf)


class HFEngine:
    """A teacher loaded with transformers. ``batch_size`` counts prompts per ``generate`` call (beam search
    holds ``batch_size * beam_size`` hypotheses) and candidates per scoring pass."""

    name = "hf"

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        prompt_format: str = "auto",
        max_source_len: int = DEFAULT_MAX_SOURCE_LEN,
        trust_remote_code: bool = False,
        ensemble: Sequence[str] = (),
        teacher_weights: Sequence[float] | None = None,
        ensemble_mode: str = "logprob",
    ) -> None:
        from seqkd.models import family, load_model
        from seqkd.models.tokenizer import load_tokenizers, same_vocab
        from seqkd.teacher.ensemble import ensemble_weights

        if dtype not in _DTYPES:
            raise SeqkdError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SeqkdError(f"batch_size must be a positive integer, got {batch_size!r}")
        if str(model_dir).endswith(".gguf"):
            raise SeqkdError(f"{model_dir}: convert the GGUF file first (seqkd model convert-gguf) and give the "
                             "converted directory as the teacher")
        if ensemble_mode not in ("logprob", "prob"):
            raise SeqkdError(f"ensemble mode must be logprob or prob, got {ensemble_mode!r}")
        self.model_dir = str(model_dir)
        self.ensemble_dirs = [str(d) for d in ensemble]  # the other teachers (the first is model_dir)
        self.weights = ensemble_weights(teacher_weights, 1 + len(self.ensemble_dirs))
        self.ensemble_mode = ensemble_mode
        self.src_tok, self.tgt_tok = load_tokenizers(model_dir)  # before the model: a missing tokenizer fails fast
        for d in self.ensemble_dirs:  # every teacher's tokenizer before any model loads
            src, tgt = load_tokenizers(d)
            if not (same_vocab(src, self.src_tok) and same_vocab(tgt, self.tgt_tok)):
                raise SeqkdError(f"teacher {d} does not share {model_dir}'s tokenizer: an ensemble needs one "
                                 "vocabulary (the same token -> id map)")
        self.model = load_model(model_dir, dtype=_DTYPES[dtype], device=device, trust_remote_code=trust_remote_code)
        self.family = family(self.model)
        check_vocab(self.model.config, self.src_tok, self.tgt_tok, self.model_dir)
        self.codec = TextCodec(self.family, self.src_tok, self.tgt_tok, prompt_format=prompt_format,
                               max_source_len=max_source_len)
        self.others = []
        for d in self.ensemble_dirs:
            m = load_model(d, dtype=_DTYPES[dtype], device=device, trust_remote_code=trust_remote_code)
            if family(m) != self.family or m.config.get_text_config().vocab_size != \
                    self.model.config.get_text_config().vocab_size:
                raise SeqkdError(f"teacher {d} is not of {model_dir}'s family and vocabulary size: an ensemble "
                                 "decodes one vocabulary with one kind of model")
            self.others.append(m)
        self.batch_size = batch_size
        self.device = next(self.model.parameters()).device
        self.options: dict[str, Any] = {"device": self.device.type, "dtype": dtype, "batch_size": batch_size}
        if self.others:  # single-teacher manifests stay as they were
            self.options["ensemble"] = {"weights": self.weights, "mode": ensemble_mode}

    # --- protocol --------------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.codec.encode(texts)

    def generate(self, prompts: list[list[int]], settings: DecodeSettings) -> list[list[Candidate]]:
        if not prompts:
            return []
        head = self.model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else self.model.config.vocab_size
        if settings.topk_logprobs > vocab:
            raise SeqkdError(f"topk_logprobs={settings.topk_logprobs} is more than the vocabulary ({vocab})")
        fmt = self.codec.fmt
        sample = settings.mode == "sample"
        ens = bool(self.others)
        gen = generation_config(
            self.model, fmt,
            beam_size=settings.beam_size if settings.mode == "beam" else 1,
            num_return_sequences=settings.num_return,
            do_sample=sample,
            # an ensemble samples from the mixed distribution: its processor applies these after the mix
            temperature=1.0 if ens else settings.temperature,
            top_p=1.0 if ens else settings.top_p,
            top_k=0 if ens else settings.top_k,
            max_new_tokens=settings.max_new_tokens,
            length_penalty=settings.length_penalty,
        )
        if sample:
            torch.manual_seed(settings.seed)
        hyps = generate_ids(self.model, fmt, prompts, gen, batch_size=self.batch_size,
                            logits_processor=self._ensemble_processor(settings) if ens else None)
        # generate_ids drops the eos; a hypothesis shorter than the budget ended with one (HF pads only after eos).
        done = [[len(h.ids) < settings.max_new_tokens for h in hs] for hs in hyps]
        cands = [[list(h.ids) + [fmt.eos_id] if f else list(h.ids) for h, f in zip(hs, fs)]
                 for hs, fs in zip(hyps, done)]
        scores = self.score(prompts, cands, topk=settings.topk_logprobs)
        out: list[list[Candidate]] = []
        for hs, fs, ss in zip(cands, done, scores):
            row = []
            for ids, finished, (lps, top_ids, top_lps) in zip(hs, fs, ss):
                total = math.fsum(lps)
                row.append(Candidate(
                    token_ids=ids, text=self.codec.decode(ids), logprob=total,
                    norm_logprob=total / max(len(ids), 1), token_logprobs=lps, finished=finished,
                    topk_ids=top_ids, topk_logprobs=top_lps,
                ))
            out.append(row)
        return out

    def _ensemble_processor(self, settings: DecodeSettings):
        """A factory of :class:`~seqkd.teacher.ensemble.EnsembleProcessor` for ``generate_ids``: one per batch, with
        the sampling settings as HF's own warpers, in HF's order (temperature, top-k, top-p)."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        from seqkd.teacher.ensemble import EnsembleProcessor, Follower

        warpers = []
        if settings.mode == "sample":
            if settings.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                warpers.append(TopKLogitsWarper(top_k=settings.top_k))
            if settings.top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p=settings.top_p))

        def make(ids: torch.Tensor, mask: torch.Tensor, rows: int) -> EnsembleProcessor:
            return EnsembleProcessor([Follower(m, ids, mask, rows) for m in self.others], self.weights,
                                     self.ensemble_mode, warpers)  # type: ignore[arg-type]

        return make

    def close(self) -> None:
        cuda = self.device.type == "cuda"
        self.model = None
        self.others = []
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    # --- scoring -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(
        self, prompts: Sequence[Sequence[int]], cands: Sequence[Sequence[Sequence[int]]], *, topk: int = 0
    ) -> list[list[tuple[list[float], list[list[int]] | None, list[list[float]] | None]]]:
        """Teacher-forced log-probs of ``cands[i][r]`` (token ids, eos included) given ``prompts[i]``: per candidate
        ``(token_logprobs, topk_ids, topk_logprobs)`` (the top-k parts None when ``topk == 0``).

        One forward pass per candidate, batched ``batch_size`` candidates at a time over candidates sorted by length.
        """
        flat = [(i, r) for i, hs in enumerate(cands) for r in range(len(hs))]
        out: list[list[Any]] = [[None] * len(hs) for hs in cands]
        flat.sort(key=lambda ir: len(prompts[ir[0]]) + len(cands[ir[0]][ir[1]]), reverse=True)
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            pairs = [(list(prompts[i]), list(cands[i][r])) for i, r in batch]
            for (i, r), res in zip(batch, self._score_batch(pairs, topk)):
                out[i][r] = res
        return out

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]], topk: int):
        fmt = self.codec.fmt
        dev = self.device
        rows: list[int] = []
        cols: list[int] = []
        targets: list[int] = []
        if self.family == "seq2seq":
            start = self.model.config.decoder_start_token_id
            enc = pad([p for p, _ in pairs], fmt.pad_id)
            enc_len = torch.tensor([len(p) for p, _ in pairs])
            enc_mask = (torch.arange(enc.shape[1])[None, :] < enc_len[:, None]).long()
            dec = pad([[start] + c[:-1] for _, c in pairs], fmt.pad_id)
            inputs = dict(input_ids=enc.to(dev), attention_mask=enc_mask.to(dev), decoder_input_ids=dec.to(dev))
            for b, (_, c) in enumerate(pairs):
                rows += [b] * len(c)
                cols += range(len(c))
                targets += c
        else:
            seqs = [p + c[:-1] for p, c in pairs]  # the last token is predicted, never input
            ids = pad(seqs, fmt.pad_id)
            lengths = torch.tensor([len(s) for s in seqs])
            mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
            inputs = dict(input_ids=ids.to(dev), attention_mask=mask.to(dev))
            for b, (p, c) in enumerate(pairs):
                rows += [b] * len(c)
                cols += range(len(p) - 1, len(p) - 1 + len(c))
                targets += c
        at = (torch.tensor(rows, device=dev), torch.tensor(cols, device=dev))
        sel = self._logprobs_at(self.model, inputs, at)  # [N, V]
        if self.others:  # an ensemble scores with the distribution it decoded from
            from seqkd.teacher.ensemble import mix_logprobs

            sel = mix_logprobs([sel] + [self._logprobs_at(m, inputs, at) for m in self.others], self.weights,
                               self.ensemble_mode)  # type: ignore[arg-type]
        chosen = _f32_list(sel.gather(1, torch.tensor(targets, device=dev)[:, None])[:, 0])
        if topk:
            vals, idx = sel.topk(topk, dim=-1)
            top_lps = _f32_rows(vals)
            top_ids = idx.tolist()
        results = []
        pos = 0
        for _, c in pairs:
            n = len(c)
            if topk:
                results.append((chosen[pos : pos + n], top_ids[pos : pos + n], top_lps[pos : pos + n]))
            else:
                results.append((chosen[pos : pos + n], None, None))
            pos += n
        return results

    @staticmethod
    def _logprobs_at(model, inputs: dict, at: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """float32 log-probs ``[N, V]`` of ``model`` at the (row, column) positions ``at`` of its logits."""
        logits = model(**inputs).logits
        return logits[at].float().log_softmax(-1)


def _f32_list(t: torch.Tensor) -> list[float]:
    """Float32 values as Python floats whose repr is the shortest decimal that round-trips at float32."""
    a = t.detach().clamp(min=_FLOOR).cpu().numpy().astype(np.float32)
    return [float(s) for s in a.astype(str)]


def _f32_rows(t: torch.Tensor) -> list[list[float]]:
    a = t.detach().clamp(min=_FLOOR).cpu().numpy().astype(np.float32).astype(str)
    return [[float(s) for s in row] for row in a]


create = HFEngine  # the factory seqkd.teacher.engines.get_engine calls: create(model_dir, **options)
