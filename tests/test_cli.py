"""The command line: bad input gives one line on stderr and exit status 2; good input does the job."""

import gzip
import json
import subprocess
import sys

import pytest

from seqkd.cli import build_parser, main


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(capsys, argv, *needles):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqkd: error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def files(tmp_path):
    def make(name, text, *, raw=None):
        p = tmp_path / name
        if raw is not None:
            p.write_bytes(raw)
        elif name.endswith(".gz"):
            p.write_bytes(gzip.compress(text.encode()))
        else:
            p.write_text(text, encoding="utf-8")
        return p
    return make


# --- part 1: every bad-input case of the data readers, through the CLI ---------------------------------------------
def test_missing_file(capsys, tmp_path):
    assert_error(capsys, ["data", "check", tmp_path / "nope.de", tmp_path / "nope.en"], "nope.de", "not found")


def test_different_line_counts(capsys, files):
    src, tgt = files("a.de", "a\nb\nc\n"), files("a.en", "x\ny\n")
    assert_error(capsys, ["data", "check", src, tgt], "a.de", "a.en", "3", "2")


def test_invalid_utf8_names_the_line(capsys, files):
    src = files("bad.de", "", raw=b"ok\nalso ok\nbroken \xff here\n")
    tgt = files("bad.en", "a\nb\nc\n")
    assert_error(capsys, ["data", "check", src, tgt], "bad.de:3", "UTF-8")


def test_empty_lines_are_skipped_and_counted_or_strict_error(capsys, files):
    src, tgt = files("e.de", "a\n  \nc\n"), files("e.en", "x\ny\n\n")
    code, out, err = run(capsys, "data", "check", src, tgt)
    assert code == 0 and "3 lines, 1 kept, 2 skipped (empty)" in out
    assert_error(capsys, ["data", "check", src, tgt, "--strict"], "e.de:2", "empty")


def test_long_lines_truncated_and_counted_or_strict_error(capsys, files):
    src, tgt = files("l.de", "a" * 50 + "\nb\n"), files("l.en", "x\ny\n")
    code, out, err = run(capsys, "data", "check", src, tgt, "--max-chars", 10)
    assert code == 0 and "1 truncated" in out
    assert_error(capsys, ["data", "check", src, tgt, "--max-chars", 10, "--strict"], "l.de:1", "50 characters")


def test_gz_tsv_jsonl(capsys, files):
    code, out, _ = run(capsys, "data", "check", files("p.de.gz", "a\nb\n"), files("p.en.gz", "x\ny\n"))
    assert code == 0 and "2 kept" in out
    code, out, _ = run(capsys, "data", "check", files("p.tsv", "a\tx\nb\ty\n"))
    assert code == 0 and "2 kept" in out
    assert_error(capsys, ["data", "check", files("bad.tsv", "a\tx\nno tab here\n")], "bad.tsv:2")
    good = files("p.jsonl", json.dumps({"source": "a", "target": "x"}) + "\n")
    code, out, _ = run(capsys, "data", "check", good)
    assert code == 0 and "1 kept" in out
    assert_error(capsys, ["data", "check", files("bad.jsonl", '{"source": "a"}\n')], "bad.jsonl:1", "target")
    assert_error(capsys, ["data", "check", files("bad2.jsonl", "{not json\n")], "bad2.jsonl:1")


def test_prompt_file_check(capsys, files):
    code, out, _ = run(capsys, "data", "check", files("prompts.txt", "hello\n\nworld\n"))
    assert code == 0 and "2 kept, 1 skipped" in out


def test_unknown_dataset(capsys):
    assert_error(capsys, ["data", "path", "wmt99:xx-yy"], "wmt99")


# --- training / decoding / evaluation commands ------------------------------------------------------------------------
def test_train_config_errors(capsys, tmp_path, files):
    assert_error(capsys, ["train", "--out", tmp_path / "o"], "exactly one of")
    assert_error(capsys, ["train", "--out", tmp_path / "o", "--data", "synthetic", "--schedule", "bogus"], "schedule")
    src = files("t.de", "a\nb\n")
    assert_error(capsys, ["train", "--out", tmp_path / "o", "--train-source", src, "--train-target",
                          tmp_path / "missing.en"], "missing.en", "not found")
    assert_error(capsys, ["train", "--out", tmp_path / "o", "--data", "synthetic", "--model", "gpt-huge"],
                 "gpt-huge")


def test_translate_and_eval_errors(capsys, tmp_path, files, tiny_mt_model):
    src = files("in.txt", "a\n")
    assert_error(capsys, ["translate", "--model", tmp_path / "nomodel", "--input", src, "--output", tmp_path / "o"],
                 "nomodel")
    assert_error(capsys, ["translate", "--model", tiny_mt_model, "--input", tmp_path / "none.txt",
                          "--output", tmp_path / "o"], "none.txt")
    assert_error(capsys, ["eval", "--hyp", files("h.txt", "a\nb\n"), "--ref", files("r.txt", "a\n")],
                 "2 hypotheses", "1 references")
    assert_error(capsys, ["eval", "--ref", files("r2.txt", "a\n")], "--hyp")


def test_eval_scores_with_signature(capsys, files):
    ref = files("r.txt", "the cat sat on the mat\na dog runs\n")
    code, out, _ = run(capsys, "eval", "--hyp", ref, "--ref", ref, "--json")
    scores = json.loads(out)["scores"]
    assert code == 0 and scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_translate_keeps_line_alignment(capsys, tmp_path, files, tiny_mt_model):
    from seqkd.data.synthetic import synthetic_pairs

    srcs, refs = synthetic_pairs(7, seed=5, multimodality=0.0)
    lines = srcs[:3] + [""] + srcs[3:]
    inp, out = files("src.txt", "\n".join(lines) + "\n"), tmp_path / "hyp.txt"
    code, _, err = run(capsys, "translate", "--model", tiny_mt_model, "--input", inp, "--output", out,
                       "--beam-size", 2, "--batch-size", 3)
    assert code == 0, err
    hyps = out.read_text().split("\n")[:-1]
    assert len(hyps) == 8 and hyps[3] == "" and all(h for i, h in enumerate(hyps) if i != 3)
    # --model mode of eval translates the same way and reports speed
    ref = files("ref.txt", "\n".join(refs) + "\n")
    code, o, _ = run(capsys, "eval", "--model", tiny_mt_model, "--src", files("s7.txt", "\n".join(srcs) + "\n"),
                     "--ref", ref, "--json", "--beam-size", 2, "--batch-size", 3)
    res = json.loads(o)
    assert code == 0 and res["speed"]["sentences"] == 7 and res["speed"]["words_per_s"] > 0
    hyps_no_blank = hyps[:3] + hyps[4:]
    from seqkd.evaluate import score

    assert res["scores"]["bleu"] == pytest.approx(score(hyps_no_blank, refs).bleu)


def test_every_flag_has_help():
    parser = build_parser()

    def walk(p):
        for action in p._actions:
            if action.dest in ("help", "version"):
                continue
            if action.choices and isinstance(action.choices, dict):  # subparsers
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.option_strings:
                yield action

    missing = [a.option_strings for a in walk(parser) if not (a.help or "").strip()]
    assert not missing


def test_module_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "seqkd", "data", "check", str(tmp_path / "x.txt")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("seqkd: error: ") and "Traceback" not in r.stderr


# --- bad values: one line, exit 2, before any model is loaded, nothing left behind ------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--sample", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--beam-size", "0"], "--beam-size must be >= 1"),
    (["--sample", "--temperature", "-1"], "--temperature must be > 0"),
    (["--sample", "--beam-size", "4"], "leave --beam-size at 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_translate_refuses_bad_values_before_loading(capsys, tmp_path, files, extra, needle):
    # the model does not exist: the value must be refused before anything tries to load it
    argv = ["translate", "--model", tmp_path / "no-model", "--input", files("in.txt", "a\n"),
            "--output", tmp_path / "out.txt", *extra]
    assert_error(capsys, argv, needle)
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--dropout", "5"], "--dropout must be in [0, 1)"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--schedule", "bogus"], "invalid choice: 'bogus'"),
])
def test_train_refuses_bad_values_and_leaves_no_run_directory(capsys, tmp_path, extra, needle):
    assert_error(capsys, ["train", "--out", tmp_path / "run", "--data", "synthetic", *extra], needle)
    assert not (tmp_path / "run").exists()


def test_output_locations_are_checked_before_work(capsys, tmp_path, files, tiny_mt_model):
    src = files("in.txt", "a\n")
    blocker = files("a-file", "x\n")
    assert_error(capsys, ["translate", "--model", tiny_mt_model, "--input", src, "--output", blocker / "o.txt"],
                 "a-file", "is a file")
    # a corpus must not be written into a trained model's directory
    before = sorted(p.name for p in tiny_mt_model.iterdir())
    assert_error(capsys, ["generate", "--teacher", tiny_mt_model, "--input", src, "--out", tiny_mt_model],
                 "holds a model")
    assert sorted(p.name for p in tiny_mt_model.iterdir()) == before


def test_distill_refuses_a_second_tokenizer(capsys, tmp_path, files, tiny_mt_model, tiny_lm_model):
    src = files("d.tsv", "a\tb\n")
    assert_error(capsys, ["distill", "--out", tmp_path / "s", "--teacher", tiny_mt_model, "--train-source", src,
                          "--tokenizer", tiny_lm_model], "--tokenizer", "teacher's tokenizer")


def test_data_check_strict_refuses_an_empty_corpus(capsys, files):
    empty = files("empty.txt", "\n\n")
    assert_error(capsys, ["data", "check", empty, "--strict"], "empty.txt")
    assert_error(capsys, ["data", "check", files("nothing.txt", ""), "--strict"], "nothing.txt", "no examples")
    code, out, _ = run(capsys, "data", "check", files("e2.txt", ""))
    assert code == 0 and "0 kept" in out  # without --strict an empty file is reported, not refused
