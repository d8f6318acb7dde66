"""benchmarks/common.py: the one helper for the benchmarks' machine description and result writing.

The benchmarks are scripts (``python benchmarks/X.py``), not a package: the module is loaded from its path.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scrub_raises_on_an_absolute_path_deep_inside(common, tmp_path):
    clean = {"rows": [{"target": "data/models/multi30k-de-en-llama-teacher", "unit": "tok/s", "cmp": "HF / vLLM",
                       "test": "$SEQKD_DATA_DIR/multi30k/test_2016_flickr.de", "corpus": "<external>/corpus",
                       "sig": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1"}], "n": 3, "x": None}
    assert common.scrub(clean) is clean
    for leak in (str(ROOT / "data" / "models" / "teacher"), str(tmp_path / "corpus"), "/root/out",
                 "/home/someone/data/x.de", f"run in {ROOT}/benchmarks"):
        data = {"meta": {"settings": {"ok": "data/x"}}, "rows": [{"a": 1}, {"deep": {"list": ["fine", leak]}}]}
        with pytest.raises(common.LeakError, match=r"rows\[1\]\.deep\.list\[1\]"):
            common.scrub(data)
    with pytest.raises(common.LeakError):
        common.scrub({str(ROOT / "x"): 1})  # keys too


def test_rel_makes_paths_portable(common, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKD_DATA_DIR", str(tmp_path / "shared"))
    assert common.rel(ROOT / "data" / "models" / "t") == "data/models/t"
    assert common.rel(str(ROOT / "benchmarks" / "results")) == "benchmarks/results"
    assert common.rel(tmp_path / "shared" / "multi30k" / "val.de") == "$SEQKD_DATA_DIR/multi30k/val.de"
    assert common.rel(tmp_path / "elsewhere" / "corpus") == "<external>/corpus"
    assert common.rel("data/models/t") == "data/models/t"  # relative: as given
    settings = common.rel_args({"teacher": str(ROOT / "data" / "models" / "t"), "lr": 1e-3,
                                "tests": [[str(tmp_path / "shared" / "multi30k" / "a.de"), "b.en"]]})
    assert settings == {"teacher": "data/models/t", "lr": 1e-3, "tests": [["$SEQKD_DATA_DIR/multi30k/a.de", "b.en"]]}
    common.scrub(settings)


def test_the_command_is_repo_relative(common, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKD_DATA_DIR", str(tmp_path / "shared"))
    argv = [str(ROOT / "benchmarks" / "kim_rush.py"), "--teacher", str(ROOT / "data" / "models" / "t"),
            f"--corpus={tmp_path / 'out' / 'corpus'}", "--test", str(tmp_path / "shared" / "multi30k" / "x.de"),
            "rel/y.en", "--note", "two words", "--model", f"student={ROOT / 'data' / 'models' / 's'}"]
    info = common.run_info(argv)
    assert info["command"] == ("python benchmarks/kim_rush.py --teacher data/models/t "
                               "--corpus=<external>/corpus --test $SEQKD_DATA_DIR/multi30k/x.de rel/y.en "
                               "--note 'two words' --model student=data/models/s")
    assert {"commit", "commit_full", "dirty", "started_utc"} <= set(info)
    assert info["commit_full"].startswith(info["commit"])
    common.scrub(info)


def test_write_results_writes_json_and_markdown_with_the_commit(common, tmp_path):
    run = common.run_info(["benchmarks/example.py", "--prompts", "5"])
    data = {"meta": {"machine": "x"}, "rows": [{"model": "data/models/t", "seconds": 1.5}]}

    def plot(path: Path) -> bool:
        path.write_bytes(b"\x89PNG fake")
        return True

    paths = common.write_results("example", data, "# Example\n\n| a |\n|---|\n| 1 |\n", plot=plot,
                                 results_dir=tmp_path, run=run)
    assert paths == {"json": tmp_path / "example.json", "md": tmp_path / "example.md", "png": tmp_path / "example.png"}
    written = json.loads(paths["json"].read_text())
    assert written["rows"] == data["rows"] and written["run"]["commit"] == run["commit"]
    assert written["run"]["command"] == "python benchmarks/example.py --prompts 5"
    assert {"cpu", "memory_gib", "os", "python", "packages", "gpus", "threads"} <= set(written["environment"])
    md = paths["md"].read_text()
    assert md.startswith("# Example\n\n> Commit `" + run["commit"])
    assert "python benchmarks/example.py --prompts 5" in md and "| 1 |" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.json", "example.md", "example.png"]  # no temp left


def test_write_results_refuses_a_leak_and_writes_nothing(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common.tempfile, "tempdir", str(tmp_path / "kept"))  # where the unscrubbed data goes
    (tmp_path / "kept").mkdir()
    out = tmp_path / "results"
    run = common.run_info(["benchmarks/example.py"])
    with pytest.raises(common.LeakError, match="nothing written"):
        common.write_results("leaky", {"rows": [{"dir": str(ROOT / "data")}]}, "# t\n", results_dir=out, run=run)
    with pytest.raises(common.LeakError, match="markdown"):
        common.write_results("leaky", {"rows": []}, f"# t\nfrom {ROOT}/data\n", results_dir=out, run=run)
    assert not out.exists()
    assert len(list((tmp_path / "kept").iterdir())) == 2  # the results are not lost


def test_summary_median_min_max(common):
    assert common.summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert common.summary([4, 1, 3, 2]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 4}
    assert common.summary(x for x in [7]) == {"median": 7.0, "min": 7.0, "max": 7.0, "n": 1}
    assert common.fmt_summary(common.summary([4, 1, 3, 2])) == "2.50 (1.00–4.00)"
    assert common.fmt_summary(common.summary([0.1234]), ".3f", " s") == "0.123 s"
    with pytest.raises(ValueError):
        common.summary([])


def test_test_sets_are_the_given_pairs_or_the_default_split(common, multi30k_data_dir):
    assert common.test_sets([["a.de", "a.en"], ["b.de", "b.en"]]) == [("a.de", "a.en"), ("b.de", "b.en")]
    ((src, ref),) = common.test_sets(None)
    assert Path(src).is_file() and Path(ref).is_file() and "test_2016_flickr" in Path(src).name


def test_speculative_rows_are_kept_and_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    """benchmarks/speculative.py's RowCache: a killed run continues; a change of settings measures again."""
    import argparse
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_speculative", ROOT / "benchmarks" / "speculative.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules.pop("bench_speculative", None)
    a = argparse.Namespace(pair="multi30k", prompts=80, passes=3, max_new_tokens=64, engine_gamma=4)
    calls = []

    def measure(value):
        def run():
            calls.append(value)
            return {"speedup": value}
        return run

    cache = mod.RowCache(tmp_path / "rows", a)
    first = cache("seqkd-unaligned-T0-g4", measure(0.9))
    again = mod.RowCache(tmp_path / "rows", a)("seqkd-unaligned-T0-g4", measure(1.7))  # a new process: reused
    assert first["speedup"] == again["speedup"] == 0.9 and calls == [0.9]
    assert again["commit"] == first["commit"]
    changed = argparse.Namespace(**{**vars(a), "passes": 5})
    assert mod.RowCache(tmp_path / "rows", changed)("seqkd-unaligned-T0-g4", measure(1.1))["speedup"] == 1.1
    failed = mod.RowCache(tmp_path / "rows", a)("vllm-unaligned-T0-g4", lambda: {"error": "no vLLM"})
    assert failed == {"error": "no vLLM"} and not (tmp_path / "rows" / "vllm-unaligned-T0-g4.json").exists()
