"""Ensembles of teachers: the mixing rule against float64 references, ensemble decoding inside HF generate (two
copies of one teacher decode exactly as that teacher; two different teachers as a hand-written ensemble loop; a
follower's cache tracks beam search's reordering), ensemble scores, the manifest and the CLI's one-line refusals."""

import json
import shutil

import pytest
import torch
from test_engines_hf import _sources
from test_spec_decoder import _perturbed

from seqkd.errors import SeqkdError
from seqkd.models import load_model
from seqkd.teacher import ensemble as E
from seqkd.teacher.engines import DecodeSettings, get_engine


def _lp(seed: int, shape=(3, 7), scale=3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).log_softmax(-1)


def test_mixing_rule_against_float64_references():
    a, b, c = _lp(1), _lp(2), _lp(3, scale=8.0)
    w = [0.5, 0.3, 0.2]
    geo = (w[0] * a + w[1] * b + w[2] * c).log_softmax(-1)  # normalised weighted geometric mean
    mix = (w[0] * a.exp() + w[1] * b.exp() + w[2] * c.exp()).log()  # mixture
    torch.testing.assert_close(E.mix_logprobs([a.float(), b.float(), c.float()], w, "logprob").double(), geo,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(E.mix_logprobs([a.float(), b.float(), c.float()], w, "prob").double(), mix,
                               atol=1e-5, rtol=0)
    for mode in ("logprob", "prob"):
        out = E.mix_logprobs([a, b], [0.6, 0.4], mode)
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, dtype=torch.float32))  # a distribution
        assert torch.equal(E.mix_logprobs([a.float(), b.float()], [1.0, 0.0], mode), a.float())  # endpoint: exact
        torch.testing.assert_close(E.mix_logprobs([a.float(), a.float()], [0.5, 0.5], mode), a.float(),
                                   atol=1e-6, rtol=0)  # two copies of one teacher: that teacher
    # a token one teacher rules out: impossible under the geometric mean, possible under the mixture
    x = a.float().clone()
    x[:, 0] = float("-inf")
    assert torch.isneginf(E.mix_logprobs([x, b.float()], [0.5, 0.5], "logprob")[:, 0]).all()
    torch.testing.assert_close(E.mix_logprobs([x, b.float()], [0.5, 0.5], "prob")[:, 0],
                               (0.5 * b[:, 0].exp()).log().float())
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        E.mix_logprobs([a, b], [0.5, 0.5], "max")


def test_weights_are_checked_and_normalised():
    assert E.ensemble_weights(None, 4) == [0.25] * 4
    assert E.ensemble_weights([1, 3], 2) == [0.25, 0.75]
    for bad, match in (([1.0], "1 teacher weights for 2"), ([-1, 2], ">= 0"), ([0, 0], "positive sum")):
        with pytest.raises(SeqkdError, match=match):
            E.ensemble_weights(bad, 2)


@pytest.fixture(scope="module")
def other_teachers(tiny_lm_model, tiny_mt_model, tmp_path_factory):
    """A second teacher of each family: the tiny model with noise on its weights, saved beside its tokenizer."""
    out = {}
    for name, src in (("lm", tiny_lm_model), ("mt", tiny_mt_model)):
        d = tmp_path_factory.mktemp(f"other_{name}") / "model"
        shutil.copytree(src, d)
        _perturbed(load_model(src), 0.3, 7).save_pretrained(d)
        out[name] = d
    return out


def _dirs(which, tiny_lm_model, tiny_mt_model, other_teachers):
    return (tiny_lm_model if which == "lm" else tiny_mt_model), other_teachers[which]


def _ids(out):
    return [[c.token_ids for c in cands] for cands in out]


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_two_copies_of_one_teacher_decode_as_that_teacher(which, tiny_lm_model, tiny_mt_model, other_teachers):
    teacher, _ = _dirs(which, tiny_lm_model, tiny_mt_model, other_teachers)
    single = get_engine("hf", str(teacher), batch_size=3)
    pair = get_engine("hf", str(teacher), batch_size=3, ensemble=[str(teacher)], teacher_weights=[0.5, 0.5])
    prompts = single.encode(_sources(7, seed=31))  # batches of 3: padded, of mixed lengths
    for settings in (DecodeSettings(mode="greedy", max_new_tokens=25),
                     DecodeSettings(mode="beam", beam_size=4, nbest=3, max_new_tokens=25, topk_logprobs=3)):
        a, b = single.generate(prompts, settings), pair.generate(prompts, settings)
        assert _ids(a) == _ids(b)
        for ca, cb in zip(sum(a, []), sum(b, [])):
            assert cb.token_logprobs == pytest.approx(ca.token_logprobs, abs=1e-5)
            assert cb.topk_ids == ca.topk_ids
    assert pair.options["ensemble"] == {"weights": [0.5, 0.5], "mode": "logprob"}
    assert "ensemble" not in single.options


def _hand_greedy(models, weights, mode, family, prompt, start, eos, max_new):
    """The ensemble's greedy decoding written out: every step, every teacher's full forward on the sequence so far
    (no cache, no batch), the mixed log-probs, their argmax."""
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            lps = []
            for m in models:
                if family == "seq2seq":
                    logits = m(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[start] + out])).logits
                else:
                    logits = m(input_ids=torch.tensor([prompt + out])).logits
                lps.append(logits[0, -1].float().log_softmax(-1))
            tok = int(E.mix_logprobs(lps, weights, mode).argmax())
            out.append(tok)
            if tok == eos:
                break
    return out


@pytest.mark.parametrize("which,mode", [("lm", "logprob"), ("mt", "prob")])
def test_two_teachers_decode_as_a_hand_written_ensemble(which, mode, tiny_lm_model, tiny_mt_model, other_teachers):
    a, b = _dirs(which, tiny_lm_model, tiny_mt_model, other_teachers)
    eng = get_engine("hf", str(a), batch_size=4, ensemble=[str(b)], teacher_weights=[0.4, 0.6], ensemble_mode=mode)
    prompts = eng.encode(_sources(6, seed=32))
    out = eng.generate(prompts, DecodeSettings(mode="greedy", max_new_tokens=20))
    models = [eng.model] + eng.others
    start = getattr(eng.model.config, "decoder_start_token_id", None)
    differs = 0
    for prompt, cands in zip(prompts, out):
        ref = _hand_greedy(models, [0.4, 0.6], mode, eng.family, prompt, start, eng.codec.eos_id, 20)
        assert cands[0].token_ids == ref
        differs += ref != _hand_greedy(models[:1], [1.0], mode, eng.family, prompt, start, eng.codec.eos_id, 20)
    assert differs > 0  # the second teacher changed some outputs: the test can tell an ensemble from one teacher
    # the corpus's token log-probs are the ensemble's (teacher-forced, mixed)
    c = out[0][0]
    with torch.no_grad():
        lps = []
        for m in models:
            if eng.family == "seq2seq":
                lg = m(input_ids=torch.tensor([prompts[0]]),
                       decoder_input_ids=torch.tensor([[start] + c.token_ids[:-1]])).logits[0]
            else:
                lg = m(input_ids=torch.tensor([prompts[0] + c.token_ids[:-1]])).logits[0, len(prompts[0]) - 1:]
            lps.append(lg.float().log_softmax(-1))
    want = E.mix_logprobs(lps, [0.4, 0.6], mode).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert c.token_logprobs == pytest.approx(want.tolist(), abs=1e-5)


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_a_follower_tracks_beam_search(which, tiny_lm_model, tiny_mt_model, other_teachers, monkeypatch):
    """At every beam-search step the follower's cached log-probs equal a full forward of the rows it was given."""
    a, b = _dirs(which, tiny_lm_model, tiny_mt_model, other_teachers)
    eng = get_engine("hf", str(a), batch_size=3, ensemble=[str(b)])
    checked = []
    cached = E.Follower.logprobs

    def checking(self, ids):
        got = cached(self, ids)
        with torch.no_grad():
            if self.enc_dec:
                full = self.model(input_ids=self.prompts, attention_mask=self.mask, decoder_input_ids=ids).logits
            else:
                mask = torch.cat([self.mask[:, : self.prompts.shape[1]],
                                  torch.ones(len(ids), ids.shape[1] - self.prompts.shape[1], dtype=torch.long)], 1)
                pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
                full = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(got, full[:, -1].float().log_softmax(-1), atol=1e-4, rtol=0)
        checked.append(ids.shape[1])
        return got

    monkeypatch.setattr(E.Follower, "logprobs", checking)
    prompts = eng.encode(_sources(5, seed=33))
    eng.generate(prompts, DecodeSettings(mode="beam", beam_size=4, nbest=2, max_new_tokens=15))
    assert len(checked) > 10


def test_sampling_settings_apply_after_the_mix():
    """Temperature, top-k and top-p act on the ensemble's distribution, in HF's order."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    own, other = _lp(5, (2, 9)).float(), _lp(6, (2, 9)).float()

    class Fixed:
        def logprobs(self, ids):
            return other

    proc = E.EnsembleProcessor([Fixed()], [0.5, 0.5], "prob", [TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.8)])
    got = proc(torch.zeros(2, 3, dtype=torch.long), own + 1.0)  # raw logits: only their softmax matters
    want = TopPLogitsWarper(0.8)(None, E.mix_logprobs([own, other], [0.5, 0.5], "prob") / 0.7)
    torch.testing.assert_close(got, want)
    assert torch.isinf(got).any()  # top-p did cut


def test_generate_cli_ensemble_manifest_and_refusals(tiny_lm_model, tiny_mt_model, other_teachers, tmp_path,
                                                     capsys):
    from seqkd.cli import main

    src = tmp_path / "src.txt"
    src.write_text("\n".join(_sources(6, seed=34)) + "\n")
    out = tmp_path / "corpus"
    assert main(["generate", "--teacher", str(tiny_lm_model), "--teacher", str(other_teachers["lm"]),
                 "--teacher-weights", "1,3", "--input", str(src), "--mode", "greedy", "--max-new-tokens", "12",
                 "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["engine"]["ensemble"] == {"weights": [0.25, 0.75], "mode": "logprob"}
    assert set(m["ensemble"]) == {"1"} and m["ensemble"]["1"]["files"]
    capsys.readouterr()
    base = ["generate", "--input", str(src), "--out", str(tmp_path / "c2"), "--teacher", str(tiny_lm_model)]
    for extra, match in ((["--teacher", str(tiny_lm_model), "--engine", "vllm"], "vLLM cannot mix"),
                         (["--teacher", str(tiny_lm_model), "--teacher-weights", "1"], "give 2 weights"),
                         (["--teacher-weights", "1,1"], "needs several --teacher"),
                         (["--teacher", str(tiny_mt_model)], "teacher")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_teacher_mixture_is_the_mixture_of_tempered_distributions(tiny_mt_model, other_teachers):
    """What a divergence sees (softmax(logits / T)) is sum_i w_i softmax(l_i / T); weights (1, 0) are teacher 1."""
    a, b = load_model(tiny_mt_model), load_model(other_teachers["mt"])
    batch = dict(input_ids=torch.tensor([[5, 9, 17, 3], [6, 7, 3, 0]]), attention_mask=torch.tensor(
        [[1, 1, 1, 1], [1, 1, 1, 0]]), decoder_input_ids=torch.tensor([[a.config.decoder_start_token_id, 8, 9]] * 2))
    with torch.no_grad():
        la, lb = a(**batch).logits.double(), b(**batch).logits.double()
        for t in (1.0, 2.0):
            got = (E.TeacherMixture([a, b], [0.3, 0.7], t)(**batch).logits.double() / t).softmax(-1)
            torch.testing.assert_close(got, 0.3 * (la / t).softmax(-1) + 0.7 * (lb / t).softmax(-1), atol=1e-6,
                                       rtol=0)
            one = (E.TeacherMixture([a, b], [1.0, 0.0], t)(**batch).logits.double() / t).softmax(-1)
            torch.testing.assert_close(one, (la / t).softmax(-1), atol=1e-6, rtol=0)


def test_teacher_mixture_cuts_logits_like_its_members(tiny_lm_model, other_teachers):
    a, b = load_model(tiny_lm_model), load_model(other_teachers["lm"])
    ids = torch.tensor([[5, 9, 17, 30, 8]])
    mix = E.TeacherMixture([a, b], [0.5, 0.5])
    with torch.no_grad():
        full, kept = mix(input_ids=ids).logits, mix(input_ids=ids, logits_to_keep=2).logits
    assert kept.shape[1] == 2
    torch.testing.assert_close(kept, full[:, -2:], atol=1e-6, rtol=0)


def test_multi_teacher_distillation_matches_the_mixture_target(tiny_mt_model, other_teachers, tmp_path):
    """seqkd distill --teacher A --teacher B: the KD term is the divergence to the weighted mixture (a hand
    computation on the first batch), the run's data statistics name both teachers, and the one-line refusals."""
    from test_distill import _cfg, _corpus, _first_batch

    from seqkd.config import DistillConfig
    from seqkd.student.distill import distill_trainer
    from seqkd.student.trainer import logits_at_targets

    train = _corpus(tiny_mt_model, tmp_path, n=10)
    cfg = _cfg(tmp_path, tiny_mt_model, train, kd_mode="online", kd_weight=1.0, kd_temperature=2.0, seed=3)
    cfg = DistillConfig(**{**cfg.__dict__, "teacher": [str(tiny_mt_model), str(other_teachers["mt"])],
                           "teacher_weights": "1,3"})
    torch.manual_seed(0)
    trainer, run = distill_trainer(cfg)
    assert isinstance(trainer.teacher, E.TeacherMixture) and trainer.teacher.weights == [0.25, 0.75]
    assert run.data_stats["teachers"]["weights"] == [0.25, 0.75] and len(run.data_stats["teachers"]["dirs"]) == 2
    model = trainer.model
    model.train()
    batch = _first_batch(trainer)
    logits, targets, _ = trainer.forward_logits(model, batch)
    kd = float(trainer.loss_terms(model, batch, logits, targets)["kd"])
    a, b = load_model(tiny_mt_model), load_model(other_teachers["mt"])
    with torch.no_grad():
        la = logits_at_targets(a, batch, "seq2seq")[0].double()
        lb = logits_at_targets(b, batch, "seq2seq")[0].double()
    p = 0.25 * (la / 2).softmax(-1) + 0.75 * (lb / 2).softmax(-1)
    logq = (logits.detach().double() / 2).log_softmax(-1)
    want = 4.0 * float((p * (p.log() - logq)).sum())  # T^2 * sum over tokens of KL(p || q), forward KL
    assert kd == pytest.approx(want, rel=1e-4)
    for kw, match in ((dict(kd_mode="offline"), "mixed online"), (dict(teacher_weights="1"), "give 2 weights")):
        with pytest.raises(SeqkdError, match=match):
            DistillConfig(**{**cfg.__dict__, **kw})


def test_evaluate_scores_an_ensemble_of_two_copies_as_the_single_model(tiny_mt_model, tmp_path):
    """The evaluate job's NAME=A+B entry decodes with the teachers' ensemble: two copies of one teacher translate
    exactly as the teacher does (greedy and beam), so every score matches."""
    from seqkd.config import EvaluateConfig
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.evaluate import evaluate_models

    src, ref = synthetic_pairs(40, seed=77, multimodality=0.0)
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "r.txt").write_text("\n".join(ref) + "\n")
    r = evaluate_models(EvaluateConfig(models=[f"one={tiny_mt_model}", f"two={tiny_mt_model}+{tiny_mt_model}"],
                                       src=str(tmp_path / "s.txt"), ref=str(tmp_path / "r.txt"), beam_sizes=[1, 3],
                                       out=str(tmp_path / "scores.json"), max_new_tokens=40))
    rows = {(x["model"], x["beam_size"]): x for x in r["rows"]}
    for beam in (1, 3):
        assert rows[("two", beam)]["bleu"] == rows[("one", beam)]["bleu"] > 0
        assert rows[("two", beam)]["chrf"] == rows[("one", beam)]["chrf"]
    assert rows[("two", 1)]["parameters"] == 2 * rows[("one", 1)]["parameters"]


@pytest.mark.parametrize("which", ["lm", "mt"])
def test_pooled_ensemble_of_two_copies_decodes_as_the_teacher(which, tiny_lm_model, tiny_mt_model, other_teachers):
    """--pool with two copies of one teacher: both decode the same candidates, the pool keeps them once, and the
    ensemble (two copies) rescores them as the teacher scores them: the teacher's own outputs, in its order."""
    from seqkd.teacher.pool import PoolEngine

    teacher, _ = _dirs(which, tiny_lm_model, tiny_mt_model, other_teachers)
    single = get_engine("hf", str(teacher), batch_size=3)
    pool = PoolEngine("hf", [str(teacher), str(teacher)], batch_size=3)
    prompts = single.encode(_sources(7, seed=41))
    for settings in (DecodeSettings(mode="greedy", max_new_tokens=25),
                     DecodeSettings(mode="beam", beam_size=4, nbest=3, max_new_tokens=25, topk_logprobs=3)):
        a, b = single.generate(prompts, settings), pool.generate(prompts, settings)
        assert _ids(a) == _ids(b)
        for ca, cb in zip(sum(a, []), sum(b, [])):
            assert cb.token_logprobs == pytest.approx(ca.token_logprobs, abs=1e-5) and cb.text == ca.text
            assert cb.topk_ids == ca.topk_ids
    assert pool.name == "hf-pool" and pool.options["pool"]["rescorer"]["ensemble"]["mode"] == "logprob"


@pytest.mark.parametrize("mode", ["logprob", "prob"])
def test_pooled_ensemble_rescores_the_union_of_its_teachers_candidates(mode, tiny_mt_model, other_teachers):
    """Two different teachers: the pool is the union of their n-best lists (each sequence once), every candidate
    scored by the per-step ensemble (the HF ensemble engine's teacher-forced scores), best first by beam's ranking."""
    from seqkd.teacher.pool import PoolEngine

    a_dir, b_dir = str(tiny_mt_model), str(other_teachers["mt"])
    pool = PoolEngine("hf", [a_dir, b_dir], teacher_weights=[0.7, 0.3], ensemble_mode=mode, batch_size=4)
    ens = get_engine("hf", a_dir, ensemble=[b_dir], teacher_weights=[0.7, 0.3], ensemble_mode=mode, batch_size=4)
    prompts = pool.encode(_sources(6, seed=43))
    settings = DecodeSettings(mode="beam", beam_size=3, nbest=3, max_new_tokens=25, length_penalty=1.0)
    out = pool.generate(prompts, settings)
    members = [get_engine("hf", d, batch_size=4).generate(prompts, settings) for d in (a_dir, b_dir)]
    for i, cands in enumerate(out):
        union = {tuple(c.token_ids) for m in members for c in m[i]}
        got = [tuple(c.token_ids) for c in cands]
        assert len(got) == min(3, len(union)) and len(set(got)) == len(got) and set(got) <= union
        ref = ens.score([prompts[i]], [[list(t) for t in got]])[0]
        for c, (lps, _, _) in zip(cands, ref):
            assert c.token_logprobs == pytest.approx(lps, abs=1e-6)
        # the kept ones are the union's best by logprob / length (beam search's ranking at length_penalty 1)
        every = ens.score([prompts[i]], [[list(t) for t in union]])[0]
        rank = sorted((sum(lps) / len(t) for t, (lps, _, _) in zip(union, every)), reverse=True)
        assert [c.logprob / len(c.token_ids) for c in cands] == pytest.approx(rank[: len(cands)], abs=1e-5)
    # not a trivial pool: the two teachers' n-best lists differ somewhere
    assert any({tuple(c.token_ids) for c in members[0][i]} != {tuple(c.token_ids) for c in members[1][i]}
               for i in range(len(out)))


def test_generate_pool_cli_and_refusals(tiny_mt_model, other_teachers, tmp_path, capsys):
    from seqkd.cli import main

    src = tmp_path / "src.txt"
    src.write_text("\n".join(_sources(5, seed=44)) + "\n")
    out = tmp_path / "pooled"
    assert main(["generate", "--teacher", str(tiny_mt_model), "--teacher", str(other_teachers["mt"]), "--pool",
                 "--input", str(src), "--mode", "beam", "--beam-size", "3", "--nbest", "2", "--max-new-tokens", "20",
                 "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["engine"]["name"] == "hf-pool" and set(m["ensemble"]) == {"1"}
    assert len(m["engine"]["pool"]["members"]) == 2
    capsys.readouterr()
    assert main(["generate", "--teacher", str(tiny_mt_model), "--pool", "--input", str(src), "--out",
                 str(tmp_path / "x")]) == 2
    assert "give --teacher at least twice" in capsys.readouterr().err
