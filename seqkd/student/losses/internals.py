"""Internals transfer: losses between a student's and a teacher's hidden states and attention, layer to layer.

FitNets / Patient KD / TinyBERT match hidden states (here MSE or cosine, the student's projected to the teacher's
width by a learned map where they differ); TinyBERT matches attention, MiniLM matches self-attention distributions
and value relations (the softmax of scaled value-value dot products) with KL, which needs no projection since both
sides are distributions over the same positions. Pure functions of tensors (the trainer gathers the tensors and
owns the projections); ``mask`` is bool, True = a real position; every loss is a mean over real positions (and
heads), 0 (attached, zero gradient) when nothing is real, and exactly 0 with zero gradient when the student's
internals equal the teacher's.

=====================  ====================================================  ==================================
``hidden_mse``         mean over real positions of ||h_s W - h_t||^2 / D_t    FitNets, TinyBERT (hidden)
``hidden_cosine``      mean of 1 - cos(h_s W, h_t)                             Patient KD style (direction only)
``attention_kl``       KL(A_t || A_s) per query row, heads averaged            TinyBERT / MiniLM (attention)
``value_relation_kl``  KL(R_t || R_s), R = softmax(V V^T / sqrt(d_r))         MiniLM (value relation)
=====================  ====================================================  ==================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_kl", "hidden_cosine", "hidden_mse", "layer_map", "value_relation_kl"]


def _f(x: Tensor) -> Tensor:
    """float32 math; float64 stays float64 (gradcheck, references)."""
    return x if x.dtype == torch.float64 else x.float()


def _masked_mean(per_pos: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_pos [...]`` over ``mask`` (all when None); an empty mask gives an attached 0."""
    if mask is None:
        return per_pos.mean()
    m = mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp(min=1.0)


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """``student`` (already projected) and ``teacher`` ``[B, S, D]``: mean squared error per element, averaged over
    real positions."""
    d = (_f(student) - _f(teacher)).pow(2).mean(-1)  # [B, S]
    return _masked_mean(d, mask)


def hidden_cosine(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 - cos(student, teacher)`` per position ``[B, S]``, averaged over real positions (direction, not scale)."""
    cos = F.cosine_similarity(_f(student), _f(teacher), dim=-1, eps=1e-8)  # [B, S]
    return _masked_mean(1.0 - cos, mask)


def _kl_rows(p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last axis with 0 log 0 = 0 (masked keys are 0 on both sides): ``[...]``. Where p is 0
    nothing of log q is used, not even in the gradient (a -inf there would give 0 * inf = NaN)."""
    real = p > 0
    log_p = torch.where(real, p, torch.ones_like(p)).log()
    log_q = torch.where(real, log_q, torch.zeros_like(log_q))
    return torch.where(real, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention distributions ``[B, H, S, S]`` (rows: queries, over keys; softmax already applied, as HF's
    ``output_attentions`` gives them): KL(teacher || student) per query row, averaged over heads and real query
    positions ``mask [B, S]``. With different head counts the heads are averaged first on each side."""
    s, t = _f(student), _f(teacher)
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    log_s = torch.where(t > 0, s, torch.ones_like(s)).log()  # only where the teacher attends (0 * log 0 = 0)
    kl = _kl_rows(t, log_s).mean(1)  # [B, S]
    return _masked_mean(kl, mask)


def value_relation_kl(student: Tensor, teacher: Tensor, mask: Tensor | None = None, heads: int = 1) -> Tensor:
    """MiniLM's value relation: values ``[B, S, D_s]`` / ``[B, S, D_t]`` (all heads concatenated) split into
    ``heads`` relation heads, ``R = softmax(V V^T / sqrt(d_r))`` over real keys, KL(R_t || R_s) per query row,
    averaged over relation heads and real query positions. ``heads`` must divide both widths."""
    def relation(v: Tensor) -> Tensor:
        b, n, d = v.shape
        if d % heads:
            raise ValueError(f"{heads} relation heads do not divide the width {d}")
        v = _f(v).reshape(b, n, heads, d // heads).transpose(1, 2)  # [B, R, S, d_r]
        scores = v @ v.transpose(-1, -2) / math.sqrt(d // heads)  # [B, R, S, S]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return scores.log_softmax(-1)

    log_s, log_t = relation(student), relation(teacher)
    kl = _kl_rows(log_t.exp(), log_s).mean(1)  # [B, S]
    return _masked_mean(kl, mask)


def layer_map(student_layers: int, teacher_layers: int, spec: str = "uniform") -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 0-based layer outputs. ``uniform``: each student layer i to teacher
    layer ``ceil((i + 1) L_t / L_s) - 1`` (the last to the last, the rest evenly spaced: Patient KD's skip; a
    deeper student shares teacher layers); or an explicit ``"s:t,s:t"`` list. Raises ValueError naming what is out
    of range."""
    if spec == "uniform":
        return [(i, -(-(i + 1) * teacher_layers // student_layers) - 1) for i in range(student_layers)]
    pairs = []
    for item in spec.split(","):
        s, sep, t = item.strip().partition(":")
        if not sep or not s.strip().lstrip("-").isdigit() or not t.strip().lstrip("-").isdigit():
            raise ValueError(f"layer map {spec!r}: give 'uniform' or pairs student:teacher such as 0:1,1:3")
        s_i, t_i = int(s), int(t)
        if not (0 <= s_i < student_layers and 0 <= t_i < teacher_layers):
            raise ValueError(f"layer map pair {s_i}:{t_i} is outside the student's {student_layers} / the teacher's "
                             f"{teacher_layers} layers")
        pairs.append((s_i, t_i))
    if not pairs:
        raise ValueError("the layer map is empty")
    return pairs
