"""The README's architecture block is generated from the code and must match the tree."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_architecture_block_matches_the_code():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "architecture.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_the_diagram_names_every_subpackage_and_its_modules():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import architecture
    finally:
        sys.path.pop(0)
    block = architecture.render()
    for pkg in sorted(p for p in (ROOT / "seqkd").rglob("__init__.py") if p.parent != ROOT / "seqkd"):
        rel = pkg.parent.relative_to(ROOT / "seqkd").as_posix()
        assert f"{rel}/" in block, rel
        for mod in pkg.parent.glob("*.py"):
            if mod.name != "__init__.py":
                assert mod.stem in block, (rel, mod.stem)
    assert "student_losses" in block and "teacher --> teacher_engines" in block


def test_readme_results_block_matches_the_committed_report():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_results.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
