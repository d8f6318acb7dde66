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
a finished stage. A killed run resumes inside the stage where the job can: training and alignment from their last
checkpoint, a corpus from its finished chunks (all exact), speculative timing from its last finished pass; other jobs
start the stage over.

**Side by side** (``--jobs N``): training and file stages whose inputs are finished run up to N at a time, each in a
worker process (:mod:`seqkd.pipeline.worker`) with 1/N of the cores; stages that time decoding or take every core run
alone, here. See :func:`_run_parallel`.
"""

from __future__ import annotations

import contextlib
import functools
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
from seqkd.io import atomic_write_json, fingerprint, latest_checkpoint
from seqkd.pipeline.recipe import (
    JOBS,
    RUNNER_FIELDS,
    Recipe,
    Stage,
    configs,
    strings,
    substitute,
    sweep_label,
    sweep_values,
)

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


def stage_key(stage: Stage, key_settings: dict[str, Any], swept: list[Any] | None = None) -> str:
    """The hash of what the stage computes from (see the module's docstring); ``swept``: the sweep's values with
    their references as ``key_settings`` has them (default: as the recipe writes them)."""
    files = {s: fingerprint(s) for s in strings(key_settings)
             if not s.startswith("<") and len(s) < 4096 and os.path.exists(s)}
    sweep = [stage.sweep[0], list(stage.sweep[1]) if swept is None else swept] if stage.sweep else None
    payload = {"job": stage.job, "settings": key_settings, "sweep": sweep, "files": files}
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


def _full_settings(s: Stage, settings: dict[str, Any], first: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every field of the stage's configs, defaults included; the fields that differ from their defaults), less
    the fields the runner sets and the swept one. The second is what the key hashes: a spelling the recipe uses or
    a field a later seqkd adds with its default does not change it; the first is what --dry-run compares."""
    import dataclasses

    from seqkd.config import as_dict

    full: dict[str, Any] = {}
    changed: dict[str, Any] = {}
    drop = RUNNER_FIELDS | ({s.sweep[0]} if s.sweep else set())
    for c in configs(s, settings, "<out>", first):  # (first: the sweep's first value, its references substituted)
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
        subs = {n: f"<{n}:{k}>" for n, k in keys.items()}
        swept = sweep_values(s, subs)  # a swept ${stage} counts as a read: its key is in this one's
        full, key_settings = _full_settings(s, substitute(s.settings, subs), swept[0])
        key = keys[s.name] = stage_key(s, key_settings, swept if s.sweep else None)
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


def run_stage(step: Step, outputs: dict[str, str], *, progress: bool, command: list[str] | None = None,
              runners: dict[str, Callable] | None = None) -> dict:
    """Run one stage in its directory (resuming what the job can) and mark it finished; returns its marker."""
    from seqkd import __version__
    from seqkd.pipeline.jobs import RUNNERS, SWEEP_RUNNERS, runner_fields

    s, d = step.stage, step.dir
    # a sweep some job measures in one call (speculate over gamma or drafts: one common baseline); not with a caller's
    # runners
    together = SWEEP_RUNNERS.get((s.job, s.sweep[0])) if s.sweep and runners is None else None
    runners = runners or RUNNERS
    d.mkdir(parents=True, exist_ok=True)
    settings = substitute(s.settings, outputs)
    started, t0 = time.time(), time.perf_counter()
    results, swept = [], []
    for raw, value in zip(s.sweep[1] if s.sweep else [None], sweep_values(s, outputs)):
        where = d / f"{s.sweep[0]}={sweep_label(raw)}" if s.sweep else d
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
               runners: dict[str, Callable] | None = None, report: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Plan, print the plan, run the stages that need it (in order; ``jobs`` > 1: stages whose inputs are finished
    side by side, see :func:`_run_parallel`), write the report. Returns ``{"steps": [...], "markers": {name:
    stage.json}}`` (markers of every finished stage)."""
    if jobs > 1 and runners is not None:
        raise SeqkdError("jobs > 1 runs stages in worker processes, which use seqkd's own runners")
    out = Path(out)
    steps = plan(recipe, out, from_stage=from_stage, only=only)
    print(format_plan(steps, out), flush=True)
    if dry_run:
        return {"steps": steps, "markers": {}}
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _run_steps(recipe, out, steps, progress=progress, argv=argv, runners=runners, report=report,
                          jobs=jobs)


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
               runners: dict[str, Callable] | None, report: bool, jobs: int = 1) -> dict[str, Any]:
    outputs: dict[str, str] = {}
    for st in steps:
        outputs[st.stage.name] = st.output(outputs)
    markers: dict[str, dict] = {}
    todo: list[Step] = []
    for st in steps:
        if st.action == "cached":
            markers[st.stage.name] = json.loads((st.dir / MARKER).read_text(encoding="utf-8"))
            _link(out, st.stage.name, st.dir)
        elif st.action == "run":
            if st.reason.startswith("--from") and st.dir.exists():
                shutil.rmtree(st.dir)  # rerun from scratch, as asked
            todo.append(st)
    here = functools.partial(_run_here, out=out, steps=steps, outputs=outputs, markers=markers, recipe=recipe,
                             progress=progress, argv=argv, runners=runners)
    if jobs > 1 and len(todo) > 1:
        _run_parallel(todo, here, out=out, steps=steps, outputs=outputs, markers=markers, recipe=recipe, jobs=jobs,
                      argv=argv)
    else:
        for st in todo:
            here(st)
    _record(out, recipe, steps, argv)
    for st in steps:  # --only: the report still shows every finished stage
        if st.stage.name not in markers and is_finished(st.dir, st.key):
            markers[st.stage.name] = json.loads((st.dir / MARKER).read_text(encoding="utf-8"))
    markers = {st.stage.name: markers[st.stage.name] for st in steps if st.stage.name in markers}  # recipe order
    if report:
        from seqkd.pipeline.report import write_report

        paths = write_report(out, recipe, steps, markers, argv=argv)
        print(f"report: {paths['md']} ({paths['html'].name}, {paths['json'].name})", flush=True)
    return {"steps": steps, "markers": markers}


def _announce(st: Step, steps: list[Step], how: str = "") -> None:
    print(f"[{steps.index(st) + 1}/{len(steps)}] {st.stage.name} ({st.stage.job}): {st.reason}{how}", flush=True)


def _finished(st: Step, marker: dict, *, out: Path, steps: list[Step], markers: dict, recipe: Recipe,
              argv: list[str] | None) -> None:
    markers[st.stage.name] = marker
    print(f"      {st.stage.name} done in {marker['seconds']:.0f}s -> {out / st.stage.name}", flush=True)
    _link(out, st.stage.name, st.dir)
    _record(out, recipe, steps, argv)


def _run_here(st: Step, *, out: Path, steps: list[Step], outputs: dict[str, str], markers: dict, recipe: Recipe,
              progress: bool, argv: list[str] | None, runners: dict[str, Callable] | None) -> None:
    """One stage in this process (every core it has)."""
    _announce(st, steps)
    marker = run_stage(st, outputs, progress=progress, command=argv, runners=runners)
    _finished(st, marker, out=out, steps=steps, markers=markers, recipe=recipe, argv=argv)


# jobs that may run beside another stage under --jobs N: training and file work. The others time decoding
# (speculate, evaluate, align's acceptance, draft-init's layer choice) or take every core themselves (generate:
# vLLM binds its threads to the cores), so they run alone, in this process.
SHAREABLE_JOBS = frozenset({"train", "distill", "select", "tokenizer", "dataset", "synthetic-data", "model",
                            "convert-gguf", "draft-vocab", "export"})


def _shareable(st: Step) -> bool:
    # torchrun stages share out the cores themselves; a training stage capped in wall-clock minutes would train fewer
    # steps on fewer cores (a teacher with max_minutes: 35 beside another stage is a weaker teacher): alone
    return (st.stage.job in SHAREABLE_JOBS and st.stage.processes == 1
            and st.settings.get("max_minutes") is None)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def _run_parallel(todo: list[Step], here: Callable[[Step], None], *, out: Path, steps: list[Step],
                  outputs: dict[str, str], markers: dict, recipe: Recipe, jobs: int, argv: list[str] | None) -> None:
    """``--jobs N``: stages whose inputs are finished run N at a time, each in a worker process with 1/N of the cores
    (``python -m seqkd.pipeline.worker``; its output in ``OUT/logs/STAGE.log``), as make -j does; a stage that must
    run alone (not :data:`SHAREABLE_JOBS`) waits until the workers are done and runs here, and so does a stage that
    is the only one ready (nothing else can start before it ends: it gets every core). Markers, links and run.json
    are written here, as each stage finishes. A failed stage stops new starts; the running ones finish (their work
    is kept), then the run fails with the stage's log."""
    threads = max(1, _cores() // jobs)
    running: dict[str, tuple[Step, Any, Path]] = {}
    failed: list[str] = []
    while (todo and not failed) or running:
        waiting = {st.stage.name for st in todo} | set(running)
        ready = [st for st in todo if not set(st.stage.refs()) & waiting]
        if not failed and not running and ready and (not _shareable(ready[0]) or len(ready) == 1):
            todo.remove(ready[0])
            here(ready[0])
            continue
        for st in ready:
            if failed or len(running) >= jobs or not _shareable(st):
                break  # (a stage that must run alone is not passed by later ones: it starts when the workers end)
            todo.remove(st)
            log = out / "logs" / f"{st.stage.name}.log"
            _announce(st, steps, f" (worker, {threads} thread{'s' if threads > 1 else ''}; log: "
                                 f"{log.relative_to(out)})")
            running[st.stage.name] = (st, _spawn(st, outputs, threads, argv, log), log)
        if not running:  # (cannot happen: a recipe reads only earlier stages, so some stage is always ready)
            raise SeqkdError(f"no stage can start: {', '.join(st.stage.name for st in todo)} wait for each other")
        name, rc = _wait_any({n: h for n, (_, h, _) in running.items()})
        st, _, log = running.pop(name)
        log.with_suffix(".step").unlink(missing_ok=True)  # (the worker's input: read at its start)
        if rc == 0 and is_finished(st.dir, st.key):
            _finished(st, json.loads((st.dir / MARKER).read_text(encoding="utf-8")), out=out, steps=steps,
                      markers=markers, recipe=recipe, argv=argv)
            continue
        failed.append(name)
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:] if log.exists() else []
        print("\n".join(["", f"stage {name} failed (exit status {rc}); the end of {log}:", *tail]), file=sys.stderr,
              flush=True)
        if running:
            print(f"waiting for {', '.join(running)} to finish (their work is kept)", file=sys.stderr, flush=True)
    if failed:
        raise SeqkdError(f"stage {failed[0]} failed: its log is {out / 'logs' / (failed[0] + '.log')}")


def _spawn(st: Step, outputs: dict[str, str], threads: int, argv: list[str] | None, log: Path):
    """Start a worker process for one stage (``threads`` OMP/MKL threads); returns its ``subprocess.Popen``."""
    import pickle
    import subprocess

    log.parent.mkdir(parents=True, exist_ok=True)
    spec = log.with_suffix(".step")  # what the worker runs: the step and the outputs of the stages it may read
    spec.write_bytes(pickle.dumps({"step": st, "outputs": outputs, "command": argv}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "SEQKD_RUN_PID": str(os.getpid())}  # (the worker ends with this process: seqkd.pipeline.worker)
    with open(log, "w", encoding="utf-8") as f:
        return subprocess.Popen([sys.executable, "-m", "seqkd.pipeline.worker", str(spec)], stdout=f,
                                stderr=subprocess.STDOUT, env=env)


def _wait_any(handles: dict[str, Any]) -> tuple[str, int]:
    """(name, exit status) of the first of ``handles`` (``Popen``-like: ``poll()``) to finish."""
    while True:
        for name, h in handles.items():
            rc = h.poll()
            if rc is not None:
                return name, rc
        time.sleep(0.2)


def default_out(recipe: Recipe) -> str:
    return str(Path("runs") / recipe.name)


def main_run(cfg, argv: list[str]) -> None:
    """``seqkd run`` (the CLI's handler)."""
    from seqkd.pipeline.recipe import load_recipe

    recipe = load_recipe(cfg.recipe, cfg.overrides)
    out = cfg.out or default_out(recipe)
    run_recipe(recipe, out, from_stage=cfg.from_stage, only=cfg.only, dry_run=cfg.dry_run,
               progress=sys.stderr.isatty(), argv=["seqkd", *argv], jobs=cfg.jobs)


__all__ = ["MARKER", "Step", "format_plan", "main_run", "plan", "run_recipe", "run_stage", "stage_key"]
