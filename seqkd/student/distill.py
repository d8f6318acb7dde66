"""Student training by distillation: sequence-level KD (Kim & Rush 2016, arXiv 1606.07947: CE on the teacher's
outputs), word-level KD (a token-level divergence against the teacher, online or from stored top-k), and
on-policy distillation (GKD, Agarwal et al. 2024, arXiv 2306.13649: the student generates, the teacher scores).

:class:`DistillTrainer` extends the foundation trainer through its loss hook only: per batch,
``loss = (1 - w) * CE + w * T^2 * D(teacher || student)`` as per-token sums, normalised like the CE trainer by the
step's global target-token count (so ``torchrun`` / ``accelerate launch`` give the same result as one process).
Examples may carry a weight (``seqkd select --strategy all``) that scales their tokens in both terms.

The loss has three implementations with the same value and gradients (``--loss-impl``, :func:`choose_loss_impl`):
``plain`` (whole ``[N, V]`` logits and divergence), ``chunked`` (the divergence ``--loss-chunk-size`` tokens at a
time, :func:`seqkd.student.losses.chunked`) and ``fused`` (:func:`seqkd.student.losses.fused_distill`: the model
returns its last hidden states at the target positions instead of logits, and the output layer, the divergence
and the cross-entropy run chunk by chunk, so the student's ``[N, V]`` logits never exist whole; an online
teacher is given the same way, as a :class:`~seqkd.student.losses.TeacherHead`, when its logits are a plain
output layer of its hidden states too).

Several teachers are one :class:`~seqkd.teacher.ensemble.TeacherMixture` (their weighted mixture is the target);
internals transfer (:mod:`seqkd.student.internals`) adds hidden-state and attention terms to training batches, each
a mean per target token, with its learned projections in their own optimizer group and saved beside the student.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from seqkd.config import DistillConfig
from seqkd.data.prompts import IGNORE_INDEX
from seqkd.errors import SeqkdError
from seqkd.student import losses
from seqkd.student.trainer import SeqkdTrainer, logits_at_targets

logger = logging.getLogger(__name__)

# --- loss implementations --------------------------------------------------------------------------------------------
FUSED_MIN_VOCAB = 32768  # auto picks fused from this (student) vocabulary size on
DEFAULT_CHUNK_SIZE = 1024  # tokens per chunk of chunked / fused when --loss-chunk-size is 0
# Model types whose logits are exactly ``lm_head(last hidden state)`` (Marian: ``+ final_logits_bias``), with no
# scaling, soft-capping or other change after the output layer (transformers' modeling code, checked for 5.x).
# Others (gemma2/3: soft-capping, cohere: logit_scale, granite: logits_scaling, ...) are not fused.
EXACT_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "marian"})


@dataclass(frozen=True)
class HeadInputs:
    """The student at its N target positions before its output layer: ``logits = hidden @ weight.T + bias``.
    :meth:`DistillTrainer.forward_logits` returns it in place of the logits with ``loss_impl == "fused"``."""

    hidden: torch.Tensor  # [N, H]
    weight: torch.Tensor  # [V, H]
    bias: torch.Tensor | None  # [V]


def fused_unsupported(model) -> str | None:
    """None when the fused loss reproduces ``model``'s logits exactly from its last hidden states and output
    layer; otherwise why not."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in EXACT_HEAD_MODEL_TYPES:
        return (f"model type {model_type!r} is not one whose logits are known to be its output layer applied to its "
                f"last hidden states (known: {', '.join(sorted(EXACT_HEAD_MODEL_TYPES))})")
    head = getattr(model, "lm_head", None)
    if type(head) is not torch.nn.Linear:
        return f"its output layer (lm_head) is a {type(head).__name__}, not a plain torch.nn.Linear"
    if head.weight.dim() != 2 or tuple(head.weight.shape) != (head.out_features, head.in_features):
        return f"its output weight has shape {tuple(head.weight.shape)} here (sharded?), not [V, H]"
    if model_type == "marian":
        fb = getattr(model, "final_logits_bias", None)
        if not isinstance(fb, torch.Tensor) or fb.numel() != head.out_features:
            return "its final_logits_bias does not match its output layer"
    return None


def output_layer(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [V, H], bias [V] or None)`` with ``logits = hidden @ weight.T + bias`` for a model that
    :func:`fused_unsupported` accepts (Marian's ``final_logits_bias`` is part of the bias)."""
    head = model.lm_head
    bias = head.bias
    fb = model._buffers.get("final_logits_bias")
    if fb is not None:
        fb = fb.reshape(-1)
        bias = fb if bias is None else bias + fb
    return head.weight, bias


@contextmanager
def hidden_states_out(model, *, anchor: bool = False) -> Iterator[None]:
    """Within: ``model``'s forward returns, as its ``logits``, what its output layer would have got (the last
    hidden states, cut by ``logits_to_keep`` as the logits are) instead of the logits. The output layer passes its
    input through (its ``forward`` is replaced on the instance, so wrappers of the model's own forward, e.g.
    accelerate's autocast, stay in place) and Marian's ``final_logits_bias`` becomes a 0-dim zero (adding it is
    exact). With ``anchor`` (a wrapped model, e.g. DDP with find_unused_parameters) the output gets an exact
    ``+ 0`` that depends on the output layer's parameters, so that the wrapper counts them as used in the forward
    (their gradient comes from the loss)."""
    head = model.lm_head
    missing = object()
    saved_forward = head.__dict__.get("forward", missing)
    params = [p for p in (head.weight, head.bias) if p is not None and p.requires_grad] if anchor else []

    def passthrough(x: torch.Tensor) -> torch.Tensor:
        if params and torch.is_grad_enabled():
            x = x + sum(p[:0].sum() for p in params).to(x.dtype)
        return x

    saved_bias = model._buffers.get("final_logits_bias")
    head.forward = passthrough
    if saved_bias is not None:
        model._buffers["final_logits_bias"] = torch.zeros((), dtype=saved_bias.dtype, device=saved_bias.device)
    try:
        yield
    finally:
        if saved_forward is missing:
            del head.forward
        else:
            head.forward = saved_forward
        if saved_bias is not None:
            model._buffers["final_logits_bias"] = saved_bias


def vocab_size(model) -> int:
    """The size of ``model``'s output distribution."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    cfg = model.config
    return int(getattr(cfg, "decoder_vocab_size", None) or cfg.vocab_size)


def choose_loss_impl(requested: str, *, vocab: int, kd_mode: str, loss_chunk_size: int,
                     unsupported: str | None) -> tuple[str, str]:
    """``(implementation, why)`` for ``--loss-impl requested`` with a student of output vocabulary ``vocab``;
    ``unsupported``: why the student cannot be fused (:func:`fused_unsupported`), or None.

    auto: fused for vocabularies of FUSED_MIN_VOCAB and more with online KD (where the student supports it),
    chunked when --loss-chunk-size is given, else plain. An explicit fused that the student does not support
    falls back to chunked (the caller warns)."""
    if requested == "fused":
        if unsupported is not None:
            return "chunked", f"--loss-impl fused is not possible for this student ({unsupported}): using chunked"
        return "fused", "--loss-impl fused"
    if requested in ("plain", "chunked"):
        return requested, f"--loss-impl {requested}"
    if requested != "auto":
        raise SeqkdError(f"unknown loss implementation {requested!r}: plain, chunked, fused or auto")
    if vocab >= FUSED_MIN_VOCAB and kd_mode == "online":
        if unsupported is None:
            return "fused", f"auto: vocabulary {vocab} >= {FUSED_MIN_VOCAB} with online KD"
        why = f"auto: vocabulary {vocab} >= {FUSED_MIN_VOCAB} but the student cannot be fused ({unsupported})"
    else:
        why = f"auto: vocabulary {vocab}" + (f" < {FUSED_MIN_VOCAB}" if vocab < FUSED_MIN_VOCAB else "") + \
            f", kd_mode {kd_mode}"
    if loss_chunk_size > 0:
        return "chunked", why + ", --loss-chunk-size given"
    return "plain", why

# --- trainer ---------------------------------------------------------------------------------------------------------


class _ZeroGrad(TrainerCallback):
    """Zeroes a module's gradients after every optimizer step: HF zeroes the model's only, and the internals
    projections live outside it (their gradients would otherwise add up over the whole run)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


class DistillTrainer(SeqkdTrainer):
    """The foundation trainer with a distillation loss hook (see the module docstring). ``teacher``: the teacher
    model (online KD and on-policy batches) or None; ``dcfg``: the :class:`DistillConfig`."""

    def __init__(self, *args, teacher=None, dcfg: DistillConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.dcfg = dcfg
        self.divergence = losses.get_divergence(dcfg.divergence)
        name = losses.ALIASES.get(dcfg.divergence, dcfg.divergence)
        self.div_params = {"jsd": {"beta": dcfg.jsd_beta}, "interpolated_jsd": {"beta": dcfg.jsd_beta},
                           "skew_kl": {"alpha": dcfg.skew_alpha},
                           "skew_reverse_kl": {"alpha": dcfg.skew_alpha}}.get(name, {})
        self._batches = 0
        self._onpolicy = 0
        self._micro = (-1, 0)  # (global step, micro-batch index within it)
        student = self.accelerator.unwrap_model(self.model)
        unsupported = fused_unsupported(student)
        self.loss_impl, why = choose_loss_impl(dcfg.loss_impl, vocab=vocab_size(student), kd_mode=dcfg.kd_mode,
                                               loss_chunk_size=dcfg.loss_chunk_size, unsupported=unsupported)
        self.loss_chunk_size = dcfg.loss_chunk_size or DEFAULT_CHUNK_SIZE
        # fused: the teacher's logits are made chunk by chunk as well when they are its output layer's plain output
        self.teacher_head = self.loss_impl == "fused" and teacher is not None and fused_unsupported(teacher) is None
        if dcfg.loss_impl == "fused" and self.loss_impl != "fused":
            logger.warning(why)
        chunk = "" if self.loss_impl == "plain" else f", {self.loss_chunk_size} tokens per chunk"
        teacher_note = "" if self.loss_impl != "fused" or teacher is None or dcfg.kd_mode != "online" else (
            ", teacher logits chunk by chunk too" if self.teacher_head else
            f", teacher logits whole ({fused_unsupported(teacher)})")
        logger.info("distillation loss: %s (%s)%s%s", self.loss_impl, why, chunk, teacher_note)
        self.internals = None
        if dcfg.hidden_loss != "none" or dcfg.attention_loss != "none":
            from seqkd.student.internals import Internals

            if self.accelerator.num_processes > 1:
                raise SeqkdError("internals transfer runs in one process (its projections live outside the model "
                                 "DDP wraps): launch without torchrun")
            try:
                self.internals = Internals(student, teacher, hidden=dcfg.hidden_loss, attention=dcfg.attention_loss,
                                           layer_map=dcfg.layer_map, relation_heads=dcfg.relation_heads)
            except ValueError as e:
                raise SeqkdError(str(e)) from None
            self.internals.to(self.args.device)
            self.add_callback(_ZeroGrad(self.internals))
            logger.info("internals transfer: %s", self.internals.describe())

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

    def internals_terms(self, inputs: dict, teacher_ran: bool, n: int) -> dict[str, torch.Tensor]:
        """The internals losses of this (training) batch, each ``weight * mean * n`` (``n`` target tokens: the trainer
        divides the summed terms by the token count, so a weight means the same at any batch size). Runs the teacher
        when the KD term did not (``kd_weight`` 0)."""
        cfg, rec = self.dcfg, self.internals.teacher_rec
        if not teacher_ran or not rec.hidden:
            with torch.no_grad(), rec.recording():
                logits_at_targets(self.teacher, inputs, self.fmt.family)
        labels = inputs["labels"]
        masks = {"enc": inputs["attention_mask"].bool()} if self.fmt.family == "seq2seq" else {}
        masks["dec"] = labels != IGNORE_INDEX if self.fmt.family == "seq2seq" else inputs["attention_mask"].bool()
        raw = self.internals.terms(masks)
        weights = {"hidden": cfg.hidden_weight, "attention": cfg.attention_weight}
        return {k: weights[k] * v * n for k, v in raw.items()}

    def create_optimizer(self, model=None):
        """HF's optimizer, plus the internals projections (no weight decay) when they exist: they train with the
        student and follow its learning-rate schedule."""
        opt = super().create_optimizer(model)
        if self.internals is not None and any(True for _ in self.internals.parameters()):
            opt.add_param_group({"params": list(self.internals.parameters()), "weight_decay": 0.0})
        return opt

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """HF's, plus the internals projections beside the weights (checkpoints included, so a resume has them)."""
        super().save_model(output_dir, _internal_call)
        if self.internals is not None and self.args.should_save:
            self.internals.save(output_dir or self.args.output_dir)

    def save_extras(self, out_dir, checkpoint: str | None) -> None:
        """The internals projections beside the saved student (from ``checkpoint`` when the student comes from it)."""
        if self.internals is None:
            return
        import shutil

        from seqkd.student.internals import INTERNALS_FILE, PROJECTIONS_FILE

        if checkpoint is None:
            self.internals.save(out_dir)
            return
        for name in (PROJECTIONS_FILE, INTERNALS_FILE):
            if (Path(checkpoint) / name).is_file():
                shutil.copyfile(Path(checkpoint) / name, Path(out_dir) / name)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.internals is not None:
            self.internals.load(resume_from_checkpoint)

    def teacher_head_inputs(self, inputs: dict) -> losses.TeacherHead:
        """The teacher at the student's target positions before its output layer (no grad): its logits are made
        chunk by chunk inside the fused loss."""
        teacher = self.teacher
        with torch.no_grad(), hidden_states_out(teacher):
            hidden = logits_at_targets(teacher, inputs, self.fmt.family)[0]
        weight, bias = output_layer(teacher)
        return losses.TeacherHead(hidden, weight.detach(), None if bias is None else bias.detach())

    def forward_logits(self, model, inputs: dict):
        """As the CE trainer's, except with ``loss_impl == "fused"``: then the first item is a :class:`HeadInputs`
        (the last hidden states at the target positions ``[N, H]`` and the output layer), not logits ``[N, V]``,
        and the outputs' ``logits`` are those hidden states. With internals transfer, the student's mapped layers
        are recorded on the way."""
        if self.internals is not None and model.training:
            with self.internals.student_rec.recording():
                return self._forward_logits(model, inputs)
        return self._forward_logits(model, inputs)

    def _forward_logits(self, model, inputs: dict):
        if self.loss_impl != "fused":
            return super().forward_logits(model, inputs)
        inner = self.accelerator.unwrap_model(model)
        with hidden_states_out(inner, anchor=inner is not model):
            hidden, targets, outputs = logits_at_targets(model, inputs, self.fmt.family)
        weight, bias = output_layer(inner)
        return HeadInputs(hidden, weight, bias), targets, outputs

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
        """The batch's prompts with targets sampled from the student (KV cache, eval mode, no grad); its greedy
        outputs at ``onpolicy_temperature`` 0."""
        from seqkd.teacher.decoding import generate_ids, generation_config

        student = self.accelerator.unwrap_model(model)
        was_training = student.training
        pl = inputs["prompt_len"].tolist()
        prompts = [row[:n].tolist() for row, n in zip(inputs["input_ids"], pl)]
        max_new = self.dcfg.onpolicy_max_new_tokens
        t = self.dcfg.onpolicy_temperature
        gen = generation_config(student, self.fmt, do_sample=t > 0, temperature=t, max_new_tokens=max_new)
        hyps = generate_ids(student, self.fmt, prompts, gen, batch_size=len(prompts))
        student.train(was_training)
        examples = []
        for p, hs in zip(prompts, hyps):
            ids = list(hs[0].ids) + ([self.fmt.eos_id] if hs[0].finished else [])  # exactly as sampled
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

    def loss_terms(self, model, inputs: dict, logits, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ce": (1 - w) * Σ weight·CE, "kd": w * T² * Σ weight·D}`` over the N real target tokens. ``logits``:
        ``[N, V]``, or the :class:`HeadInputs` that :meth:`forward_logits` gives with the fused loss."""
        cfg = self.dcfg
        labels = inputs["labels"]
        b, t = labels.shape
        tok_w = self.at_targets(inputs["weight"].float()[:, None].expand(b, t), labels)  # [N]
        onpolicy = bool(inputs.get("_onpolicy", False))
        w = 1.0 if onpolicy else cfg.kd_weight
        ce_w = w  # the CE's coefficient is 1 - ce_w
        if w > 0 and cfg.kd_mode == "offline" and "topk_ids" not in inputs:
            if model.training:
                raise SeqkdError("--kd-mode offline: a training batch has no stored top-k log-probs")
            # validation batches (references) have no stored teacher: their loss is the plain CE, not (1 - w) CE
            # (which is 0 at w = 1, and the best checkpoint would be picked on it)
            w = ce_w = 0.0
        fused = isinstance(logits, HeadInputs)
        teacher = None
        internals = self.internals is not None and model.training
        if w > 0:
            if self.teacher is not None and cfg.kd_mode == "online":
                with self.internals.teacher_rec.recording() if internals else nullcontext():
                    teacher = self.teacher_head_inputs(inputs) if fused and self.teacher_head else \
                        self.teacher_logits(inputs)
            elif cfg.kd_mode == "offline":
                teacher = losses.TopKTeacher(self.at_targets(inputs["topk_ids"], labels),
                                             self.at_targets(inputs["topk_logprobs"], labels), tail=cfg.topk_tail)
            else:
                raise SeqkdError(f"kd_weight > 0 needs a teacher (kd_mode={cfg.kd_mode})")
        terms, sums = (self._fused_terms if fused else self._terms)(logits, targets, teacher, tok_w, w, ce_w)
        if internals:  # training only: validation losses stay comparable with runs without internals
            terms.update(self.internals_terms(inputs, teacher is not None, len(targets)))
        if model.training:
            for key, value in sums.items():
                self._term_sums[key] += value
        return terms

    def _terms(self, logits: torch.Tensor, targets: torch.Tensor, teacher, tok_w: torch.Tensor, w: float,
               ce_w: float) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """plain / chunked: the CE on whole logits, the divergence whole (plain) or chunk by chunk (chunked; also
        for logits given to a fused trainer by another route). Returns (terms, the unscaled weighted sums to log)."""
        terms: dict[str, torch.Tensor] = {}
        sums: dict[str, float] = {}
        if ce_w < 1:
            ce = F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=self.label_smoothing)
            ce_sum = (ce * tok_w).sum()
            terms["ce"] = (1 - ce_w) * ce_sum
            sums["cross_entropy"] = float(ce_sum.detach())
        if teacher is not None:
            temp = self.dcfg.kd_temperature
            chunk = 0 if self.loss_impl == "plain" else self.loss_chunk_size
            if chunk and bool((tok_w == 1).all()):
                # unweighted: the chunked path that computes its gradients in the forward (no recomputation)
                d_sum = losses.chunked(self.divergence, logits, teacher, None, chunk_size=chunk,
                                       temperature=temp, reduction="sum", **self.div_params)
            else:
                # weighted: per-token values (chunked: the backward recomputes each chunk with its weights)
                fn = (lambda *a, **k: losses.chunked(self.divergence, *a, chunk_size=chunk, **k)) if chunk \
                    else self.divergence
                d = fn(logits, teacher, None, temperature=temp, reduction="none", **self.div_params)
                d_sum = (d * tok_w).sum()
            terms["kd"] = w * temp * temp * d_sum
            sums["divergence"] = float(d_sum.detach())
        return terms, sums

    def _fused_terms(self, head: HeadInputs, targets: torch.Tensor, teacher, tok_w: torch.Tensor, w: float,
                     ce_w: float) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """fused: CE and divergence in one chunked pass from the hidden states (per-token weights inside the
        pass: no recomputation). The pass gives one differentiable total; each term's value is its own weighted
        sum, and the total's gradient rides on the last term as an exact ``total - total.detach()`` (= 0)."""
        with_ce = ce_w < 1
        if teacher is None and not with_ce:
            return {}, {}
        temp = self.dcfg.kd_temperature
        res = losses.fused_distill(self.divergence, head.hidden, head.weight, teacher, targets if with_ce else None,
                                   lm_head_bias=head.bias, kd_coef=w * temp * temp, ce_coef=1 - ce_w,
                                   label_smoothing=self.label_smoothing, weight=tok_w.detach(),
                                   chunk_size=self.loss_chunk_size, temperature=temp, **self.div_params)
        terms: dict[str, torch.Tensor] = {}
        sums: dict[str, float] = {}
        if res.cross_entropy is not None:
            terms["ce"] = (1 - ce_w) * res.cross_entropy
            sums["cross_entropy"] = float(res.cross_entropy)
        if res.divergence is not None:
            terms["kd"] = w * temp * temp * res.divergence
            sums["divergence"] = float(res.divergence)
        last = list(terms)[-1]
        terms[last] = terms[last] + (res.loss - res.loss.detach())
        return terms, sums

    def summary_extra(self) -> dict:
        return {"onpolicy_fraction": self._onpolicy / self._batches if self._batches else 0.0,
                "loss_impl": self.loss_impl,
                "loss_chunk_size": None if self.loss_impl == "plain" else self.loss_chunk_size,
                "loss_teacher_head": self.teacher_head,
                "internals": self.internals.describe() if self.internals is not None else None}

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
    from seqkd.student.setup import finished_summary, run_training

    if (done := finished_summary(cfg)) is not None:
        return done
    trainer, run = distill_trainer(cfg, trainer_cls, **trainer_kwargs)
    return run_training(cfg, run, trainer)
