"""``--loss-impl plain|chunked|fused|auto`` of the distillation trainer: the three implementations give the same
loss terms and the same gradient of every student parameter (both model families, online KD, example weights,
label smoothing, on-policy batches, CE only), how fused gets hidden states, and how auto chooses."""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace

import pytest
import torch
from test_distill import _cfg, _corpus

from seqkd.config import DistillConfig
from seqkd.errors import SeqkdError
from seqkd.student.distill import (
    FUSED_MIN_VOCAB,
    HeadInputs,
    choose_loss_impl,
    distill_trainer,
    fused_unsupported,
    hidden_states_out,
    output_layer,
)

FAMILIES = {"marian": ("tiny_mt_model", "marian-tiny"), "llama": ("tiny_lm_model", "llama-tiny-student")}
# float32: the implementations differ only in summation order (chunks, fused matmuls). Gradient elements that are
# sums of cancelling terms get an absolute tolerance relative to their tensor's largest element (at least 1e-4 of
# the largest gradient element of the model: some gradients are 0 up to rounding, e.g. attention key biases).
RTOL = 1e-5


@pytest.fixture(scope="module")
def corpora(request, tmp_path_factory):
    """Per family: (teacher dir, student preset, unweighted selection file, the same with non-uniform weights)."""
    out = {}
    for fam, (fixture, preset) in FAMILIES.items():
        teacher = request.getfixturevalue(fixture)
        root = tmp_path_factory.mktemp(f"loss_impl_{fam}")
        plain = _corpus(teacher, root, n=12)
        rows = [json.loads(line) for line in plain.read_text().splitlines()]
        weighted = root / "weighted.jsonl"
        weighted.write_text("".join(json.dumps(r | {"weight": 0.25 + 0.5 * (i % 3)}) + "\n"
                                    for i, r in enumerate(rows)))
        out[fam] = (teacher, preset, plain, weighted)
    return out


def _trainer(tmp_path, corpora, fam, weighted=False, **kw):
    teacher, preset, plain, weighted_file = corpora[fam]
    base = dict(model=preset, loss_impl="fused", loss_chunk_size=5, label_smoothing=0.1, kd_weight=0.5,
                kd_temperature=2.0, seed=3)
    torch.manual_seed(0)
    trainer, _ = distill_trainer(_cfg(tmp_path, teacher, weighted_file if weighted else plain, **(base | kw)))
    return trainer


def _batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.args.device) for k, v in batch.items()}


def _step(trainer, batch, impl, teacher_head=True, grad=True):
    """(terms as floats, {parameter name: gradient}) of one loss evaluation with implementation ``impl``."""
    trainer.loss_impl, trainer.teacher_head = impl, teacher_head
    model = trainer.model
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad):
        logits, targets, _ = trainer.forward_logits(model, batch)
        assert isinstance(logits, HeadInputs) == (impl == "fused")
        if impl == "fused":  # the student's [N, V] logits never exist: the model gave [N, H] hidden states
            assert logits.hidden.shape == (targets.numel(), logits.weight.shape[1])
        terms = trainer.loss_terms(model, batch, logits, targets)
        if grad:
            sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in terms.items()}, grads


def _assert_same(got, expected):
    (t_got, g_got), (t_exp, g_exp) = got, expected
    assert t_got.keys() == t_exp.keys()
    for k in t_exp:
        assert t_got[k] == pytest.approx(t_exp[k], rel=RTOL), k
    assert g_got.keys() == g_exp.keys()
    largest = max(float(e.abs().max()) for e in g_exp.values())
    for name, e in g_exp.items():
        atol = RTOL * max(float(e.abs().max()), 1e-4 * largest)
        torch.testing.assert_close(g_got[name], e, rtol=RTOL, atol=atol,
                                   msg=lambda m, n=name: f"{n}: {m}")


def _reference_terms(trainer, batch) -> dict[str, float]:
    """The loss terms from whole logits, written out: (1 - w) Σ_i w_i CE_i and w T² Σ_i w_i D_i."""
    from seqkd.student import losses
    from seqkd.student.trainer import logits_at_targets

    cfg, family = trainer.dcfg, trainer.fmt.family
    with torch.no_grad():
        s, y, _ = logits_at_targets(trainer.model, batch, family)
        t = logits_at_targets(trainer.teacher, batch, family)[0]
        tok_w = trainer.at_targets(batch["weight"][:, None].expand_as(batch["labels"]), batch["labels"])
        ce = torch.nn.functional.cross_entropy(s, y, reduction="none", label_smoothing=cfg.label_smoothing)
        d = losses.get_divergence(cfg.divergence)(s, t, temperature=cfg.kd_temperature, reduction="none",
                                                 **trainer.div_params)
    w, temp = cfg.kd_weight, cfg.kd_temperature
    return {"ce": (1 - w) * float((ce * tok_w).sum()), "kd": w * temp ** 2 * float((d * tok_w).sum())}


@pytest.mark.parametrize("weighted", [False, True], ids=["weights1", "weighted"])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
@pytest.mark.parametrize("fam", list(FAMILIES))
def test_plain_chunked_fused_give_the_same_terms_and_gradients(corpora, tmp_path, fam, divergence, weighted):
    trainer = _trainer(tmp_path, corpora, fam, weighted, divergence=divergence)
    assert trainer.loss_impl == "fused" and trainer.teacher_head
    trainer.model.train()
    batch = _batch(trainer)
    if weighted:
        assert len(set(batch["weight"].tolist())) > 1
    plain = _step(trainer, batch, "plain")
    assert set(plain[0]) == {"ce", "kd"} and plain[0]["kd"] > 0 and len(plain[1]) > 5
    assert plain[0] == pytest.approx(_reference_terms(trainer, batch), rel=RTOL)
    _assert_same(_step(trainer, batch, "chunked"), plain)
    _assert_same(_step(trainer, batch, "fused"), plain)
    _assert_same(_step(trainer, batch, "fused", teacher_head=False), plain)  # whole teacher logits, fused student
    trainer.model.eval()
    assert _step(trainer, batch, "fused", grad=False)[0] == pytest.approx(
        _step(trainer, batch, "plain", grad=False)[0], rel=RTOL)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_onpolicy_batches_agree(corpora, tmp_path, fam):
    """A student-generated batch is trained on the divergence only (w = 1: no CE term), example weights kept."""
    trainer = _trainer(tmp_path, corpora, fam, weighted=True, divergence="jsd", onpolicy_lambda=0.5,
                       onpolicy_max_new_tokens=12)
    model = trainer.model
    model.train()
    torch.manual_seed(1)
    batch = trainer.onpolicy_batch(model, _batch(trainer))
    batch["_onpolicy"] = True
    plain = _step(trainer, batch, "plain")
    assert set(plain[0]) == {"kd"}
    _assert_same(_step(trainer, batch, "chunked"), plain)
    _assert_same(_step(trainer, batch, "fused"), plain)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_fused_cross_entropy_only(corpora, tmp_path, fam):
    """kd_mode none (sequence-level KD on the teacher's outputs): fused computes the label-smoothed CE alone."""
    trainer = _trainer(tmp_path, corpora, fam, weighted=True, kd_mode="none", kd_weight=0.0)
    assert trainer.teacher is None and trainer.loss_impl == "fused"
    trainer.model.train()
    batch = _batch(trainer)
    plain = _step(trainer, batch, "plain")
    assert set(plain[0]) == {"ce"}
    _assert_same(_step(trainer, batch, "fused"), plain)


def test_offline_topk_plain_and_chunked_agree_and_validation_keeps_the_ce(tiny_mt_model, tmp_path):
    """Offline KD (stored top-k; fused is refused for it): plain == chunked, and a validation batch without a
    stored teacher is scored on the plain CE (not (1 - w) * CE, which is 0 at w = 1)."""
    train = _corpus(tiny_mt_model, tmp_path, n=12, topk=8)
    torch.manual_seed(0)
    trainer, _ = distill_trainer(_cfg(tmp_path, tiny_mt_model, train, kd_mode="offline", loss_impl="auto",
                                      loss_chunk_size=5, kd_weight=0.5, divergence="jsd", label_smoothing=0.1))
    assert trainer.loss_impl == "chunked"
    trainer.model.train()
    batch = _batch(trainer)
    plain = _step(trainer, batch, "plain")
    assert set(plain[0]) == {"ce", "kd"}
    _assert_same(_step(trainer, batch, "chunked"), plain)
    trainer.model.eval()
    valid = {k: v for k, v in batch.items() if not k.startswith("topk")}
    terms = _step(trainer, valid, "chunked", grad=False)[0]
    assert terms == pytest.approx({"ce": plain[0]["ce"] / (1 - 0.5)}, rel=RTOL)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_a_short_fused_run_trains_validates_and_records_its_implementation(corpora, tmp_path, fam):
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.student.distill import distill

    teacher, preset, plain, _ = corpora[fam]
    src, tgt = synthetic_pairs(6, seed=9)
    valid = tmp_path / "valid.tsv"
    valid.write_text("".join(f"{a}\t{b}\n" for a, b in zip(src, tgt)), encoding="utf-8")
    summaries = {impl: distill(_cfg(tmp_path, teacher, plain, model=preset, loss_impl=impl, max_steps=2,
                                    eval_steps=1, valid_source=str(valid), label_smoothing=0.1))
                 for impl in ("fused", "plain")}
    summary = summaries["fused"]
    assert summary["loss_impl"] == "fused" and summary["loss_chunk_size"] == 1024 and summary["loss_teacher_head"]
    assert summary["steps"] == 2 and "onpolicy_fraction" in summary
    assert summaries["plain"]["loss_impl"] == "plain" and summaries["plain"]["loss_chunk_size"] is None
    # validation goes through the fused path too, and the two runs took the same steps
    assert [e["step"] for e in summary["evaluations"]] == [1, 2]
    for got, expected in zip(summary["evaluations"], summaries["plain"]["evaluations"]):
        assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-4)


def test_auto_on_a_small_vocabulary_is_plain_or_chunked(corpora, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="seqkd.student.distill"):
        trainer = _trainer(tmp_path, corpora, "marian", loss_impl="auto", loss_chunk_size=0)
    assert trainer.loss_impl == "plain" and trainer.summary_extra()["loss_impl"] == "plain"
    assert trainer.summary_extra()["loss_chunk_size"] is None and "onpolicy_fraction" in trainer.summary_extra()
    assert [r for r in caplog.records if "distillation loss: plain" in r.getMessage()]
    trainer = _trainer(tmp_path, corpora, "marian", loss_impl="auto", loss_chunk_size=8)
    assert trainer.loss_impl == "chunked" and trainer.summary_extra()["loss_chunk_size"] == 8
    trainer = _trainer(tmp_path, corpora, "marian", loss_impl="chunked", loss_chunk_size=0)
    assert trainer.loss_impl == "chunked" and trainer.loss_chunk_size == 1024


@pytest.mark.parametrize("requested, vocab, kd_mode, chunk, unsupported, expected", [
    ("auto", FUSED_MIN_VOCAB, "online", 0, None, "fused"),
    ("auto", 151936, "online", 256, None, "fused"),
    ("auto", FUSED_MIN_VOCAB - 1, "online", 0, None, "plain"),
    ("auto", 8000, "online", 64, None, "chunked"),
    ("auto", 50000, "offline", 0, None, "plain"),  # stored top-k: fused cannot take it
    ("auto", 50000, "offline", 64, None, "chunked"),
    ("auto", 50000, "none", 0, None, "plain"),
    ("auto", 50000, "online", 0, "soft-capped logits", "plain"),
    ("auto", 50000, "online", 64, "soft-capped logits", "chunked"),
    ("fused", 100, "online", 0, None, "fused"),
    ("fused", 100, "online", 0, "soft-capped logits", "chunked"),  # falls back (the trainer warns)
    ("plain", 50000, "online", 64, None, "plain"),
    ("chunked", 100, "online", 0, None, "chunked"),
])
def test_choose_loss_impl(requested, vocab, kd_mode, chunk, unsupported, expected):
    impl, why = choose_loss_impl(requested, vocab=vocab, kd_mode=kd_mode, loss_chunk_size=chunk,
                                 unsupported=unsupported)
    assert impl == expected and why
    if unsupported and requested == "fused":
        assert unsupported in why


def test_fused_with_offline_topk_is_refused(tmp_path):
    with pytest.raises(SeqkdError, match="--loss-impl fused needs the teacher's full distribution"):
        DistillConfig(out=str(tmp_path), teacher="t", train_source="x", kd_mode="offline", loss_impl="fused")
    with pytest.raises(SeqkdError, match="--loss-impl must be one of"):
        DistillConfig(out=str(tmp_path), teacher="t", train_source="x", loss_impl="liger")


def test_fused_unsupported_names_the_reason():
    from seqkd.models import build_model

    assert fused_unsupported(build_model("llama-tiny", vocab_size=40, seed=0)) is None
    assert fused_unsupported(build_model("marian-tiny", vocab_size=40, seed=0)) is None
    capped = SimpleNamespace(config=SimpleNamespace(model_type="gemma2"), lm_head=torch.nn.Linear(4, 9))
    assert "'gemma2'" in fused_unsupported(capped)
    odd = SimpleNamespace(config=SimpleNamespace(model_type="llama"), lm_head=torch.nn.Identity())
    assert "not a plain torch.nn.Linear" in fused_unsupported(odd)


@pytest.mark.parametrize("preset", ["llama-tiny", "marian-tiny"])
def test_hidden_states_out_is_exact_and_restores_the_model(preset):
    from seqkd.models import build_model

    model = build_model(preset, vocab_size=40, seed=0)
    if preset.startswith("marian"):
        model.final_logits_bias.normal_()  # make the bias matter
    lm_head, bias_buffer = model.lm_head, model._buffers.get("final_logits_bias")
    ids = torch.randint(4, 40, (2, 7))
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if preset.startswith("marian"):
        kw["decoder_input_ids"] = torch.randint(4, 40, (2, 5))
    logits = model(**kw).logits
    with hidden_states_out(model):
        hidden = model(**kw).logits
    assert torch.equal(hidden, model.model(**kw).last_hidden_state)  # exactly what the output layer gets
    weight, bias = output_layer(model)
    torch.testing.assert_close(torch.nn.functional.linear(hidden, weight, bias), logits, rtol=1e-6, atol=1e-6)
    assert "forward" not in lm_head.__dict__ and model.lm_head is lm_head
    assert model._buffers.get("final_logits_bias") is bias_buffer
    assert torch.equal(model(**kw).logits, logits)
    # anchor (for DDP): an untied output layer becomes part of the forward's graph, with a zero contribution
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with hidden_states_out(model):
        free = model(**kw).logits
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(free.sum(), model.lm_head.weight)
    with hidden_states_out(model, anchor=True):
        anchored = model(**kw).logits
    assert torch.equal(anchored, hidden)
    (g,) = torch.autograd.grad(anchored.sum(), model.lm_head.weight)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.slow
def test_fused_under_ddp_matches_one_process(tmp_path, tiny_lm_model):
    """DDP (2 CPU processes) with the fused loss and an untied output layer: the model's forward returns hidden
    states and the output layer is used by the loss alone, yet DDP (find_unused_parameters) must count it as used
    and average its gradient. Same steps as one process accumulating both micro-batches (see test_distill_ddp)."""
    from safetensors.torch import load_file
    from test_distill_ddp import LOSS_REL, WEIGHT_TOL, _log_history, _run

    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.models import build_model, save_model
    from seqkd.models.tokenizer import load_tokenizers

    src_tok, tgt_tok = load_tokenizers(tiny_lm_model)
    init = build_model("llama-tiny-student", vocab_size=len(tgt_tok), pad_id=tgt_tok.pad_token_id,
                       bos_id=tgt_tok.bos_token_id, eos_id=tgt_tok.eos_token_id, seed=4, tie_word_embeddings=False)
    assert init.lm_head.weight is not init.get_input_embeddings().weight
    save_model(init, (src_tok, tgt_tok), tmp_path / "init")
    src, tgt = synthetic_pairs(64, seed=3)
    train_file = tmp_path / "train.tsv"
    train_file.write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)), encoding="utf-8")
    common = [str(a) for a in [
        "distill", "--teacher", tiny_lm_model, "--model", tmp_path / "init", "--train-source", train_file,
        "--loss-impl", "fused", "--loss-chunk-size", 7, "--kd-mode", "online", "--kd-weight", 0.5,
        "--divergence", "jsd", "--label-smoothing", 0.1, "--max-tokens", 300, "--max-steps", 2, "--lr", 1e-2,
        "--warmup-steps", 0, "--seed", 5, "--logging-steps", 1, "--eval-steps", 0, "--bleu-samples", 0,
        "--no-progress"]]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "seqkd", *common, "--out", str(ddp), "--grad-accum", "1"], tmp_path / "ddp.log")
    _run([sys.executable, "-m", "seqkd", *common, "--out", str(single), "--grad-accum", "2"], tmp_path / "single.log")
    assert json.loads((single / "train_summary.json").read_text())["loss_impl"] == "fused"
    hist_ddp, hist_single = _log_history(ddp), _log_history(single)
    assert sorted(hist_ddp) == sorted(hist_single) == [1, 2]
    for step in (1, 2):
        for got, expected in zip(hist_ddp[step], hist_single[step]):
            assert got == pytest.approx(expected, rel=LOSS_REL), (step, hist_ddp[step], hist_single[step])
    w_ddp, w_single = load_file(ddp / "last" / "model.safetensors"), load_file(single / "last" / "model.safetensors")
    assert w_ddp.keys() == w_single.keys() and "lm_head.weight" in w_ddp
    for k in w_ddp:
        torch.testing.assert_close(w_ddp[k], w_single[k], **WEIGHT_TOL, msg=lambda m, k=k: f"{k}: {m}")
    moved = (w_ddp["lm_head.weight"] - init.lm_head.weight.detach()).abs().max().item()
    assert moved > 1e-3, moved  # the output layer trained (its gradient reached the optimizer in both runs)
