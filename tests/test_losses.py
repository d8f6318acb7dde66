"""seqkd.student.losses / seqkd.student.losses.fused: every divergence against an independent float64 reference
written with probabilities, gradients (gradcheck), properties, the sparse teacher, chunked / fused == plain, and
fused_distill == divergence + cross-entropy on whole logits."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkd.student import losses as L
from seqkd.student.losses import ALIASES, DIVERGENCES, TopKTeacher, get_divergence
from seqkd.student.losses.fused import DistillLoss, TeacherHead, chunked, fused, fused_distill

# (name, params): each divergence at its defaults plus the parameter values that change its character.
CASES = [
    ("forward_kl", {}), ("reverse_kl", {}), ("jsd", {}), ("jsd", {"beta": 0.2}), ("jsd", {"beta": 0.9}),
    ("interpolated_jsd", {"beta": 0.2}), ("interpolated_jsd", {"beta": 0.9}), ("tvd", {}), ("skew_kl", {}),
    ("skew_kl", {"alpha": 0.6}), ("skew_reverse_kl", {}),
    ("skew_reverse_kl", {"alpha": 0.6}),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items()) or 'default'}" for n, p in CASES]
REDUCTIONS = ("mean", "sum", "none")
# float32 math against the float64 reference, V <= 50: relative 2e-6 plus 5e-7 absolute for values near 0
# (the largest error seen on these cases is ~1/10 of this).
F32_TOL = {"rtol": 2e-6, "atol": 5e-7}


def _ref_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * torch.log(a / b)).sum(-1)


def reference(name: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
              **params: float) -> torch.Tensor:
    """Per-token values in float64, straight from the definitions with probabilities (no log-space tricks)."""
    s, t = student.double() / temperature, teacher.double() / temperature
    q = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)
    p = torch.exp(t) / torch.exp(t).sum(-1, keepdim=True)
    return _ref_from_probs(name, p, q, **params)


def _ref_from_probs(name: str, p: torch.Tensor, q: torch.Tensor, **params: float) -> torch.Tensor:
    if name == "forward_kl":
        return _ref_kl(p, q)
    if name == "reverse_kl":
        return _ref_kl(q, p)
    if name in ("jsd", "interpolated_jsd"):
        beta = params.get("beta", 0.5)
        m = beta * p + (1 - beta) * q
        w = beta if name == "jsd" else 1 - beta  # GKD / TRL weigh KL(p||m) by beta; the interpolated variant by 1-beta
        return w * _ref_kl(p, m) + (1 - w) * _ref_kl(q, m)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    alpha = params.get("alpha", 0.1)
    if name == "skew_kl":
        return _ref_kl(p, alpha * p + (1 - alpha) * q)
    assert name == "skew_reverse_kl"
    return _ref_kl(q, alpha * q + (1 - alpha) * p)


def ref_reduce(values: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if mask is not None:
        values = torch.where(mask, values, 0.0)
    if reduction == "none":
        return values
    count = values.numel() if mask is None else int(mask.sum())
    return values.sum() / max(count, 1) if reduction == "mean" else values.sum()


def logits(*shape: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def random_mask(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) < 0.7
    m.view(-1)[0] = True
    return m


def masks(shape: tuple[int, ...], seed: int) -> list[torch.Tensor | None]:
    return [None, random_mask(shape, seed), torch.zeros(shape, dtype=torch.bool)]


# ---------------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 11), (4, 50)])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_matches_float64_reference(case, shape, temperature):
    name, params = case
    fn = get_divergence(name)
    s32, t32 = logits(*shape, seed=1), logits(*shape, seed=2)
    sbf, tbf = s32.bfloat16(), t32.bfloat16()
    ref32 = reference(name, s32, t32, temperature, **params)
    # bf16 inputs: the reference sees the same bf16-rounded logits, upcast; the loss then works in float32 from
    # those exact values, so the float32 tolerance applies unchanged.
    refbf = reference(name, sbf, tbf, temperature, **params)
    for mask in masks(shape[:-1], seed=3):
        for reduction in REDUCTIONS:
            for s, t, ref in ((s32, t32, ref32), (sbf, tbf, refbf)):
                out = fn(s, t, mask, temperature=temperature, reduction=reduction, **params)
                assert out.dtype == torch.float32
                expected = ref_reduce(ref, mask, reduction)
                torch.testing.assert_close(out.double(), expected, **F32_TOL)
                if reduction == "none" and mask is not None:
                    assert bool((out[~mask] == 0).all())


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_float64_stays_float64_and_matches_tightly(name):
    s, t = logits(4, 9, seed=4, dtype=torch.float64), logits(4, 9, seed=5, dtype=torch.float64)
    out = get_divergence(name)(s, t, reduction="none", temperature=1.5)
    assert out.dtype == torch.float64
    # float64 log-space vs float64 probabilities: agree to ~1e-14 relative.
    torch.testing.assert_close(out, reference(name, s, t, 1.5), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_all_masked_gives_zero_with_zero_gradient(case):
    name, params = case
    s = logits(3, 4, 6, seed=6).requires_grad_()
    t = logits(3, 4, 6, seed=7).requires_grad_()
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for reduction in REDUCTIONS:
        s.grad = t.grad = None
        out = get_divergence(name)(s, t, mask, reduction=reduction, **params)
        assert bool((out == 0).all()) and out.requires_grad
        out.sum().backward()
        assert torch.equal(s.grad, torch.zeros_like(s)) and torch.equal(t.grad, torch.zeros_like(t))


# -------------------------------------------------------------------------------------------- gradients
GRAD_CASES = [
    ("forward_kl", {}), ("reverse_kl", {}), ("tvd", {}),
    *[("jsd", {"beta": b}) for b in (0.0, 0.3, 0.5, 0.8, 1.0)],
    *[("interpolated_jsd", {"beta": b}) for b in (0.3, 0.8)],
    *[("skew_kl", {"alpha": a}) for a in (0.0, 0.1, 0.5, 1.0)],
    *[("skew_reverse_kl", {"alpha": a}) for a in (0.0, 0.1, 0.5, 1.0)],
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[f"{n}-{p}" for n, p in GRAD_CASES])
def test_gradcheck_dense(case):
    name, params = case
    fn = get_divergence(name)
    s = logits(3, 5, seed=8, dtype=torch.float64).requires_grad_()
    t = logits(3, 5, seed=9, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, mask, temperature=1.5, reduction="none", **params), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, temperature=0.7, **params), (s, t))


def topk_of(teacher_logits: torch.Tensor, k: int, tail: str) -> TopKTeacher:
    lp = torch.log_softmax(teacher_logits.double(), -1).to(teacher_logits.dtype)
    vals, ids = lp.topk(k, dim=-1)
    return TopKTeacher(ids, vals, tail)


@pytest.mark.parametrize("case", GRAD_CASES, ids=[f"{n}-{p}" for n, p in GRAD_CASES])
@pytest.mark.parametrize("tail", ["bucket", "renorm"])
def test_gradcheck_sparse(case, tail):
    name, params = case
    fn = get_divergence(name)
    s = logits(3, 7, seed=10, dtype=torch.float64).requires_grad_()
    top = topk_of(logits(3, 7, seed=11, dtype=torch.float64), 3, tail)
    lp = top.logprobs.clone().requires_grad_()
    temperature = 1.0 if tail == "bucket" else 1.5
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, TopKTeacher(top.ids, b, tail), temperature=temperature, reduction="none", **params),
        (s, lp))


# ------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("teacher_kind", ["dense", "bucket", "renorm"])
@pytest.mark.parametrize("name", ["jsd", "interpolated_jsd"])
def test_jsd_endpoints_are_forward_and_reverse_kl_exactly(teacher_kind, name):
    s, t = logits(4, 6, 13, seed=12), logits(4, 6, 13, seed=13)
    teacher = t if teacher_kind == "dense" else topk_of(t, 5, teacher_kind)
    mask = random_mask((4, 6), seed=14)
    fn = getattr(L, name)
    for reduction in REDUCTIONS:
        assert torch.equal(fn(s, teacher, mask, beta=0.0, reduction=reduction),
                           L.forward_kl(s, teacher, mask, reduction=reduction))
        assert torch.equal(fn(s, teacher, mask, beta=1.0, reduction=reduction),
                           L.reverse_kl(s, teacher, mask, reduction=reduction))


def _trl_generalized_jsd(student_logits, teacher_logits, beta):
    """TRL's published GKDTrainer.generalized_jsd_loss (reduction="none", temperature 1), written from its formula
    with F.kl_div exactly as it is: kl_div(input, target) = KL(target || input)."""
    import torch.nn.functional as F

    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=s.dtype)
    m = torch.logsumexp(torch.stack([s + torch.log1p(-b), t + torch.log(b)]), dim=0)
    kl_teacher = F.kl_div(m, t, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(m, s, reduction="none", log_target=True).sum(-1)
    return b * kl_teacher + (1 - b) * kl_student


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_jsd_equals_trls_generalized_jsd_for_every_beta(beta):
    """A beta from a GKD paper or a TRL config means the same loss here (TRL itself where it installs)."""
    s, t = logits(5, 17, seed=70, dtype=torch.float64), logits(5, 17, seed=71, dtype=torch.float64)
    ours = L.jsd(s, t, beta=beta, reduction="none")
    torch.testing.assert_close(ours, _trl_generalized_jsd(s, t, beta), rtol=1e-10, atol=1e-12)
    try:
        from trl.experimental.gkd import GKDTrainer
    except Exception:  # TRL is not a dependency; its formula above is the reference
        GKDTrainer = None
    if GKDTrainer is not None:
        trl = GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=beta, reduction="none").sum(-1)[0]
        torch.testing.assert_close(ours, trl, rtol=1e-10, atol=1e-12)


def test_jsd_and_interpolated_jsd_differ_away_from_the_ends():
    """beta 0.1: GKD's JSD is small (it tends to 0 as beta -> 0), the interpolated one on its way to forward KL."""
    s, t = logits(64, 50, seed=72, dtype=torch.float64, scale=3.0), logits(64, 50, seed=73, dtype=torch.float64,
                                                                           scale=3.0)
    gkd, interp = L.jsd(s, t, beta=0.1), L.interpolated_jsd(s, t, beta=0.1)
    fkl = L.forward_kl(s, t)
    assert float(gkd) < 0.3 * float(interp) and float(interp) < float(fkl)
    assert torch.equal(L.jsd(s, t, beta=0.5), L.interpolated_jsd(s, t, beta=0.5))


@pytest.mark.parametrize("name,params", [("reverse_kl", {}), ("jsd", {"beta": 1.0}), ("jsd", {"beta": 0.5}),
                                         ("forward_kl", {}), ("tvd", {})])
def test_bucket_tail_of_a_confident_teacher_stays_finite(name, params):
    """Top-1 30 nats above the rest: its float32 log-prob rounds to 0.0 and the stored tail mass to exactly 0. The
    tail is floored at 2^-24 (float32's resolution near 1), so reverse KL and JSD(beta=1) stay finite (they were
    inf, and the gradients NaN after clipping)."""
    # as a float32 engine stores them: the top-1's log-prob logit - logsumexp rounds to exactly 0.0
    ids = torch.tensor([[0, 1, 2, 3]] * 3)
    lps = torch.tensor([[0.0, -30.0, -30.5, -31.0]] * 3)
    assert float(torch.logsumexp(torch.tensor([20.0, -10.0, -10.5, -11.0]), 0)) == 20.0  # why it rounds to 0
    top = TopKTeacher(ids, lps, "bucket")
    s = logits(3, 40, seed=74).requires_grad_()
    out = get_divergence(name)(s, top, **params)
    out.backward()
    assert bool(torch.isfinite(out)) and bool(torch.isfinite(s.grad).all())
    if name == "reverse_kl":  # reverse KL over the k + 1 outcomes, the teacher's tail mass floored at 2^-24
        lq = torch.log_softmax(s.detach().double(), -1)
        q_k = lq.gather(-1, top.ids).exp()
        q = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1)
        p = torch.cat([lps.double().exp(), torch.full((3, 1), 2.0 ** -24, dtype=torch.float64)], -1)
        assert float(out) == pytest.approx(float((q * (q / p).log()).sum(-1).mean()), rel=1e-4)


def test_jsd_and_skew_are_continuous_at_their_endpoints():
    s, t = logits(6, 20, seed=15, dtype=torch.float64), logits(6, 20, seed=16, dtype=torch.float64)
    fkl, rkl = L.forward_kl(s, t, reduction="none"), L.reverse_kl(s, t, reduction="none")
    near = {  # the interpolated JSD is continuous at its ends (GKD's jsd, by its definition, is not)
        "jsd->fkl": (lambda e: L.interpolated_jsd(s, t, beta=e, reduction="none"), fkl),
        "jsd->rkl": (lambda e: L.interpolated_jsd(s, t, beta=1 - e, reduction="none"), rkl),
        "skew->fkl": (lambda e: L.skew_kl(s, t, alpha=e, reduction="none"), fkl),
        "skew_reverse->rkl": (lambda e: L.skew_reverse_kl(s, t, alpha=e, reduction="none"), rkl),
    }
    for name, (fn, limit) in near.items():
        # The interior formula converges linearly to the endpoint divergence: 100x smaller eps, ~100x smaller
        # error (>= 50x allowed), and relative error < 1e-3 at eps = 1e-6.
        err = [((fn(e) - limit).abs() / limit).max().item() for e in (1e-4, 1e-6)]
        assert err[1] < err[0] / 50 and err[1] < 1e-3, (name, err)
    assert bool((L.skew_kl(s, t, alpha=1.0, reduction="none") == 0).all())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(2, 30), scale=st.floats(0.01, 20.0),
       temperature=st.sampled_from([0.5, 1.0, 3.0]), w=st.floats(0.0, 1.0))
def test_properties(seed, vocab, scale, temperature, w):
    s = logits(4, vocab, seed=seed, dtype=torch.float64, scale=scale)
    t = logits(4, vocab, seed=seed + 1, dtype=torch.float64, scale=scale)
    kw = {"temperature": temperature, "reduction": "none"}
    vals = {
        "forward_kl": L.forward_kl(s, t, **kw), "reverse_kl": L.reverse_kl(s, t, **kw),
        "jsd": L.jsd(s, t, beta=w, **kw), "interpolated_jsd": L.interpolated_jsd(s, t, beta=w, **kw),
        "tvd": L.tvd(s, t, **kw),
        "skew_kl": L.skew_kl(s, t, alpha=w, **kw), "skew_reverse_kl": L.skew_reverse_kl(s, t, alpha=w, **kw),
    }
    for name, v in vals.items():
        assert bool((v >= -1e-12).all()), name  # float64 rounding only
    assert bool((vals["tvd"] <= 1 + 1e-12).all())
    # Pinsker: TVD <= sqrt(KL / 2), both directions.
    assert bool((vals["tvd"] <= torch.sqrt(vals["forward_kl"].clamp(min=0) / 2) + 1e-9).all())
    assert bool((vals["tvd"] <= torch.sqrt(vals["reverse_kl"].clamp(min=0) / 2) + 1e-9).all())
    if w > 0:  # skew KL <= log(1/alpha)
        assert bool((vals["skew_kl"] <= -math.log(w) + 1e-9).all())
    for name, fn in DIVERGENCES.items():  # identical distributions: exactly 0
        params = {"beta": w} if name.endswith("jsd") else {"alpha": w} if name.startswith("skew") else {}
        assert bool((fn(s, s.clone(), **kw, **params).abs() <= 1e-12).all()), name


def test_shared_minus_inf_logits_are_ignored():
    """Vocabulary padding masked with -inf on both sides: the value is the one over the real vocabulary."""
    s, t = logits(3, 12, seed=17), logits(3, 12, seed=18)
    s[:, 9:] = t[:, 9:] = -math.inf
    s.requires_grad_()
    for name, fn in DIVERGENCES.items():
        s.grad = None
        out = fn(s, t, reduction="none")
        torch.testing.assert_close(out.double(), reference(name, s[:, :9].detach(), t[:, :9]), **F32_TOL)
        out.sum().backward()
        assert bool(torch.isfinite(s.grad).all()) and bool((s.grad[:, 9:] == 0).all()), name


def test_underflowing_probabilities_give_no_nan():
    """A one-hot-like teacher: its other probabilities are exactly 0 in float32 (and float64)."""
    s = logits(3, 10, seed=19).requires_grad_()
    t = torch.full((3, 10), -1e4)
    t[:, 2] = 0.0
    for name, fn in DIVERGENCES.items():
        s.grad = None
        out = fn(s, t, reduction="none")
        out.sum().backward()
        assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(s.grad).all()), name
    lq = torch.log_softmax(s.detach().double(), -1)
    # float32 result vs float64 closed forms: 1e-6 relative; reverse KL is ~1e4 here (log p = -1e4), where
    # float32 rounding alone is ~1e-3 absolute.
    torch.testing.assert_close(L.forward_kl(s, t, reduction="none").double(), -lq[:, 2], rtol=1e-6, atol=1e-6)
    lp = torch.log_softmax(t.double(), -1)  # finite: -1e4 for the others
    torch.testing.assert_close(L.reverse_kl(s, t, reduction="none").double(), (lq.exp() * (lq - lp)).sum(-1),
                               rtol=1e-6, atol=1e-3)
    # Teacher -inf where the student has mass: forward KL and JSD stay finite (p = 0 there), reverse KL is inf.
    t_inf = t.clone()
    t_inf[:, 5:] = -math.inf
    assert bool(torch.isfinite(L.forward_kl(s, t_inf)).all()) and bool(torch.isfinite(L.jsd(s, t_inf)).all())
    assert L.reverse_kl(s, t_inf).item() == math.inf


# ------------------------------------------------------------------------------------------------ sparse
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("tail,temperature", [("bucket", 1.0), ("renorm", 1.0), ("renorm", 2.0)])
def test_topk_with_k_equal_v_equals_dense(case, tail, temperature):
    name, params = case
    fn = get_divergence(name)
    shape = (2, 3, 9)
    s = logits(*shape, seed=20, dtype=torch.float64).requires_grad_()
    t = logits(*shape, seed=21, dtype=torch.float64)
    ids = torch.rand(shape, generator=torch.Generator().manual_seed(22)).argsort(-1)  # any order of all V ids
    top = TopKTeacher(ids, torch.log_softmax(t, -1).gather(-1, ids), tail)
    mask = random_mask(shape[:-1], seed=23)
    for reduction in REDUCTIONS:
        dense = fn(s, t, mask, temperature=temperature, reduction=reduction, **params)
        (g_dense,) = torch.autograd.grad(dense.sum(), s)
        sparse = fn(s, top, mask, temperature=temperature, reduction=reduction, **params)
        (g_sparse,) = torch.autograd.grad(sparse.sum(), s)
        # float64, same math on the same numbers up to summation order: 1e-10 relative.
        torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_sparse, g_dense, rtol=1e-10, atol=1e-12)


def _hand_example(tail: str) -> tuple[torch.Tensor, TopKTeacher]:
    # Student probabilities [0.1, 0.2, 0.3, 0.4]; teacher top-2: id 2 with 0.5, id 0 with 0.3 (rest 0.2).
    s = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64).log() + 7.0  # a shift changes nothing
    return s, TopKTeacher(torch.tensor([[2, 0]]), torch.tensor([[0.5, 0.3]], dtype=torch.float64).log(), tail)


def test_topk_bucket_by_hand():
    s, top = _hand_example("bucket")
    # Outcomes (id 2, id 0, rest): teacher (0.5, 0.3, 0.2), student (0.3, 0.1, 0.6).
    fkl = 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.1) + 0.2 * math.log(0.2 / 0.6)
    rkl = 0.3 * math.log(0.3 / 0.5) + 0.1 * math.log(0.1 / 0.3) + 0.6 * math.log(0.6 / 0.2)
    assert L.forward_kl(s, top).item() == pytest.approx(fkl, rel=1e-12)
    assert L.reverse_kl(s, top).item() == pytest.approx(rkl, rel=1e-12)
    assert L.tvd(s, top).item() == pytest.approx(0.5 * (0.2 + 0.2 + 0.4), rel=1e-12)
    m = [0.1 * 0.5 + 0.9 * 0.3, 0.1 * 0.3 + 0.9 * 0.1, 0.1 * 0.2 + 0.9 * 0.6]
    skew = 0.5 * math.log(0.5 / m[0]) + 0.3 * math.log(0.3 / m[1]) + 0.2 * math.log(0.2 / m[2])
    assert L.skew_kl(s, top, alpha=0.1).item() == pytest.approx(skew, rel=1e-12)


def test_topk_renorm_by_hand():
    s, top = _hand_example("renorm")
    # Over ids (2, 0) only: teacher (0.5, 0.3)/0.8, student (0.3, 0.1)/0.4.
    fkl = 0.625 * math.log(0.625 / 0.75) + 0.375 * math.log(0.375 / 0.25)
    assert L.forward_kl(s, top).item() == pytest.approx(fkl, rel=1e-12)
    # At T=2 both sides are re-tempered: p ∝ sqrt(0.5), sqrt(0.3); q ∝ sqrt(0.3), sqrt(0.1).
    p = torch.tensor([0.5, 0.3], dtype=torch.float64).sqrt()
    q = torch.tensor([0.3, 0.1], dtype=torch.float64).sqrt()
    p, q = p / p.sum(), q / q.sum()
    assert L.forward_kl(s, top, temperature=2.0).item() == pytest.approx(_ref_kl(p, q).item(), rel=1e-12)


def test_topk_bucket_whose_topk_holds_all_teacher_mass():
    """Teacher rest = 0: forward KL is the top-k terms (the floored rest adds < 1e-6); reverse KL is finite too: the
    teacher's rest mass is floored at TAIL_FLOOR = 2^-24 (it was inf)."""
    s = logits(1, 5, seed=24, dtype=torch.float64).requires_grad_()
    top = TopKTeacher(torch.tensor([[3, 1]]), torch.tensor([[0.5, 0.5]], dtype=torch.float64).log())
    q = torch.softmax(s.detach(), -1)[0]
    out = L.forward_kl(s, top)
    assert out.item() == pytest.approx(0.5 * math.log(0.5 / q[3].item()) + 0.5 * math.log(0.5 / q[1].item()))
    out.backward()
    assert bool(torch.isfinite(s.grad).all())
    floor = 2.0 ** -24
    rest = 1 - q[3].item() - q[1].item()
    want = q[3].item() * math.log(q[3].item() / 0.5) + q[1].item() * math.log(q[1].item() / 0.5) + \
        rest * math.log(rest / floor)
    assert L.reverse_kl(s, top).item() == pytest.approx(want, rel=1e-9)
    assert L.TAIL_FLOOR == floor


def test_topk_bucket_needs_temperature_one():
    s, top = _hand_example("bucket")
    with pytest.raises(ValueError, match="tail='bucket' needs temperature 1.*rest mass"):
        L.forward_kl(s, top, temperature=2.0)


# ------------------------------------------------------------------------------------- chunked / fused
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12},
       # float32: chunks change only summation order (the weight gradient is a sum over chunks); how much that
       # moves a gradient depends on the CPU's matmul kernels (4e-6 measured on an AMD EPYC, < 2e-6 on Intel).
       torch.float32: {"rtol": 1e-4, "atol": 1e-5}}
EQUIV_CASES = [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.3}), ("tvd", {}), ("skew_kl", {}),
               ("skew_reverse_kl", {"alpha": 0.2})]


def _teacher_variants(kind: str, dtype: torch.dtype, lead: tuple[int, ...], vocab: int, th_dim: int = 6):
    """(teacher for chunked/fused, equivalent dense-or-topk teacher for the plain call, temperature, leaves)."""
    th = logits(*lead, th_dim, seed=30, dtype=dtype).requires_grad_()
    tw = logits(vocab, th_dim, seed=31, dtype=dtype, scale=0.5).requires_grad_()
    tb = logits(vocab, seed=32, dtype=dtype).requires_grad_()
    if kind == "head":
        return TeacherHead(th, tw, tb), lambda: th @ tw.T + tb, 2.0, (th, tw, tb)
    t = logits(*lead, vocab, seed=33, dtype=dtype)
    if kind == "logits":
        t.requires_grad_()
        return t, lambda: t, 2.0, (t,)
    top = topk_of(t.detach(), 5, kind)
    lp = top.logprobs.clone().requires_grad_()
    top = TopKTeacher(top.ids, lp, kind)
    return top, lambda: top, 1.0 if kind == "bucket" else 2.0, (lp,)


def _grads(out: torch.Tensor, inputs, weights: torch.Tensor | None):
    total = out.sum() if weights is None else (out * weights).sum()
    return torch.autograd.grad(total, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("teacher_kind", ["logits", "bucket", "renorm", "head"])
@pytest.mark.parametrize("path", ["chunked", "fused"])
def test_chunked_and_fused_equal_plain(path, teacher_kind, dtype):
    lead, vocab, hid = (2, 5), 23, 8  # N = 10 tokens
    h = logits(*lead, hid, seed=34, dtype=dtype).requires_grad_()
    w = logits(vocab, hid, seed=35, dtype=dtype, scale=0.5).requires_grad_()
    b = logits(vocab, seed=36, dtype=dtype).requires_grad_()
    teacher, plain_teacher, temperature, t_leaves = _teacher_variants(teacher_kind, dtype, lead, vocab)
    mask = random_mask(lead, seed=37)
    per_token_w = logits(*lead, seed=38, dtype=dtype)  # non-uniform incoming gradient for reduction="none"
    for name, params in EQUIV_CASES:
        for reduction in REDUCTIONS:
            weights = per_token_w if reduction == "none" else None
            kw = {"temperature": temperature, "reduction": reduction, **params}
            for chunk_size in (3, 16):  # 3 does not divide N; 16 > N is one chunk
                s = h @ w.T + b
                plain = get_divergence(name)(s, plain_teacher(), mask, **kw)
                if path == "chunked":
                    s_leaf = s.detach().requires_grad_()
                    inputs = (s_leaf, *t_leaves)
                    expected = (plain, *_grads(plain, (s, *t_leaves), weights))
                    out = chunked(name, s_leaf, teacher, mask, chunk_size=chunk_size, **kw)
                else:
                    inputs = (h, w, b, *t_leaves)
                    expected = (plain, *_grads(plain, inputs, weights))
                    out = fused(name, h, w, teacher, mask, lm_head_bias=b, chunk_size=chunk_size, **kw)
                got = (out, *_grads(out, inputs, weights))
                assert out.shape == plain.shape and out.dtype == plain.dtype
                for g, e in zip(got, expected):
                    torch.testing.assert_close(g, e, **TOL[dtype])


def test_chunked_scales_by_incoming_gradient_and_accepts_aliases_and_functions():
    s = logits(7, 11, seed=40, dtype=torch.float64).requires_grad_()
    t = logits(7, 11, seed=41, dtype=torch.float64)
    (g_plain,) = torch.autograd.grad(3.0 * L.reverse_kl(s, t), s)
    (g_alias,) = torch.autograd.grad(3.0 * chunked("rkl", s, t, chunk_size=2), s)
    torch.testing.assert_close(g_alias, g_plain, rtol=1e-12, atol=1e-14)  # float64: summation order only
    custom = chunked(lambda *a, **k: 2.0 * L.tvd(*a, **k), s, t, chunk_size=4)
    torch.testing.assert_close(custom, 2.0 * L.tvd(s, t), rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(chunked("jsd", s, t, chunk_size=5), L.jsd(s, t), rtol=1e-12, atol=1e-14)


def test_chunked_bfloat16_logits():
    s = logits(9, 40, seed=42, dtype=torch.bfloat16).requires_grad_()
    t = logits(9, 40, seed=43, dtype=torch.bfloat16)
    (g_plain,) = torch.autograd.grad(plain := L.forward_kl(s, t), s)
    (g_chunk,) = torch.autograd.grad(out := chunked("forward_kl", s, t, chunk_size=4), s)
    assert out.dtype == torch.float32 and g_chunk.dtype == torch.bfloat16
    torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-7)  # same float32 math, summed in another order
    torch.testing.assert_close(g_chunk, g_plain, rtol=1e-2, atol=1e-4)  # one bf16 rounding of the gradient


def test_fused_all_masked_gives_zero_with_zero_gradient():
    h = logits(6, 4, seed=44).requires_grad_()
    w = logits(9, 4, seed=45).requires_grad_()
    out = fused("jsd", h, w, logits(6, 9, seed=46), torch.zeros(6, dtype=torch.bool), chunk_size=4)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))


def test_chunked_and_fused_keep_no_vocabulary_sized_tensor_for_backward():
    """What the graph holds once the loss is computed: the plain path keeps several [N, V] tensors for backward;
    chunked and fused keep none (each chunk's graph is freed inside the forward)."""
    n, vocab, hid = 64, 300, 8
    h = logits(n, hid, seed=47).requires_grad_()
    w = logits(vocab, hid, seed=48).requires_grad_()
    t = logits(n, vocab, seed=49)

    def alive_saved_numels(run) -> list[int]:
        refs: list[weakref.ref] = []

        def pack(x: torch.Tensor) -> torch.Tensor:
            refs.append(weakref.ref(x))
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = run()  # noqa: F841  (keeps the graph alive while we look)
            gc.collect()
            return [x.numel() for r in refs if (x := r()) is not None]

    plain = alive_saved_numels(lambda: L.forward_kl(h @ w.T, t))
    assert sum(x >= n * vocab for x in plain) >= 3
    # chunked: only the matmul's own saved inputs (h, w) remain.
    assert max(alive_saved_numels(lambda: chunked("forward_kl", h @ w.T, t, chunk_size=16))) <= vocab * hid
    assert alive_saved_numels(lambda: fused("forward_kl", h, w, t, chunk_size=16)) == []


# ------------------------------------------------------------------------------------------ fused_distill
def _plain_distill(name, s, teacher, targets, mask, weight, kd_coef, ce_coef, ls, temperature, params):
    """The trainer's plain computation on whole logits: (loss, Σ w·D, Σ w·CE)."""
    d = get_divergence(name)(s, teacher, mask, temperature=temperature, reduction="none", **params)
    dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]).to(dtype), targets.reshape(-1),
                                           reduction="none", label_smoothing=ls).reshape(targets.shape)
    if mask is not None:
        ce = torch.where(mask, ce, 0.0)
    w = torch.ones_like(d) if weight is None else weight.to(d.dtype)
    d_sum, ce_sum = (d * w).sum(), (ce * w).sum()
    return kd_coef * d_sum + ce_coef * ce_sum, d_sum, ce_sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("teacher_kind", ["logits", "renorm", "head"])
@pytest.mark.parametrize("name,params", [("forward_kl", {}), ("jsd", {"beta": 0.3}), ("reverse_kl", {})])
def test_fused_distill_equals_divergence_plus_cross_entropy_on_whole_logits(name, params, teacher_kind, dtype):
    lead, vocab, hid = (2, 5), 23, 8
    h = logits(*lead, hid, seed=50, dtype=dtype).requires_grad_()
    w = logits(vocab, hid, seed=51, dtype=dtype, scale=0.5).requires_grad_()
    b = logits(vocab, seed=52, dtype=dtype).requires_grad_()
    teacher, plain_teacher, temperature, t_leaves = _teacher_variants(teacher_kind, dtype, lead, vocab)
    targets = torch.randint(0, vocab, lead, generator=torch.Generator().manual_seed(53))
    weight = logits(*lead, seed=54, dtype=dtype).abs()
    inputs = (h, w, b, *t_leaves)
    for mask in (None, random_mask(lead, seed=55)):
        for tok_w in (None, weight):
            for chunk_size in (3, 16):
                kw = dict(kd_coef=0.7 * temperature ** 2, ce_coef=0.3, ls=0.1, temperature=temperature)
                plain = _plain_distill(name, h @ w.T + b, plain_teacher(), targets, mask, tok_w, params=params, **kw)
                expected = (*plain, *torch.autograd.grad(plain[0], inputs))
                res = fused_distill(name, h, w, teacher, targets, mask, lm_head_bias=b, kd_coef=kw["kd_coef"],
                                    ce_coef=0.3, label_smoothing=0.1, weight=tok_w, chunk_size=chunk_size,
                                    temperature=temperature, **params)
                assert isinstance(res, DistillLoss) and not res.divergence.requires_grad
                got = (res.loss, res.divergence, res.cross_entropy, *torch.autograd.grad(res.loss, inputs))
                for g, e in zip(got, expected):
                    torch.testing.assert_close(g, e, **TOL[dtype])


def test_fused_distill_single_terms_no_grad_and_bfloat16():
    lead, vocab, hid = (7,), 19, 6
    h = logits(*lead, hid, seed=60).requires_grad_()
    w = logits(vocab, hid, seed=61, scale=0.5).requires_grad_()
    t = logits(*lead, vocab, seed=62)
    y = torch.randint(0, vocab, lead, generator=torch.Generator().manual_seed(63))
    s = h @ w.T
    # CE only (no teacher): the label-smoothed cross-entropy sum
    ce_only = fused_distill(None, h, w, None, y, label_smoothing=0.2, chunk_size=2)
    assert ce_only.divergence is None
    ref = torch.nn.functional.cross_entropy(s, y, reduction="sum", label_smoothing=0.2)
    torch.testing.assert_close(ce_only.loss, ref, **TOL[torch.float32])
    torch.testing.assert_close(torch.autograd.grad(ce_only.loss, (h, w)), torch.autograd.grad(ref, (h, w)),
                               **TOL[torch.float32])
    # divergence only (no targets): fused with reduction="sum", scaled by kd_coef
    kd_only = fused_distill("tvd", h, w, t, kd_coef=2.0, chunk_size=3)
    assert kd_only.cross_entropy is None
    torch.testing.assert_close(kd_only.loss, 2.0 * fused("tvd", h, w, t, reduction="sum"), **TOL[torch.float32])
    # no grad: values only
    with torch.no_grad():
        res = fused_distill("forward_kl", h, w, t, y, chunk_size=4)
    assert not res.loss.requires_grad
    torch.testing.assert_close(res.loss, L.forward_kl(s, t, reduction="sum") + torch.nn.functional.cross_entropy(
        s, y, reduction="sum"), **TOL[torch.float32])
    # bfloat16 hidden states and weight: float32 math, bfloat16 gradients
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    res = fused_distill("forward_kl", hb, wb, t, y, chunk_size=3)
    assert res.loss.dtype == torch.float32
    gh, gw = torch.autograd.grad(res.loss, (hb, wb))
    assert gh.dtype == gw.dtype == torch.bfloat16
    assert L.fused_distill is fused_distill and L.DistillLoss is DistillLoss


def test_fused_distill_keeps_no_vocabulary_sized_tensor_for_backward():
    n, vocab, hid = 64, 300, 8
    h = logits(n, hid, seed=64).requires_grad_()
    w = logits(vocab, hid, seed=65).requires_grad_()
    th, tw = logits(n, hid, seed=66), logits(vocab, hid, seed=67)
    y = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(68))
    refs: list[weakref.ref] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        refs.append(weakref.ref(x))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fused_distill("jsd", h, w, TeacherHead(th, tw), y, weight=torch.rand(n), chunk_size=16)  # noqa: F841
        gc.collect()
        assert [r() for r in refs if r() is not None] == []


# -------------------------------------------------------------------------------------------- bad input
def test_registry_and_aliases():
    assert set(DIVERGENCES) == {"forward_kl", "reverse_kl", "jsd", "interpolated_jsd", "tvd", "skew_kl",
                                "skew_reverse_kl"}
    assert ALIASES == {"fkl": "forward_kl", "kl": "forward_kl", "rkl": "reverse_kl"}
    assert get_divergence("kl") is L.forward_kl and get_divergence("rkl") is L.reverse_kl
    with pytest.raises(ValueError, match="unknown divergence 'nope'; known: forward_kl, reverse_kl, jsd"):
        get_divergence("nope")
    assert L.chunked is chunked and L.fused is fused and L.TeacherHead is TeacherHead


S, T = torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)


@pytest.mark.parametrize("call,match", [
    (lambda: L.forward_kl(S, torch.zeros(2, 3, 6)), r"teacher logits shape \(2, 3, 6\) != student logits shape"),
    (lambda: L.forward_kl(S, T, torch.ones(3, 2, dtype=torch.bool)), r"mask shape \(3, 2\) != student logits"),
    (lambda: L.forward_kl(S, T, torch.ones(2, 3)), "mask must be a bool tensor"),
    (lambda: L.tvd(S, T, reduction="avg"), "reduction must be one of"),
    (lambda: L.tvd(S, T, temperature=0), "temperature must be a finite number > 0"),
    (lambda: L.tvd(S, T, temperature=-1.0), "temperature must be a finite number > 0"),
    (lambda: L.tvd(S, T, temperature=float("nan")), "temperature must be a finite number > 0"),
    (lambda: L.jsd(S, T, beta=1.5), r"beta must be in \[0, 1\]"),
    (lambda: L.jsd(S, T, beta=-0.1), r"beta must be in \[0, 1\]"),
    (lambda: L.skew_kl(S, T, alpha=2.0), r"alpha must be in \[0, 1\]"),
    (lambda: L.skew_reverse_kl(S, T, alpha=-1.0), r"alpha must be in \[0, 1\]"),
    (lambda: TopKTeacher(torch.zeros(2, 3, 2, dtype=torch.int64), torch.zeros(2, 3, 2), "drop"), "tail must be"),
    (lambda: TopKTeacher(torch.zeros(2, 3, 2, dtype=torch.int32), torch.zeros(2, 3, 2)), "int64"),
    (lambda: TopKTeacher(torch.zeros(2, 3, 2, dtype=torch.int64), torch.zeros(2, 3, 3)), "same shape"),
    (lambda: L.forward_kl(S, TopKTeacher(torch.zeros(3, 2, 2, dtype=torch.int64), torch.zeros(3, 2, 2))),
     "same leading shape"),
    (lambda: L.forward_kl(S, TopKTeacher(torch.arange(6).expand(2, 3, 6), torch.zeros(2, 3, 6))), "exceeds"),
    (lambda: L.forward_kl(S, TopKTeacher(torch.full((2, 3, 2), 5), torch.zeros(2, 3, 2))), r"\[0, 5\)"),
    (lambda: L.forward_kl(S, TopKTeacher(torch.zeros(2, 3, 2, dtype=torch.int64), torch.zeros(2, 3, 2))),
     "distinct"),
    (lambda: fused("forward_kl", torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(4, 5)), "lm_head_weight"),
    (lambda: fused("forward_kl", torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, 5), chunk_size=0),
     "chunk_size"),
    (lambda: fused("forward_kl", torch.zeros(4, 3), torch.zeros(5, 3), TeacherHead(torch.zeros(4, 2),
                                                                                   torch.zeros(6, 2))),
     "TeacherHead"),
    (lambda: chunked("nope", S, T), "unknown divergence"),
    (lambda: fused_distill("kl", torch.zeros(4, 3), torch.zeros(5, 3), None), "needs a teacher, targets, or both"),
    (lambda: fused_distill("kl", torch.zeros(4, 3), torch.zeros(5, 3), None, torch.zeros(4)), "int64"),
    (lambda: fused_distill("kl", torch.zeros(4, 3), torch.zeros(5, 3), None, torch.full((4,), 5)), r"\[0, 5\)"),
    (lambda: fused_distill("kl", torch.zeros(4, 3), torch.zeros(5, 3), None, torch.zeros(4, dtype=torch.int64),
                           label_smoothing=1.5), "label_smoothing"),
    (lambda: fused_distill("kl", torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, 5), weight=torch.ones(3)),
     "weight must be"),
    (lambda: fused_distill("kl", torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, 5),
                           weight=torch.ones(4, requires_grad=True)), "constant"),
    (lambda: chunked("tvd", S, T, reduction="avg"), "reduction must be one of"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wrong_teacher_type_raises_type_error():
    with pytest.raises(TypeError, match="teacher must be logits"):
        L.forward_kl(S, [[0.0]])
