"""The main-job demo, quick variant: every stage runs and its numbers are sane."""

import pytest


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path):
    from seqkd.demo import run_demo

    r = run_demo(tmp_path / "demo", quick=True)
    assert r["teacher_bleu"] > 30  # 300 steps on the synthetic task (the full demo reaches ~96)
    assert r["corpus_sentences"] == 400 and (tmp_path / "demo" / "corpus" / "corpus.jsonl").is_file()
    # the references are multimodal (30%): the n-best entry closest to the reference matches it better than
    # the teacher's own best, which is what sequence-level interpolation is for
    assert r["seq-inter_bleu"] > r["top_bleu"]
    # aligning the distilled student as the teacher's draft (DistillSpec: on-policy, TVD) raises its acceptance
    assert 0 < r["draft_acceptance_before"] < r["draft_acceptance_after"] <= 1
