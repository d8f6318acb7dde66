"""``seqkd run``: plan a recipe's stages against what a run directory already holds, run what is missing, report.

Layout of a run directory::

    run.json                      the recipe, overrides and each stage's current key (what --dry-run compares with)
    .lock                         held by the seqkd run using the directory (one at a time)
    stages/NAME-KEY/              one directory per stage and settings; stage.json in it marks it finished
    NAME -> stages/NAME-KEY       a link to each stage's current directory
    report.md / .html / .json     the report (seqkd.pipeline.report)

**Keys.** A stage's key hashes its job, its settings, its sweep, the keys of the stages it reads (``${name}``) and a
fingerprint (size, modification time) of every existing file or directory its settings name. So a stage is cached
exactly when none of these changed; a changed setting gives that stage a new key and, through it, every stage that
reads it; stages it does not reach keep theirs. Directories are kept per key, so going back to an earlier setting
finds its stages finished.

**Faults.** ``stage.json`` is written (atomically) after the job returns, so a directory without it is never taken for
a finished stage. A killed run resumes inside the stage where the job can: training from its last checkpoint, a
corpus from its finished chunks (both exact); other jobs start the stage over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from seqkd.errors import SeqkdError
from seqkd.io import atomic_write_json, latest_checkpoint
from seqkd.pipeline.recipe import JOBS, RUNNER_FIELDS, Recipe, Stage, configs, strings, substitute

MARKER = "stage.json"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"


@dataclass
class Step:
    """A stage in a plan: its key and directory, and whether it runs (``run``), is ``cached``, or is skipped
    (``skip``: not the --only stage), with the reason."""

    stage: Stage
    key: str
    dir: Path
    action: str
    reason: str
    key_settings: dict[str, Any]  # the settings as hashed: those not at their defaults (references as <name:key>)
    settings: dict[str, Any]  # every field, defaults included

    def output(self, outputs: dict[str, str]) -> str:
        """What ``${name}`` means for the stages after it (``outputs``: the earlier stages')."""
        primary = JOBS[self.stage.job][1]
        if primary is None:  # a model you have: its own directory
            return substitute(self.stage.settings["path"], outputs)
        return str(self.dir / primary) if primary else str(self.dir)


def _fingerprint(path: str) -> Any:
    """Size and modification time of a file, or of every file under a directory (what decides whether an input
    changed without reading gigabytes of weights)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    return sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns]
                  for f in p.rglob("*") if f.is_file())


def stage_key(stage: Stage, key_settings: dict[str, Any]) -> str:
    """The hash of what the stage computes from (see the module's docstring)."""
    files = {s: _fingerprint(s) for s in strings(key_settings)
             if not s.startswith("<") and len(s) < 4096 and os.path.exists(s)}
    payload = {"job": stage.job, "settings": key_settings, "sweep": stage.sweep, "files": files}
    if stage.processes > 1:  # N processes train on N x the batch: another run
        payload["processes"] = stage.processes
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_run(out: Path) -> dict:
    try:
        return json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_finished(d: Path, key: str) -> bool:
    try:
        return json.loads((d / MARKER).read_text(encoding="utf-8")).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _changes(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(old.keys() | new.keys()):
        if old.get(k) != new.get(k):
            out.append(f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}")
    return out


def _full_settings(s: Stage, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every field of the stage's configs, defaults included; the fields that differ from their defaults), less
    the fields the runner sets and the swept one. The second is what the key hashes: a spelling the recipe uses or
    a field a later seqkd adds with its default does not change it; the first is what --dry-run compares."""
    import dataclasses

    from seqkd.config import as_dict

    full: dict[str, Any] = {}
    changed: dict[str, Any] = {}
    drop = RUNNER_FIELDS | ({s.sweep[0]} if s.sweep else set())
    for c in configs(s, settings, "<out>"):
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
                    for f in dataclasses.fields(c)}
        for k, v in as_dict(c).items():
            if k not in drop:
                full[k] = v
                if defaults.get(k, dataclasses.MISSING) is dataclasses.MISSING or v != defaults[k]:
                    changed[k] = v
    return dict(sorted(full.items())), dict(sorted(changed.items()))


def plan(recipe: Recipe, out: str | Path, *, from_stage: str | None = None, only: str | None = None) -> list[Step]:
    """What a run of ``recipe`` in ``out`` does, stage by stage, and why."""
    out = Path(out)
    names = [s.name for s in recipe.stages]
    for flag, name in (("--from", from_stage), ("--only", only)):
        if name is not None and name not in names:
            raise SeqkdError(f"{flag} {name}: no such stage in recipe {recipe.name} (stages: {', '.join(names)})")
    previous = read_run(out).get("stages", {})
    keys: dict[str, str] = {}
    steps: list[Step] = []
    forced = False
    for s in recipe.stages:
        full, key_settings = _full_settings(s, substitute(s.settings, {n: f"<{n}:{k}>" for n, k in keys.items()}))
        key = keys[s.name] = stage_key(s, key_settings)
        d = out / "stages" / f"{s.name}-{key[:10]}"
        forced = forced or s.name == from_stage
        upstream = [st for st in steps if st.stage.name in s.refs()]
        if only is not None and s.name != only:
            action, reason = "skip", f"--only {only}"
        elif forced:
            action, reason = "run", f"--from {from_stage}"
        elif is_finished(d, key):
            action, reason = "cached", "finished with these settings and inputs"
        else:
            action, reason = "run", _why(s, key, full, d, previous.get(s.name), upstream)
        steps.append(Step(s, key, d, action, reason, key_settings, full))
    if only is not None:
        target = next(st for st in steps if st.stage.name == only)
        missing = [st.stage.name for st in steps if st.stage.name in target.stage.refs()
                   and not is_finished(st.dir, st.key)]
        if missing:
            raise SeqkdError(f"--only {only}: it reads {', '.join(missing)}, not finished with the current settings; "
                             f"run without --only (or --from {missing[0]}) first")
    return steps


def _why(s: Stage, key: str, full: dict, d: Path, prev: dict | None, upstream: list[Step]) -> str:
    if d.is_dir() and any(d.iterdir()):
        return "resumes: its directory holds an unfinished run"
    changed_inputs = [st.stage.name for st in upstream if st.action == "run"]
    if changed_inputs:
        return f"reads {', '.join(changed_inputs)}, which run{'s' if len(changed_inputs) == 1 else ''}"
    if prev is None:
        return "not run yet"
    if prev.get("key") != key:
        diff = _changes(prev.get("settings", {}), full)
        if prev.get("sweep") != (list(s.sweep) if s.sweep else None):
            diff.append(f"sweep: {prev.get('sweep')} -> {list(s.sweep) if s.sweep else None}")
        return "settings changed: " + "; ".join(diff) if diff else "an input file changed"
    return "its output is missing"


def format_plan(steps: list[Step], out: str | Path) -> str:
    width = max(len(st.stage.name) for st in steps)
    lines = [f"plan for {out}:"]
    for st in steps:
        lines.append(f"  {st.stage.name:{width}s}  {st.stage.job:14s} {st.action:6s}  {st.reason}")
    return "\n".join(lines)


def _sweep_values(stage: Stage) -> list[Any]:
    return list(stage.sweep[1]) if stage.sweep else [None]


def run_stage(step: Step, outputs: dict[str, str], *, progress: bool, command: list[str] | None = None,
              runners: dict[str, Callable] | None = None) -> dict:
    """Run one stage in its directory (resuming what the job can) and mark it finished; returns its marker."""
    from seqkd import __version__
    from seqkd.pipeline.jobs import RUNNERS, SWEEP_RUNNERS, runner_fields

    s, d = step.stage, step.dir
    # a sweep some job measures in one call (speculate over gamma: one common baseline); not with a caller's runners
    together = SWEEP_RUNNERS.get((s.job, s.sweep[0])) if s.sweep and runners is None else None
    runners = runners or RUNNERS
    d.mkdir(parents=True, exist_ok=True)
    settings = substitute(s.settings, outputs)
    started, t0 = time.time(), time.perf_counter()
    results, swept = [], []
    for value in _sweep_values(s):
        where = d / f"{s.sweep[0]}={value}" if s.sweep else d
        where.mkdir(parents=True, exist_ok=True)
        has_ckpt = latest_checkpoint(where) is not None
        cfgs = configs(s, settings, str(where), value, runner_fields(s.job, has_ckpt, progress))
        kwargs = {"command": command} if s.job == "generate" else {"processes": s.processes} if s.processes > 1 \
            else {}
        if together is not None:
            swept.append(cfgs[0])
        else:
            results.append(runners[s.job](*cfgs, **kwargs))
    if together is not None:
        results = together(swept)
    marker = {"name": s.name, "job": s.job, "key": step.key, "dir": d.name, "settings": settings,
              "key_settings": step.key_settings,
              "sweep": {"field": s.sweep[0], "values": s.sweep[1]} if s.sweep else None,
              "result": results if s.sweep else results[0], "seconds": time.perf_counter() - t0,
              "started": started, "finished": time.time(), "seqkd": __version__}
    atomic_write_json(d / MARKER, marker)
    return marker


def _link(out: Path, name: str, d: Path) -> None:
    """``out/NAME`` -> ``stages/NAME-KEY`` (replaced atomically)."""
    link = out / name
    tmp = out / f".{name}.link"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(d, out), tmp)
    if link.exists() and not link.is_symlink():
        return  # a user's own file of that name: leave it
    os.replace(tmp, link)


def _record(out: Path, recipe: Recipe, steps: list[Step], argv: list[str] | None) -> None:
    run = read_run(out)
    stages = run.get("stages", {})
    for st in steps:
        if is_finished(st.dir, st.key):
            stages[st.stage.name] = {"key": st.key, "dir": str(st.dir.relative_to(out)), "job": st.stage.job,
                                     "settings": st.settings,
                                     "sweep": list(st.stage.sweep) if st.stage.sweep else None}
    atomic_write_json(out / RUN_FILE, {"recipe": recipe.name, "overrides": recipe.overrides, "command": argv,
                                       "source": recipe.source, "stages": stages})


def run_recipe(recipe: Recipe, out: str | Path, *, from_stage: str | None = None, only: str | None = None,
               dry_run: bool = False, progress: bool = True, argv: list[str] | None = None,
               runners: dict[str, Callable] | None = None, report: bool = True) -> dict[str, Any]:
    """Plan, print the plan, run the stages that need it (in order), write the report. Returns ``{"steps": [...],
    "markers": {name: stage.json}}`` (markers of every finished stage)."""
    out = Path(out)
    steps = plan(recipe, out, from_stage=from_stage, only=only)
    print(format_plan(steps, out), flush=True)
    if dry_run:
        return {"steps": steps, "markers": {}}
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _run_steps(recipe, out, steps, progress=progress, argv=argv, runners=runners, report=report)


@contextlib.contextmanager
def _locked(out: Path):
    """One ``seqkd run`` per run directory at a time (two would write the same stages); the lock goes with the
    process that holds it, killed or not."""
    import fcntl

    with open(out / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SeqkdError(f"another seqkd run is using {out} ({out / LOCK_FILE}): wait for it to finish, or choose "
                             "another --out") from None
        yield


def _run_steps(recipe: Recipe, out: Path, steps: list[Step], *, progress: bool, argv: list[str] | None,
               runners: dict[str, Callable] | None, report: bool) -> dict[str, Any]:
    outputs: dict[str, str] = {}
    for st in steps:
        outputs[st.stage.name] = st.output(outputs)
    markers: dict[str, dict] = {}
    for i, st in enumerate(steps, 1):
        if st.action == "skip":
            continue
        if st.action == "cached":
            markers[st.stage.name] = json.loads((st.dir / MARKER).read_text(encoding="utf-8"))
            _link(out, st.stage.name, st.dir)
            continue
        if st.reason.startswith("--from") and st.dir.exists():
            shutil.rmtree(st.dir)  # rerun from scratch, as asked
        print(f"[{i}/{len(steps)}] {st.stage.name} ({st.stage.job}): {st.reason}", flush=True)
        markers[st.stage.name] = run_stage(st, outputs, progress=progress, command=argv, runners=runners)
        print(f"      done in {markers[st.stage.name]['seconds']:.0f}s -> {out / st.stage.name}", flush=True)
        _link(out, st.stage.name, st.dir)
        _record(out, recipe, steps, argv)
    _record(out, recipe, steps, argv)
    for st in steps:  # --only: the report still shows every finished stage
        if st.stage.name not in markers and is_finished(st.dir, st.key):
            markers[st.stage.name] = json.loads((st.dir / MARKER).read_text(encoding="utf-8"))
    if report:
        from seqkd.pipeline.report import write_report

        paths = write_report(out, recipe, steps, markers, argv=argv)
        print(f"report: {paths['md']} ({paths['html'].name}, {paths['json'].name})", flush=True)
    return {"steps": steps, "markers": markers}


def default_out(recipe: Recipe) -> str:
    return str(Path("runs") / recipe.name)


def main_run(cfg, argv: list[str]) -> None:
    """``seqkd run`` (the CLI's handler)."""
    from seqkd.pipeline.recipe import load_recipe

    recipe = load_recipe(cfg.recipe, cfg.overrides)
    out = cfg.out or default_out(recipe)
    run_recipe(recipe, out, from_stage=cfg.from_stage, only=cfg.only, dry_run=cfg.dry_run,
               progress=sys.stderr.isatty(), argv=["seqkd", *argv])


__all__ = ["MARKER", "Step", "format_plan", "main_run", "plan", "run_recipe", "run_stage", "stage_key"]
