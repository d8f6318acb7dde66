"""The import contracts in pyproject.toml ([tool.importlinter]) hold on the package, and each one catches the
import it exists to forbid: a copy of seqkd with that one import added breaks exactly that contract."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is not installed (it is in the dev extra)")

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """`lint-imports` in ``cwd``, which holds the pyproject.toml with the contracts; ``seqkd`` is imported from
    ``pythonpath`` (before the installed one) when given."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or pytest.skip("no lint-imports script")]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([*cmd, "--no-cache", "--no-logo", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_package_keeps_every_import_contract():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", result.stdout), result.stdout


# (contract id, file in seqkd/, the line appended to it, the illegal import the report must name)
VIOLATIONS = [
    ("pure-math", "student/losses/divergences.py", "import seqkd.models",
     "seqkd.student.losses.divergences -> seqkd.models"),
    ("pure-math", "speculative/acceptance.py", "import transformers",
     "seqkd.speculative.acceptance -> transformers"),
    ("vllm-only-in-engines", "evaluate.py", "import vllm", "seqkd.evaluate -> vllm"),
    ("cli-on-top", "teacher/corpus.py", "from seqkd.cli import main", "seqkd.teacher.corpus -> seqkd.cli"),
    ("decoder-engine-free", "speculative/decoder.py", "from seqkd.teacher.engines import get_engine",
     "seqkd.speculative.decoder -> seqkd.teacher.engines"),
    ("config-light", "config.py", "import torch", "seqkd.config -> torch"),
    ("ray-only-in-executor", "teacher/generate.py", "import ray", "seqkd.teacher.generate -> ray"),
    ("pipeline-on-top", "student/distill.py", "from seqkd.pipeline import load_recipe",
     "seqkd.student.distill -> seqkd.pipeline"),
]


@pytest.fixture(scope="module")
def contracts_config(tmp_path_factory) -> Path:
    """pyproject.toml alone: the contracts, exactly as the repository has them."""
    path = tmp_path_factory.mktemp("config") / "pyproject.toml"
    shutil.copy(ROOT / "pyproject.toml", path)
    return path


@pytest.mark.parametrize("contract, file, line, illegal", VIOLATIONS, ids=[f"{v[0]}:{v[1]}" for v in VIOLATIONS])
def test_a_contract_catches_the_import_it_forbids(tmp_path, contracts_config, contract, file, line, illegal):
    shutil.copytree(ROOT / "seqkd", tmp_path / "seqkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(contracts_config, tmp_path / "pyproject.toml")
    target = tmp_path / "seqkd" / file
    target.write_text(target.read_text() + f"\n{line}  # the violation under test\n")

    result = _lint_imports(tmp_path, "--contract", contract, pythonpath=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Contracts: 0 kept, 1 broken." in out, out
    assert illegal in out, out  # names the import we added (so it analysed the copy, not the installed seqkd)
