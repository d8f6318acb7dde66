"""Distillation losses: the divergences (:mod:`.divergences`) and their memory-lean chunked / fused forms
(:mod:`.fused`). Pure functions of tensors: nothing here imports a model, a trainer or an engine."""

from seqkd.student.losses.divergences import (
    ALIASES,
    DIVERGENCES,
    TAIL_FLOOR,
    TopKTeacher,
    forward_kl,
    get_divergence,
    interpolated_jsd,
    jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    tvd,
)
from seqkd.student.losses.fused import DistillLoss, TeacherHead, chunked, fused, fused_distill

__all__ = [
    "ALIASES", "DIVERGENCES", "TAIL_FLOOR", "DistillLoss", "TeacherHead", "TopKTeacher", "chunked", "forward_kl",
    "fused", "fused_distill", "get_divergence", "interpolated_jsd", "jsd", "reverse_kl", "skew_kl", "skew_reverse_kl",
    "tvd",
]
