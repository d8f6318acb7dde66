"""Benchmark (issue 16): more than one teacher, a teacher assistant, and internals transfer, on Multi30k de->en with
issue 13's small students and budget.

Teachers: A = issue 13's ``marian-teacher`` (benchmarks/teacher_multi30k.py); B = the same preset trained with
another seed (``teacher_multi30k.py --seed 1``, same settings); the A+B ensemble (``seqkd generate --teacher A
--teacher B``: per step the mean of their log-probabilities). Each teacher (the ensemble too) is scored on the test
sets greedy and with beam 5, and decodes Multi30k train with beam 5 (best hypothesis: seq-KD data). Students, all
``marian-student-small`` trained as in benchmarks/distill_multi30k.py (same epochs, patience, settings; best
checkpoint on validation BLEU):

* ``seq-kd A`` / ``seq-kd B`` / ``seq-kd A+B``: seq-KD from each teacher's corpus (single teachers vs the ensemble
  at the same budget);
* ``TA chain``: A -> an assistant (``marian-student``, 3+1 x d256, seq-KD from A's corpus) -> the small student
  (seq-KD from the assistant's beam-5 outputs), beside ``seq-kd A`` (direct distillation);
* ``seq-kd A + hidden MSE``: seq-KD from A with internals transfer (hidden-state MSE, uniform layer map, learned
  projection 128 -> 256), beside ``seq-kd A``.

Every stage is cached under ``data/`` (teachers, corpora, students; a killed run continues with the same command)
and the results are rewritten after each student. ``--students`` picks rows; ``--train-limit`` / ``--epochs`` make
quick checks. Writes benchmarks/results/teachers_multi30k.{json,md}.

    python benchmarks/teachers_multi30k.py              # hours on 2 CPU cores; minutes on a GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

STUDENTS = ("seq-kd A", "seq-kd B", "seq-kd A+B", "TA chain", "seq-kd A + hidden MSE")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument("--test", nargs=2, action="append", metavar=("SRC", "REF"),
                   help="test set (repeatable; default test_2016_flickr)")
    p.add_argument("--teacher", default=str(ROOT / "data" / "models" / "multi30k-de-en-marian-teacher"))
    p.add_argument("--teacher-b-seed", type=int, default=1)
    p.add_argument("--teacher-minutes", type=float, default=35.0, help="teacher B's training cap (A's setting)")
    p.add_argument("--student-preset", default="marian-student-small")
    p.add_argument("--assistant-preset", default="marian-student")
    p.add_argument("--models-dir", default=str(ROOT / "data" / "models" / "teachers16"))
    p.add_argument("--corpora-dir", default=str(ROOT / "data" / "corpora" / "teachers16"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="teachers_multi30k")
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--eval-steps", type=int, default=250)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=400)
    p.add_argument("--decode-batch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="sentences per test decoding batch")
    p.add_argument("--train-limit", type=int, default=None, help="first N training pairs only (quick checks)")
    p.add_argument("--issue13-corpus", default=str(ROOT / "data" / "corpora" / "multi30k-de-en-marian-beam5"),
                   help="distill_multi30k's corpus of teacher A: its top file is A's seq-KD data (the same beam 5)")
    p.add_argument("--issue13-student", default=str(ROOT / "data" / "models" / "students" / "multi30k-de-en-seq-kd"),
                   help="distill_multi30k's seq-KD student: reused as 'seq-kd A' when trained with these settings")
    a = p.parse_args(argv)
    if a.epochs <= 0 or a.patience < 0:
        p.error("--epochs must be > 0 and --patience >= 0")
    return a


def teacher_b(args) -> Path:
    """Teacher B: teacher_multi30k.py with another seed (its own results file), reused when trained."""
    out = Path(args.teacher).parent / f"{Path(args.teacher).name}-seed{args.teacher_b_seed}"
    if not (out / "train_summary.json").exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "teacher_multi30k.py"), "--families", "marian",
                        "--max-minutes", f"{args.teacher_minutes:g}", "--lr", "1e-3", "--warmup-steps", "400",
                        "--eval-steps", "250", "--patience", "3", "--reuse", "--seed", str(args.teacher_b_seed),
                        "--name", f"teacher_multi30k_seed{args.teacher_b_seed}"], check=True, cwd=ROOT)
    return out


def corpus(args, name: str, teachers: list[str]) -> Path:
    """The teachers (one, or an ensemble) decode train with beam 5 (resumable); returns the seq-KD file (top)."""
    from seqkd.data.files import read_parallel
    from seqkd.data.registry import parallel_files
    from seqkd.teacher.corpus import generate_corpus, read_corpus
    from seqkd.teacher.engines import DecodeSettings, get_engine
    from seqkd.teacher.selection import select, write_training_data

    out = Path(args.corpora_dir) / name
    top = out / "train.top.jsonl"
    if top.exists():
        return top
    shared = Path(args.issue13_corpus) / "train.top.jsonl"
    if name == "A" and args.train_limit is None and shared.exists():
        return shared
    src_file, tgt_file = parallel_files("multi30k:de-en", "train")
    exs = read_parallel(src_file, tgt_file, strict=True, max_chars=None)[0][: args.train_limit]
    engine = get_engine("hf", teachers[0], batch_size=args.decode_batch_size, ensemble=teachers[1:])
    t = time.perf_counter()
    generate_corpus(engine, exs, out, DecodeSettings(mode="beam", beam_size=5, nbest=1, max_new_tokens=128),
                    chunk_size=512, input_path=src_file, manifest_extra={"benchmark": args.name})
    engine.close()
    print(f"corpus {name}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    write_training_data(select(read_corpus(out), "top"), top)
    return top


def student(args, name: str, preset: str, teacher: str, train_file: Path, **extra) -> tuple[Path, dict]:
    """A student trained as distill_multi30k's are (resumable); ``extra``: DistillConfig fields (internals)."""
    from seqkd.config import DistillConfig
    from seqkd.data.registry import parallel_files
    from seqkd.student.distill import distill
    from seqkd.student.trainer import latest_checkpoint

    out = Path(args.models_dir) / name.replace(" ", "-").replace("+", "plus")
    if (out / "train_summary.json").exists():
        return out, json.loads((out / "train_summary.json").read_text())
    shared = Path(args.issue13_student) / "train_summary.json"
    if name == "seq-kd A" and shared.exists():  # the same student, if it was trained with these settings
        ran = json.loads(shared.read_text())
        same = {k: ran["config"].get(k) for k in ("model", "epochs", "patience", "lr", "max_tokens", "eval_steps")}
        if same == {"model": preset, "epochs": args.epochs, "patience": args.patience, "lr": args.lr,
                    "max_tokens": args.max_tokens, "eval_steps": args.eval_steps} and args.train_limit is None:
            return Path(args.issue13_student), ran
    resume = out.is_dir() and latest_checkpoint(out) is not None
    vsrc, vref = parallel_files("multi30k:de-en", "val")
    kd = dict(kd_mode="online", kd_weight=0.0) if extra else dict(kd_mode="none", kd_weight=0.0)
    cfg = DistillConfig(out=str(out), model=preset, teacher=teacher, train_source=str(train_file),
                        valid_source=str(vsrc), valid_target=str(vref), epochs=args.epochs, patience=args.patience,
                        max_tokens=args.max_tokens, lr=args.lr, warmup_steps=args.warmup_steps,
                        eval_steps=args.eval_steps, bleu_samples=500, logging_steps=100, label_smoothing=0.1,
                        save_total_limit=1, resume=resume, overwrite=not resume, seed=0, **kd, **extra)
    return out, distill(cfg)


def score_teachers(teachers: list[str], tests, batch_size: int) -> list[dict]:
    """A teacher or an ensemble on the test sets, greedy and beam 5 (the HF engine: an ensemble decodes as one)."""
    from seqkd.data.files import read_lines
    from seqkd.evaluate import score
    from seqkd.teacher.engines import DecodeSettings, get_engine

    engine = get_engine("hf", teachers[0], batch_size=batch_size, ensemble=teachers[1:])
    rows = []
    for src_file, ref_file in tests:
        srcs, refs = read_lines(src_file, strict=True)[0], read_lines(ref_file, strict=True)[0]
        prompts = engine.encode(srcs)
        for beam in (1, 5):
            settings = DecodeSettings(mode="greedy" if beam == 1 else "beam", beam_size=max(beam, 1),
                                      max_new_tokens=128)
            t = time.perf_counter()
            hyps = [c[0].text for c in engine.generate(prompts, settings)]
            seconds = time.perf_counter() - t
            s = score(hyps, refs)
            rows.append({"test": Path(src_file).name, "beam": beam, "bleu": s.bleu, "chrf": s.chrf,
                         "bleu_signature": s.bleu_signature,
                         "words_per_s": sum(len(h.split()) for h in hyps) / seconds})
            print(f"  {Path(src_file).name} beam {beam}: BLEU {s.bleu:.2f} chrF {s.chrf:.2f}", flush=True)
    engine.close()
    return rows


def main(argv=None) -> None:
    import torch
    from teacher_multi30k import score_model

    from seqkd.models import count_non_embedding, count_parameters, load_model

    args = parse_args(argv)
    t0 = time.perf_counter()
    tests = common.test_sets(args.test)
    if not Path(args.teacher).is_dir():
        sys.exit(f"{args.teacher} is missing: run benchmarks/teacher_multi30k.py --families marian first")
    a = args.teacher
    b = str(teacher_b(args))
    result = {"benchmark": args.name, "machine": common.machine_line(), "torch": torch.__version__,
              "tests": [[common.rel(f) for f in t] for t in tests],
              "settings": common.rel_args(args) | {"test": None}, "teachers": {}, "rows": {}}
    for name, members in (("A", [a]), ("B", [b]), ("A+B", [a, b])):
        print(f"== teacher {name}", flush=True)
        result["teachers"][name] = {"members": [common.rel(m) for m in members],
                                    "scores": score_teachers(members, tests, args.batch_size)}
    data = {"A": corpus(args, "A", [a])}
    for name in args.students:
        print(f"== {name}", flush=True)
        if name == "seq-kd B":
            out, summary = student(args, name, args.student_preset, b, corpus(args, "B", [b]))
        elif name == "seq-kd A+B":
            out, summary = student(args, name, args.student_preset, a, corpus(args, "A+B", [a, b]))
        elif name == "TA chain":
            assistant, _ = student(args, "assistant", args.assistant_preset, a, data["A"])
            out, summary = student(args, name, args.student_preset, str(assistant),
                                   corpus(args, "assistant", [str(assistant)]))
            result["assistant"] = {"params": count_parameters(load_model(assistant)),
                                   "scores": score_model(assistant, tests, args.batch_size)}
        elif name == "seq-kd A + hidden MSE":
            out, summary = student(args, name, args.student_preset, a, data["A"], hidden_loss="mse")
        else:
            out, summary = student(args, name, args.student_preset, a, data["A"])
        model = load_model(out)
        result["rows"][name] = {
            "params": count_parameters(model), "non_embedding_params": count_non_embedding(model),
            "epochs": summary["epochs"], "best_step": summary["best_step"], "stop_reason": summary["stop_reason"],
            "best_epoch": summary["best_step"] / summary["steps_per_epoch"], "val_bleu": summary["best_metric"],
            "train_minutes": summary["seconds"] / 60, "train_tokens_per_s": summary["train_tokens_per_s"],
            "internals": summary.get("internals"), "scores": score_model(out, tests, args.batch_size)}
        write(result, args, time.perf_counter() - t0)
    write(result, args, time.perf_counter() - t0)


def write(result: dict, args, seconds: float) -> None:
    result["total_minutes"] = seconds / 60
    rows, teachers = result["rows"], result["teachers"]
    tests = sorted({s["test"] for r in teachers.values() for s in r["scores"]})
    done = [n for n in args.students if n in rows]
    lines = [f"# {args.name}: several teachers, a teacher assistant, internals transfer (Multi30k de->en)",
             f"Students `{args.student_preset}` (assistant `{args.assistant_preset}`), at most {args.epochs:g} epochs, "
             f"early stopping on validation BLEU with patience {args.patience}; the best validation checkpoint is "
             "scored.", ""]
    if len(done) < len(args.students):
        lines += [f"**Incomplete run: {len(done)} of {len(args.students)} students trained so far**; rerunning the "
                  "command continues it.", ""]
    for test in tests:
        lines += [f"## {test}", "", "| model | params | epochs run (best) | val BLEU | BLEU greedy | BLEU beam 5 | "
                  "chrF beam 5 |", "|---|---|---|---:|---:|---:|---:|"]
        for name, r in teachers.items():
            by = {s["beam"]: s for s in r["scores"] if s["test"] == test}
            lines.append(f"| teacher {name} | - | - | - | {by[1]['bleu']:.2f} | {by[5]['bleu']:.2f} | "
                         f"{by[5]['chrf']:.2f} |")
        if "assistant" in result:
            by = {s["beam"]: s for s in result["assistant"]["scores"] if s["test"] == test}
            lines.append(f"| assistant | {result['assistant']['params'] / 1e6:.2f}M | - | - | {by[1]['bleu']:.2f} | "
                         f"{by[5]['bleu']:.2f} | {by[5]['chrf']:.2f} |")
        for name in done:
            r = rows[name]
            by = {s["beam"]: s for s in r["scores"] if s["test"] == test}
            lines.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['epochs']:.1f} ({r['best_epoch']:.1f}) | "
                         f"{r['val_bleu']:.2f} | {by[1]['bleu']:.2f} | {by[5]['bleu']:.2f} | {by[5]['chrf']:.2f} |")
        lines.append("")
    sigs = sorted({s["bleu_signature"] for r in [*teachers.values(), *rows.values()] for s in r["scores"]})
    lines += [f"BLEU signature: `{'`, `'.join(sigs)}`", "",
              f"This run: {result['total_minutes']:.0f} min; training minutes: "
              + (", ".join(f"{n} {rows[n]['train_minutes']:.0f}" for n in done) or "-") + "."]
    common.write_results(args.name, result, "\n".join(lines), results_dir=args.results)


if __name__ == "__main__":
    main()
