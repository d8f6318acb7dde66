"""What every benchmark shares: the machine description, the run's provenance, result writing, timing statistics.

Every results file goes through :func:`write_results`: ``benchmarks/results/NAME.{json,md}`` (and ``NAME.png``),
each written atomically, the JSON with ``run`` (git commit, dirty or not, the exact command, UTC start) and
``environment`` (:func:`machine`), the Markdown with a header block naming the same. Results are committed, so
nothing in them may name a path of the machine that made them: :func:`rel` turns a path into a repo-relative one
(``$SEQKD_DATA_DIR/...`` for the datasets, ``<external>/NAME`` for anything else outside the repository), and
:func:`write_results` refuses (:class:`LeakError`) to write data or Markdown in which :func:`scrub` still finds one.

The scripts import this module as ``import common``: they run as ``python benchmarks/X.py`` from the repository
root, so ``sys.path[0]`` is ``benchmarks/``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from seqkd.machine import _version, machine, machine_line  # noqa: F401  (the package's one description of it)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXTERNAL = "<external>"  # stands for the folder of a path outside the repository and the data folders
_STARTED = datetime.datetime.now(datetime.timezone.utc)  # the run starts when its script imports this module


class LeakError(ValueError):
    """Results about to be written name a path of this machine."""


# --------------------------------------------------------------------------------------------------- paths
def _places() -> list[tuple[str, str]]:
    """(absolute folder, what it is written as), most specific first; a folder appears as given and resolved."""
    pairs: list[tuple[Path, str]] = []
    for var in ("SEQKD_DATA_DIR", "SEQKD_CACHE_DIR"):
        if os.environ.get(var):
            pairs.append((Path(os.environ[var]).expanduser(), f"${var}"))
    pairs += [(ROOT.parent / "shared" / "data", "$SEQKD_DATA_DIR"),  # the data folder scripts/test.sh defaults to
              (Path.home() / ".cache" / "seqkd", "$SEQKD_CACHE_DIR"),  # seqkd's cache outside a checkout
              (ROOT, "")]
    out = []
    for folder, label in pairs:
        for form in (os.path.abspath(folder), os.path.realpath(folder)):
            if (form, label) not in out:
                out.append((form, label))
    return out


def rel(path: str | os.PathLike) -> str:
    """``path`` as results may record it: repo-relative inside the repository, ``$SEQKD_DATA_DIR/<dataset>/<file>``
    (``$SEQKD_CACHE_DIR/...``) under the data (cache) folder, ``<external>/<name>`` anywhere else; a relative path
    is returned as given."""
    s = os.fspath(path)
    if not s.startswith(("/", "~")):
        return Path(s).as_posix() if s else s
    p = os.path.abspath(os.path.expanduser(s))
    for candidate in dict.fromkeys((p, os.path.realpath(p))):
        for folder, label in _places():
            if candidate == folder or candidate.startswith(folder.rstrip("/") + "/"):
                rest = candidate[len(folder):].lstrip("/")
                if not label:
                    return rest or "."
                return f"{label}/{rest}" if rest else label
    return f"{EXTERNAL}/{Path(p).name}"


def rel_args(args: Any) -> dict:
    """``vars(args)`` (or a dict) with every absolute path in it, in lists too, written as :func:`rel` writes it:
    for recording a script's settings."""
    d = vars(args) if not isinstance(args, dict) else args

    def conv(v):
        if isinstance(v, os.PathLike) or (isinstance(v, str) and v.startswith(("/", "~/"))):
            return rel(v)
        if isinstance(v, (list, tuple)):
            return type(v)(conv(x) for x in v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in d.items()}


# an absolute path inside a string: at its start or after a space, quote, '=', ':', ',', '(', '[', '{' or '|'
_ABS_TOKEN = re.compile(r"(?:^|(?<=[\s'\"`=:,(\[{|]))(~?/[^\s'\"`,;)\]}|]*)")
_WELL_KNOWN = re.compile(r"(?<![\w.~>$-])/(?:work|home|root|tmp|Users|mnt|scratch)(?![\w.-])")
_HARMLESS = ("/proc/", "/dev/", "/sys/")  # kernel interfaces a text may name; no machine's layout


def portable_text(text: str) -> str:
    """Free text (an error message a subprocess printed) with each absolute path in it replaced by :func:`rel`."""
    return _ABS_TOKEN.sub(lambda m: rel(m.group(1)) if _leak(m.group(1)) else m.group(1), text)


def _leak(s: str) -> str | None:
    """Why ``s`` names a path of this machine, or None."""
    needles = {os.path.abspath(f) for f, _ in _places()} | {str(ROOT), os.path.realpath(ROOT), tempfile.gettempdir()}
    home = os.path.expanduser("~")
    if len(home) > 1:
        needles.add(home)
    for n in sorted(needles, key=len, reverse=True):
        if len(n) > 1 and re.search(r"(?<![\w.~>$-])" + re.escape(n) + r"(?![\w.-])", s):
            return f"contains {n}"
    m = _WELL_KNOWN.search(s)
    if m:
        return f"contains {m.group(0)}"
    for tok in _ABS_TOKEN.findall(s):
        if tok.startswith("~/"):
            return f"home-relative path {tok}"
        first = tok.split("/")[1] if tok.count("/") >= 1 else ""
        if first and not tok.startswith(_HARMLESS) and os.path.exists("/" + first):
            return f"absolute path {tok} (/{first} exists here)"
    return None


def scrub(data: Any, where: str = "") -> Any:
    """Raise :class:`LeakError` if any string in ``data`` (nested dicts, lists; keys too) names a path of this
    machine; return ``data`` otherwise. A string is refused when it contains the repository's, the data folder's,
    $HOME's or the temp folder's path, /work, /home, /root, /tmp, /Users, /mnt or /scratch, or an absolute path
    whose first folder exists here."""
    found: list[str] = []

    def walk(x, at):
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(k, str) and (why := _leak(k)):
                    found.append(f"{at or '.'} key {k[:120]!r}: {why}")
                walk(v, f"{at}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{at}[{i}]")
        elif isinstance(x, str) and (why := _leak(x)):
            found.append(f"{at or '.'}: {x[:120]!r}: {why}")

    walk(data, where)
    if found:
        raise LeakError(f"{len(found)} value(s) name a path of this machine (use common.rel): " + "; ".join(found[:5])
                        + (" ..." if len(found) > 5 else ""))
    return data


# ------------------------------------------------------------------------------------------- the machine
def _describe(m: dict) -> str:
    pk = m["packages"]
    soft = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']:g} GiB)" for g in m["gpus"]) or "no GPU"
    mem = f", {m['memory_gib']:g} GiB" if m.get("memory_gib") else ""
    return (f"{machine_line(m)}{mem}; {gpus}; {m['os']['system']} {m['os']['release']}, {m['python']}"
            + (f", {soft}" if soft else ""))


# ---------------------------------------------------------------------------------------------- the run
def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _git_state() -> dict:
    full = _git("rev-parse", "HEAD")
    if full is None:  # no git or no .git (a copied tree): the caller may say which commit it is
        full = os.environ.get("SEQKD_GIT_COMMIT") or "unknown"
        return {"commit": full[:7] if full != "unknown" else full, "commit_full": full, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": full[:7], "commit_full": full, "dirty": bool(status) if status is not None else None}


_GIT = _git_state()  # at import, i.e. when the run starts: a commit made during a long run is not this run's


def command(argv: list[str] | None = None) -> str:
    """The command as typed, ``python benchmarks/X.py ARGS``, with absolute paths (``--x /abs``, ``--x=/abs`` and
    ``NAME=/abs``) written as :func:`rel` writes them. ``argv`` is ``sys.argv``-like: the script first."""
    argv = list(sys.argv if argv is None else argv)
    words = ["python", rel(argv[0]) if argv else "?"]
    for a in argv[1:]:
        if "=" in a and not a.startswith(("/", "~")):  # --x=/abs, or a NAME=/abs value (cpu_speed --model)
            key, val = a.split("=", 1)
            a = f"{key}={rel(val) if val.startswith(('/', '~')) else val}"
        elif a.startswith(("/", "~")):
            a = rel(a)
        words.append(a if re.fullmatch(r"[\w@%+=:,./$<>-]+", a) else shlex.quote(a))
    return " ".join(words)


def run_info(argv: list[str] | None = None) -> dict:
    """The run's provenance: git commit (short, full) and whether tracked files other than benchmarks/results
    differed from it (``dirty``; both taken when this module was imported), the command (:func:`command`) and the
    UTC start."""
    return {**_GIT, "command": command(argv), "started_utc": _STARTED.strftime("%Y-%m-%d %H:%M:%S UTC")}


# ----------------------------------------------------------------------------------------------- writing
def _atomic_write(path: Path, text: str) -> None:
    from seqkd.io import atomic_write_text  # the package's one implementation (temp file, fsync, rename)

    atomic_write_text(path, text)


def header(run: dict | None, env: dict | None) -> str:
    """The Markdown block that names the commit, the command and the machine."""
    lines = []
    if run:
        dirty = {True: " + uncommitted changes", False: "", None: ""}[run.get("dirty")]
        lines.append(f"> Commit `{run.get('commit', 'unknown')}`{dirty}; started {run.get('started_utc', '?')}"
                     + (f"; {run['note']}" if run.get("note") else "") + ".")
        if run.get("command"):
            lines.append(f"> Command: `{run['command']}`")
    lines.append(f"> Machine: {_describe(env)}." if env else "> Machine: not recorded.")
    return "\n".join(lines)


def write_results(name: str, data: dict, markdown: str, *, plot: Callable[[Path], Any] | None = None,
                  results_dir: str | os.PathLike | None = None, run: dict | None = None,
                  indent: int = 1) -> dict[str, Path | None]:
    """Write ``NAME.json``, ``NAME.md`` (and ``NAME.png``: ``plot(path)`` draws it, or returns False when it
    cannot) in ``results_dir`` (default benchmarks/results), each atomically.

    The JSON is ``data`` plus ``run`` (``run``, else ``data["run"]``, else :func:`run_info`) and ``environment``
    (``data["environment"]`` if present, else :func:`machine`); the Markdown gets :func:`header` after its title
    line. Both are :func:`scrub`-bed first: on a leak nothing is written, the unscrubbed JSON and Markdown go to a
    temp file named in the :class:`LeakError` (so a long run's numbers are not lost) and the error is raised."""
    out = Path(results_dir) if results_dir is not None else RESULTS
    record = dict(data)
    record["run"] = run or data.get("run") or run_info()
    if "environment" not in record:
        record["environment"] = machine()
    text = json.dumps(record, indent=indent, default=str) + "\n"  # default=str: Path and the like become strings
    lines = markdown.rstrip("\n").split("\n")
    at = 1 if lines and lines[0].startswith("# ") else 0  # the header goes under the title
    rest = lines[at:]
    md = "\n".join(lines[:at] + ([""] if at else []) + [header(record["run"], record["environment"])]
                   + ([""] if rest and rest[0] else []) + rest) + "\n"
    try:
        scrub(json.loads(text))
        scrub(md, "markdown")
    except LeakError as e:
        fd, keep = tempfile.mkstemp(prefix=f"seqkd-{name}-", suffix=".unscrubbed.json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"json": json.loads(text), "markdown": md}, f, indent=1)
        raise LeakError(f"{name}: {e} -- nothing written; the results are kept in {keep}") from None
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": None}
    _atomic_write(paths["json"], text)
    _atomic_write(paths["md"], md)
    if plot is not None:
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".png")  # .png: savefig's format
        os.close(fd)
        try:
            if plot(Path(tmp)) is not False and os.path.getsize(tmp) > 0:
                os.replace(tmp, out / f"{name}.png")
                paths["png"] = out / f"{name}.png"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return paths


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None (and a note) where matplotlib is not installed: a
    benchmark then writes its JSON and Markdown without the plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    return plt


def run_recipe(recipe: str, out: str | Path, overrides: list[str], jobs: int = 1) -> dict:
    """``seqkd run RECIPE --out OUT --jobs N [STAGE.FIELD=VALUE ...]`` in a fresh process (finished stages are reused,
    a killed run continues); returns the run's report (``report.json``)."""
    out = Path(out).resolve()  # the run happens in ROOT: a relative OUT is the caller's
    subprocess.run([sys.executable, "-m", "seqkd", "run", recipe, "--out", str(out), "--jobs", str(jobs), *overrides],
                   check=True, cwd=ROOT)
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_sets(given: list | None, dataset: str = "multi30k:de-en", split: str = "test_2016_flickr") -> list[tuple]:
    """``--test SRC REF`` pairs as given, else the dataset's default test split: ``[(src, ref), ...]``."""
    from seqkd.data.registry import parallel_files

    return [tuple(t) for t in given] if given else [tuple(map(str, parallel_files(dataset, split)))]


# ------------------------------------------------------------------------------------------- statistics
def summary(values: Iterable[float]) -> dict:
    """``{"median", "min", "max", "n"}`` of repeated measurements (the median of an even count is the mean of the
    middle two)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("summary() of no values")
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def fmt_summary(s: dict, spec: str = ".2f", unit: str = "") -> str:
    """``"median (min–max)"``, e.g. ``1.23 (1.20–1.31)``; just the value when there was one measurement."""
    if s["n"] == 1:
        return f"{s['median']:{spec}}{unit}"
    return f"{s['median']:{spec}}{unit} ({s['min']:{spec}}–{s['max']:{spec}})"
