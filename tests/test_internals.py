"""Internals transfer: the losses against float64 hand computations, 0 with zero gradient at equality, gradcheck,
masks; layer maps; in training: a student equal to its teacher gets zero internals terms and zero gradient from
them, a narrower/wider student trains a projection that is saved beside it and restored on resume; refusals."""

import json

import pytest
import torch

from seqkd.errors import SeqkdError
from seqkd.student.losses import internals as L


def _t(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _attn(scores, mask):
    return scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)


def test_hidden_losses_against_hand_computations():
    hs, ht = _t(2, 5, 6, seed=1), _t(2, 5, 6, seed=2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    per = ((hs - ht) ** 2).mean(-1)
    assert float(L.hidden_mse(hs, ht, mask)) == pytest.approx(float(per[mask].mean()), rel=1e-12)
    cos = (hs * ht).sum(-1) / (hs.norm(dim=-1) * ht.norm(dim=-1))
    assert float(L.hidden_cosine(hs, ht, mask)) == pytest.approx(float((1 - cos)[mask].mean()), rel=1e-12)
    moved = hs.clone()
    moved[0, 3:] += 100.0  # padded positions do not count
    assert float(L.hidden_mse(moved, ht, mask)) == pytest.approx(float(L.hidden_mse(hs, ht, mask)), rel=1e-12)
    empty = L.hidden_mse(hs.requires_grad_(), ht, torch.zeros(2, 5, dtype=torch.bool))
    empty.backward()
    assert float(empty) == 0 and hs.grad is not None and float(hs.grad.abs().sum()) == 0


def test_attention_and_value_relation_against_hand_computations():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    a_s, a_t = _attn(_t(2, 2, 4, 4, seed=3), mask), _attn(_t(2, 2, 4, 4, seed=4, scale=2.0), mask)
    kl = torch.where(a_t > 0, a_t * (a_t.log() - a_s.log()), torch.zeros_like(a_t)).sum(-1).mean(1)  # [B, S]
    assert float(L.attention_kl(a_s, a_t, mask)) == pytest.approx(float(kl[mask].mean()), rel=1e-10)
    # different head counts: heads averaged on each side first
    a_t3 = _attn(_t(2, 3, 4, 4, seed=5), mask)
    ms, mt = a_s.mean(1), a_t3.mean(1)
    kl = (mt * (mt.log() - ms.log())).nan_to_num(0.0).sum(-1)
    assert float(L.attention_kl(a_s, a_t3, mask)) == pytest.approx(float(kl[mask].mean()), rel=1e-10)
    vs, vt = _t(2, 4, 6, seed=6), _t(2, 4, 4, seed=7)  # different widths, 2 relation heads

    def rel(v):
        b, n, d = v.shape
        v = v.view(b, n, 2, d // 2).transpose(1, 2)
        return _attn(v @ v.transpose(-1, -2) / (d // 2) ** 0.5, mask)

    rs, rt = rel(vs), rel(vt)
    kl = torch.where(rt > 0, rt * (rt.log() - rs.log()), torch.zeros_like(rt)).sum(-1).mean(1)
    assert float(L.value_relation_kl(vs, vt, mask, heads=2)) == pytest.approx(float(kl[mask].mean()), rel=1e-10)
    with pytest.raises(ValueError, match="do not divide"):
        L.value_relation_kl(vs, vt, mask, heads=4)


def test_zero_with_zero_gradient_at_equality_and_gradcheck():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    h = _t(2, 4, 6, seed=8).requires_grad_()
    scores = _t(2, 2, 4, 4, seed=9).requires_grad_()
    v = _t(2, 4, 6, seed=10).requires_grad_()
    cases = [(L.hidden_mse(h, h.detach(), mask), h), (L.hidden_cosine(h, h.detach(), mask), h),
             (L.attention_kl(_attn(scores, mask), _attn(scores, mask).detach(), mask), scores),
             (L.value_relation_kl(v, v.detach(), mask, heads=2), v)]
    for loss, x in cases:
        (g,) = torch.autograd.grad(loss, x)
        assert abs(float(loss)) < 1e-12 and float(g.abs().max()) < 1e-10
    ht, st, vt = _t(2, 4, 6, seed=11), _t(2, 2, 4, 4, seed=12), _t(2, 4, 6, seed=13)
    torch.autograd.gradcheck(lambda x: L.hidden_mse(x, ht, mask), (h,))
    torch.autograd.gradcheck(lambda x: L.hidden_cosine(x, ht, mask), (h,))
    torch.autograd.gradcheck(lambda x: L.attention_kl(_attn(x, mask), _attn(st, mask), mask), (scores,))
    torch.autograd.gradcheck(lambda x: L.value_relation_kl(x, vt, mask, heads=3), (v,))


def test_layer_maps():
    assert L.layer_map(4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]  # the last to the last, evenly spaced
    assert L.layer_map(1, 3) == [(0, 2)] and L.layer_map(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert L.layer_map(4, 2) == [(0, 0), (1, 0), (2, 1), (3, 1)]  # a deeper student shares teacher layers
    assert L.layer_map(2, 6, "0:1, 1:5") == [(0, 1), (1, 5)]
    for spec, match in (("0:9", "outside"), ("a:b", "pairs student:teacher"), ("2:0", "outside")):
        with pytest.raises(ValueError, match=match):
            L.layer_map(2, 6, spec)


def _no_dropout(model):
    for m in model.modules():
        for attr in ("dropout", "activation_dropout", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
            elif isinstance(getattr(m, attr, None), torch.nn.Dropout):
                getattr(m, attr).p = 0.0


def _batch(trainer):
    from test_distill import _first_batch

    return _first_batch(trainer)


@pytest.mark.parametrize("which", ["mt", "lm"])
def test_a_student_equal_to_its_teacher_gets_zero_internals(which, tiny_mt_model, tiny_lm_model, tmp_path):
    from test_distill import _cfg

    from seqkd.student.distill import distill_trainer

    teacher = tiny_mt_model if which == "mt" else tiny_lm_model
    for attention in ("kl", "value_relation"):
        cfg = _cfg(tmp_path, teacher, "synthetic", model=str(teacher), kd_mode="online", kd_weight=0.5,
                   hidden_loss="mse", attention_loss=attention, train_source=None, data="synthetic",
                   synthetic_size=64)
        trainer, _ = distill_trainer(cfg)
        model = trainer.model
        _no_dropout(model)
        model.train()
        batch = _batch(trainer)
        logits, targets, _ = trainer.forward_logits(model, batch)
        terms = trainer.loss_terms(model, batch, logits, targets)
        assert set(terms) >= {"hidden", "attention"}
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(terms["hidden"] + terms["attention"], params, allow_unused=True,
                                    retain_graph=True)
        ce = torch.autograd.grad(terms["ce"], params, allow_unused=True)
        assert abs(float(terms["hidden"])) < 1e-6 and abs(float(terms["attention"])) < 1e-6
        # zero up to float32 rounding: a thousand times smaller than the CE term's gradient on the same batch
        top = max(float(g.abs().max()) for g in grads if g is not None)
        assert top < 1e-3 * max(float(g.abs().max()) for g in ce if g is not None)


def test_a_wider_student_trains_a_projection_saved_beside_it(tiny_mt_model, tmp_path):
    from test_distill import _cfg

    from seqkd.student.distill import distill
    from seqkd.student.internals import INTERNALS_FILE, PROJECTIONS_FILE

    cfg = _cfg(tmp_path, tiny_mt_model, "synthetic", model="marian-student-small", kd_mode="online", kd_weight=0.5,
               hidden_loss="cosine", attention_loss="kl", train_source=None, data="synthetic", synthetic_size=200,
               max_steps=4, eval_steps=2)
    summary = distill(cfg)
    out = tmp_path / "student"
    info = json.loads((out / INTERNALS_FILE).read_text())
    assert info["widths"] == [128, 64] and info["layer_map"] == {"enc": [[0, 0], [1, 0], [2, 1], [3, 1]],
                                                                  "dec": [[0, 1]]}
    assert sorted(info["projections"]) == ["dec_0", "enc_0", "enc_1", "enc_2", "enc_3"]
    from safetensors.torch import load_file

    w = load_file(str(out / PROJECTIONS_FILE))
    assert w["enc_0.weight"].shape == (64, 128) and (out / "last" / PROJECTIONS_FILE).is_file()
    assert summary["steps"] == 4 and summary["internals"]["hidden"] == "cosine"
    ckpt = sorted(out.glob("checkpoint-*"))
    assert ckpt and (ckpt[-1] / PROJECTIONS_FILE).is_file()


def test_internals_refusals(tiny_mt_model, tmp_path):
    from test_distill import _cfg

    from seqkd.student.distill import distill_trainer

    for kw, match in ((dict(kd_mode="offline", hidden_loss="mse"), "use --kd-mode online with one"),
                      (dict(kd_mode="online", kd_weight=0.5, hidden_loss="mse", layer_map="enc0-1"), "--layer-map"),
                      (dict(kd_mode="online", kd_weight=0.5, attention_loss="kl", hidden_weight=-1), ">= 0")):
        with pytest.raises(SeqkdError, match=match):
            _cfg(tmp_path, tiny_mt_model, "x.jsonl", **kw)
    cfg = _cfg(tmp_path, tiny_mt_model, "synthetic", model="marian-tiny", kd_mode="online", kd_weight=0.5,
               hidden_loss="mse", layer_map="enc.0:5", train_source=None, data="synthetic", synthetic_size=32)
    with pytest.raises(SeqkdError, match="outside"):
        distill_trainer(cfg)


def test_a_resumed_run_restores_the_projections(tiny_mt_model, tmp_path):
    """Killed after the checkpoint at step 2 and resumed: the projections (and the student) end as an uninterrupted
    run's, so the checkpoint carried them."""
    from safetensors.torch import load_file
    from test_distill import _cfg
    from test_train import _StopAt

    from seqkd.student.distill import distill, distill_trainer
    from seqkd.student.internals import PROJECTIONS_FILE

    def cfg(name, **kw):
        return _cfg(tmp_path, tiny_mt_model, "synthetic", out=str(tmp_path / name), model="marian-student-small",
                    kd_mode="online", kd_weight=0.5, hidden_loss="mse", train_source=None, data="synthetic",
                    synthetic_size=200, max_steps=4, eval_steps=2, seed=5, **kw)

    distill(cfg("full"))
    trainer, _ = distill_trainer(cfg("cut"))
    trainer.add_callback(_StopAt(2))
    trainer.train()
    assert trainer.state.global_step == 2
    distill(cfg("cut", resume=True, overwrite=False))
    a, b = load_file(str(tmp_path / "full" / PROJECTIONS_FILE)), load_file(str(tmp_path / "cut" / PROJECTIONS_FILE))
    assert set(a) == set(b) and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    w0 = load_file(str(tmp_path / "cut" / "checkpoint-2" / PROJECTIONS_FILE))
    assert any(not torch.equal(w0[k], b[k]) for k in b)  # they trained after the resume
