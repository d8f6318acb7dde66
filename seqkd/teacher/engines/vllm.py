"""The vLLM engine: decoder-only teachers through ``vllm.LLM`` (GPU, or CPU with the ``vllm-cpu`` build).

* sampling / greedy: one ``LLM.generate`` call with ``SamplingParams(n=num_samples, logprobs=k)``;
* beam search: ``LLM.beam_search(BeamSearchParams(beam_width, max_tokens, length_penalty))``.

Scaling is vLLM's own: ``tensor_parallel_size`` / ``pipeline_parallel_size`` / ``distributed_executor_backend``
(and anything else in ``engine_args``) go to ``vllm.LLM`` unchanged, so a multi-GPU node or a Ray cluster decodes
one corpus; ``seqkd generate --shard i/N`` adds data parallelism across independent workers on top.

Log-probs are vLLM's ``raw_logprobs`` (log-softmax of the model's logits in float32, before temperature, top-k /
top-p): the teacher's own distribution, as the engine contract asks. Differences from the HF engine (documented
and measured in the tests and the benchmark):

* **beam search**: vLLM expands ``2 * beam_size`` candidates per beam per step like HF, but (a) it has no early
  stopping: every prompt runs ``max_new_tokens`` steps, one single-token request per live beam per step, which
  is why it is slow; (b) an eos anywhere among a beam's ``2 * beam_size`` candidates completes a hypothesis (HF:
  only among the step's best ``beam_size``), so vLLM considers more finished hypotheses; (c) it ranks them by
  ``logprob / (prompt + generated length) ** length_penalty``. This engine re-ranks the ``beam_size`` hypotheses
  vLLM returns by HF's key, ``logprob / generated_length ** length_penalty`` (eos counted), so ``nbest`` and
  ``length_penalty`` mean the same on both engines; the top hypotheses still differ where (a)/(b) let vLLM find a
  hypothesis HF's search never finished (the tests and the benchmark report the agreement rate). Top-k log-probs
  come from the ``2 * beam_size`` candidates each step scored; beyond that the hypotheses are re-scored with
  one prompt-log-probs pass.
* **sampling**: each prompt's request gets its own seed derived from ``(settings.seed, position)``, so samples
  do not depend on the batch, but vLLM's random streams are not torch's: the same seed gives other samples than
  the HF engine (the same distribution).

The CPU build reads ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache; its default memory share can fail on small
machines) and ``VLLM_CPU_NUM_OF_RESERVED_CPU`` (0 = compute on every core); this module sets both unless the
caller did. vLLM starts worker processes: a script that creates this engine needs an ``if __name__ ==
"__main__":`` guard.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
from typing import Any, Sequence

from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN
from seqkd.errors import SeqkdError
from seqkd.teacher.engines import Candidate, DecodeSettings, TextCodec, check_vocab

_FLOOR = -3.4028234663852886e38  # float32 min: -inf log-probs are stored as this (JSON has no -inf)


def _f32(x: float) -> float:
    """A float32 value as the shortest decimal that round-trips at float32 (the HF engine stores the same)."""
    import numpy as np

    return float(str(np.float32(max(x, _FLOOR))))


def _is_cpu_platform() -> bool:
    """True under the vllm-cpu build (no GPU platform)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s sampling request: independent of batch composition and of the other prompts."""
    h = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class VLLMEngine:
    """A decoder-only teacher served by ``vllm.LLM``. ``engine_args`` go to ``vllm.LLM`` as keyword arguments
    (e.g. ``{"gpu_memory_utilization": 0.8, "distributed_executor_backend": "ray"}``)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        max_model_len: int | None = None,
        kv_cache_space: int = 2,
        enforce_eager: bool = False,
        max_logprobs: int = 64,
        prompt_format: str = "auto",
        max_source_len: int = DEFAULT_MAX_SOURCE_LEN,
        trust_remote_code: bool = False,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        from seqkd.models.tokenizer import load_tokenizers

        model_dir = str(model_dir)
        if model_dir.endswith(".gguf"):
            raise SeqkdError(f"{model_dir}: convert the GGUF file first (seqkd model convert-gguf) and give the "
                             "converted directory as the teacher")
        for nm, v in (("tensor_parallel_size", tensor_parallel_size), ("pipeline_parallel_size",
                                                                       pipeline_parallel_size),
                      ("max_logprobs", max_logprobs)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SeqkdError(f"vllm engine: {nm} must be a positive integer, got {v!r}")
        if not isinstance(kv_cache_space, int) or isinstance(kv_cache_space, bool) or kv_cache_space < 1:
            # vLLM reads VLLM_CPU_KVCACHE_SPACE as a whole number of GiB ("2.0" fails its config validation)
            raise SeqkdError(f"vllm engine: kv_cache_space must be a whole number of GiB >= 1, got {kv_cache_space!r}")
        config = _load_config(model_dir, trust_remote_code)
        if getattr(config, "is_encoder_decoder", False):
            raise SeqkdError(f"{model_dir} is an encoder-decoder model ({config.model_type}); vLLM serves decoder-only "
                             "models: use --engine hf")
        self.model_dir = model_dir
        self.family = "causal"
        self.src_tok, self.tgt_tok = load_tokenizers(model_dir)
        check_vocab(config, self.src_tok, self.tgt_tok, model_dir)
        self.codec = TextCodec("causal", self.src_tok, self.tgt_tok, prompt_format=prompt_format,
                               max_source_len=max_source_len)
        self.max_logprobs = max_logprobs
        self.vocab_size = config.vocab_size

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_space))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        try:
            import vllm
        except ImportError as e:
            raise SeqkdError("the vllm engine needs vLLM, which is not installed (pip install 'seqkd[gpu]', or "
                             f"'seqkd[cpu]' for the CPU build); use --engine hf ({e})") from None
        kwargs: dict[str, Any] = dict(
            model=model_dir, tokenizer=model_dir, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size, max_model_len=max_model_len, enforce_eager=enforce_eager,
            max_logprobs=max_logprobs, logprobs_mode="raw_logprobs", trust_remote_code=trust_remote_code,
            disable_log_stats=False, seed=0,
        )
        if _is_cpu_platform() and "enable_chunked_prefill" not in (engine_args or {}):
            # vLLM-CPU rewinds a seeded request's generator after a partial (chunked) prefill with
            # Generator.set_offset, a CUDA-only API: "CPU Generator does not use offset" kills the engine. Every
            # sampling request here is seeded, so on CPU prefills are never split.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(engine_args or {})
        self.llm = vllm.LLM(**kwargs)
        self.options: dict[str, Any] = {
            "dtype": dtype, "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size, "vllm_version": vllm.__version__,
            **{k: v for k, v in (engine_args or {}).items() if isinstance(v, (int, float, str, bool))},
        }

    # --- protocol --------------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.codec.encode(texts)

    def generate(self, prompts: list[list[int]], settings: DecodeSettings) -> list[list[Candidate]]:
        if not prompts:
            return []
        k = settings.topk_logprobs
        if k > self.vocab_size:
            raise SeqkdError(f"topk_logprobs={k} is more than the vocabulary ({self.vocab_size})")
        if k > self.max_logprobs:
            raise SeqkdError(f"topk_logprobs={k} is more than the vllm engine's max_logprobs={self.max_logprobs} "
                             "(raise it with --engine-arg max_logprobs=N)")
        if settings.mode == "beam":
            return self._beam(prompts, settings)
        return self._sample(prompts, settings)

    def close(self) -> None:
        self.llm = None
        gc.collect()

    # --- sampling and greedy -----------------------------------------------------------------------------------------
    def _sample(self, prompts: list[list[int]], settings: DecodeSettings) -> list[list[Candidate]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = settings.mode == "greedy"
        eos = self.codec.eos_id
        params = []
        for i in range(len(prompts)):
            params.append(SamplingParams(
                n=settings.num_return,
                temperature=0.0 if greedy else settings.temperature,
                top_p=1.0 if greedy else settings.top_p,
                top_k=0 if greedy or settings.top_k == 0 else settings.top_k,
                max_tokens=settings.max_new_tokens,
                stop_token_ids=[eos],
                logprobs=settings.topk_logprobs,
                seed=None if greedy else request_seed(settings.seed, i),
                detokenize=False,
            ))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        result = []
        for out in outs:
            row = []
            for comp in out.outputs:
                ids = list(comp.token_ids)
                row.append(self._candidate(ids, comp.logprobs, settings.topk_logprobs,
                                           finished=bool(ids) and ids[-1] == eos))
            result.append(row)
        return result

    # --- beam search -----------------------------------------------------------------------------------------------
    def _beam(self, prompts: list[list[int]], settings: DecodeSettings) -> list[list[Candidate]]:
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import BeamSearchParams

        eos = self.codec.eos_id
        vllm_eos = self.llm.get_tokenizer().eos_token_id
        if vllm_eos != eos:
            raise SeqkdError(f"vllm engine: beam search stops at the tokenizer's eos ({vllm_eos}) but the prompt "
                             f"format ends hypotheses with {eos}; use --engine hf for this teacher")
        if 2 * settings.beam_size > self.max_logprobs:
            raise SeqkdError(f"vllm beam search scores 2 x beam_size = {2 * settings.beam_size} candidates per step, "
                             f"more than max_logprobs={self.max_logprobs} (raise it with --engine-arg max_logprobs=N)")
        params = BeamSearchParams(beam_width=settings.beam_size, max_tokens=settings.max_new_tokens,
                                  length_penalty=settings.length_penalty)
        outs = self.llm.beam_search([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params)
        k = settings.topk_logprobs
        from_steps = k <= 2 * settings.beam_size  # each step scored the top 2*beam_size tokens
        result: list[list[Candidate]] = []
        lp = settings.length_penalty
        for p, out in zip(prompts, outs):
            row = []
            for seq in out.sequences:
                ids = list(seq.tokens[len(p):])
                row.append(self._candidate(ids, seq.logprobs, k if from_steps else 0,
                                           finished=bool(ids) and ids[-1] == eos))
            # vLLM ranked by its own key (prompt-inclusive length); rank the beam_size survivors by HF's (stable)
            row.sort(key=lambda c: -c.logprob / max(len(c.token_ids), 1) ** lp)
            result.append(row[: settings.nbest])
        if k and not from_steps:
            self._attach_topk(prompts, result, k)
        return result

    def _attach_topk(self, prompts: list[list[int]], cands: list[list[Candidate]], k: int) -> None:
        """Top-k log-probs of finished candidates from one teacher-forced pass (``prompt_logprobs``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        flat = [(p, c) for p, row in zip(prompts, cands) for c in row]
        params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p) + c.token_ids) for p, c in flat], params,
                                 use_tqdm=False)
        for (p, c), out in zip(flat, outs):
            steps = out.prompt_logprobs[len(p):]
            c.topk_ids, c.topk_logprobs = _topk(steps, k)

    # --- shared ----------------------------------------------------------------------------------------------------
    def _candidate(self, ids: list[int], steps, k: int, finished: bool) -> Candidate:
        """``steps[t]``: vLLM's ``{token_id: Logprob}`` at generated position t (holds the chosen token)."""
        if steps is None or len(steps) != len(ids):
            n = 0 if steps is None else len(steps)
            raise RuntimeError(f"vllm returned {n} log-prob steps for {len(ids)} tokens")
        lps = [_f32(steps[t][tok].logprob) for t, tok in enumerate(ids)]
        total = math.fsum(lps)
        top_ids, top_lps = _topk(steps, k) if k else (None, None)
        return Candidate(token_ids=ids, text=self.codec.decode(ids), logprob=total,
                         norm_logprob=total / max(len(ids), 1), token_logprobs=lps, finished=finished,
                         topk_ids=top_ids, topk_logprobs=top_lps)


def _topk(steps, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The k most likely tokens of each step's ``{token_id: Logprob}``, most likely first."""
    ids, lps = [], []
    for step in steps:
        best = sorted(step.items(), key=lambda kv: -kv[1].logprob)[:k]
        if len(best) < k:
            raise RuntimeError(f"vllm returned {len(best)} log-probs at a step, {k} were asked for")
        ids.append([t for t, _ in best])
        lps.append([_f32(lp.logprob) for _, lp in best])
    return ids, lps


def _load_config(model_dir: str, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise SeqkdError(f"{model_dir}: no loadable model config ({str(e).splitlines()[0]})") from None


create = VLLMEngine  # the factory seqkd.teacher.engines.get_engine calls: create(model_dir, **options)
