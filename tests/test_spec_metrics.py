"""Each speculative-decoding metric as its anchor defines it, pinned on a crafted case: acceptance under lenience
(DistillSpec), tokens per target call (nothing after an accepted eos), Leviathan's c against a target-only step,
the verification cost v and the overhead-aware prediction, and vLLM's counters without the warm-up."""

import json
import math
import os

import pytest
import torch

from seqkd.config import SpeculateConfig
from seqkd.errors import SeqkdError
from seqkd.speculative import SpecStats, analytic_acceptance, sample_accept, speculative_generate
from seqkd.speculative.metrics import acceptance_probability, leviathan_speedup

P = torch.tensor([0.70, 0.10, 0.10, 0.05, 0.05], dtype=torch.float64)
Q = torch.tensor([0.10, 0.50, 0.20, 0.10, 0.10], dtype=torch.float64)


def test_acceptance_probability_is_the_sum_of_min_q_and_p_over_lenience():
    assert float(acceptance_probability(P, Q)) == pytest.approx(0.40)  # sum min(p, q) = 1 - TVD
    assert float(acceptance_probability(P, Q)) == pytest.approx(1 - 0.5 * float((P - Q).abs().sum()))
    # l = 0.5: min(q, 2p) = 0.10 + 0.20 + 0.20 + 0.10 + 0.10
    assert float(acceptance_probability(P, Q, 0.5)) == pytest.approx(0.70)
    assert analytic_acceptance(P[None], Q[None], lenience=0.5) == pytest.approx(0.70)
    with pytest.raises(ValueError, match="lenience"):
        acceptance_probability(P, Q, 0.0)


@pytest.mark.parametrize("lenience", [1.0, 0.5, 0.25])
def test_lenient_acceptance_matches_the_rule_it_describes(lenience):
    """The empirical acceptance of sample_accept (draft token drawn from q) within 5 SE of sum min(q, p / l)."""
    n = 200_000
    g = torch.Generator().manual_seed(7)
    drafts = torch.multinomial(Q.float(), n, replacement=True, generator=g)[:, None]  # [n, 1]
    verdict = sample_accept(drafts, Q.float().expand(n, 1, -1), P.float().expand(n, 2, -1), generator=g,
                            lenience=lenience)
    rate = float(verdict.num_accepted.float().mean())
    want = float(acceptance_probability(P, Q, lenience))
    assert abs(rate - want) < 5 * math.sqrt(want * (1 - want) / n), (rate, want)
    if lenience < 1:  # the exact formula would be wrong here
        assert abs(rate - float(acceptance_probability(P, Q))) > 0.1


def _tiny_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, eos_token_id=None, bos_token_id=None,
                      pad_token_id=None)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(25)
    return m


def test_tokens_per_call_count_nothing_after_an_accepted_eos():
    """Self-drafting accepts every token; with eos = the third greedy token the first block drafts 3 tokens (the
    draft stops at its eos), all accepted: 3 tokens reach the output in 1 call. The bonus token after the eos
    is not emitted and must not be counted (it used to be: tau 4)."""
    from seqkd.speculative import autoregressive_generate

    model = _tiny_lm()
    ids = torch.tensor([[1, 5, 2]])
    greedy = autoregressive_generate(model, ids, temperature=0, max_new_tokens=12).new_tokens
    k = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])  # first token new at index >= 2
    model.generation_config.eos_token_id = greedy[k]
    out = speculative_generate(model, model, ids, gamma=k + 3, temperature=0, max_new_tokens=12)
    assert out.new_tokens == greedy[: k + 1]
    s = out.stats
    assert (s.target_calls, s.accepted, s.emitted, s.generated) == (1, k + 1, k + 1, k + 1)
    assert s.block_efficiency == pytest.approx(k + 1)
    # the budget: max_new_tokens = 2 emits 2 tokens in one call (the second is the correction/bonus)
    out = speculative_generate(model, model, ids, gamma=4, temperature=0, max_new_tokens=2)
    assert out.stats.emitted == out.stats.generated == 2 and out.stats.block_efficiency == pytest.approx(2.0)


def test_cost_ratio_is_leviathans_draft_step_over_a_target_only_step():
    """Crafted timings: the prefill (first call of each model) is left out of both step times."""
    base = SpecStats(target_calls=11, target_seconds=1.2 + 10 * 0.10, target_prefills=1, target_prefill_seconds=1.2,
                     generated=11, wall_seconds=2.2)
    spec = SpecStats(gamma=4, drafted=16, accepted=8, verified=12, target_calls=4, emitted=12, generated=12,
                     draft_steps=16, draft_seconds=0.5 + 15 * 0.02, draft_prefills=1, draft_prefill_seconds=0.5,
                     target_seconds=1.5 + 3 * 0.13, target_prefills=1, target_prefill_seconds=1.5)
    costs = spec.costs(base)
    assert costs["cost_ratio"] == pytest.approx(0.02 / 0.10)  # c: draft step / target-only step
    assert costs["verification_cost"] == pytest.approx(0.13 / 0.10)  # v: verification call / target-only step
    a = 8 / 12
    assert costs["leviathan_bound"] == pytest.approx((1 - a ** 5) / ((1 - a) * (4 * 0.2 + 1)))
    assert costs["leviathan_bound"] == pytest.approx(leviathan_speedup(a, 4, 0.2))
    assert costs["predicted_speedup"] == pytest.approx(3.0 / (4 * 0.2 + 1.3))  # tau / (gbar c + v)
    summary = spec.summary(baseline=base)
    assert summary["cost_ratio"] == pytest.approx(0.2) and summary["block_efficiency"] == pytest.approx(3.0)
    assert spec.summary()["cost_ratio"] is None  # no target-only run: no c (it is not defined without one)
    spec.wall_seconds = 3.0  # draft 0.8 s, target 1.89 s: the decoder's own work is the remaining 0.31 s
    shares = spec.summary(baseline=base)["time_shares"]
    assert shares == pytest.approx({"draft": 0.8 / 3, "target": 1.89 / 3, "decoder": 0.31 / 3})
    assert SpecStats().time_shares == {"draft": None, "target": None, "decoder": None}


def test_speculate_reports_c_v_and_the_prediction(tiny_lm_model, tmp_path):
    from seqkd.speculative.runners import speculate

    prompts = tmp_path / "p.txt"
    prompts.write_text("lesko sush jun\npelo kiva\nmura sush\n")
    r = speculate(SpeculateConfig(target=str(tiny_lm_model), draft=str(tiny_lm_model), input=str(prompts), gamma=3,
                                  max_new_tokens=12), progress=False)
    assert 0 < r["cost_ratio"] < 5 and 0 < r["verification_cost"] < 10
    assert r["predicted_speedup"] == pytest.approx(
        r["block_efficiency"] / (r["drafted"] / r["target_calls"] * r["cost_ratio"] + r["verification_cost"]))
    assert r["emitted"] == r["generated"]
    assert all(0 < r["time_shares"][k] < 1 for k in ("draft", "target", "decoder"))


def test_lenience_needs_sampling():
    with pytest.raises(SeqkdError, match="--lenience applies to sampling"):
        SpeculateConfig(target="t", draft="d", input="p", temperature=0, lenience=0.5)
    model = _tiny_lm()
    with pytest.raises(ValueError, match="lenience applies to sampling"):
        speculative_generate(model, model, torch.tensor([[1, 2]]), temperature=0, lenience=0.5)


def test_vllm_counters_leave_out_the_warmup(monkeypatch):
    """_timed_run's counters cover the timed prompts only (a stub engine counts 4 drafted tokens per prompt)."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from seqkd.speculative import vllm_runner

    class Metric(SimpleNamespace):
        pass

    class LLM:
        def __init__(self):
            self.prompts = 0

        def generate(self, prompts, params, use_tqdm=False):
            self.prompts += 1
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1, 2, 3])])]

        def get_metrics(self):
            n = self.prompts
            return [Metric(name="vllm:spec_decode_num_drafts", value=n),
                    Metric(name="vllm:spec_decode_num_draft_tokens", value=4 * n),
                    Metric(name="vllm:spec_decode_num_accepted_tokens", value=2 * n),
                    Metric(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=[n, n, 0, 0])]

    engine = SimpleNamespace(llm=LLM(), codec=SimpleNamespace(eos_id=0))
    cfg = SimpleNamespace(temperature=0.0, top_p=1.0, max_new_tokens=8, seed=0, batch_size=1)
    outs, tokens, seconds, counters = vllm_runner._timed_run(engine, [[5]] * 5, cfg, warmup=2)
    assert len(outs) == 5 and tokens == 15 and engine.llm.prompts == 7
    assert counters["vllm:spec_decode_num_draft_tokens"] == 20 and counters["vllm:spec_decode_num_drafts"] == 5
    assert counters["per_pos"] == [5, 5, 0, 0]


def test_compare_hf_puts_every_engine_on_one_baseline_over_passes(tiny_lm_model, tmp_path, capsys):
    """--compare-hf --passes 3: seqkd's target-only and speculative decoding, HF generate and HF assisted generation
    on every prompt, interleaved; absolute rates per pass, medians, and speedups over the one common baseline."""
    from seqkd.cli import main
    from seqkd.speculative.runners import speculate

    prompts = tmp_path / "p.txt"
    prompts.write_text("lesko sush jun\npelo kiva\nmura sush\n")
    r = speculate(SpeculateConfig(target=str(tiny_lm_model), draft=str(tiny_lm_model), input=str(prompts), gamma=3,
                                  max_new_tokens=10, passes=3, compare_hf=True), progress=False)
    c = r["comparison"]
    assert c["baseline"] == "hf_generate" and r["passes"] == 3
    assert set(c["tokens_per_s"]) == {"seqkd_target_only", "seqkd_speculative", "hf_generate", "hf_assisted"}
    for k, v in c["tokens_per_s"].items():
        assert len(v["per_pass"]) == 3 and v["min"] <= v["median"] <= v["max"] and v["min"] > 0, k
    for k, v in c["speedup_over_baseline"].items():
        want = [x / b for x, b in zip(c["tokens_per_s"][k]["per_pass"], c["tokens_per_s"]["hf_generate"]["per_pass"])]
        assert v["per_pass"] == pytest.approx(want), k
    assert r["speedup"] == pytest.approx(r["speedup_spread"]["median"])
    with pytest.raises(SeqkdError, match="--compare-hf"):
        SpeculateConfig(target="t", draft="d", input="p", engine="hf", compare_hf=True)
    assert main(["speculate", "--target", str(tiny_lm_model), "--draft", str(tiny_lm_model), "--input", str(prompts),
                 "--max-new-tokens", "6", "--compare-hf", "--passes", "2"]) == 0
    out = capsys.readouterr().out
    assert "speedup over HF generate" in out and "hf_assisted" in out and "(baseline)" in out


COUNTS = ("drafted", "accepted", "target_calls", "generated", "acceptance_rate", "block_efficiency")


def _check_one_baseline(cfgs, reports, engine: str) -> None:
    """Each report's counts equal a run of its config alone (same seeds, same tokens), and every speedup divides by
    the same target-only rates of each pass."""
    import dataclasses

    from seqkd.speculative.runners import speculate

    baseline, speculative = ("hf_generate", "hf_assisted") if engine == "hf" else ("seqkd_target_only",
                                                                                   "seqkd_speculative")
    base = reports[0]["tokens_per_s"][baseline]["per_pass"]
    for c, r in zip(cfgs, reports):
        alone = speculate(dataclasses.replace(c, out=None), progress=False)
        assert (r["gamma"], r["draft"]) == (c.gamma, c.draft)
        assert {k: r[k] for k in COUNTS} == {k: alone[k] for k in COUNTS}
        assert r["tokens_per_s"][baseline]["per_pass"] == base
        assert r["target_only_shared_with"] == [{"draft": x.draft, "gamma": x.gamma} for x in cfgs]
        spec = r["tokens_per_s"][speculative]["per_pass"]
        assert r["speedup_spread"]["per_pass"] == pytest.approx([s / b for s, b in zip(spec, base)])


@pytest.mark.parametrize("engine,batch_size", [("seqkd", 1), ("seqkd", 2), ("hf", 1)])
def test_a_gamma_sweep_shares_one_target_only_baseline(tiny_lm_model, tmp_path, engine, batch_size):
    """speculate_sweep over gamma: each gamma's counts equal a run of that gamma alone (same seeds, same tokens); the
    target-only rates are measured once a pass and are every gamma's denominator; each report goes to its own file."""
    import dataclasses

    from seqkd.speculative.runners import speculate, speculate_sweep

    prompts = tmp_path / "p.txt"
    prompts.write_text("lesko sush jun\npelo kiva\nmura sush\nkiva jun\n")
    cfg = SpeculateConfig(target=str(tiny_lm_model), draft=str(tiny_lm_model), input=str(prompts), temperature=1.0,
                          max_new_tokens=10, passes=2, batch_size=batch_size, engine=engine)
    cfgs = [dataclasses.replace(cfg, gamma=g, out=str(tmp_path / f"g{g}.json")) for g in (2, 5)]
    cfgs.append(dataclasses.replace(cfg, gamma=2, out=str(tmp_path / "g2-again.json")))  # a repeat is its own run
    both = speculate_sweep(cfgs, progress=False)
    _check_one_baseline(cfgs, both, engine)
    assert [json.loads(open(c.out).read())["gamma"] for c in cfgs] == [2, 5, 2]  # each report in its own file
    assert both[0]["drafted"] != both[1]["drafted"]  # the two gammas really ran
    assert {k: both[2][k] for k in COUNTS} == {k: both[0][k] for k in COUNTS}
    assert "target_only_shared_with" not in speculate(cfg, progress=False)
    with pytest.raises(SeqkdError, match="no configs"):
        speculate_sweep([], progress=False)
    with pytest.raises(SeqkdError, match="only in gamma, draft and out"):
        speculate_sweep([cfg, dataclasses.replace(cfg, gamma=3, max_new_tokens=4)], progress=False)
    if engine == "seqkd" and batch_size == 1:
        with pytest.raises(SeqkdError, match="--compare-hf measures one gamma and one draft"):
            speculate_sweep([dataclasses.replace(cfg, compare_hf=True),
                             dataclasses.replace(cfg, compare_hf=True, gamma=3)], progress=False)


@pytest.mark.parametrize("engine,batch_size", [("seqkd", 1), ("seqkd", 2), ("hf", 1)])
def test_a_draft_sweep_compares_drafts_on_one_target_only_baseline(tiny_lm_model, tmp_path, engine, batch_size):
    """speculate_sweep over drafts (an aligned draft against its unaligned start, say): each draft's counts equal a
    run of that draft alone, every draft's speedup divides by the same target-only rates, each draft loads once
    (paths) or is passed as one model per config (held), and the target as its own draft accepts every token."""
    import dataclasses

    from seqkd.models import build_model, load_model
    from seqkd.models.tokenizer import load_tokenizers, save_tokenizers
    from seqkd.speculative.runners import speculate_sweep

    fresh = tmp_path / "fresh"  # an untrained draft with the target's tokenizer: a poor one
    build_model("llama-tiny-student", vocab_size=load_model(tiny_lm_model).config.vocab_size, seed=7).save_pretrained(
        fresh)
    save_tokenizers(*load_tokenizers(tiny_lm_model), fresh)
    prompts = tmp_path / "p.txt"
    prompts.write_text("lesko sush jun\npelo kiva\nmura sush\nkiva jun\n")
    cfg = SpeculateConfig(target=str(tiny_lm_model), draft=str(fresh), input=str(prompts), temperature=0.0,
                          max_new_tokens=10, passes=2, gamma=3, batch_size=batch_size, engine=engine)
    cfgs = [cfg, dataclasses.replace(cfg, draft=str(tiny_lm_model))]
    reports = speculate_sweep(cfgs, progress=False)
    _check_one_baseline(cfgs, reports, engine)
    # greedy, the target as its own draft: every drafted token accepted (HF's count from forward calls also charges
    # the draft calls of a block cut at max_new_tokens)
    assert reports[1]["acceptance_rate"] > reports[0]["acceptance_rate"]
    assert reports[1]["acceptance_rate"] == 1.0 if engine == "seqkd" else reports[1]["acceptance_rate"] > 0.9
    assert reports[0]["params"]["draft"] < reports[1]["params"]["draft"] == reports[1]["params"]["target"]
    # the models held by the caller: one draft per config, the same counts
    target, small = load_model(tiny_lm_model), load_model(fresh)
    held = speculate_sweep(cfgs, progress=False, target=target, draft=[small, load_model(tiny_lm_model)],
                           tokenizers=load_tokenizers(tiny_lm_model), prompts=prompts.read_text().split("\n"))
    assert [{k: r[k] for k in COUNTS} for r in held] == [{k: r[k] for k in COUNTS} for r in reports]
    with pytest.raises(SeqkdError, match="3 drafts for 2 configs"):
        speculate_sweep(cfgs, progress=False, target=target, draft=[small, target, small],
                        tokenizers=load_tokenizers(tiny_lm_model), prompts=["pelo kiva"])


@pytest.mark.parametrize("engine,batch_size", [("seqkd", 1), ("seqkd", 2), ("hf", 1)])
def test_a_killed_timing_run_resumes_from_its_last_finished_pass(tiny_lm_model, tmp_path, monkeypatch, engine,
                                                                  batch_size):
    """--resume: a gamma sweep killed after the first of its 3 passes, rerun, times only passes 2 and 3, keeps pass 1's
    rates as measured, and reports the counts of an uninterrupted run; rerun once more, it times nothing and rebuilds
    the same reports; passes kept for other settings are not used (a recipe's speculate stages resume this way)."""
    import dataclasses

    from seqkd.pipeline.jobs import runner_fields
    from seqkd.speculative import runners

    prompts = tmp_path / "p.txt"
    prompts.write_text("lesko sush jun\npelo kiva\nmura sush\nkiva jun\n")
    cfg = SpeculateConfig(target=str(tiny_lm_model), draft=str(tiny_lm_model), input=str(prompts), temperature=1.0,
                          max_new_tokens=8, passes=3, batch_size=batch_size, engine=engine)
    cfgs = [dataclasses.replace(cfg, gamma=g, out=str(tmp_path / f"g{g}.json"), resume=True) for g in (2, 4)]
    kept = tmp_path / "g2.passes.json"

    class Killed(Exception):
        pass

    real, recorded = runners.PassLog.record, []

    def record_then_die(self, rec):
        real(self, rec)
        raise Killed

    monkeypatch.setattr(runners.PassLog, "record", record_then_die)
    with pytest.raises(Killed):
        runners.speculate_sweep(cfgs, progress=False)
    first = json.loads(kept.read_text())["passes"]
    assert len(first) == 1 and not any(os.path.exists(c.out) for c in cfgs)  # no report before the last pass

    def spy(self, rec):
        recorded.append(rec)
        real(self, rec)

    monkeypatch.setattr(runners.PassLog, "record", spy)
    resumed = runners.speculate_sweep(cfgs, progress=False)
    assert len(recorded) == 2  # passes 2 and 3 only
    baseline = "hf_generate" if engine == "hf" else "seqkd_target_only"
    first_base = first[0]["rates"][baseline] if engine == "seqkd" and batch_size == 1 else first[0]["base_rate"]
    whole = runners.speculate_sweep([dataclasses.replace(c, out=None, resume=False) for c in cfgs], progress=False)
    for r, w in zip(resumed, whole):
        assert r["tokens_per_s"][baseline]["per_pass"][0] == first_base  # pass 1 as the killed run measured it
        assert len(r["speedup_spread"]["per_pass"]) == 3
        assert {k: r[k] for k in COUNTS} == {k: w[k] for k in COUNTS}
        assert r.get("identical_outputs") == w.get("identical_outputs")
    assert [json.loads(open(c.out).read())["gamma"] for c in cfgs] == [2, 4]
    # the finished run's passes stay: rerun, it times nothing and rebuilds the same reports
    recorded.clear()
    assert runners.speculate_sweep(cfgs, progress=False) == resumed and recorded == []

    # passes kept for other settings (the finished run's, at another max_new_tokens) are not used: all 3 passes run
    recorded.clear()
    runners.speculate_sweep([dataclasses.replace(c, max_new_tokens=6) for c in cfgs], progress=False)
    assert len(recorded) == 3
    with pytest.raises(SeqkdError, match="--resume continues from the passes kept beside --out"):
        SpeculateConfig(target="t", draft="d", input="p", resume=True)
    assert runner_fields("speculate", False, False)["resume"] and not runner_fields("evaluate", False, False)["resume"]


def test_retimer_times_a_call_again_while_torch_compiled_during_it(monkeypatch):
    """A decode during which dynamo compiled is called again (same seed: same result), at most ``tries`` times in all;
    a decode without compilation runs once; the counts say which stream was timed again how often."""
    from seqkd.speculative import runners

    frames = iter([0, 1, 1, 1, 1, 1, 5, 6, 6, 7, 7, 8])  # the counter before / after each call, in order
    monkeypatch.setattr(runners, "_compiled_frames", lambda: next(frames))
    calls = []
    again = runners.Retimer(tries=3)
    assert again("a", lambda: calls.append("a") or len(calls)) == 2  # 0 -> 1 compiled; 1 -> 1 clean
    assert again("b", lambda: calls.append("b") or len(calls)) == 3  # 1 -> 1 clean at once
    assert again("a", lambda: calls.append("a") or len(calls)) == 6  # 5 -> 6, 6 -> 7, 7 -> 8: gives up at 3
    assert calls == ["a", "a", "b", "a", "a", "a"] and again.counts == {"a": 3}
    assert runners.retimed_calls([{"retimed": {"a": 1}}, {"retimed": {"b": 2, "c": 4}}], ["a", "b"]) == 3
    assert runners.retimed_calls([{"rates": {}}, {"retimed": {}}], ["a"]) is None  # a pass from before the check


def test_the_compiled_frame_counter_counts_compilations():
    """What Retimer reads: dynamo's frame counter grows when a call compiles (a first call, a new shape it
    specialises on) and not when a call reuses a compiled graph."""
    from seqkd.speculative.runners import _compiled_frames

    f = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)
    before = _compiled_frames()
    f(torch.ones(3))
    first = _compiled_frames()
    f(torch.ones(3))
    assert first > before and _compiled_frames() == first
    f(torch.ones(5))  # static shapes: another size compiles again
    assert _compiled_frames() > first


@pytest.mark.parametrize("engine,batch_size", [("seqkd", 1), ("seqkd", 2), ("hf", 1)])
def test_a_decode_that_compiled_is_timed_again_with_the_same_tokens(tiny_lm_model, tmp_path, monkeypatch, engine,
                                                                    batch_size):
    """A compilation during the first timed speculative decode (as a compiled model meets a new shape): that decode
    runs again, the counts and outputs are those of a run without it, the report and each pass record say how many
    decodes were timed again, and the report's table shows it."""
    import dataclasses

    from seqkd.pipeline.report import speculative_tables
    from seqkd.speculative import runners

    prompts = tmp_path / "p.txt"
    prompts.write_text("lesko sush jun\npelo kiva\nmura sush\n")
    cfg = SpeculateConfig(target=str(tiny_lm_model), draft=str(tiny_lm_model), input=str(prompts), temperature=1.0,
                          max_new_tokens=8, passes=2, gamma=3, batch_size=batch_size, engine=engine,
                          out=str(tmp_path / "r.json"))
    clean = runners.speculate_sweep([dataclasses.replace(cfg, out=None)], progress=False)[0]
    assert clean["retimed_calls"] == 0

    reads = {"n": 0}
    real = runners.Retimer.__call__

    def compiling_once(self, stream, call):  # the first speculative decode compiles once
        def once():
            out = call()
            if stream not in ("seqkd_target_only", "base") and reads["n"] == 0:
                reads["n"] = 1
                frames["total"] += 1
            return out
        return real(self, stream, once)

    frames = {"total": 0}
    monkeypatch.setattr(runners, "_compiled_frames", lambda: frames["total"])
    monkeypatch.setattr(runners.Retimer, "__call__", compiling_once)
    r = runners.speculate_sweep([cfg], progress=False)[0]
    assert r["retimed_calls"] == 1
    assert {k: r[k] for k in COUNTS} == {k: clean[k] for k in COUNTS}
    assert r.get("identical_outputs") == clean.get("identical_outputs")
    kept = json.loads((tmp_path / "r.passes.json").read_text())["passes"]
    assert [sum(p["retimed"].values()) for p in kept] == [1, 0]
    (_, rows), _ = speculative_tables({"s": [r, clean]})
    assert [row[-1] for row in rows] == ["2 (1 timed again)", "2"]
