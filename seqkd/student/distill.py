"""Student training by distillation: sequence-level KD (Kim & Rush 2016, arXiv 1606.07947: CE on the teacher's
outputs), word-level KD (a token-level divergence against the teacher, online or from stored top-k), and
on-policy distillation (GKD, Agarwal et al. 2024, arXiv 2306.13649: the student generates, the teacher scores).

:class:`DistillTrainer` extends the foundation trainer through its loss hook only: per batch,
``loss = (1 - w) * CE + w * T^2 * D(teacher || student)`` as per-token sums, normalised like the CE trainer by the
step's global target-token count (so ``torchrun`` / ``accelerate launch`` give the same result as one process).
Examples may carry a weight (``seqkd select --strategy all``) that scales their tokens in both terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqkd.config import DistillConfig
from seqkd.data.prompts import IGNORE_INDEX
from seqkd.errors import SeqkdError
from seqkd.student import losses
from seqkd.student.trainer import SeqkdTrainer, logits_at_targets

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
        from seqkd.teacher.decoding import generate_ids, generation_config

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

    def summary_extra(self) -> dict:
        return {"onpolicy_fraction": self._onpolicy / self._batches if self._batches else 0.0}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._batches:
            logs["onpolicy_fraction"] = self._onpolicy / self._batches
        super().log(logs, start_time)


# --- the job ----------------------------------------------------------------------------------------------------------
def distill_trainer(cfg: DistillConfig, trainer_cls: type = DistillTrainer, **trainer_kwargs):
    """Everything before the first step (:func:`seqkd.student.setup.start` with :func:`prepare_distill`) and the
    trainer (``trainer_cls``, a :class:`DistillTrainer` subclass, given ``trainer_kwargs`` too). Returns
    ``(trainer, run)``."""
    from seqkd.data.batching import DistillCollator
    from seqkd.student.setup import build_trainer, prepare_distill, start

    run = start(cfg, prepare_distill)
    trainer = build_trainer(cfg, run, trainer_cls=trainer_cls, collator_cls=DistillCollator, teacher=run.teacher,
                            dcfg=cfg, **trainer_kwargs)
    return trainer, run


def distill(cfg: DistillConfig, trainer_cls: type = DistillTrainer, **trainer_kwargs) -> dict:
    """Train a student as ``cfg`` says; returns the summary written to ``out/train_summary.json``."""
    from seqkd.student.setup import run_training

    trainer, run = distill_trainer(cfg, trainer_cls, **trainer_kwargs)
    return run_training(cfg, run, trainer)
