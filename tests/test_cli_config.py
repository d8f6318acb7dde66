"""One config system: every command is built from its dataclasses as HfArgumentParser builds them, choices are
enforced before anything loads, ``--config FILE`` fills a job (flags override), and the CLI starts without torch."""

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import typing

import pytest

from seqkd import config as C
from seqkd.cli import COMMANDS, Parser, build_parser, main, parse
from seqkd.errors import SeqkdError


def _options(parser: argparse.ArgumentParser) -> dict:
    """What a user can type and what it means: per option string, (dest, choices, default, nargs, const, required)."""
    out = {}
    for a in parser._actions:
        if a.dest in ("help", "config") or not a.option_strings:
            continue
        choices = tuple(a.choices) if a.choices is not None else None
        for s in a.option_strings:
            out[s] = (a.dest, choices, a.default, a.nargs, a.const, a.required, type(a).__name__)
    return out


@pytest.mark.parametrize("words,classes", [(w, c) for w, _, c, _ in COMMANDS], ids=[" ".join(w) for w, *_ in COMMANDS])
def test_every_command_parses_as_hfargumentparser_would(words, classes):
    """The options equal those transformers.HfArgumentParser builds from the same dataclasses (positional fields
    aside), so the convention is HF's, without importing transformers to print --help."""
    from transformers import HfArgumentParser

    ours = _options(Parser(dataclass_types=classes))
    plain = [dataclasses.make_dataclass(c.__name__, [(f.name, typing.get_type_hints(c)[f.name], f)
                                                     for f in dataclasses.fields(c)
                                                     if not f.metadata.get("positional")]) for c in classes]
    hf = _options(HfArgumentParser(plain))
    for key in ours.keys() | hf.keys():
        if key in ours and key in hf and ours[key][1] is not None:
            assert ours[key][1] == hf[key][1], key
    strip = {k: v[:1] + v[2:] for k, v in ours.items()}  # choice-typed values compared above
    assert strip == {k: v[:1] + v[2:] for k, v in hf.items()}


def test_literal_choices_are_shown_and_enforced_before_loading(capsys):
    parser = build_parser()
    distill = parser._subparsers._group_actions[0].choices["distill"]
    help_text = distill.format_help()
    assert "{forward_kl,reverse_kl,jsd,interpolated_jsd,tvd,skew_kl,skew_reverse_kl,fkl,kl,rkl}" in help_text
    code = main(["distill", "--out", "x", "--teacher", "t", "--data", "synthetic", "--divergence", "nosuch"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("seqkd: error: distill: argument --divergence")
    assert "'forward_kl'" in err[0] and "'tvd'" in err[0]
    # the Python API validates the same choices (a config file or a caller bypasses the parser)
    with pytest.raises(SeqkdError, match="--divergence must be one of forward_kl, .*got 'nosuch'"):
        C.DistillConfig(out="x", teacher="t", data="synthetic", divergence="nosuch")
    with pytest.raises(SeqkdError, match="mode must be one of beam, sample, greedy"):
        C.DecodeSettings(mode="nucleus")


def test_mistyped_divergence_fails_fast_in_a_fresh_process(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "seqkd", "distill", "--out", str(tmp_path / "s"), "--teacher", "t",
                        "--data", "synthetic", "--divergence", "nosuch"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "invalid choice: 'nosuch'" in r.stderr
    assert seconds < 5, seconds
    assert not (tmp_path / "s").exists()


_NO_HEAVY = """
import sys, time
t0 = time.perf_counter()
from seqkd.cli import build_parser, main
build_parser()
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "seqkd.student.trainer", "seqkd.student.distill",
                           "seqkd.speculative.align", "seqkd.teacher.engines") if m in sys.modules)
print("HEAVY", heavy, "CODE", code, "SECONDS", time.perf_counter() - t0)
"""


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"], ["generate", "--help"], ["data", "check"]])
def test_cli_starts_without_torch_or_trainers(argv, tmp_path):
    if argv == ["data", "check"]:
        f = tmp_path / "a.txt"
        f.write_text("one\ntwo\n")
        argv = ["data", "check", str(f)]
    r = subprocess.run([sys.executable, "-c", _NO_HEAVY, *argv], capture_output=True, text=True)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY [] CODE 0"), (last, r.stderr[-2000:])


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_fills_the_job_and_flags_override_it(tmp_path):
    yml = _write(tmp_path / "d.yaml", "out: runs/s\nteacher: t\ndata: synthetic\nmax-steps: 7\n"
                                      "divergence: tvd\nprogress: false\nkd_weight: 0.25\n")
    func, (cfg,) = parse(["distill", "--config", str(yml), "--max-steps", "9"])
    flags = parse(["distill", "--out", "runs/s", "--teacher", "t", "--data", "synthetic", "--max-steps", "9",
                   "--divergence", "tvd", "--no-progress", "--kd-weight", "0.25"])[1][0]
    assert cfg == flags and cfg.max_steps == 9 and cfg.progress is False
    js = _write(tmp_path / "d.json", json.dumps(C.as_dict(flags)))
    assert parse(["distill", "--config", str(js)])[1][0] == flags  # a run's recorded config reproduces it
    # positional fields can come from the file too
    data = _write(tmp_path / "x.txt", "a\n")
    assert parse(["data", "check", "--config", str(_write(tmp_path / "c.yaml", f"source: {data}\n"))])[1][0].source \
        == str(data)


@pytest.mark.parametrize("text,needle", [
    ("out: x\nteacher: t\ndata: synthetic\nno_such_field: 1\n", "unknown field(s) no_such_field"),
    ("out: [unclosed\n", "not valid YAML/JSON"),
    ("- a\n- b\n", "expected a mapping"),
    ("out: x\nteacher: t\ndata: synthetic\ndivergence: nosuch\n", "--divergence must be one of"),
])
def test_bad_config_files_give_one_line(capsys, tmp_path, text, needle):
    f = _write(tmp_path / "bad.yaml", text)
    assert main(["distill", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqkd: error: ") and needle in err[0], err


def test_missing_config_file_and_config_before_a_subcommand(capsys, tmp_path):
    assert main(["distill", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.yaml"), "distill"]) == 2
    assert "after a subcommand" in capsys.readouterr().err


def test_distill_from_yaml_equals_distill_from_flags(tiny_mt_model, tmp_path):
    """Same run either way: the same loss at every logged step."""
    from seqkd.data.synthetic import synthetic_pairs

    src, tgt = synthetic_pairs(64, seed=5, multimodality=0.0)
    s = _write(tmp_path / "train.src", "\n".join(src) + "\n")
    t = _write(tmp_path / "train.tgt", "\n".join(tgt) + "\n")
    common = {"teacher": str(tiny_mt_model), "model": "marian-tiny", "train-source": str(s), "train-target": str(t),
              "max-steps": 4, "eval-steps": 0, "bleu-samples": 0, "logging-steps": 1, "max-tokens": 512,
              "kd-weight": 0.5, "divergence": "jsd", "seed": 3}
    flags = ["distill", "--out", str(tmp_path / "a"), "--no-progress"]
    for k, v in common.items():
        flags += [f"--{k}", str(v)]
    assert main(flags) == 0
    yml = _write(tmp_path / "run.yaml", "".join(f"{k}: {v}\n" for k, v in common.items()) + "progress: false\n")
    assert main(["distill", "--config", str(yml), "--out", str(tmp_path / "b")]) == 0
    curves = []
    for run in ("a", "b"):
        summary = json.loads((tmp_path / run / "train_summary.json").read_text())
        state = json.loads((tmp_path / run / "checkpoint-4" / "trainer_state.json").read_text())
        curves.append([h["loss"] for h in state["log_history"] if "loss" in h])
        assert summary["steps"] == 4
    assert len(curves[0]) == 4 and curves[0] == curves[1]
