"""``seqkd generate`` / ``merge`` / ``select`` from the command line: the job end to end, and bad input."""

import json
import shutil

import pytest
from test_cli import assert_error, run


@pytest.fixture
def inputs(tmp_path):
    src = tmp_path / "src.txt"
    ref = tmp_path / "ref.txt"
    src.write_text("a b c\n\nd e f g\nh i\n")  # line 1 empty: skipped, ids stay line numbers
    ref.write_text("A B C\n\nD E F G\nH I\n")
    return src, ref


def test_generate_select_merge_end_to_end(capsys, tmp_path, inputs, tiny_mt_model):
    from datasets import load_dataset

    src, _ = inputs
    out = tmp_path / "corpus"
    argv = ["generate", "--teacher", tiny_mt_model, "--input", src, "--out", out, "--mode", "beam",
            "--beam-size", 4, "--nbest", 3, "--topk-logprobs", 2, "--max-new-tokens", 16, "--chunk-size", 2]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "3 sentences, 9 hypotheses" in stdout and "corpus:" in stdout
    records = [json.loads(l) for l in (out / "corpus.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 2, 3] and records[1]["source"] == "d e f g"
    assert all(len(r["hypotheses"]) == 3 and r["reference"] is None for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["nbest"] == 3 and manifest["extra"]["command"][0] == "generate"
    ds = load_dataset("json", data_files=str(out / "corpus.jsonl"), split="train")
    assert ds.num_rows == 3 and len(ds[0]["hypotheses"][0]["topk_ids"][0]) == 2

    code, stdout, _ = run(capsys, *argv)  # the same command again: everything is already done
    assert code == 0 and "0 sentences" in stdout and "2 chunk(s) already done" in stdout
    code, stdout, _ = run(capsys, "merge", "--corpus", out)
    assert code == 0 and "'examples': 3" in stdout

    # seq-inter against references given at selection time; the BLEU line carries the sacrebleu signature
    refs = tmp_path / "refs.txt"
    refs.write_text("\n".join(records[0]["hypotheses"][2]["text"] if i == 0 else "x" for i in range(4)) + "\n")
    train = tmp_path / "train.jsonl"
    code, stdout, _ = run(capsys, "select", "--corpus", out, "--strategy", "seq-inter", "--references", refs,
                          "--out", train)
    assert code == 0 and "3 training examples (seq-inter)" in stdout and "nrefs:1" in stdout
    examples = [json.loads(l) for l in train.read_text().splitlines()]
    assert examples[0]["target"] == records[0]["hypotheses"][2]["text"] and examples[0]["score"] == pytest.approx(100.0)
    assert examples[0]["topk_ids"] == records[0]["hypotheses"][examples[0]["rank"]]["topk_ids"]
    code, stdout, _ = run(capsys, "select", "--corpus", out / "corpus.jsonl", "--strategy", "all", "--out", train)
    assert code == 0
    weights = [json.loads(l)["weight"] for l in train.read_text().splitlines()]
    assert abs(sum(weights) - 3.0) < 1e-9


def test_generate_with_references_and_sharding(capsys, tmp_path, inputs, tiny_mt_model):
    src, ref = inputs
    out = tmp_path / "c"
    base = ["generate", "--teacher", tiny_mt_model, "--input", src, "--target", ref, "--out", out,
            "--mode", "greedy", "--chunk-size", 1, "--max-new-tokens", 12]
    code, stdout, _ = run(capsys, *base, "--shard", "0/2")
    assert code == 0 and "corpus:" not in stdout  # shard 1/2 is still missing
    assert_error(capsys, ["merge", "--corpus", out], "corpus incomplete", "1 of 3 chunks missing")
    code, stdout, _ = run(capsys, *base, "--shard", "1/2")
    assert code == 0 and "corpus:" in stdout
    code, stdout, _ = run(capsys, "select", "--corpus", out, "--strategy", "top", "--out", tmp_path / "t.jsonl")
    assert code == 0 and "BLEU" in stdout  # the corpus carries the references


def test_generate_bad_input(capsys, tmp_path, inputs, tiny_mt_model, tiny_lm_model):
    src, ref = inputs
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    g = ["generate", "--teacher", tiny_mt_model, "--out", tmp_path / "o"]
    assert_error(capsys, g + ["--input", empty], "nothing to decode", "no non-empty lines")
    assert_error(capsys, g + ["--input", tmp_path / "missing.txt"], "missing.txt")
    assert_error(capsys, g, "give either --input FILE or --data NAME")
    assert_error(capsys, g + ["--input", src, "--nbest", 6, "--beam-size", 4], "nbest=6 > beam_size=4")
    assert_error(capsys, g + ["--input", src, "--engine-arg", "x=1"], "options of --engine vllm")
    assert_error(capsys, g + ["--input", src, "--engine", "vllm"], "encoder-decoder", "use --engine hf")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_lm_model / name, bare / name)
    assert_error(capsys, ["generate", "--teacher", bare, "--input", src, "--out", tmp_path / "o"],
                 "no tokenizer files")
    out = tmp_path / "c"
    base = ["generate", "--teacher", tiny_mt_model, "--input", src, "--out", out, "--mode", "greedy",
            "--max-new-tokens", 8]
    assert run(capsys, *base)[0] == 0
    assert_error(capsys, base[:-1] + ["9"], "different settings", "max_new_tokens: 8 -> 9", "--overwrite")
    assert run(capsys, *base[:-1], "9", "--overwrite")[0] == 0
    chunk = next(out.glob("shard-*/chunk-*.jsonl"))
    chunk.write_text(chunk.read_text()[:30] + "\n")
    assert_error(capsys, ["merge", "--corpus", out], f"{chunk}:1: not valid JSON")
    assert_error(capsys, ["select", "--corpus", tmp_path, "--out", tmp_path / "t.jsonl"], "not a seqkd corpus")


def test_executor_ray_without_ray_is_one_line(capsys, tmp_path, monkeypatch):
    import sys

    from seqkd.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    src = tmp_path / "s.txt"
    src.write_text("a b\n")
    assert main(["generate", "--teacher", str(tmp_path / "t"), "--input", str(src), "--out", str(tmp_path / "c"),
                 "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor ray needs Ray: pip install 'seqkd[ray]'" in err[0]
