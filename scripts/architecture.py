"""Regenerate the README's architecture block (the package tree and a Mermaid diagram of its imports) from the code.

    python scripts/architecture.py          # rewrite the block between the markers in README.md
    python scripts/architecture.py --check  # exit 1 if README.md is out of date (tests/test_architecture.py)

Imports are read with ``ast`` (nothing is imported): an arrow A --> B means a module of A imports one of B at module
level; A -.-> B only inside a function (a lazy import, made when that job runs).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "seqkd"
BASE = {"seqkd.errors", "seqkd.config", "seqkd.io"}  # imported by every stage: left out of the diagram
ENTRY = {"seqkd.cli", "seqkd.__main__"}  # the entry points import the stages lazily
BEGIN, END = "<!-- architecture:begin (scripts/architecture.py) -->", "<!-- architecture:end -->"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """The unit of the diagram: a subpackage (seqkd.student, seqkd.teacher.engines) or a top-level module."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "teacher" and parts[2] == "engines":
        return "seqkd.teacher.engines"
    if len(parts) >= 3 and parts[1] == "student" and parts[2] == "losses":
        return "seqkd.student.losses"
    return ".".join(parts[:2])


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported seqkd module, at module level?) for every import of seqkd in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at top level count as module level
        for child in ast.walk(node):
            top.add(id(child))
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("seqkd"):
                eager = id(node) in top and not _inside_function(tree, node)
                out.append((name, eager))
    return out


def _inside_function(tree: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(child is target for child in ast.walk(node)):
                return True
    return False


def graph() -> tuple[dict[str, list[str]], dict[tuple[str, str], bool]]:
    modules = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
    rooms: dict[str, list[str]] = defaultdict(list)
    for m in modules:
        rooms[room(m)].append(m)
    edges: dict[tuple[str, str], bool] = {}
    for m, path in modules.items():
        for name, eager in imports(path):
            while name not in modules and "." in name:  # `from seqkd.x import f` names f, not a module
                name = name.rsplit(".", 1)[0]
            a, b = room(m), room(name)
            if a != b and name in modules and b != "seqkd":
                edges[(a, b)] = edges.get((a, b), False) or eager
    return rooms, edges


def _short(room_name: str) -> str:
    return room_name.removeprefix("seqkd.").replace(".", "/") or "seqkd"


def render() -> str:
    rooms, edges = graph()
    tree = ["```"]
    for r in sorted(rooms):
        mods = sorted({m.rsplit(".", 1)[-1] for m in rooms[r] if m != r})
        name = _short(r) if r != "seqkd" else "seqkd"
        if len(r.split(".")) == 2 and r != "seqkd" and not mods:
            continue  # a top-level module: listed with seqkd/
        if r == "seqkd":
            tops = sorted(m.split(".")[1] + ".py" for m, rr in ((m, room(m)) for rs in rooms.values() for m in rs)
                          if len(m.split(".")) == 2 and rr == m and not any(x.startswith(m + ".") for x in
                                                                            (y for ys in rooms.values() for y in ys)))
            tree.append(f"seqkd/  {'  '.join(['__init__.py'] + [t for t in tops])}")
            continue
        tree.append(f"  {name + '/':22s}{'  '.join(mods)}")
    tree.append("```")
    shown = {r for r in rooms if r not in BASE | ENTRY | {"seqkd"}}
    ids = {r: _short(r).replace("/", "_") for r in shown}
    lines = ["```mermaid", "graph LR"]
    for r in sorted(ids):
        lines.append(f'  {ids[r]}["{_short(r)}"]')
    for (a, b), eager in sorted(edges.items()):
        if a in shown and b in shown:
            lines.append(f"  {ids[a]} {'-->' if eager else '-.->'} {ids[b]}")
    lines.append("```")
    return "\n".join(tree + ["", *lines])


def update_block(readme: Path, begin: str, end: str, body: str, *, check: bool, how: str) -> int:
    """Replace what stands between ``begin`` and ``end`` in ``readme`` with ``body`` (or, with ``check``, exit 1 if
    it differs: ``how`` says how to regenerate it)."""
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        print(f"{readme}: no {begin} ... {end} markers", file=sys.stderr)
        return 1
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{body}\n{end}{tail}"
    if check:
        if new != text:
            print(f"README.md's block {begin} is out of date: run {how}", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    return 0


def update(readme: Path, check: bool) -> int:
    return update_block(readme, BEGIN, END, render(), check=check, how="python scripts/architecture.py")


if __name__ == "__main__":
    sys.exit(update(ROOT / "README.md", check="--check" in sys.argv[1:]))
