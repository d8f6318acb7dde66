"""Distillation corpora: resumable after SIGKILL, shardable, self-describing, strict about what they read."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from seqkd.data.files import Example
from seqkd.data.synthetic import synthetic_pairs
from seqkd.errors import DataError, SeqkdError
from seqkd.teacher.corpus import (
    CORPUS_FILE,
    MANIFEST,
    chunk_file_name,
    generate_corpus,
    manifest_differences,
    merge_corpus,
    read_corpus,
    read_manifest,
    shard_dir_name,
)
from seqkd.teacher.engines import DecodeSettings, get_engine
from seqkd.teacher.selection import select

BATCH = 2  # engine batch size: part of the manifest, so the subprocess worker uses the same


@pytest.fixture(scope="module")
def engine(tiny_lm_model):
    e = get_engine("hf", str(tiny_lm_model), batch_size=BATCH)
    yield e
    e.close()


def _examples(n, seed=31, with_refs=True):
    srcs, refs = synthetic_pairs(n, seed=seed, multimodality=0.0)
    # ids with gaps, as after skipped empty lines; the corpus sorts by id
    return [Example(3 * i + 1, s, r if with_refs else None) for i, (s, r) in enumerate(zip(srcs, refs))]


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# --- kill and resume -------------------------------------------------------------------------------------------------
WORKER = r"""
import json, sys
from seqkd.teacher.corpus import generate_corpus
from seqkd.data.files import Example
from seqkd.teacher.engines import DecodeSettings
from seqkd.teacher.engines import get_engine
job = json.loads(sys.argv[1])
engine = get_engine("hf", job["model"], batch_size=job["batch_size"])
examples = [Example(*e) for e in job["examples"]]
generate_corpus(engine, examples, job["out"], DecodeSettings(**job["settings"]), chunk_size=job["chunk_size"],
                shard=tuple(job["shard"]), progress=False)
"""


def _start_worker(job, log):
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # same float arithmetic as this process
    with open(log, "ab") as f:  # a file, not a pipe: a pipe nobody reads could fill and stall the worker
        return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(job)], env=env,
                                stdout=subprocess.DEVNULL, stderr=f)


def _chunks(out):
    return sorted(p.name for p in out.glob("shard-*/chunk-*.jsonl"))


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(engine, tiny_lm_model, tmp_path):
    examples = _examples(30)
    settings = DecodeSettings(mode="sample", num_samples=2, temperature=1.2, top_k=20, topk_logprobs=2,
                              max_new_tokens=20, seed=5)
    ref = tmp_path / "uninterrupted"
    summary = generate_corpus(engine, examples, ref, settings, chunk_size=2, progress=False)
    assert summary["sentences"] == 30 and summary["corpus"] == str(ref / CORPUS_FILE)
    assert summary["tokens"] > 0 and summary["hypotheses"] == 60

    out = tmp_path / "killed"
    job = {"model": str(tiny_lm_model), "batch_size": BATCH, "out": str(out), "chunk_size": 2, "shard": [0, 1],
           "settings": settings.as_dict(), "examples": [[e.id, e.source, e.target] for e in examples]}
    rng = random.Random(1234)
    log = tmp_path / "worker.log"
    kills = 0
    for _ in range(3):
        before = len(_chunks(out))
        proc = _start_worker(job, log)
        deadline = time.monotonic() + 120
        while proc.poll() is None and len(_chunks(out)) <= before and time.monotonic() < deadline:
            time.sleep(0.002)  # wait until this run has written at least one chunk of its own
        time.sleep(rng.uniform(0, 0.05))  # then kill at a random moment: mid-chunk, mid-write, between chunks
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), log.read_text()
    assert kills == 3, "the worker finished before it could be killed: make the job longer"
    assert len(_chunks(out)) >= 3  # each killed run had written at least one chunk
    # What a kill in the middle of a chunk write leaves behind (rarely hit at random: a write takes ~1 ms)
    (out / shard_dir_name(0, 1) / ".chunk-000007.jsonl.99999.tmp").write_text('{"id": 22, "sou')
    proc = _start_worker(job, log)
    assert proc.wait() == 0, log.read_text()
    assert len(_chunks(out)) == 15
    assert (out / CORPUS_FILE).read_bytes() == (ref / CORPUS_FILE).read_bytes()
    assert manifest_differences(read_manifest(ref), read_manifest(out)) == []
    assert not list(out.glob("shard-*/.*.tmp"))  # no temporary file survives a finished run


def test_sharded_run_merged_equals_unsharded_run(engine, tmp_path):
    examples = _examples(11)
    settings = DecodeSettings(mode="beam", beam_size=3, nbest=2, topk_logprobs=3, max_new_tokens=30)
    whole = tmp_path / "whole"
    generate_corpus(engine, examples, whole, settings, chunk_size=2, progress=False)

    parts = tmp_path / "parts"
    s0 = generate_corpus(engine, examples, parts, settings, shard="0/3", chunk_size=2, progress=False)
    assert s0["corpus"] is None and s0["shard"] == "0/3"
    with pytest.raises(SeqkdError) as e:  # two shards missing: the merge says which chunks
        merge_corpus(parts)
    _one_line_error(e, "corpus incomplete, 4 of 6 chunks missing", "shard-001-of-003: 2 (chunk-000001.jsonl, "
                    "chunk-000004.jsonl)", "shard-002-of-003")
    with pytest.raises(SeqkdError, match="not merged yet .*4 chunk"):
        read_corpus(parts)
    generate_corpus(engine, examples, parts, settings, shard=(2, 3), chunk_size=2, progress=False)
    last = generate_corpus(engine, examples, parts, settings, shard=(1, 3), chunk_size=2, progress=False)
    assert last["corpus"] == str(parts / CORPUS_FILE)  # the shard that completes the corpus merges it
    assert sorted(p.name for p in (parts / shard_dir_name(1, 3)).iterdir()) == [chunk_file_name(1),
                                                                                 chunk_file_name(4)]
    assert (parts / CORPUS_FILE).read_bytes() == (whole / CORPUS_FILE).read_bytes()

    records = list(read_corpus(whole))
    assert [r["id"] for r in records] == [e.id for e in examples]
    assert all(len(r["hypotheses"]) == 2 and r["reference"] for r in records)
    h = records[0]["hypotheses"][0]
    assert len(h["topk_ids"][0]) == 3 and len(h["topk_ids"]) == len(h["token_ids"]) == len(h["token_logprobs"])
    m = read_manifest(whole)
    assert m["merged"]["examples"] == 11 and m["merged"]["hypotheses"] == 22
    assert m["teacher"]["files"]["model.safetensors"] and m["engine"] == {"name": "hf", "device": "cpu",
                                                                        "dtype": "float32", "batch_size": BATCH}
    assert m["settings"]["nbest"] == 2 and m["tokenizer"]["vocab_size"] == len(engine.tgt_tok)

    # a rerun of a finished corpus does nothing
    again = generate_corpus(engine, examples, whole, settings, chunk_size=2, progress=False)
    assert again["sentences"] == 0 and again["chunks_skipped"] == 6

    # readable by datasets.load_dataset("json")
    import datasets

    ds = datasets.load_dataset("json", data_files=str(whole / CORPUS_FILE), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    assert ds.num_rows == 11 and ds[0]["hypotheses"][0]["token_ids"] == h["token_ids"]

    # every hypothesis as a weighted example: weights of a source sum to 1
    sel = select(records, "all")
    for r in records:
        assert sum(x["weight"] for x in sel if x["id"] == r["id"]) == pytest.approx(1.0)


def test_manifest_mismatch_is_refused_unless_overwrite(engine, tmp_path):
    examples = _examples(4, with_refs=False)
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    greedy = DecodeSettings(mode="greedy", max_new_tokens=10)
    generate_corpus(engine, examples, out, greedy, chunk_size=2, progress=False, manifest_extra={"cmd": "a"})
    # extra (e.g. the command line) is recorded but not compared
    generate_corpus(engine, examples, out, greedy, chunk_size=2, progress=False, manifest_extra={"cmd": "b"})
    beam = DecodeSettings(mode="beam", beam_size=2, max_new_tokens=10)
    with pytest.raises(SeqkdError) as e:
        generate_corpus(engine, examples, out, beam, chunk_size=2, progress=False)
    _one_line_error(e, "made with different settings", "settings.mode: greedy -> beam", "--overwrite")
    with pytest.raises(SeqkdError) as e:
        generate_corpus(engine, examples, out, greedy, chunk_size=3, progress=False)
    _one_line_error(e, "chunk_size: 2 -> 3")
    with pytest.raises(SeqkdError) as e:
        generate_corpus(engine, examples[:3], out, greedy, chunk_size=2, progress=False)
    _one_line_error(e, "input.examples: 4 -> 3")
    with pytest.raises(SeqkdError) as e:
        generate_corpus(engine, examples, out, greedy, shard="0/2", chunk_size=2, progress=False)
    _one_line_error(e, "shards: 1 -> 2")

    s = generate_corpus(engine, examples, out, beam, chunk_size=2, progress=False, overwrite=True)
    assert s["sentences"] == 4 and read_manifest(out)["settings"]["mode"] == "beam"
    assert (out / "notes.txt").read_text() == "mine"  # overwrite removes only what a corpus run writes
    assert all(r["reference"] is None for r in read_corpus(out))

    # corpus files without a manifest are not silently reused
    (out / MANIFEST).unlink()
    with pytest.raises(SeqkdError, match="corpus files but no manifest.json"):
        generate_corpus(engine, examples, out, beam, chunk_size=2, progress=False)


def test_bad_input_and_corrupt_shards_give_one_line_errors(engine, tmp_path):
    greedy = DecodeSettings(mode="greedy", max_new_tokens=10)
    with pytest.raises(SeqkdError) as e:
        generate_corpus(engine, [], tmp_path / "empty", greedy, input_path="in.de", progress=False)
    _one_line_error(e, "nothing to decode", "in.de")
    for shard in ("3/3", "x", (1,)):
        with pytest.raises(SeqkdError, match="shard"):
            generate_corpus(engine, _examples(2), tmp_path / "s", greedy, shard=shard, progress=False)
    with pytest.raises(SeqkdError, match="chunk_size"):
        generate_corpus(engine, _examples(2), tmp_path / "s", greedy, chunk_size=0, progress=False)
    with pytest.raises(SeqkdError, match="id 1 occurs twice"):
        generate_corpus(engine, _examples(2) * 2, tmp_path / "s", greedy, progress=False)

    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    with pytest.raises(SeqkdError, match="is a file; the corpus output must be a directory"):
        generate_corpus(engine, _examples(2), src, greedy, progress=False)
    out = tmp_path / "c"
    generate_corpus(engine, _examples(5), out, greedy, chunk_size=2, progress=False, input_path=src)
    assert len(read_manifest(out)["input"]["sha256"]) == 64
    chunk = out / shard_dir_name(0, 1) / chunk_file_name(1)
    good = chunk.read_text()
    lines = good.splitlines()
    chunk.write_text(lines[0] + "\n" + lines[1][:40] + "\n")  # a half record
    with pytest.raises(DataError) as e:
        merge_corpus(out)
    _one_line_error(e, f"{chunk}:2: not valid JSON")
    chunk.write_text(lines[0] + "\n")  # a record lost
    with pytest.raises(DataError) as e:
        merge_corpus(out)
    _one_line_error(e, f"{chunk}: 1 records, expected 2")
    rec = json.loads(lines[1])
    del rec["hypotheses"][0]["logprob"]
    chunk.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"chunk-000001.jsonl:2: hypothesis 0: missing field \"logprob\""):
        merge_corpus(out)
    rec = json.loads(lines[1])
    rec["source"] = "something else"
    chunk.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match="do not hold the examples the manifest describes"):
        merge_corpus(out)
    chunk.write_text(good)
    merge_corpus(out)

    corpus = out / CORPUS_FILE
    text = corpus.read_text().splitlines()
    corpus.write_text("\n".join(text[:2] + ["{oops"] + text[3:]) + "\n")
    reader = read_corpus(corpus)
    assert next(reader)["id"] == 1 and next(reader)["id"] == 4
    with pytest.raises(DataError) as e:
        next(reader)
    _one_line_error(e, f"{corpus}:3: not valid JSON")
    corpus.write_text("\n".join(text))  # no final newline: the last line may be cut short
    with pytest.raises(DataError, match=f"{CORPUS_FILE}:5: truncated line"):
        list(read_corpus(out))
    with pytest.raises(DataError, match="file not found"):
        read_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not a seqkd corpus"):
        read_corpus(tmp_path)
