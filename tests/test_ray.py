"""``seqkd generate --executor ray`` on a local Ray cluster with 2 workers: the corpus is byte-identical to a
single-process run's, also when a worker is killed in the middle of its shard (Ray retries the task, which resumes
the shard's finished chunks)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from seqkd.config import DecodeSettings, GenerateConfig
from seqkd.data.synthetic import synthetic_pairs
from seqkd.errors import SeqkdError
from seqkd.teacher.corpus import CORPUS_FILE

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    src, ref = synthetic_pairs(480, seed=31, multimodality=0.3)
    d = tmp_path_factory.mktemp("ray_src")
    (d / "src.txt").write_text("\n".join(src) + "\n")
    (d / "ref.txt").write_text("\n".join(ref) + "\n")
    return d / "src.txt", d / "ref.txt"


SETTINGS = DecodeSettings(mode="beam", beam_size=4, nbest=2, topk_logprobs=3, max_new_tokens=40)


def _cfg(model, sources, out, **kw) -> GenerateConfig:
    return GenerateConfig(teacher=[str(model)], out=str(out), input=str(sources[0]), target=str(sources[1]),
                          chunk_size=12, batch_size=12, **kw)


@pytest.fixture(scope="module")
def local_corpus(tiny_mt_model, sources, tmp_path_factory):
    from seqkd.teacher.generate import generate

    out = tmp_path_factory.mktemp("ray_local") / "corpus"
    generate(_cfg(tiny_mt_model, sources, out), SETTINGS, progress=False)
    return (out / CORPUS_FILE).read_bytes()


def test_ray_corpus_equals_the_single_process_corpus(cluster, tiny_mt_model, sources, local_corpus, tmp_path):
    from seqkd.teacher.generate import generate

    out = tmp_path / "ray"
    s = generate(_cfg(tiny_mt_model, sources, out, executor="ray", workers=2), SETTINGS)
    assert s["shard"] == "ray x 2" and len(s["shards"]) == 2 and s["sentences"] == 480
    assert {x["shard"] for x in s["shards"]} == {"0/2", "1/2"}
    assert (out / CORPUS_FILE).read_bytes() == local_corpus
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["shard-000-of-002", "shard-001-of-002"]


def test_a_killed_worker_is_retried_and_the_corpus_is_still_identical(cluster, tiny_mt_model, sources, local_corpus,
                                                                     tmp_path):
    """SIGKILL one worker after its shard's first chunks: Ray retries the task; the retry skips the chunks written
    before the kill (they are not rewritten) and the merged corpus is byte-identical."""
    import psutil

    from seqkd.teacher.generate import generate

    out = tmp_path / "ray_killed"
    result: dict = {}

    def run():
        try:
            result["summary"] = generate(_cfg(tiny_mt_model, sources, out, executor="ray", workers=2), SETTINGS)
        except BaseException as e:  # noqa: BLE001 (reported by the assertion below)
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    killed, before = None, {}
    deadline = time.time() + 120
    while killed is None and t.is_alive() and time.time() < deadline:
        chunks = list(out.glob("shard-001-of-002/chunk-*.jsonl"))
        if len(chunks) >= 2:
            before = {p: p.stat().st_mtime_ns for p in out.glob("shard-*/chunk-*.jsonl")}
            for p in psutil.process_iter(["cmdline"]):
                if any("_decode_shard" in part for part in (p.info["cmdline"] or [])):
                    os.kill(p.pid, signal.SIGKILL)
                    killed = p.pid
                    break
        time.sleep(0.01)
    t.join(300)
    assert killed is not None, "no worker was caught in the middle of its shard"
    assert "error" not in result, result.get("error")
    assert (out / CORPUS_FILE).read_bytes() == local_corpus
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())  # resumed, not redone
    assert sum(x["chunks_skipped"] for x in result["summary"]["shards"]) >= 1


def test_ray_options_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(SeqkdError, match="assigns the shards itself"):
        GenerateConfig(teacher=["t"], out="o", input="i", executor="ray", shard="1/2")
    with pytest.raises(SeqkdError, match="--workers must be >= 1"):
        GenerateConfig(teacher=["t"], out="o", input="i", executor="ray", workers=0)
