"""Token-level distillation divergences between a teacher distribution p and a student distribution q.

One call shape for every divergence::

    loss = forward_kl(student_logits, teacher, mask=None, *, temperature=1.0, reduction="mean")

``student_logits`` ``[..., V]``; ``teacher``: logits ``[..., V]`` or a :class:`TopKTeacher` (ids and log-probs
``[..., k]``, offline KD from a stored corpus); ``mask`` bool ``[...]``, True = real token (None: all real).
The math runs in float32 (float64 stays float64) whatever the input dtype, on log-probabilities (log_softmax,
logaddexp), with 0·log 0 = 0 so that probabilities underflowing to 0 or ``-inf`` logits give no NaN, in the value
or the gradient. ``reduction``: ``"mean"`` over real tokens, ``"sum"``, or ``"none"`` (per-token ``[...]``, masked
positions exactly 0). An all-masked batch gives 0, still attached to the graph (zero gradients, not None).
``temperature`` divides both sides' logits; the T² gradient rescaling of Hinton et al. is the trainer's business.

==========================  ==========================================  =====================================
``forward_kl``              KL(p‖q) = Σ p log(p/q)                      word-level KD; mode-covering
``reverse_kl``              KL(q‖p)                                     mode-seeking (MiniLLM)
``jsd(beta=0.5)``           β KL(p‖m) + (1-β) KL(q‖m), m = βp + (1-β)q  GKD / TRL; β=0: forward_kl, β=1: reverse_kl
``interpolated_jsd(beta)``  (1-β) KL(p‖m) + β KL(q‖m), same m           continuous in β from forward to reverse KL
``tvd``                     ½ Σ |p - q|                                 1 - tvd = speculative acceptance rate
``skew_kl(alpha=0.1)``      KL(p ‖ αp + (1-α)q)                         DistiLLM (Ko et al. 2024)
``skew_reverse_kl(alpha)``  KL(q ‖ αq + (1-α)p)                         DistiLLM
==========================  ==========================================  =====================================

About ``jsd``: it is GKD's (Agarwal et al. 2024, Eq. 1) and TRL's ``generalized_jsd_loss`` for every β, so a β
taken from a GKD paper or a TRL config means the same loss here: β KL(p‖m) + (1-β) KL(q‖m), m = βp + (1-β)q,
with β=0 forward KL and β=1 reverse KL by definition (TRL special-cases both ends; the expression itself tends to
0 there, so the ends are discontinuous). ``interpolated_jsd`` swaps the weights, (1-β) KL(p‖m) + β KL(q‖m), which
makes forward KL (β→0) and reverse KL (β→1) its true limits: the same at β=0.5, different elsewhere (β=0.1:
GKD's weighs KL(p‖m) by 0.1, ours by 0.9). Both dispatch their ends to forward_kl / reverse_kl, exact to the bit.

The memory-lean variants ``chunked`` / ``fused`` and ``TeacherHead`` live in :mod:`seqkd.student.losses.fused`; the
package :mod:`seqkd.student.losses` exports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor

__all__ = [
    "ALIASES", "DIVERGENCES", "TopKTeacher", "forward_kl", "get_divergence",
    "interpolated_jsd", "jsd", "reverse_kl", "skew_kl", "skew_reverse_kl", "tvd",
]

REDUCTIONS = ("mean", "sum", "none")
TAILS = ("bucket", "renorm")
# The teacher's stored top-k log-probs are float32: a tail mass 1 - sum(p_k) below float32's resolution near 1
# (2^-24) is rounding noise (a confident teacher's top-1 log-prob rounds to 0.0 and the tail to exactly 0). The
# bucket tail is floored there, so that divergences that divide by the teacher's mass (reverse KL, JSD at beta = 1)
# stay finite; the teacher's coarse-grained distribution then sums to at most 1 + 2^-24.
TAIL_FLOOR = 2.0 ** -24


@dataclass(frozen=True)
class TopKTeacher:
    """A sparse teacher: its k most likely ids ``[..., k]`` (int64) and their log-probs ``[..., k]`` under the full
    softmax at temperature 1, as stored in a distillation corpus.

    The mass outside the top-k is handled by ``tail``:

    * ``"bucket"`` (default): both distributions are coarse-grained to k+1 outcomes, the k ids plus one "rest"
      outcome (teacher: 1 - Σ exp(logprobs), floored at ``TAIL_FLOOR`` = 2^-24, float32's rounding noise near
      1, so that reverse KL stays finite for a confident teacher; student: its softmax mass off the k ids, by a
      logsumexp over the complement). Exact for the coarse-grained distributions, temperature 1 only: the
      shape of the teacher's tail, needed to re-temper it, was not stored.
    * ``"renorm"``: the teacher renormalised over its k ids (after dividing the log-probs by T) and the student
      restricted to the same ids and renormalised (logits / T). Ignores the rest; any temperature.

    Both equal the dense divergence when k = V.
    """

    ids: Tensor
    logprobs: Tensor
    tail: str = "bucket"

    def __post_init__(self) -> None:
        if self.tail not in TAILS:
            raise ValueError(f"TopKTeacher tail must be one of {TAILS}, got {self.tail!r}")
        if not isinstance(self.ids, Tensor) or self.ids.dtype != torch.int64:
            got = getattr(self.ids, "dtype", type(self.ids).__name__)
            raise ValueError(f"TopKTeacher ids must be an int64 tensor, got {got}")
        if not isinstance(self.logprobs, Tensor) or not self.logprobs.is_floating_point():
            raise ValueError("TopKTeacher logprobs must be a floating-point tensor")
        if self.ids.shape != self.logprobs.shape or self.ids.dim() == 0 or self.ids.shape[-1] == 0:
            raise ValueError(f"TopKTeacher ids {tuple(self.ids.shape)} and logprobs {tuple(self.logprobs.shape)} "
                             "must have the same shape [..., k] with k >= 1")


Teacher = Union[Tensor, TopKTeacher]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_inputs(student_shape: torch.Size, teacher: Any, mask: Tensor | None, temperature: float,
                 reduction: str) -> None:
    """Raise ValueError (TypeError for a wrong type) unless the arguments make a valid call; the student is
    described by its logits' shape ``[..., V]`` so that the fused path can check before any logits exist."""
    if len(student_shape) == 0 or student_shape[-1] == 0:
        raise ValueError(f"student logits must be [..., V] with V >= 1, got shape {tuple(student_shape)}")
    lead, vocab = student_shape[:-1], student_shape[-1]
    if isinstance(teacher, TopKTeacher):
        if teacher.ids.shape[:-1] != lead:
            raise ValueError(f"TopKTeacher ids {tuple(teacher.ids.shape)} do not match student logits "
                             f"{tuple(student_shape)}: need [..., k] with the same leading shape")
        if teacher.ids.shape[-1] > vocab:
            raise ValueError(f"TopKTeacher k={teacher.ids.shape[-1]} exceeds the vocabulary size V={vocab}")
        if teacher.ids.numel():
            if int(teacher.ids.min()) < 0 or int(teacher.ids.max()) >= vocab:
                raise ValueError(f"TopKTeacher ids must lie in [0, {vocab}), got [{int(teacher.ids.min())}, "
                                 f"{int(teacher.ids.max())}]")
            ordered = teacher.ids.sort(dim=-1).values
            if bool((ordered[..., 1:] == ordered[..., :-1]).any()):
                raise ValueError("TopKTeacher ids repeat an id within a position; top-k ids must be distinct")
        if teacher.tail == "bucket" and temperature != 1:
            raise ValueError(f"TopKTeacher tail='bucket' needs temperature 1, got {temperature}: the stored top-k "
                             "log-probs do not say how the rest mass is spread, so it cannot be re-tempered; "
                             "use tail='renorm' for other temperatures")
    elif isinstance(teacher, Tensor):
        if teacher.shape != student_shape:
            raise ValueError(f"teacher logits shape {tuple(teacher.shape)} != student logits shape "
                             f"{tuple(student_shape)}")
        if not teacher.is_floating_point():
            raise ValueError(f"teacher logits must be floating point, got {teacher.dtype}")
    else:
        raise TypeError(f"teacher must be logits (a Tensor) or a TopKTeacher, got {type(teacher).__name__}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = real token), got {getattr(mask, 'dtype', mask)}")
        if mask.shape != lead:
            raise ValueError(f"mask shape {tuple(mask.shape)} != student logits' leading shape {tuple(lead)}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0 (-inf at x = 0), accurate at both ends (Mächler 2012), finite gradients."""
    x = x.clamp(max=0.0)
    zero = x == 0
    near = x > -math.log(2.0)
    # Each branch only sees inputs where it is finite: torch.where still backpropagates 0·inf = NaN otherwise.
    x_near = torch.where(near & ~zero, x, -0.5)
    x_far = torch.where(near, -1.0, x)
    out = torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))
    return out.masked_fill(zero, -math.inf)


def _log_probs(student_logits: Tensor, teacher: Teacher, temperature: float) -> tuple[Tensor, Tensor]:
    """(log p, log q), both ``[..., n]`` over the same outcomes: the V ids, the k+1 buckets or the k ids."""
    dtype = _compute_dtype(student_logits)
    inv_t = 1.0 / temperature
    if isinstance(teacher, Tensor):
        s, t = student_logits.to(dtype), teacher.to(dtype)
        if temperature != 1:
            s, t = s * inv_t, t * inv_t
        return torch.log_softmax(t, dim=-1), torch.log_softmax(s, dim=-1)
    ids, lp_k = teacher.ids, teacher.logprobs.to(dtype)
    if teacher.tail == "renorm":
        # Gather before upcasting: renorm never needs a [..., V] float32 tensor.
        s_k = student_logits.gather(-1, ids).to(dtype)
        if temperature != 1:
            s_k, lp_k = s_k * inv_t, lp_k * inv_t
        return torch.log_softmax(lp_k, dim=-1), torch.log_softmax(s_k, dim=-1)
    s = student_logits.to(dtype)
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    lq_k = s.gather(-1, ids) - lse
    if ids.shape[-1] == s.shape[-1]:
        # k = V: there is no rest outcome; 1 - Σp would only be rounding noise against a student rest of 0.
        return lp_k, lq_k
    in_top = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, ids, True)
    rest = s.masked_fill(in_top, -math.inf)
    has_rest = (rest > -math.inf).any(dim=-1, keepdim=True)
    # The complement's own logsumexp, not log(1 - Σq): no cancellation when the student's rest is tiny. A row
    # whose complement is all -inf gets a finite stand-in so that its (discarded) gradient is not NaN.
    lq_rest = torch.logsumexp(torch.where(has_rest, rest, s), dim=-1, keepdim=True) - lse
    lq_rest = lq_rest.masked_fill(~has_rest, -math.inf)
    lp_rest = _log1mexp(torch.logsumexp(lp_k, dim=-1, keepdim=True)).clamp(min=math.log(TAIL_FLOOR))
    return torch.cat([lp_k, lp_rest], dim=-1), torch.cat([lq_k, lq_rest], dim=-1)


def _kl(la: Tensor, lb: Tensor) -> Tensor:
    """Σ a log(a/b) over the last dim, from log a and log b; terms with a = 0 are 0 (also where log b = -inf)."""
    a = la.exp()
    # where, not a product with a: (la - lb) is NaN or inf where a = 0 and log b = -inf, and 0·NaN = NaN.
    return (a * torch.where(a > 0, la - lb, 0.0)).sum(dim=-1)


def _log_mix(la: Tensor, lb: Tensor, w: float) -> Tensor:
    """log(w·a + (1-w)·b), elementwise from log a and log b; exactly log b at w = 0 and log a at w = 1."""
    if w == 0:
        return lb
    if w == 1:
        return la
    # Clamp -inf to the dtype's lowest value: logaddexp(-inf, -inf) has a NaN gradient.
    floor = torch.finfo(la.dtype).min
    # In place on clamp's fresh output (its backward needs only its input): one [..., V] temporary fewer.
    return torch.logaddexp(la.clamp(min=floor).add_(math.log(w)), lb.clamp(min=floor).add_(math.log1p(-w)))


def _reduce(values: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    if mask is not None:
        values = torch.where(mask, values, 0.0)
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    count = mask.sum() if mask is not None else torch.tensor(values.numel(), device=values.device)
    return total / count.clamp(min=1)


def _divergence(per_token: Callable[[Tensor, Tensor], Tensor], student_logits: Tensor, teacher: Teacher,
                mask: Tensor | None, temperature: float, reduction: str) -> Tensor:
    if not isinstance(student_logits, Tensor) or not student_logits.is_floating_point():
        raise TypeError(f"student_logits must be a floating-point Tensor, got {type(student_logits).__name__}")
    check_inputs(student_logits.shape, teacher, mask, temperature, reduction)
    lp, lq = _log_probs(student_logits, teacher, temperature)
    return _reduce(per_token(lp, lq), mask, reduction)


def forward_kl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *,
               temperature: float = 1.0, reduction: str = "mean") -> Tensor:
    """KL(p‖q) = Σ_v p log(p/q), p = teacher, q = student. Logits ``[..., V]``, mask ``[...]``; returns ``[]``
    (``[...]`` for reduction="none")."""
    return _divergence(_kl, student_logits, teacher_logits, mask, temperature, reduction)


def reverse_kl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *,
               temperature: float = 1.0, reduction: str = "mean") -> Tensor:
    """KL(q‖p) = Σ_v q log(q/p). Shapes as :func:`forward_kl`."""
    return _divergence(lambda lp, lq: _kl(lq, lp), student_logits, teacher_logits, mask, temperature, reduction)


def _generalized_jsd(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None, temperature: float,
                     reduction: str, beta: float, w_teacher: float) -> Tensor:
    """``w_teacher`` KL(p‖m) + (1 - ``w_teacher``) KL(q‖m), m = βp + (1-β)q; forward KL at β=0, reverse KL at β=1."""
    _check_unit("beta", beta)
    if beta == 0:
        return forward_kl(student_logits, teacher_logits, mask, temperature=temperature, reduction=reduction)
    if beta == 1:
        return reverse_kl(student_logits, teacher_logits, mask, temperature=temperature, reduction=reduction)

    def per_token(lp: Tensor, lq: Tensor) -> Tensor:
        lm = _log_mix(lp, lq, beta)
        return w_teacher * _kl(lp, lm) + (1 - w_teacher) * _kl(lq, lm)

    return _divergence(per_token, student_logits, teacher_logits, mask, temperature, reduction)


def jsd(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *, temperature: float = 1.0,
        reduction: str = "mean", beta: float = 0.5) -> Tensor:
    """GKD's generalised JSD, as TRL's ``generalized_jsd_loss``: β KL(p‖m) + (1-β) KL(q‖m), m = βp + (1-β)q;
    forward KL at β=0, reverse KL at β=1. Shapes as :func:`forward_kl`."""
    return _generalized_jsd(student_logits, teacher_logits, mask, temperature, reduction, beta, w_teacher=beta)


def interpolated_jsd(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *,
                     temperature: float = 1.0, reduction: str = "mean", beta: float = 0.5) -> Tensor:
    """(1-β) KL(p‖m) + β KL(q‖m), m = βp + (1-β)q: continuous in β, from forward KL (β→0) to reverse KL (β→1);
    equal to :func:`jsd` at β = 0, 0.5 and 1 only. Shapes as :func:`forward_kl`."""
    return _generalized_jsd(student_logits, teacher_logits, mask, temperature, reduction, beta, w_teacher=1 - beta)


def tvd(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *, temperature: float = 1.0,
        reduction: str = "mean") -> Tensor:
    """Total variation ½ Σ_v |p - q| in [0, 1]; 1 - tvd is the token acceptance rate of speculative decoding
    with this draft (Leviathan et al. 2023). Shapes as :func:`forward_kl`."""
    return _divergence(lambda lp, lq: 0.5 * (lp.exp() - lq.exp()).abs().sum(dim=-1),
                       student_logits, teacher_logits, mask, temperature, reduction)


def skew_kl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *,
            temperature: float = 1.0, reduction: str = "mean", alpha: float = 0.1) -> Tensor:
    """Skew KL(p ‖ αp + (1-α)q) (DistiLLM): forward KL at α=0, 0 at α=1; bounded by log(1/α) per token.
    Shapes as :func:`forward_kl`."""
    _check_unit("alpha", alpha)
    return _divergence(lambda lp, lq: _kl(lp, _log_mix(lp, lq, alpha)),
                       student_logits, teacher_logits, mask, temperature, reduction)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Teacher, mask: Tensor | None = None, *,
                    temperature: float = 1.0, reduction: str = "mean", alpha: float = 0.1) -> Tensor:
    """Skew reverse KL(q ‖ αq + (1-α)p) (DistiLLM): reverse KL at α=0, 0 at α=1. Shapes as :func:`forward_kl`."""
    _check_unit("alpha", alpha)
    return _divergence(lambda lp, lq: _kl(lq, _log_mix(lq, lp, alpha)),
                       student_logits, teacher_logits, mask, temperature, reduction)


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "interpolated_jsd": interpolated_jsd,
    "tvd": tvd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
}
ALIASES: dict[str, str] = {"fkl": "forward_kl", "kl": "forward_kl", "rkl": "reverse_kl"}


def get_divergence(name: str) -> Callable[..., Tensor]:
    """The divergence called ``name`` (a key of DIVERGENCES or ALIASES)."""
    fn = DIVERGENCES.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    if fn is None:
        known = ", ".join([*DIVERGENCES, *(f"{a} (= {n})" for a, n in ALIASES.items())])
        raise ValueError(f"unknown divergence {name!r}; known: {known}")
    return fn
