"""Runs vLLM (CPU) in its own process for the tests: greedy-decode prompt token ids, print JSON.

    python tests/vllm_worker.py MODEL_DIR '{"prompts": [[ids...], ...], "max_tokens": 20}'

A separate process keeps vLLM's engine (threads, environment) away from the test process.
"""

import json
import os
import sys


def main() -> None:
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_dir, dtype="float32", max_model_len=spec.get("max_model_len", 256), seed=0,
              enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], stop_token_ids=spec.get("stop", []))
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]], params, use_tqdm=False)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))


if __name__ == "__main__":
    main()
