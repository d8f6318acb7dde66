"""Recipes: a YAML file of named stages, each one job's config (the same dataclasses the subcommands take).

A recipe file::

    description: one paragraph shown in the report
    stages:                      # run in this order
      teacher:
        job: train               # which job (JOBS): its config classes take the other keys
        data: synthetic
        max_steps: 1200
      corpus:
        job: generate
        teacher: ${teacher}      # another stage's output (its directory, or its file for select/evaluate/...)
        input: ${data}/corpus.src
      speculate:
        job: speculate
        sweep: {gamma: [2, 4, 6]}  # the job once per value; its results are a list
      compare:
        job: speculate
        sweep: {draft: ["${student}", "${draft}"]}  # values may be references (one baseline for both drafts)
      student:
        job: distill
        launch: {processes: 2}   # DDP: torchrun starts 2 processes (GPUs, or CPU processes with gloo)

``${name}`` is the output of the stage called ``name`` (which must come earlier); ``${name}/file`` a file in its
directory. A stage never sets ``out``: the runner gives each stage a directory keyed by its settings. Loading a recipe
builds every stage's configs (references filled with placeholder paths), so a wrong field or value is one line
naming the stage before anything runs. This module imports no torch (``seqkd run --dry-run`` starts at once).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from seqkd import config as C
from seqkd.errors import SeqkdError

REF = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
# job -> (config classes, the stage's primary output relative to its directory: what ${stage} means; None: the
# stage's ``path`` field)
JOBS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((C.ModelRefConfig,), None),  # its output is the model's own directory, not the stage's
    "synthetic-data": ((C.SyntheticDataConfig,), ""),
    "dataset": ((C.DatasetConfig,), ""),
    "convert-gguf": ((C.ConvertGgufConfig,), "model"),
    "tokenizer": ((C.TokenizerTrainConfig,), ""),
    "train": ((C.TrainConfig,), ""),
    "generate": ((C.GenerateConfig, C.DecodeSettings), ""),
    "select": ((C.SelectConfig,), "train.jsonl"),
    "distill": ((C.DistillConfig,), ""),
    "export": ((C.ExportConfig,), "ct2"),  # a subdirectory: the export appears there complete or not at all
    "draft-init": ((C.DraftInitConfig,), "draft"),
    "draft-vocab": ((C.DraftVocabConfig,), "draft"),
    "align": ((C.AlignConfig,), "draft"),  # its generated data go beside it, in draft-work
    "speculate": ((C.SpeculateConfig,), "speculate.json"),
    "evaluate": ((C.EvaluateConfig,), "scores.json"),
}
# fields the runner sets (never part of a stage's key: they do not change what the stage computes)
RUNNER_FIELDS = frozenset({"out", "overwrite", "resume", "force", "progress"})
BUILTIN = ("synthetic", "multi30k-de-en", "multi30k-teachers", "smollm2-draft", "smollm2-layers")


@dataclass
class Stage:
    """One stage: its name, job, settings (references unresolved) and an optional sweep over one field."""

    name: str
    job: str
    settings: dict[str, Any]
    sweep: tuple[str, list] | None = None
    processes: int = 1  # launch: {processes: N}: a training job in N processes (DDP, torchrun)

    def refs(self) -> list[str]:
        """Names of the stages this one reads (its settings and its sweep's values), in order of first use."""
        found: list[str] = []
        for s in [*strings(self.settings), *strings(self.sweep[1] if self.sweep else [])]:
            found += [m.group(1) for m in REF.finditer(s) if m.group(1) not in found]
        return found


@dataclass
class Recipe:
    name: str
    description: str
    stages: list[Stage]
    source: str  # the recipe's text as loaded (before overrides): recorded in the run
    overrides: list[str] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise SeqkdError(f"recipe {self.name}: no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")


def strings(value: Any):
    """Every string inside ``value`` (strings, lists, tuples and mappings)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)


def substitute(value: Any, outputs: dict[str, str]) -> Any:
    """``value`` with every ``${name}`` replaced by ``outputs[name]`` (in strings, lists and mappings)."""
    if isinstance(value, str):
        return REF.sub(lambda m: outputs[m.group(1)], value)
    if isinstance(value, list):
        return [substitute(v, outputs) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, outputs) for k, v in value.items()}
    return value


def sweep_values(stage: Stage, outputs: dict[str, str]) -> list[Any]:
    """The stage's sweep values with their references substituted (``[None]``: no sweep, the job runs once)."""
    return substitute(list(stage.sweep[1]), outputs) if stage.sweep else [None]


def sweep_label(value: Any) -> str:
    """A sweep value as it names the value's directory and report row: ``2`` -> ``2``, ``${student}`` -> ``student``
    (a reference by its stage's name, never by a path)."""
    s = str(value)
    return REF.sub(lambda m: m.group(1), s).replace("/", "_")


def recipe_path(recipe: str) -> Path | None:
    """A built-in recipe's file (None if ``recipe`` is not a built-in name)."""
    if recipe not in BUILTIN:
        return None
    return Path(str(resources.files("seqkd.pipeline") / "recipes" / f"{recipe}.yaml"))


def load_recipe(recipe: str, overrides: list[str] = ()) -> Recipe:
    """A built-in recipe by name, or a YAML file; ``overrides`` are ``STAGE.FIELD=VALUE`` (VALUE read as YAML).
    Every stage's configs are built here, so a bad recipe is one line before anything runs."""
    import yaml

    path = recipe_path(recipe) or Path(recipe)
    if not path.is_file():
        hint = "" if recipe.endswith((".yaml", ".yml")) else f"; built-in recipes: {', '.join(BUILTIN)}"
        raise SeqkdError(f"recipe {recipe!r}: no such file{hint}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        hint = "; quote a ${stage} inside [...] or {...}" if "flow" in str(e) else ""
        raise SeqkdError(f"recipe {path}: not valid YAML ({str(e).strip().splitlines()[0]}{hint})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise SeqkdError(f"recipe {path}: expected a mapping with a non-empty 'stages' mapping")
    unknown = set(data) - {"description", "stages"}
    if unknown:
        raise SeqkdError(f"recipe {path}: unknown key(s) {', '.join(sorted(unknown))} (description, stages)")
    stages_data = copy.deepcopy(data["stages"])
    for kv in sorted(overrides, key=lambda kv: kv.partition("=")[0].partition(".")[2] != "job"):  # job= first
        _apply_override(stages_data, kv, path)
    name = path.stem if recipe_path(recipe) is None else recipe
    stages = [_stage(n, s, path) for n, s in stages_data.items()]
    r = Recipe(name=name, description=str(data.get("description", "")).strip(), stages=stages, source=text,
               overrides=list(overrides))
    validate(r)
    return r


def _apply_override(stages: dict, kv: str, path: Path) -> None:
    import yaml

    key, _, raw = kv.partition("=")
    stage, _, fld = key.partition(".")
    if stage not in stages:
        raise SeqkdError(f"override {kv!r}: {path.name} has no stage {stage!r} (stages: {', '.join(stages)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    fld = fld.replace("-", "_")
    if fld == "job" and stages[stage].get("job") != value:  # another job: the stage's old fields do not apply
        stages[stage] = {"job": value}
        return
    if fld.startswith("sweep."):  # sweep.gamma=[2,4]
        stages[stage].setdefault("sweep", {})
        stages[stage]["sweep"] = {fld.split(".", 1)[1]: value}
        return
    stages[stage][fld] = value


def _stage(name: str, spec: Any, path: Path) -> Stage:
    where = f"recipe {path.name}: stage {name!r}"
    if not REF.fullmatch("${" + name + "}"):
        raise SeqkdError(f"{where}: stage names use letters, digits, '_', '-' and '.'")
    if not isinstance(spec, dict) or "job" not in spec:
        raise SeqkdError(f"{where}: expected a mapping with a 'job' ({', '.join(JOBS)})")
    settings = {str(k).replace("-", "_"): v for k, v in spec.items()}
    job = settings.pop("job")
    if job not in JOBS:
        raise SeqkdError(f"{where}: unknown job {job!r} ({', '.join(JOBS)})")
    sweep = settings.pop("sweep", None)
    if sweep is not None:
        if not (isinstance(sweep, dict) and len(sweep) == 1 and isinstance(next(iter(sweep.values())), list)
                and next(iter(sweep.values()))):
            raise SeqkdError(f"{where}: sweep takes one field and a non-empty list of values, e.g. "
                             "sweep: {gamma: [2, 4, 6]}")
        sweep = next(iter(sweep.items()))
        sweep = (sweep[0].replace("-", "_"), sweep[1])
    launch = settings.pop("launch", None) or {}
    if not isinstance(launch, dict) or set(launch) - {"processes"} or not isinstance(launch.get("processes", 1), int) \
            or launch.get("processes", 1) < 1:
        raise SeqkdError(f"{where}: launch takes {{processes: N}} (N >= 1 processes, DDP)")
    processes = launch.get("processes", 1)
    if processes > 1 and job not in ("train", "distill"):
        raise SeqkdError(f"{where}: launch: {{processes: N}} is for training jobs (train, distill), not {job}")
    given = set(settings) & RUNNER_FIELDS
    if given:
        raise SeqkdError(f"{where}: {', '.join(sorted(given))} is set by seqkd run (each stage gets its own "
                         "directory); leave it out")
    return Stage(name=name, job=job, settings=settings, sweep=sweep, processes=processes)


def configs(stage: Stage, settings: dict[str, Any], out: str, sweep_value: Any = None,
            runner: dict[str, Any] | None = None) -> list[Any]:
    """The stage's config objects for resolved ``settings`` (references already substituted), writing to ``out``
    (its directory), with the ``runner``'s values of :data:`RUNNER_FIELDS` (progress, resume, ...) where a class has
    them; one line naming the stage for an unknown field or a bad value."""
    classes, primary = JOBS[stage.job]
    values = dict(settings)
    if stage.sweep is not None:
        values[stage.sweep[0]] = sweep_value if sweep_value is not None else stage.sweep[1][0]
    values["out"] = str(Path(out) / primary) if primary else out  # (a model stage's out: its record)
    known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SeqkdError(f"stage {stage.name!r} ({stage.job}): unknown field(s) {', '.join(unknown)}")
    objs = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kw = {k: v for k, v in values.items() if k in names}
        kw.update({k: v for k, v in (runner or {}).items() if k in names})
        try:
            objs.append(cls(**kw))
        except SeqkdError as e:
            raise SeqkdError(f"stage {stage.name!r} ({stage.job}): {e}") from None
        except TypeError as e:  # a missing required field
            raise SeqkdError(f"stage {stage.name!r} ({stage.job}): {e}") from None
    return objs


def validate(recipe: Recipe) -> None:
    """Every reference names an earlier stage, and every stage's configs build (placeholders for references)."""
    seen: list[str] = []
    for s in recipe.stages:
        for ref in s.refs():
            if ref not in seen:
                later = ref in {t.name for t in recipe.stages}
                raise SeqkdError(f"recipe {recipe.name}: stage {s.name!r} reads ${{{ref}}}, "
                                 + ("which comes later: order the stages so that it runs first" if later
                                    else "which is no stage of the recipe"))
        placeholders = {n: f"/nonexistent/{n}" for n in seen}
        for value in sweep_values(s, placeholders):
            configs(s, substitute(s.settings, placeholders), f"/nonexistent/{s.name}", value)
        seen.append(s.name)
