"""Runs seqkd's vLLM engine (CPU) in its own process for the tests: several decoding jobs on one engine.

    python tests/vllm_engine_worker.py MODEL_DIR '{"prompts": [[ids...], ...], "jobs": [{settings}, ...]}'

Prints ``RESULT {"jobs": [[[candidate dict, ...] per prompt] per job], "chunked_prefill": bool}``.
One process, one engine start (~30 s) for all jobs;
a separate process keeps vLLM's threads and environment away from the test process.
"""

import json
import sys


def main() -> None:
    from seqkd.teacher.engines import DecodeSettings, get_engine

    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    engine = get_engine("vllm", model_dir, dtype="float32", kv_cache_space=1, enforce_eager=True,
                        max_model_len=spec.get("max_model_len", 256), engine_args=spec.get("engine_args"))
    results = []
    for job in spec["jobs"]:
        cands = engine.generate(spec["prompts"], DecodeSettings(**job))
        results.append([[c.as_dict() for c in row] for row in cands])
    chunked = engine.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill
    engine.close()
    print("RESULT " + json.dumps({"jobs": results, "chunked_prefill": chunked}))


if __name__ == "__main__":  # vLLM starts worker processes: the guard is required
    main()
