"""Student training by distillation: sequence-level KD (Kim & Rush 2016, arXiv 1606.07947: CE on the teacher's
outputs), word-level KD (a token-level divergence against the teacher, online or from stored top-k), and
on-policy distillation (GKD, Agarwal et al. 2024, arXiv 2306.13649: the student generates, the teacher scores).

:class:`DistillTrainer` extends the foundation trainer through its loss hook only: per batch,
``loss = (1 - w) * CE + w * T^2 * D(teacher || student)`` as per-token sums, normalised like the CE trainer by the
step's global target-token count (so ``torchrun`` / ``accelerate launch`` give the same result as one process).
Examples may carry a weight (``seqkd select --strategy all``) that scales their tokens in both terms.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import losses
from .distill_config import DistillConfig
from .errors import DataError, SeqkdError
from .train import SeqkdTrainer, finish, logits_at_targets, make_trainer, resume_point, run_state
from .translation import IGNORE_INDEX, Collator, Format

# --- data ------------------------------------------------------------------------------------------------------------


def read_selection(path: str | Path) -> list[dict]:
    """The records of a ``seqkd select`` file (JSONL with source, target, token_ids, ...), checked."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno}: not valid JSON") from None
            for key in ("source", "target", "token_ids"):
                if key not in rec:
                    raise DataError(f"{path}:{lineno}: missing field {key!r} (not a `seqkd select` file?)")
            out.append(rec)
    if not out:
        raise DataError(f"{path}: no training examples")
    return out


def is_selection_file(path: str | None) -> bool:
    """A JSONL whose first record has teacher token ids (``seqkd select`` output)."""
    if not path or not str(path).endswith(".jsonl"):
        return False
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        return "token_ids" in json.loads(first)
    except json.JSONDecodeError:
        return False


def exact_example(fmt: Format, src_ids: list[int], target_ids: list[int]) -> dict:
    """Like :meth:`Format.example` but the target ids are used verbatim (the teacher's, eos included when it
    finished): stored top-k log-probs stay aligned with them token for token."""
    prompt = fmt.prompt_ids(src_ids)
    if fmt.family == "seq2seq":
        return {"input_ids": prompt, "labels": list(target_ids), "prompt_len": len(prompt)}
    return {"input_ids": prompt + list(target_ids), "labels": [IGNORE_INDEX] * len(prompt) + list(target_ids),
            "prompt_len": len(prompt)}


def selection_examples(fmt: Format, src_tok, tgt_tok, records: list[dict], *, targets: str, max_len: int,
                       vocab_size: int, with_topk: bool) -> list[dict]:
    """Training examples from selected teacher outputs: ``targets`` 'teacher', 'reference' or 'both'."""
    srcs = src_tok([r["source"] for r in records], add_special_tokens=False)["input_ids"]
    refs = [r.get("reference") for r in records]
    ref_ids = tgt_tok([r or "" for r in refs], add_special_tokens=False)["input_ids"]
    out = []
    for rec, s, ref, rids in zip(records, srcs, refs, ref_ids):
        s = s[:max_len]
        if targets in ("teacher", "both"):
            ids = rec["token_ids"][: max_len + 1]
            if ids and max(ids) >= vocab_size:
                raise DataError(f"example id {rec.get('id')}: token id {max(ids)} >= the student's vocabulary "
                                f"({vocab_size}): the corpus was made with another tokenizer")
            ex = exact_example(fmt, s, ids)
            ex["weight"] = float(rec.get("weight", 1.0))
            if with_topk:
                if "topk_ids" not in rec:
                    raise DataError(f"example id {rec.get('id')} has no top-k log-probs: decode the corpus with "
                                    "--topk-logprobs K for --kd-mode offline")
                ex["topk_ids"] = rec["topk_ids"][: len(ids)]
                ex["topk_logprobs"] = rec["topk_logprobs"][: len(ids)]
            out.append(ex)
        if targets in ("reference", "both"):
            if ref is None:
                raise DataError(f"example id {rec.get('id')} has no reference (--targets {targets})")
            ex = fmt.example(s, rids[:max_len])
            ex["prompt_len"] = len(fmt.prompt_ids(s))
            ex["weight"] = 1.0
            out.append(ex)
    return out


class DistillCollator(Collator):
    """:class:`Collator` plus ``weight`` ``[B]``, ``prompt_len`` ``[B]`` and, when the examples have them,
    ``topk_ids`` / ``topk_logprobs`` ``[B, T, k]`` aligned with ``labels`` (zeros elsewhere)."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        batch["weight"] = torch.tensor([float(ex.get("weight", 1.0)) for ex in examples])
        batch["prompt_len"] = torch.tensor([int(ex.get("prompt_len", 0)) for ex in examples])
        if all("topk_ids" in ex for ex in examples) and examples:
            b, t = batch["labels"].shape
            k = len(examples[0]["topk_ids"][0])
            ids = torch.zeros(b, t, k, dtype=torch.long)
            lps = torch.zeros(b, t, k, dtype=torch.float32)
            for i, ex in enumerate(examples):
                start = len(ex["labels"]) - len(ex["topk_ids"])  # the target's first label position
                n = len(ex["topk_ids"])
                ids[i, start : start + n] = torch.tensor(ex["topk_ids"], dtype=torch.long)
                lps[i, start : start + n] = torch.tensor(ex["topk_logprobs"], dtype=torch.float32)
            batch["topk_ids"], batch["topk_logprobs"] = ids, lps
        return batch


# --- trainer ---------------------------------------------------------------------------------------------------------


class DistillTrainer(SeqkdTrainer):
    """The foundation trainer with a distillation loss hook (see the module docstring). ``teacher``: the teacher
    model (online KD and on-policy batches) or None; ``dcfg``: the :class:`DistillConfig`."""

    def __init__(self, *args, teacher=None, dcfg: DistillConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.dcfg = dcfg
        self.divergence = losses.get_divergence(dcfg.divergence)
        name = losses.ALIASES.get(dcfg.divergence, dcfg.divergence)
        self.div_params = {"jsd": {"beta": dcfg.jsd_beta}, "skew_kl": {"alpha": dcfg.skew_alpha},
                           "skew_reverse_kl": {"alpha": dcfg.skew_alpha}}.get(name, {})
        self._batches = 0
        self._onpolicy = 0
        self._micro = (-1, 0)  # (global step, micro-batch index within it)

    # --- helpers -------------------------------------------------------------------------------------------------
    def at_targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (``[B, T, ...]``, aligned with ``labels``'s positions) at the real target tokens, in the
        order :meth:`forward_logits` returns them: ``[N, ...]``."""
        if self.fmt.family == "causal":
            x, labels = x[:, 1:], labels[:, 1:]
        return x[labels != IGNORE_INDEX]

    def teacher_logits(self, inputs: dict, model=None) -> torch.Tensor:
        """The teacher's (or ``model``'s) logits at the student's target positions, ``[N, V]`` (no grad)."""
        with torch.no_grad():
            return logits_at_targets(model or self.teacher, inputs, self.fmt.family)[0]

    def _draw_onpolicy(self) -> bool:
        """Seeded by (seed, step, micro-batch): every process draws the same, and a resumed run draws as before."""
        lam = self.dcfg.onpolicy_lambda
        if lam <= 0:
            return False
        step = self.state.global_step
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        g = torch.Generator().manual_seed(self.dcfg.seed * 1_000_003 + step * 1009 + micro)
        return bool(torch.rand((), generator=g) < lam)

    @torch.no_grad()
    def onpolicy_batch(self, model, inputs: dict) -> dict:
        """The batch's prompts with targets sampled from the student (KV cache, eval mode, no grad)."""
        from .decoding import generate_ids, generation_config

        student = self.accelerator.unwrap_model(model)
        was_training = student.training
        pl = inputs["prompt_len"].tolist()
        prompts = [row[:n].tolist() for row, n in zip(inputs["input_ids"], pl)]
        max_new = self.dcfg.onpolicy_max_new_tokens
        gen = generation_config(student, self.fmt, do_sample=True, temperature=self.dcfg.onpolicy_temperature,
                                max_new_tokens=max_new)
        hyps = generate_ids(student, self.fmt, prompts, gen, batch_size=len(prompts))
        student.train(was_training)
        examples = []
        for p, hs in zip(prompts, hyps):
            ids = list(hs[0].ids) + ([self.fmt.eos_id] if len(hs[0].ids) < max_new else [])
            if self.fmt.family == "causal":
                examples.append({"input_ids": p + ids, "labels": [IGNORE_INDEX] * len(p) + ids, "prompt_len": len(p)})
            else:
                examples.append({"input_ids": p, "labels": ids, "prompt_len": len(p)})
        batch = self.data_collator(examples)
        batch["weight"] = inputs["weight"]  # example weights stay with their sources
        return {k: v.to(inputs["input_ids"].device) for k, v in batch.items()}

    # --- the hook ----------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        onpolicy = model.training and self._draw_onpolicy()
        if model.training:
            self._batches += 1
            self._onpolicy += int(onpolicy)
        if not onpolicy:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        n_orig = int((inputs["labels"] != IGNORE_INDEX).sum())
        new = self.onpolicy_batch(model, inputs)
        new["_onpolicy"] = True
        n_new = int((new["labels"] != IGNORE_INDEX).sum())
        result = super().compute_loss(model, new, return_outputs, num_items_in_batch)
        # The step's normaliser counted the replaced batch's tokens: keep this batch's share of the step the same.
        scale = n_orig / max(n_new, 1)
        return (result[0] * scale, result[1]) if return_outputs else result * scale

    def loss_terms(self, model, inputs: dict, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.dcfg
        labels = inputs["labels"]
        b, t = labels.shape
        tok_w = self.at_targets(inputs["weight"].float()[:, None].expand(b, t), labels)  # [N]
        onpolicy = bool(inputs.get("_onpolicy", False))
        w = 1.0 if onpolicy else cfg.kd_weight
        terms: dict[str, torch.Tensor] = {}
        if w < 1:
            ce = F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=self.label_smoothing)
            ce_sum = (ce * tok_w).sum()
            terms["ce"] = (1 - w) * ce_sum
            if model.training:
                self._term_sums["cross_entropy"] += float(ce_sum.detach())
        if w > 0 and cfg.kd_mode == "offline" and "topk_ids" not in inputs:
            if model.training:
                raise SeqkdError("--kd-mode offline: a training batch has no stored top-k log-probs")
            w = 0.0  # validation batches (references) have no stored teacher: their loss is the CE
        if w > 0:
            if self.teacher is not None and cfg.kd_mode == "online":
                teacher = self.teacher_logits(inputs)
            elif cfg.kd_mode == "offline":
                teacher = losses.TopKTeacher(self.at_targets(inputs["topk_ids"], labels),
                                             self.at_targets(inputs["topk_logprobs"], labels), tail=cfg.topk_tail)
            else:
                raise SeqkdError(f"kd_weight > 0 needs a teacher (kd_mode={cfg.kd_mode})")
            temp = cfg.kd_temperature
            if cfg.loss_chunk_size and bool((tok_w == 1).all()):
                # unweighted: the chunked path that computes its gradients in the forward (no recomputation)
                d_sum = losses.chunked(self.divergence, logits, teacher, None, chunk_size=cfg.loss_chunk_size,
                                       temperature=temp, reduction="sum", **self.div_params)
            else:
                fn = (lambda *a, **k: losses.chunked(self.divergence, *a, chunk_size=cfg.loss_chunk_size, **k)) \
                    if cfg.loss_chunk_size else self.divergence
                d = fn(logits, teacher, None, temperature=temp, reduction="none", **self.div_params)
                d_sum = (d * tok_w).sum()
            terms["kd"] = w * temp * temp * d_sum
            if model.training:
                self._term_sums["divergence"] += float(d_sum.detach())
        return terms

    def extra_summary(self) -> dict:
        """What a subclass adds to the run's summary (``train_summary.json``)."""
        return {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._batches:
            logs["onpolicy_fraction"] = self._onpolicy / self._batches
        super().log(logs, start_time)


# --- the job ----------------------------------------------------------------------------------------------------------


def prepare_distill(cfg: DistillConfig, trainer_cls: type = DistillTrainer,
                    **trainer_kwargs) -> tuple[DistillTrainer, Path | None, dict]:
    """Everything before the first step: tokenizers (the teacher's), student, teacher, data, the trainer
    (``trainer_cls``, a :class:`DistillTrainer` subclass, given ``trainer_kwargs`` too).
    Returns ``(trainer, checkpoint to resume from or None, data stats)``."""
    import dataclasses

    from transformers import set_seed

    from .models import family, load_model
    from .prepare import check_model_name, load_pairs, model_for
    from .student_init import init_from_teacher
    from .tokenizer import load_tokenizers, same_vocab
    from .translation import encode_pairs

    state = run_state()
    check_model_name(cfg.model)
    if not Path(cfg.teacher).is_dir():
        raise SeqkdError(f"--teacher {cfg.teacher}: not a model directory")
    src_tok, tgt_tok = load_tokenizers(cfg.teacher)
    if Path(cfg.model).is_dir():
        s_src, s_tgt = load_tokenizers(cfg.model)
        if not (same_vocab(s_tgt, tgt_tok) and same_vocab(s_src, src_tok)):
            raise SeqkdError(f"student {cfg.model} and teacher {cfg.teacher} have different tokenizers; "
                             "distillation compares their distributions token by token and needs one vocabulary")
    with state.main_process_first():
        resume_from = resume_point(cfg, state)
    set_seed(cfg.seed)
    selection = is_selection_file(cfg.train_source)
    # load_pairs reads sources/targets (a selection file is also a parallel corpus) and the validation set
    src, tgt, vsrc, vtgt, stats = load_pairs(dataclasses.replace(cfg, tokenizer=cfg.teacher))
    student = model_for(dataclasses.replace(cfg, tokenizer=cfg.teacher), src_tok, tgt_tok)
    fam = family(student)
    fmt = Format.from_tokenizer(fam, tgt_tok, cfg.prompt_format)
    teacher = None
    if cfg.kd_mode == "online" and (cfg.kd_weight > 0 or cfg.onpolicy_lambda > 0) or cfg.init_from_teacher:
        teacher = load_model(cfg.teacher)
        if family(teacher) != fam and cfg.kd_mode == "online":
            raise SeqkdError(f"online KD runs the teacher on the student's inputs: teacher is {family(teacher)}, "
                             f"student is {fam}; use --kd-mode offline with a corpus, or a student of the same family")
        teacher.eval().requires_grad_(False)
    if cfg.init_from_teacher:
        if Path(cfg.model).is_dir():
            raise SeqkdError("--init-from-teacher initialises a preset student (--model PRESET)")
        stats["init_from_teacher"] = init_from_teacher(student, teacher)
    if cfg.kd_mode != "online":
        teacher = None
    vocab = student.get_output_embeddings().weight.shape[0]
    if selection:
        records = read_selection(cfg.train_source)
        train_ex = selection_examples(fmt, src_tok, tgt_tok, records, targets=cfg.targets, max_len=cfg.max_len,
                                      vocab_size=vocab, with_topk=cfg.kd_mode == "offline" and cfg.kd_weight > 0)
    else:
        if cfg.kd_mode == "offline":
            raise SeqkdError("--kd-mode offline reads stored top-k log-probs: give a `seqkd select` file "
                             "(--train-source train.jsonl) made from a corpus decoded with --topk-logprobs")
        train_ex = encode_pairs(fmt, src_tok, tgt_tok, src, tgt, max_len=cfg.max_len)
        for ex in train_ex:
            ex["prompt_len"] = len(ex["input_ids"]) if fam == "seq2seq" else ex["labels"].count(IGNORE_INDEX)
    valid = None
    if vsrc:
        valid = (encode_pairs(fmt, src_tok, tgt_tok, vsrc, vtgt, max_len=cfg.max_len), vsrc, vtgt)
    stats["train_examples"] = len(train_ex)
    trainer = make_trainer(cfg, student, src_tok, tgt_tok, train_ex, valid, trainer_cls=trainer_cls,
                           collator_cls=DistillCollator, teacher=teacher, dcfg=cfg, **trainer_kwargs)
    trainer.src_tok, trainer.tgt_tok = src_tok, tgt_tok
    if teacher is not None:
        teacher.to(trainer.args.device)
    return trainer, resume_from, stats


def distill(cfg: DistillConfig, trainer_cls: type = DistillTrainer, **trainer_kwargs) -> dict:
    """Train a student as ``cfg`` says; returns the summary written to ``out/train_summary.json``."""
    started = time.perf_counter()
    trainer, resume_from, stats = prepare_distill(cfg, trainer_cls, **trainer_kwargs)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    summary = finish(trainer, cfg, trainer.src_tok, trainer.tgt_tok, started)
    summary["data"] = stats
    summary["onpolicy_fraction"] = trainer._onpolicy / trainer._batches if trainer._batches else 0.0
    summary["is_main_process"] = trainer.accelerator.is_main_process
    summary.update(trainer.extra_summary())
    if trainer.accelerator.is_main_process:
        (Path(cfg.out) / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
