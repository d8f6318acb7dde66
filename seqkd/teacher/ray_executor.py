"""``seqkd generate --executor ray``: a corpus decoded over a Ray cluster, one task per shard.

Each task runs ``seqkd generate --shard i/N`` in its own Ray worker (the chosen engine loads there; vLLM keeps its own
tensor / pipeline parallelism inside the worker) and writes its chunks into the corpus directory, which every node
must see (a shared filesystem). Chunks are written whole and skipped when present, so a task that Ray retries after
its worker died continues where the killed one stopped; when every shard is done the driver merges them. The merged
corpus is byte-identical to a single-process run's (the corpus format's sharding guarantee,
:mod:`seqkd.teacher.corpus`). ``ray`` is an optional dependency (``pip install seqkd[ray]``), imported only here.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from seqkd.config import DecodeSettings, GenerateConfig
from seqkd.errors import SeqkdError


def _decode_shard(cfg: GenerateConfig, settings: DecodeSettings, command: list[str] | None) -> dict:
    from seqkd.teacher.generate import generate

    return generate(cfg, settings, command=command, progress=False)


def generate_on_ray(cfg: GenerateConfig, settings: DecodeSettings, *, command: list[str] | None = None) -> dict:
    """Decode ``cfg``'s examples in ``cfg.workers`` Ray tasks (shard i of ``cfg.workers`` each) and merge; returns
    the shards' summaries and the merged corpus's path. Connects to ``cfg.ray_address`` (default: a local cluster)
    unless Ray is already initialised."""
    try:
        import ray
    except ImportError:
        raise SeqkdError("--executor ray needs Ray: pip install 'seqkd[ray]' (or pip install ray)") from None
    from seqkd.teacher.corpus import MANIFEST, check_corpus_dir, merge_corpus, read_manifest

    check_corpus_dir(cfg.out)
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=cfg.ray_cpus, num_gpus=cfg.ray_gpus, max_retries=cfg.ray_retries)(_decode_shard)
    n = cfg.workers
    shard = [dataclasses.replace(cfg, shard=f"{i}/{n}", no_merge=True, executor="local") for i in range(n)]
    t0 = time.perf_counter()
    refs = [task.remote(shard[0], settings, command)]
    manifest = Path(cfg.out) / MANIFEST
    while not manifest.is_file():  # the first task writes the manifest; the others then find it and agree with it
        done, _ = ray.wait(refs, timeout=0.2)
        if done:
            ray.get(done)  # its error, if it failed before writing one
            break
    refs += [task.remote(s, settings, command) for s in shard[1:]]
    summaries = ray.get(refs)
    path = merge_corpus(cfg.out)
    seconds = time.perf_counter() - t0
    total = {k: sum(s[k] for s in summaries) for k in ("sentences", "hypotheses", "tokens", "chunks_skipped")}
    return {**total, "shard": f"ray x {n}", "seconds": seconds, "sentences_per_s": total["sentences"] / seconds,
            "tokens_per_s": total["tokens"] / seconds, "corpus": str(path), "shards": summaries,
            "merged": read_manifest(cfg.out).get("merged")}
