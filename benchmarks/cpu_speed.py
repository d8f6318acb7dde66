"""Benchmark: translation quality and speed where students are deployed, a CPU — teachers and students in HF
(PyTorch, float32) and CTranslate2 (float32, int8), batch 1 (latency) and batch 64 (throughput), greedy and beam 5.

    python benchmarks/cpu_speed.py                       # the teacher + the students of benchmarks/kim_rush.py's run
    python benchmarks/cpu_speed.py --model teacher=DIR --model student=DIR [--test SRC REF] [--passes 3]

Each engine (hf, ct2-float32, ct2-int8) runs in its own fresh process: PyTorch and CTranslate2 each keep their own
OpenMP threads spinning after a batch, and in one process they would slow each other. A worker warms every model
up, then decodes the test set with every model in every setting; the workers are alternated ``--passes`` times
(interleaved: drift of the machine's speed hits every engine alike), and rates are median (min–max) over the passes.
Batch 64 decodes the whole test set (its outputs are scored: sacrebleu BLEU / chrF); batch 1 the first
``--batch1-limit`` sentences. The CTranslate2 exports are made once into ``data/models/ct2/``. Finished passes are
kept in ``benchmarks/work/cpu_speed/`` (key: settings + commit), so a killed run continues where it stopped.
Writes benchmarks/results/cpu_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"
WORK = ROOT / "benchmarks" / "work" / "cpu_speed"
ENGINES = ("hf", "ct2-float32", "ct2-int8")
SETTINGS = ((64, 1), (64, 5), (1, 1), (1, 5))  # (batch size, beam size)
RECIPE_RUN = ROOT / "benchmarks" / "work" / "recipes" / "multi30k"  # benchmarks/kim_rush.py's run directory
# the recipe's stage -> the model's name in the tables (Kim & Rush's rows)
STAGES = {"teacher": "teacher", "student-baseline": "baseline", "student-word-kd": "word-kd",
          "student-seq-kd": "seq-kd", "student-seq-kd-word-kd": "seq-kd+word-kd", "student-seq-inter": "seq-inter"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", metavar="NAME=DIR",
                   help="a model to measure (repeatable; the first is the teacher the others are compared with); "
                        "default: the teacher and the students of the multi30k-de-en recipe's run that "
                        "benchmarks/kim_rush.py made (those finished)")
    p.add_argument("--test", nargs=2, metavar=("SRC", "REF"), help="default: Multi30k test_2016_flickr de->en")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--batch1-limit", type=int, default=200, help="sentences decoded one at a time (latency)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every engine (0: every core)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--name", default="cpu_speed")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.passes < 1 or a.batch1_limit < 1 or a.threads < 0:
        p.error("--passes and --batch1-limit must be >= 1, --threads >= 0")
    return a


def models(a) -> dict[str, Path]:
    from seqkd.io import is_model_dir

    if a.model:
        pairs = [m.split("=", 1) for m in a.model]
        if any(len(x) != 2 for x in pairs):
            sys.exit("--model takes NAME=DIR")
        out = {k: Path(v) for k, v in pairs}
    else:
        # the stage directories themselves (each named by its stage's key: cpu_speed keeps an export per name);
        # a stage still training has only checkpoints in its directory
        out = {name: (RECIPE_RUN / stage).resolve() for stage, name in STAGES.items()
               if is_model_dir(RECIPE_RUN / stage)}
        if "teacher" not in out:
            sys.exit(f"no trained teacher in {common.rel(RECIPE_RUN)}: run benchmarks/kim_rush.py first, or give "
                     "--model NAME=DIR")
    missing = [str(p) for p in out.values() if not p.is_dir()]
    if missing:
        sys.exit(f"missing model directories: {', '.join(missing)}")
    return out


def test_set(a) -> tuple[list[str], list[str], list[str]]:
    from seqkd.data.files import read_lines
    from seqkd.data.registry import parallel_files

    files = [str(Path(f).resolve()) for f in a.test or parallel_files("multi30k:de-en", "test_2016_flickr")]
    return read_lines(files[0], keep_empty=True)[0], read_lines(files[1], keep_empty=True)[0], files


def export_dir(name: str, model: Path, quantization: str) -> Path:
    """The model's CTranslate2 export, made once (remade when the model's weights are newer)."""
    from seqkd.deploy.ct2 import export_ctranslate2, is_ct2_export

    out = MODELS / "ct2" / f"{model.name}-{quantization}"
    weights = max(p.stat().st_mtime for p in model.glob("*.safetensors"))
    if not is_ct2_export(out) or (out / "model.bin").stat().st_mtime < weights:
        export_ctranslate2(model, out, quantization=quantization, force=True)
    return out


def worker(a) -> dict:
    """One engine, every model and setting, in this fresh process: warm-up, then one timed pass."""
    from seqkd.evaluate import load_translator, timed

    srcs, _, _ = test_set(a)
    engine, _, quant = a.worker.partition("-")
    out: dict = {}
    for name, model in models(a).items():
        where = export_dir(name, model, quant) if engine == "ct2" else model
        t0 = time.perf_counter()
        tr = load_translator(str(where), engine=engine, threads=a.threads)
        load_s = time.perf_counter() - t0
        kw = dict(max_new_tokens=a.max_new_tokens)
        for beam in (1, 5):  # warm-up: allocations, kernels, caches
            tr.translate(srcs[:16], beam_size=beam, batch_size=16, **kw)
        runs = {}
        for batch, beam in SETTINGS:
            part = srcs if batch > 1 else srcs[: a.batch1_limit]
            hyps, speed = timed(tr, part, beam_size=beam, batch_size=batch, **kw)
            runs[f"b{batch}-beam{beam}"] = {**speed.as_dict(), "texts": hyps if batch > 1 else None}
            print(f"  {a.worker:11s} {name:15s} batch {batch:2d} beam {beam}: {speed.words_per_s:7.0f} words/s",
                  flush=True)
        out[name] = {"load_s": load_s, "runs": runs}
    return out


def run_pass(a, engine: str, k: int) -> dict:
    """Pass ``k`` of one engine in a fresh process, or the same pass finished earlier with the same settings."""
    from seqkd.io import atomic_write_json

    key = {"engine": engine, "pass": k, "models": {n: common.rel(p) for n, p in models(a).items()},
           "test": [common.rel(f) for f in test_set(a)[2]], "batch1_limit": a.batch1_limit, "threads": a.threads,
           "max_new_tokens": a.max_new_tokens, "commit": common.run_info()["commit"]}
    kept = WORK / f"{engine}-{k}.json"
    if kept.exists() and json.loads(kept.read_text()).get("key") == key:
        print(f"{engine} pass {k}: finished earlier, reused", flush=True)
        return json.loads(kept.read_text())["result"]
    cmd = [sys.executable, "-u", __file__, "--worker", engine, "--passes", "1", "--batch1-limit", str(a.batch1_limit),
           "--threads", str(a.threads), "--max-new-tokens", str(a.max_new_tokens)]
    cmd += sum((["--model", m] for m in a.model or []), []) + (["--test", *a.test] if a.test else [])
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = r.stdout.splitlines()
    print("\n".join(l for l in lines if not l.startswith("RESULT ")), flush=True)
    if r.returncode != 0:
        raise SystemExit(f"{engine} worker failed ({r.returncode})")
    result = json.loads([l for l in lines if l.startswith("RESULT ")][-1][len("RESULT "):])
    WORK.mkdir(parents=True, exist_ok=True)
    atomic_write_json(kept, {"key": key, "result": result})
    return result


def val_bleu(model: Path) -> float | None:
    """The validation BLEU a trained model was chosen by (its ``train_summary.json``), if it says."""
    f = model / "train_summary.json"
    return json.loads(f.read_text()).get("best_metric") if f.is_file() else None


def aggregate(passes: dict[str, list[dict]], refs: list[str], params: dict[str, dict],
              vals: dict[str, float | None]) -> dict:
    """Per model and engine: BLEU / chrF of the batch-64 outputs (pass 0; every pass decodes the same), and per
    setting the words/s of every pass with their median and range."""
    from seqkd.evaluate import score

    rows: dict = {}
    for engine, ps in passes.items():
        for name in ps[0]:
            r = {"params": params[name], "quality": {}, "speed": {}, "val_bleu": vals.get(name)}
            for beam in (1, 5):
                s = score(ps[0][name]["runs"][f"b64-beam{beam}"]["texts"], refs)
                r["quality"][f"beam{beam}"] = {"bleu": s.bleu, "chrf": s.chrf, "bleu_signature": s.bleu_signature}
            for batch, beam in SETTINGS:
                k = f"b{batch}-beam{beam}"
                wps = [p[name]["runs"][k]["words_per_s"] for p in ps]
                r["speed"][k] = {**common.summary(wps), "per_pass": wps, "threads": ps[0][name]["runs"][k]["threads"]}
            rows.setdefault(name, {})[engine] = r
    return rows


def verdicts(rows: dict, teacher: str) -> list[str]:
    """Issue 13's targets for the best student: chosen on validation BLEU (its training run's best, from
    ``train_summary.json``; the test set only reports), else on test greedy BLEU where no summary says."""
    students = [n for n in rows if n != teacher]
    if not students:
        return ["(no student measured)"]
    t = rows[teacher]
    val = {n: rows[n]["hf"].get("val_bleu") for n in students}
    if all(v is not None for v in val.values()):
        best = max(students, key=lambda n: val[n])
    else:
        best = max(students, key=lambda n: rows[n]["hf"]["quality"]["beam1"]["bleu"])
    b = rows[best]
    out = []
    for n, tag in (("baseline", "baseline"),):
        if n in rows and n != best:
            gain = b["hf"]["quality"]["beam1"]["bleu"] - rows[n]["hf"]["quality"]["beam1"]["bleu"]
            ok = gain >= 2 and b["hf"]["quality"]["beam1"]["bleu"] >= rows[n]["hf"]["quality"]["beam5"]["bleu"]
            out.append(f"- Best student ({best}) vs the {tag} student, greedy: {gain:+.2f} BLEU (target ≥ +2); its "
                       f"greedy {b['hf']['quality']['beam1']['bleu']:.2f} vs the baseline's beam 5 "
                       f"{rows[n]['hf']['quality']['beam5']['bleu']:.2f}: **{'met' if ok else 'missed'}**.")
    def near(ratio: float, target: float) -> str:
        return " (within 10% of the threshold: a re-run could flip it)" if abs(ratio / target - 1) < 0.1 else ""

    def rate(row: dict, engine: str, beam: int) -> float:
        return row[engine]["speed"][f"b64-beam{beam}"]["median"]

    gap = t["hf"]["quality"]["beam5"]["bleu"] - b["hf"]["quality"]["beam1"]["bleu"]
    for engine in ENGINES:
        ratio = rate(b, engine, 1) / rate(t, engine, 5)
        ok = ratio >= 5 and gap <= 1.5
        out.append(f"- {best} greedy vs the teacher's beam 5, both {engine}, batch 64: {ratio:.1f}× the words/s "
                   f"(target ≥ 5×; {rate(b, engine, 1) / rate(t, engine, 1):.1f}× the teacher's greedy), {gap:.2f} "
                   f"BLEU behind (target ≤ 1.5): **{'met' if ok else 'missed'}**{near(ratio, 5)}.")
    ratio, vs_greedy = rate(b, "ct2-int8", 1) / rate(t, "hf", 5), rate(b, "ct2-int8", 1) / rate(t, "hf", 1)
    gap8 = t["hf"]["quality"]["beam5"]["bleu"] - b["ct2-int8"]["quality"]["beam1"]["bleu"]
    out.append(f"- {best} greedy in CTranslate2 int8 vs the teacher's beam 5 in HF float32 (what switching to seqkd's "
               f"deployment path gives), batch 64: {ratio:.1f}× (target ≥ 10×; {vs_greedy:.1f}× the teacher's HF "
               f"greedy), {gap8:.2f} BLEU behind: "
               f"**{'met' if ratio >= 10 and gap8 <= 1.5 else 'missed'}**{near(ratio, 10)}.")
    return out


def render(result: dict) -> str:
    rows, teacher = result["rows"], result["teacher"]
    lines = [f"# Translation on CPU: {', '.join(rows)} in HF and CTranslate2", "",
             f"Test set: `{result['test'][0]}` ({result['sentences']} sentences; batch 1 on the first "
             f"{result['batch1_limit']}). Words/s: median (min–max) over {result['passes']} passes, each engine in "
             "a fresh process after a warm-up, engines alternated. BLEU / chrF: sacrebleu, of the batch-64 outputs.",
             "", "| model | params (outside emb.) | engine | BLEU greedy | BLEU beam 5 | chrF beam 5 | "
             "words/s b64 greedy | b64 beam 5 | b1 greedy | b1 beam 5 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_engine in rows.items():
        for engine, r in by_engine.items():
            q, s = r["quality"], r["speed"]
            p = r["params"]
            lines.append(f"| {name} | {p['total'] / 1e6:.2f}M ({p['non_embedding'] / 1e6:.2f}M) | {engine} | "
                         f"{q['beam1']['bleu']:.2f} | {q['beam5']['bleu']:.2f} | {q['beam5']['chrf']:.2f} | "
                         + " | ".join(common.fmt_summary(s[f"b{b}-beam{k}"], ".0f") for b, k in SETTINGS) + " |")
    lines += ["", f"Threads per engine: {result['threads']}. "
              f"BLEU signature: `{next(iter(rows.values()))['hf']['quality']['beam1']['bleu_signature']}`.", "",
              "## Targets", "", *verdicts(rows, teacher), ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"hf": "o", "ct2-float32": "s", "ct2-int8": "^"}
    for name, by_engine in result["rows"].items():
        for engine, r in by_engine.items():
            for beam, fill in ((1, "full"), (5, "none")):
                x = r["speed"][f"b64-beam{beam}"]["median"]
                y = r["quality"][f"beam{beam}"]["bleu"]
                color = f"C{list(result['rows']).index(name)}"
                ax.plot([x], [y], marker=markers[engine], fillstyle=fill, ls="", color=color,
                        label=name if engine == "hf" and beam == 1 else None)
    ax.set_xscale("log")
    ax.set_xlabel("words/s, batch 64 (log)  —  o HF fp32, □ CT2 fp32, △ CT2 int8; filled greedy, open beam 5")
    ax.set_ylabel("BLEU")
    ax.set_title(f"Quality vs speed on {result['machine_short']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None) -> None:
    a = parse_args(argv)
    os.environ.setdefault("SEQKD_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    if a.worker:
        print("RESULT " + json.dumps(worker(a)))
        return
    from seqkd.models import count_non_embedding, count_parameters, load_model

    ms = models(a)
    _, refs, files = test_set(a)
    params = {}
    for name, model in ms.items():
        m = load_model(model)
        params[name] = {"total": count_parameters(m), "non_embedding": count_non_embedding(m)}
    t0 = time.perf_counter()
    passes: dict[str, list[dict]] = {e: [] for e in ENGINES}
    for k in range(a.passes):
        order = ENGINES[k % 3:] + ENGINES[: k % 3]  # who goes first rotates: no engine always runs after another
        for engine in order:
            passes[engine].append(run_pass(a, engine, k))
    machine = common.machine()
    result = {"benchmark": a.name, "teacher": next(iter(ms)), "models": {n: common.rel(p) for n, p in ms.items()},
              "test": [common.rel(f) for f in files], "sentences": len(refs), "batch1_limit": a.batch1_limit,
              "passes": a.passes, "threads": a.threads or len(os.sched_getaffinity(0)),
              "machine_short": machine["cpu"]["model"], "minutes": (time.perf_counter() - t0) / 60,
              "rows": aggregate(passes, refs, params, {n: val_bleu(m) for n, m in ms.items()})}
    paths = common.write_results(a.name, result, render(result), plot=lambda p: plot(result, p))
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
