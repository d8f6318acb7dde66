"""Memory-lean forms of the divergences in :mod:`seqkd.student.losses`: ``chunked`` and ``fused``.

A plain divergence over N tokens keeps several float32 ``[N, V]`` tensors (log-softmaxes, probabilities, the
product) alive for backward; at V = 32k that is gigabytes. Both functions here run the plain divergence on
``chunk_size`` tokens at a time inside one ``torch.autograd.Function``:

* ``reduction="mean"`` / ``"sum"`` (training): each chunk's gradients are computed right away in the forward
  (Liger-kernel style: per-chunk ``autograd.grad``), accumulated into gradient buffers, and the chunk's float32
  intermediates are freed before the next chunk. Backward only scales the buffers by the incoming gradient. Cost
  about one plain forward + backward, with no recomputation.
* ``reduction="none"`` (per-token values): the forward keeps nothing but its inputs; backward recomputes each
  chunk (as checkpointing would) to apply the per-token incoming gradients.

``chunked`` takes student logits ``[..., V]`` (so the ``[N, V]`` logits and their gradient exist, but the
float32 intermediates exist for one chunk only). ``fused`` also folds in the student's output projection
``logits = hidden @ weight.T + bias``: ``[N, V]`` student logits exist one chunk at a time, and the gradients
w.r.t. ``hidden`` (``[N, H]``) and ``weight`` (``[V, H]``, accumulated in float32) are formed per chunk. Its
teacher may be dense logits, a :class:`~seqkd.student.losses.TopKTeacher`, or a :class:`TeacherHead` whose logits are
also made one chunk at a time. Gradients flow to every input that requires them, teacher inputs included.

``fused_distill`` is the whole token-level distillation loss of a trainer in one such pass: the divergence and a
(label-smoothed) cross-entropy against the targets, each token weighted (example weights), from the student's
hidden states, so that neither the student's ``[N, V]`` logits nor (with a :class:`TeacherHead`) the teacher's
exist whole. It returns the weighted sums of both terms as well as their weighted combination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from seqkd.student.losses.divergences import TopKTeacher, check_inputs, get_divergence

__all__ = ["DistillLoss", "TeacherHead", "chunked", "fused", "fused_distill"]


@dataclass(frozen=True)
class TeacherHead:
    """A teacher given before its output projection: logits = hidden ``[..., H]`` @ weight ``[V, H]``.T + bias
    ``[V]``, made one chunk at a time by :func:`fused` / :func:`chunked`."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None


AnyTeacher = Union[Tensor, TopKTeacher, TeacherHead]

@dataclass(frozen=True)
class DistillLoss:
    """What :func:`fused_distill` returns: ``loss`` = Σ_i w_i (kd_coef·D_i + ce_coef·CE_i), the one output with a
    gradient; ``divergence`` = Σ_i w_i D_i and ``cross_entropy`` = Σ_i w_i CE_i (no gradient; None for a term not
    computed)."""

    loss: Tensor
    divergence: Tensor | None
    cross_entropy: Tensor | None


# Flat input slots of the autograd Function. Row slots are cut into token chunks; the others (weights, biases)
# are shared by every chunk and their gradients summed. _WEIGHT: per-token weights [N] (constants); _TARGETS: the
# cross-entropy's target ids [N].
_S0, _S1, _S2, _T0, _T1, _T2, _MASK, _WEIGHT, _TARGETS = range(9)
_SLOTS = 9


@dataclass(frozen=True)
class _Plan:
    fn: Callable[..., Tensor] | None
    params: dict[str, Any]
    temperature: float
    reduction: str
    chunk_size: int
    student_head: bool
    teacher_kind: str  # "logits" | "topk" | "head" | "none" (cross-entropy only)
    tail: str
    count: int  # real tokens: the mean's denominator
    rows: frozenset[int] = field(default=frozenset())
    # Per-token terms: the divergence (unless teacher_kind == "none"), then the cross-entropy (with ce=True); a
    # token's value is Σ coefs[k]·term_k (times its weight).
    coefs: tuple[float, ...] = (1.0,)
    ce: bool = False
    label_smoothing: float = 0.0


def _student_logits(plan: _Plan, xs: list[Tensor | None]) -> Tensor:
    if not plan.student_head:
        return xs[_S0]
    h, w, b = xs[_S0], xs[_S1], xs[_S2]
    return h @ w.T if b is None else torch.addmm(b, h, w.T)


def _teacher(plan: _Plan, xs: list[Tensor | None]) -> Tensor | TopKTeacher | None:
    if plan.teacher_kind == "none":
        return None
    if plan.teacher_kind == "logits":
        return xs[_T0]
    if plan.teacher_kind == "topk":
        return TopKTeacher(xs[_T0], xs[_T1], plan.tail)
    h, w, b = xs[_T0], xs[_T1], xs[_T2]
    return h @ w.T if b is None else torch.addmm(b, h, w.T)


class _Grads:
    """Gradient buffers for the inputs that need one: row slots filled chunk by chunk in the input's dtype,
    shared slots summed over chunks in (at least) float32."""

    def __init__(self, xs: tuple[Tensor | None, ...], needs: tuple[bool, ...], rows: frozenset[int]) -> None:
        self.bufs: list[Tensor | None] = []
        for i, (x, need) in enumerate(zip(xs, needs)):
            if not need:
                self.bufs.append(None)
            elif i in rows:
                self.bufs.append(torch.empty_like(x))
            else:
                self.bufs.append(torch.zeros_like(x, dtype=torch.promote_types(x.dtype, torch.float32)))

    def result(self, xs: tuple[Tensor | None, ...]) -> list[Tensor | None]:
        return [None if b is None else b.to(x.dtype) for b, x in zip(self.bufs, xs)]


def _terms(plan: _Plan, logits: Tensor, teacher: Tensor | TopKTeacher | None, xs: list[Tensor | None]) -> list[Tensor]:
    """The per-token terms ``[n]`` of one chunk (see _Plan.coefs); masked tokens are 0."""
    mask = xs[_MASK]
    out = []
    if plan.teacher_kind != "none":
        out.append(plan.fn(logits, teacher, mask, temperature=plan.temperature, reduction="none", **plan.params))
    if plan.ce:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        ce = F.cross_entropy(logits.to(dtype), xs[_TARGETS], reduction="none", label_smoothing=plan.label_smoothing)
        out.append(ce if mask is None else torch.where(mask, ce, 0.0))
    return out


def _objective(plan: _Plan, terms: list[Tensor]) -> Tensor:
    total = None
    for c, t in zip(plan.coefs, terms):
        t = t if c == 1 else t * c
        total = t if total is None else total + t
    return total


def _chunk(plan: _Plan, xs: list[Tensor | None], weights: Tensor | None, grads: _Grads | None,
           start: int, stop: int) -> Tensor:
    """Per-token terms ``[n, K]`` of one chunk; with ``weights`` ``[n]`` also adds d(Σ weights·objective)/d(inputs)
    into ``grads`` (objective: Σ_k coefs[k]·term_k)."""
    if weights is None or grads is None:
        with torch.no_grad():
            return torch.stack(_terms(plan, _student_logits(plan, xs), _teacher(plan, xs), xs), dim=-1)
    need = [b is not None for b in grads.bufs]
    with torch.no_grad():
        logits = _student_logits(plan, xs)
    # The student logits are the leaf: their gradient is turned into hidden/weight gradients by two matmuls
    # below, instead of letting autograd allocate a fresh [V, H] weight gradient per chunk.
    logits = logits.detach().requires_grad_(any(need[_S0:_T0]))
    leaves = list(xs)
    for i in (_T0, _T1, _T2):
        if need[i]:
            leaves[i] = xs[i].detach().requires_grad_()
    with torch.enable_grad():
        terms = _terms(plan, logits, _teacher(plan, leaves), xs)
        values = _objective(plan, terms)
        wrt = ([logits] if logits.requires_grad else []) + [leaves[i] for i in (_T0, _T1, _T2) if need[i]]
        got = list(torch.autograd.grad(values, wrt, grad_outputs=weights.to(values.dtype))) if wrt else []
    bufs = grads.bufs
    if logits.requires_grad:
        g = got.pop(0)
        if not plan.student_head:
            bufs[_S0][start:stop] = g
        else:
            h, w = xs[_S0], xs[_S1]
            if need[_S0]:
                bufs[_S0][start:stop] = g @ w
            if need[_S1]:
                bufs[_S1].add_(g.T @ h)
            if need[_S2]:
                bufs[_S2].add_(g.sum(dim=0))
    for i in (_T0, _T1, _T2):
        if need[i]:
            g = got.pop(0)
            if i in plan.rows:
                bufs[i][start:stop] = g
            else:
                bufs[i].add_(g)
    return torch.stack([t.detach() for t in terms], dim=-1)


def _run(plan: _Plan, xs: tuple[Tensor | None, ...], weights: Callable[[int, int, Tensor], Tensor] | None,
         grads: _Grads | None) -> Tensor:
    """The per-token terms ``[N, K]``; with ``weights`` (the outer per-token weights of a chunk), gradients of
    Σ weights·token weight·objective into ``grads``."""
    n = xs[_S0].shape[0]
    out = []
    for start in range(0, n, plan.chunk_size):
        stop = min(n, start + plan.chunk_size)
        part = [x[start:stop] if (i in plan.rows and x is not None) else x for i, x in enumerate(xs)]
        w = None if weights is None else weights(start, stop, xs[_S0])
        if w is not None and part[_WEIGHT] is not None:
            w = w * part[_WEIGHT].to(w.dtype)
        out.append(_chunk(plan, part, w, grads, start, stop))
    if not out:
        dtype = torch.float64 if xs[_S0].dtype == torch.float64 else torch.float32
        return xs[_S0].new_zeros(0, len(plan.coefs), dtype=dtype)
    return torch.cat(out)


def _values(plan: _Plan, terms: Tensor, weight: Tensor | None) -> Tensor:
    """Per-token values ``[N]`` from the terms ``[N, K]``: Σ_k coefs[k]·term_k, times the token weights."""
    v = _objective(plan, list(terms.unbind(-1)))
    return v if weight is None else v * weight.to(v.dtype)


def _term_sums(terms: Tensor, weight: Tensor | None) -> Tensor:
    """Σ_i weight_i·term_ik ``[K]`` (no gradient)."""
    return terms.sum(0) if weight is None else (terms * weight.to(terms.dtype)[:, None]).sum(0)


class _ChunkedDivergence(torch.autograd.Function):
    """Outputs: the reduced (or per-token) values, and the token-weighted sum of each term ``[K]`` (no gradient)."""

    @staticmethod
    def forward(ctx: Any, plan: _Plan, *xs: Tensor | None) -> tuple[Tensor, Tensor]:
        needs = tuple(ctx.needs_input_grad[1:])
        ctx.plan = plan
        weight = xs[_WEIGHT]
        if plan.reduction == "none":
            ctx.save_for_backward(*xs)
            terms = _run(plan, xs, None, None)
            sums = _term_sums(terms, weight)
            ctx.mark_non_differentiable(sums)
            return _values(plan, terms, weight), sums
        scale = 1.0 / max(plan.count, 1) if plan.reduction == "mean" else 1.0
        grads = _Grads(xs, needs, plan.rows) if any(needs) else None
        # float64 weights: a float32 1/count would perturb float64 gradients in the 8th digit.
        terms = _run(plan, xs, lambda a, b, ref: torch.full((b - a,), scale, dtype=torch.float64, device=ref.device),
                     grads)
        ctx.grads = None if grads is None else grads.result(xs)
        sums = _term_sums(terms, weight)
        ctx.mark_non_differentiable(sums)
        return _values(plan, terms, weight).sum() * scale, sums

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_sums: Tensor | None = None) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        if plan.reduction != "none":
            if ctx.grads is None:
                return (None,) * (_SLOTS + 1)
            unit = bool(grad_out == 1)
            out = [None if g is None else (g if unit else g * grad_out.to(g.dtype)) for g in ctx.grads]
            return (None, *out)
        xs = ctx.saved_tensors
        grads = _Grads(xs, tuple(ctx.needs_input_grad[1:]), plan.rows)
        _run(plan, xs, lambda a, b, ref: grad_out[a:b], grads)
        return (None, *grads.result(xs))


def _apply(fn: Callable[..., Tensor] | None, student: tuple[Tensor, Tensor | None, Tensor | None],
           student_head: bool, teacher: AnyTeacher | None, mask: Tensor | None, lead: torch.Size, vocab: int,
           chunk_size: int, temperature: float, reduction: str, params: dict[str, Any], *,
           weight: Tensor | None = None, targets: Tensor | None = None, coefs: tuple[float, ...] = (1.0,),
           label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """(values, Σ_i weight_i·term_ik [K]); see _Plan for the terms."""
    if teacher is None:
        check_inputs(torch.Size([*lead, vocab]), torch.empty(*lead, vocab, device="meta"), mask, temperature,
                     reduction)
        kind, tail, tx = "none", "", (None, None, None)
    elif isinstance(teacher, TeacherHead):
        th, tw, tb = teacher.hidden, teacher.weight, teacher.bias
        if th.shape[:-1] != lead or tw.dim() != 2 or tw.shape != (vocab, th.shape[-1]) or (
                tb is not None and tb.shape != (vocab,)):
            raise ValueError(f"TeacherHead hidden {tuple(th.shape)} / weight {tuple(tw.shape)} / bias "
                             f"{None if tb is None else tuple(tb.shape)} do not fit: need [..., H], [V={vocab}, H], "
                             f"[V] with the student's leading shape {tuple(lead)}")
        check_inputs(torch.Size([*lead, vocab]), torch.empty(*lead, vocab, device="meta"), mask, temperature,
                     reduction)
        kind, tail, tx = "head", "", (th.reshape(-1, th.shape[-1]), tw, tb)
    else:
        check_inputs(torch.Size([*lead, vocab]), teacher, mask, temperature, reduction)
        if isinstance(teacher, TopKTeacher):
            k = teacher.ids.shape[-1]
            kind, tail, tx = "topk", teacher.tail, (teacher.ids.reshape(-1, k), teacher.logprobs.reshape(-1, k), None)
        else:
            kind, tail, tx = "logits", "", (teacher.reshape(-1, vocab), None, None)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    flat_mask = None if mask is None else mask.reshape(-1)
    n = lead.numel()
    count = n if flat_mask is None else int(flat_mask.sum())
    rows = frozenset({_S0, _T0, _MASK, _WEIGHT, _TARGETS} | ({_T1} if kind == "topk" else set()))
    plan = _Plan(fn, params, float(temperature), reduction, chunk_size, student_head, kind, tail, count, rows,
                 coefs=tuple(float(c) for c in coefs), ce=targets is not None, label_smoothing=float(label_smoothing))
    xs = (*student, *tx, flat_mask, None if weight is None else weight.reshape(-1),
          None if targets is None else targets.reshape(-1))
    if torch.is_grad_enabled():
        out, sums = _ChunkedDivergence.apply(plan, *xs)
    else:
        out, sums = _ChunkedDivergence.forward(_NoGradCtx(), plan, *xs)
    return (out.reshape(lead) if reduction == "none" else out), sums


class _NoGradCtx:
    """Stands in for the autograd context under torch.no_grad(): nothing needs a gradient."""

    needs_input_grad = (False,) * (_SLOTS + 1)

    def save_for_backward(self, *xs: Any) -> None:
        pass

    def mark_non_differentiable(self, *xs: Any) -> None:
        pass


def _resolve(name_or_fn: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    return name_or_fn if callable(name_or_fn) else get_divergence(name_or_fn)


def chunked(name_or_fn: str | Callable[..., Tensor], student_logits: Tensor, teacher: AnyTeacher,
            mask: Tensor | None = None, *, chunk_size: int = 1024, temperature: float = 1.0,
            reduction: str = "mean", **params: Any) -> Tensor:
    """The divergence ``name_or_fn`` (a name of ``seqkd.student.losses.DIVERGENCES``/``ALIASES`` or any function with
    their call shape) evaluated ``chunk_size`` tokens at a time; equal to the plain call. Student logits
    ``[..., V]``, teacher logits ``[..., V]`` / TopKTeacher / TeacherHead, mask ``[...]``; returns ``[]``
    (``[...]`` for reduction="none")."""
    fn = _resolve(name_or_fn)
    if not isinstance(student_logits, Tensor) or not student_logits.is_floating_point() or student_logits.dim() < 1:
        raise ValueError("student_logits must be a floating-point tensor [..., V]")
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    return _apply(fn, (student_logits.reshape(-1, vocab), None, None), False, teacher, mask, lead, vocab,
                  chunk_size, temperature, reduction, params)[0]


def fused(name_or_fn: str | Callable[..., Tensor], student_hidden: Tensor, lm_head_weight: Tensor,
          teacher: AnyTeacher, mask: Tensor | None = None, *, lm_head_bias: Tensor | None = None,
          chunk_size: int = 1024, temperature: float = 1.0, reduction: str = "mean", **params: Any) -> Tensor:
    """The divergence of the student logits ``student_hidden [..., H] @ lm_head_weight[V, H].T (+ lm_head_bias
    [V])`` from ``teacher``, made and consumed ``chunk_size`` tokens at a time: no ``[N, V]`` student tensor
    exists. Equal to the plain call on the full logits; returns ``[]`` (``[...]`` for reduction="none")."""
    fn = _resolve(name_or_fn)
    h, w, b = student_hidden, lm_head_weight, lm_head_bias
    _check_head(h, w, b)
    lead = h.shape[:-1]
    return _apply(fn, (h.reshape(-1, h.shape[-1]), w, b), True, teacher, mask, lead, w.shape[0], chunk_size,
                  temperature, reduction, params)[0]


def _check_head(h: Tensor, w: Tensor, b: Tensor | None) -> None:
    if not isinstance(h, Tensor) or not isinstance(w, Tensor) or h.dim() < 1 or w.dim() != 2 or \
            w.shape[1] != h.shape[-1] or (b is not None and b.shape != (w.shape[0],)):
        raise ValueError(f"fused needs student_hidden [..., H], lm_head_weight [V, H] and lm_head_bias [V]; got "
                         f"{tuple(getattr(h, 'shape', ()))}, {tuple(getattr(w, 'shape', ()))}, "
                         f"{None if b is None else tuple(b.shape)}")


def fused_distill(name_or_fn: str | Callable[..., Tensor] | None, student_hidden: Tensor, lm_head_weight: Tensor,
                  teacher: AnyTeacher | None, targets: Tensor | None = None, mask: Tensor | None = None, *,
                  lm_head_bias: Tensor | None = None, kd_coef: float = 1.0, ce_coef: float = 1.0,
                  label_smoothing: float = 0.0, weight: Tensor | None = None, chunk_size: int = 1024,
                  temperature: float = 1.0, **params: Any) -> DistillLoss:
    """A distillation loss in one chunked pass over the student's logits ``student_hidden [..., H] @
    lm_head_weight [V, H].T (+ lm_head_bias [V])``, which exist ``chunk_size`` tokens at a time only:

    ``loss = Σ_i w_i (kd_coef · D_i + ce_coef · CE_i)``

    with ``D_i`` the divergence ``name_or_fn`` of token i from ``teacher`` (logits ``[..., V]``, TopKTeacher or
    TeacherHead; None: no divergence term), ``CE_i`` the cross-entropy of the student's logits against ``targets``
    (int64 ``[...]``, ``F.cross_entropy(..., label_smoothing=label_smoothing)``; None: no CE term), ``w_i`` the
    per-token ``weight`` ``[...]`` (None: all 1; a constant, it gets no gradient) and masked tokens (``mask``
    False) contributing 0. The CE is computed in float32 (float64 stays float64) whatever the logits' dtype;
    ``temperature`` applies to the divergence only. Gradients of every input that requires them (the student's
    hidden states, weight and bias, the teacher's inputs) are formed chunk by chunk in the forward, as
    :func:`fused` does; they equal those of the plain computation on whole logits.

    Returns :class:`DistillLoss`: ``loss`` (differentiable), and the weighted sums Σ w_i D_i and Σ w_i CE_i (no
    gradient; None for an absent term)."""
    h, w, b = student_hidden, lm_head_weight, lm_head_bias
    _check_head(h, w, b)
    lead, vocab = h.shape[:-1], w.shape[0]
    if teacher is None and targets is None:
        raise ValueError("fused_distill needs a teacher, targets, or both")
    if targets is not None:
        if not isinstance(targets, Tensor) or targets.dtype != torch.int64 or targets.shape != lead:
            raise ValueError(f"targets must be an int64 tensor of the hidden states' leading shape {tuple(lead)}, "
                             f"got {getattr(targets, 'dtype', type(targets).__name__)} "
                             f"{tuple(getattr(targets, 'shape', ()))}")
        usable_mask = isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.shape == lead
        real = targets[mask] if usable_mask else targets
        if bool(((real < 0) | (real >= vocab)).any()):  # one device sync
            raise ValueError(f"targets must lie in [0, {vocab}) at real tokens, got [{int(real.min())}, "
                             f"{int(real.max())}]")
        if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if weight is not None:
        if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.shape != lead:
            raise ValueError(f"weight must be a floating-point tensor of the hidden states' leading shape "
                             f"{tuple(lead)}, got {tuple(getattr(weight, 'shape', ()))}")
        if weight.requires_grad:
            raise ValueError("weight is a constant here (it gets no gradient): pass weight.detach()")
    fn = _resolve(name_or_fn) if teacher is not None else None
    coefs = ((kd_coef,) if teacher is not None else ()) + ((ce_coef,) if targets is not None else ())
    loss, sums = _apply(fn, (h.reshape(-1, h.shape[-1]), w, b), True, teacher, mask, lead, vocab, chunk_size,
                        temperature, "sum", params, weight=weight, targets=targets, coefs=coefs,
                        label_smoothing=label_smoothing)
    parts = list(sums.unbind(0))
    div = parts.pop(0) if teacher is not None else None
    return DistillLoss(loss, div, parts.pop(0) if targets is not None else None)
