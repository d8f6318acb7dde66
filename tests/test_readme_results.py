"""The README's generated blocks for the SmolLM2 draft: issue 14's targets checked on crafted speculate data (each
verdict, and the gamma chosen on validation prompts), the report's where-the-time-goes table, and the layer choices'
block (each draft followed to its layers, compared pass by pass)."""

import importlib.util
from pathlib import Path

import pytest

from seqkd.pipeline.report import time_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def readme(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(gamma, per_pass, temperature=0.0, **kw):
    return {"gamma": gamma, "temperature": temperature, "speedup": sorted(per_pass)[len(per_pass) // 2],
            "speedup_spread": {"min": min(per_pass), "max": max(per_pass), "per_pass": per_pass}, **kw}


SPEC = {
    # gamma 3 is best on the validation prompts; the test stage is worse at gamma 3 than at 2 (the test set reports)
    "speculate-val": [_row(2, [1.2]), _row(3, [1.4])],
    "speculate": [_row(2, [1.5, 1.5, 1.5]), _row(3, [1.35, 1.32, 1.29], leviathan_bound=1.5, cost_ratio=0.1)],
    "speculate-t1-val": [_row(2, [1.1], 1.0), _row(3, [1.0], 1.0)],
    "speculate-t1": [_row(2, [1.0, 1.05, 1.1], 1.0), _row(3, [2.0, 2.0, 2.0], 1.0)],
    # the int8 drafts: gamma 1 chosen on validation; met in every pass
    "speculate-int8-val": [_row(1, [1.5], draft_quantize="int8"), _row(2, [1.4], draft_quantize="int8")],
    "speculate-int8": [_row(1, [1.4, 1.45, 1.5], draft_quantize="int8"), _row(2, [1.6] * 3, draft_quantize="int8")],
    "speculate-drafts": [_row(3, [1.0, 1.1, 1.2], label="student"), _row(3, [1.2, 1.21, 1.44], label="draft")],
    "speculate-hf": [_row(3, [1.0] * 3, comparison={"tokens_per_s": {
        "seqkd_speculative": {"median": 31.0, "per_pass": [30.0, 31.0, 32.0]},
        "hf_assisted": {"median": 21.0, "per_pass": [20.0, 21.0, 22.0]}}})],
    "speculate-vllm": [{"gamma": 3, "temperature": 0.0, "engine": "vllm", "batch_size": 1, "speedup": 0.9,
                        "speedup_spread": {"median": 0.9, "min": 0.8, "max": 0.95}}],
}


def test_each_target_is_checked_at_the_gamma_chosen_on_validation_with_a_verdict_that_reads_the_range(readme):
    rows = {what: (measured, verdict) for what, measured, verdict in readme.targets(SPEC)}
    t0 = rows["seqkd's decoder at T=0, fp32 draft, gamma chosen on validation prompts: speedup >= 1.3x"]
    # median 1.32 over 1.3, but one pass at 1.29: said so
    assert t0 == ("1.32x (1.29-1.35x), speculate, gamma 3", "met at the median, not in every pass")
    bound = next(v for k, v in rows.items() if k.startswith("seqkd's decoder at T=0, fp32 draft, reaches >= 80%"))
    assert bound == ("88% (86%-90%)", "met")  # 1.32 / 1.5; per pass 1.29 / 1.5 .. 1.35 / 1.5
    # T=1: gamma 2 chosen on validation, although gamma 3 is twice as fast on the test prompts
    assert rows["seqkd's decoder at T=1, fp32 draft, gamma chosen on validation prompts: speedup >= 1.15x"] == (
        "1.05x (1.00-1.10x), speculate-t1, gamma 2", "missed")
    # per-pass ratios on the shared baseline: 1.2, 1.1, 1.2; medians' ratio 1.21 / 1.1
    aligned = rows["aligned draft (draft) >= 1.15x the unaligned one (student) at T=0 (speedup over speedup, same "
                   "baseline)"]
    assert aligned == ("1.10x (1.10-1.20x), speculate-drafts", "missed at the median, met in a pass")
    assert rows["seqkd's tokens/s >= HF assisted generation's (same pair, gamma 3)"][1] == "met"
    assert rows["vLLM speculative > 1x its own target-only rate (batch 1)"] == (
        "0.90x (0.80-0.95x), passes not interleaved (two engines)", "missed")
    assert not any("T=1 (speedup over speedup" in k for k in rows)  # no speculate-drafts-t1 stage: no row
    assert rows["seqkd's decoder at T=0, int8 draft, gamma chosen on validation prompts: speedup >= 1.3x"] == (
        "1.45x (1.40-1.50x), speculate-int8, gamma 1", "met")
    assert len(rows) == 7  # T=1 has no bound (its row holds none), nor has the int8 row; no speculate-int8-t1 stage


def test_each_alignment_of_a_draft_is_checked_against_the_draft_before_it_on_their_shared_baseline(readme):
    """speculate-drafts-t1 decodes the student and two alignments of it (on-policy, on target samples): one row each,
    each ratio taken pass by pass against the student's speedup in the same pass."""
    spec = {"speculate-drafts-t1": [_row(3, [0.8, 0.8, 0.8], 1.0, label="student"),
                                    _row(3, [0.84, 0.86, 0.88], 1.0, label="draft-t1"),
                                    _row(3, [0.92, 0.96, 0.90], 1.0, label="draft-t1-target")]}
    rows = readme.targets(spec)
    assert [r[0] for r in rows] == [f"aligned draft ({d}) >= 1.15x the unaligned one (student) at T=1 (speedup over "
                                    "speedup, same baseline)" for d in ("draft-t1", "draft-t1-target")]
    assert [r[1:] for r in rows] == [
        ["1.07x (1.05-1.10x), speculate-drafts-t1", "missed"],
        ["1.15x (1.12-1.20x), speculate-drafts-t1", "met at the median, not in every pass"]]


def test_a_missing_validation_stage_leaves_its_target_out(readme):
    spec = {k: v for k, v in SPEC.items() if k != "speculate-t1-val"}
    assert not any("T=1" in what for what, _, _ in readme.targets(spec))


def test_where_the_time_goes_reads_the_shares_and_step_times_and_leaves_out_rows_without_them():
    r = _row(3, [1.2] * 3, block_efficiency=2.5, leviathan_bound=1.6, batch_size=4, label="draft",
             time_shares={"draft": 0.25, "target": 0.7, "decoder": 0.05}, draft_step_seconds=0.004,
             verification_seconds=0.0301, target_step_seconds=0.03)
    vllm = {"gamma": 3, "temperature": 0.0, "engine": "vllm", "speedup": 0.9, "block_efficiency": 2.0}
    headers, rows = time_table({"speculate-batched": [r], "speculate-vllm": [vllm]})
    assert dict(zip(headers, rows[0])) == {
        "stage": "speculate-batched (draft)", "batch": "4", "gamma": "3", "T": "0.00", "tokens / call": "2.50",
        "draft": "25%", "target": "70%", "decoder": "5%", "draft step ms": "4.0", "verification ms": "30.1",
        "target step ms": "30.0", "speedup / bound": "75%"}
    assert len(rows) == 1


def _layer_row(label, per_pass, **kw):
    return {**_row(2, per_pass, label=label), "prompts": 64, "params": {"target": 134.5e6, "draft": 30e6},
            "per_position_acceptance": [0.5, 0.25], "block_efficiency": 1.7, "cost_ratio": 0.18,
            "verification_cost": 0.9, **kw}


def _layers_result(rows):
    return {"report": {"drafts": {"speculate": {"speculate-layers-val": rows}}},
            "run": {"commit": "0123abc"}, "environment": {"cpu": {"model": "a CPU", "usable_cores": 2}}}


def test_the_layer_choices_block_follows_each_draft_to_its_layers_and_compares_pass_by_pass(readme):
    from seqkd.pipeline.recipe import load_recipe

    recipe = load_recipe("smollm2-layers")
    assert [readme.layers_of(recipe, d) for d in ("pruned-first2", "pruned-first4", "pruned-spread4",
                                                  "pruned-first8")] == ["first:2", "first:4", "0,10,20,29", "first:8"]
    rows = [_layer_row("pruned-first2", [1.1, 1.2, 1.3]), _layer_row("pruned-first4", [1.0, 1.2, 1.25]),
            _layer_row("pruned-spread4", [0.9, 1.0, 1.1]), _layer_row("pruned-first8", [1.0, 1.1, 1.2])]
    block = readme.render_smollm2_layers(_layers_result(rows))
    table = {r.split(" | ")[0].lstrip("| "): r.split(" | ") for r in block.splitlines() if r.startswith("| pruned")}
    assert table["pruned-spread4"][1] == "0,10,20,29" and table["pruned-first2"][2] == "30.0M"
    # per pass 1.1 / 1.0, 1.2 / 1.2, 1.3 / 1.25: median 1.04, min 1.0, max 1.1 (not the ratio of the medians)
    assert table["pruned-first2"][-1] == "1.040 (1.000–1.100)× |"
    assert table["pruned-first4"][-1] == "1.000 (1.000–1.000)× |"
    # first2's median is highest, but in pass 2 first4 ties it: not ahead in every pass
    assert "Fastest: pruned-first2 (first:2), but not ahead of every other choice in every pass" in block
    rows[1] = _layer_row("pruned-first4", [1.0, 1.15, 1.25])
    assert "Fastest: pruned-first2 (first:2), ahead of every other choice in every pass." in \
        readme.render_smollm2_layers(_layers_result(rows))
    assert "Not run at full size yet" in readme.render_smollm2_layers(None)
