"""Benchmark: Kim & Rush's table on Multi30k de->en — baseline student, word-KD, seq-KD, seq-KD + word-KD and
seq-inter, small students trained to convergence on the same epoch budget, beside their teacher.

1. The teacher (the ``marian-teacher`` made by benchmarks/teacher_multi30k.py,
   ``data/models/multi30k-de-en-marian-teacher``) decodes Multi30k train with beam 5 (5-best): ``seqkd generate``'s
   corpus, resumable, kept in ``data/corpora/``.
2. ``seqkd select``: ``top`` (seq-KD targets) and ``seq-inter`` (the 5-best entry with the best sentence BLEU
   against the reference).
3. Five students of one preset (default ``marian-student-small``: 4+1 layers x d128, 5.2x fewer parameters than the
   teacher outside the embeddings), the same settings (chosen on val) and the same budget: ``--epochs`` passes
   over their training data, stopped early when validation BLEU (greedy, 500 val sentences, every
   ``--eval-steps``) has not improved for ``--patience`` evaluations; the best validation checkpoint is kept.
   baseline = references + CE; word-KD = references + online forward KL (w=0.5); seq-KD = teacher's top + CE;
   seq-KD + word-KD = teacher's top + online forward KL (w=0.5); seq-inter = seq-inter targets + CE.
4. Every student and the teacher decode the test sets greedy and with beam 5 (sacrebleu BLEU / chrF with
   signatures). Speed is benchmarks/cpu_speed.py's job (engines, batch sizes, >= 3 passes); the words/s this
   script records are one pass, HF, batch 64.

    python benchmarks/distill_multi30k.py                                  # test_2016_flickr
    python benchmarks/distill_multi30k.py --test SRC REF --test SRC2 REF2   # any other test sets
    python benchmarks/distill_multi30k.py --students baseline seq-kd --epochs 10

Resumable stage by stage: a rerun skips the corpus chunks and students that are done and resumes a student killed
mid-training from its last checkpoint (``--retrain`` retrains the students). The results are rewritten after
every student. Writes benchmarks/results/distill_multi30k.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

STUDENTS = {
    "baseline": dict(data="references", kd_mode="none", kd_weight=0.0),
    "word-kd": dict(data="references", kd_mode="online", kd_weight=0.5),
    "seq-kd": dict(data="top", kd_mode="none", kd_weight=0.0),
    "seq-kd+word-kd": dict(data="top", kd_mode="online", kd_weight=0.5),
    "seq-inter": dict(data="seq-inter", kd_mode="none", kd_weight=0.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument("--test", nargs=2, action="append", metavar=("SRC", "REF"),
                   help="a test set to score (repeatable); default: Multi30k test_2016_flickr de->en")
    p.add_argument("--teacher", default=str(ROOT / "data" / "models" / "multi30k-de-en-marian-teacher"))
    p.add_argument("--student-preset", default="marian-student-small")
    p.add_argument("--corpus", default=str(ROOT / "data" / "corpora" / "multi30k-de-en-marian-beam5"))
    p.add_argument("--models-dir", default=str(ROOT / "data" / "models" / "students"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="distill_multi30k")
    p.add_argument("--epochs", type=float, default=30, help="passes over its training data, the same for every "
                   "student (the most it trains: early stopping usually ends it first)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many evaluations without a better validation BLEU")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=400)
    p.add_argument("--eval-steps", type=int, default=250,
                   help="validate every N steps (250: about one epoch of Multi30k at 4,096 tokens per batch)")
    p.add_argument("--decode-batch-size", type=int, default=64, help="teacher prompts per generate call")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per test decoding batch")
    p.add_argument("--device", default=None, help="cpu or cuda for decoding and scoring (default: cuda if available;"
                   " training uses the Trainer's device)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training pairs only (quick checks)")
    p.add_argument("--retrain", action="store_true", help="retrain students that already exist")
    p.add_argument("--corpus-only", action="store_true",
                   help="make the corpus and training files, then stop (before students train in parallel runs)")
    return p.parse_args(argv)


def build_corpus(args) -> dict[str, Path]:
    """Decode train with the teacher (resumable) and select top / seq-inter; returns data files by name."""
    from seqkd.data.files import read_parallel
    from seqkd.data.registry import parallel_files
    from seqkd.teacher.corpus import generate_corpus, read_corpus
    from seqkd.teacher.engines import DecodeSettings, get_engine
    from seqkd.teacher.selection import select, write_training_data

    corpus = Path(args.corpus)
    src_file, tgt_file = parallel_files("multi30k:de-en", "train")
    files = {"references": corpus / "references.jsonl", "top": corpus / "train.top.jsonl",
             "seq-inter": corpus / "train.seq-inter.jsonl"}
    if all(f.exists() for f in files.values()):
        return files
    exs, _ = read_parallel(src_file, tgt_file, strict=True, max_chars=None)
    exs = exs[: args.train_limit]
    engine = get_engine("hf", args.teacher, batch_size=args.decode_batch_size, device=args.device)
    settings = DecodeSettings(mode="beam", beam_size=5, nbest=5, max_new_tokens=128)
    summary = generate_corpus(engine, exs, corpus, settings, chunk_size=512, input_path=src_file,
                              manifest_extra={"benchmark": "distill_multi30k"})
    engine.close()
    print(f"corpus: {common.rel_args(summary)}", flush=True)
    for strategy in ("top", "seq-inter"):
        write_training_data(select(read_corpus(corpus), strategy), files[strategy])
    write_training_data(({"id": e.id, "source": e.source, "target": e.target} for e in exs), files["references"])
    return files


def train_student(args, name: str, files: dict[str, Path]) -> tuple[Path, dict]:
    from seqkd.config import DistillConfig
    from seqkd.data.registry import parallel_files
    from seqkd.student.distill import distill
    from seqkd.student.trainer import latest_checkpoint

    out = Path(args.models_dir) / f"multi30k-de-en-{name}"
    if (out / "train_summary.json").exists() and not args.retrain:
        return out, json.loads((out / "train_summary.json").read_text())
    resume = not args.retrain and out.is_dir() and latest_checkpoint(out) is not None  # killed mid-training
    spec = STUDENTS[name]
    vsrc, vref = parallel_files("multi30k:de-en", "val")
    cfg = DistillConfig(
        out=str(out), model=args.student_preset, teacher=args.teacher, train_source=str(files[spec["data"]]),
        valid_source=str(vsrc), valid_target=str(vref), kd_mode=spec["kd_mode"], kd_weight=spec["kd_weight"],
        epochs=args.epochs, patience=args.patience, max_tokens=args.max_tokens, lr=args.lr,
        warmup_steps=args.warmup_steps, eval_steps=args.eval_steps, bleu_samples=500, logging_steps=100,
        label_smoothing=0.1, save_total_limit=1, resume=resume, overwrite=not resume, seed=0,
    )
    return out, distill(cfg)


def main(argv=None) -> None:
    import torch
    from teacher_multi30k import score_model

    from seqkd.models import count_non_embedding, count_parameters, load_model

    args = parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    tests = common.test_sets(args.test)
    if not Path(args.teacher).is_dir():
        sys.exit(f"{args.teacher} is missing: run benchmarks/teacher_multi30k.py --families marian first")
    result = {"benchmark": args.name, "machine": common.machine_line(gpu=args.device == "cuda"),
              "torch": torch.__version__, "tests": [[common.rel(f) for f in t] for t in tests],
              "settings": common.rel_args(args) | {"test": None},
              "rows": {}}
    t = time.perf_counter()
    files = build_corpus(args)
    result["corpus_minutes"] = (time.perf_counter() - t) / 60
    if args.corpus_only:
        return
    print("== teacher", flush=True)
    teacher = load_model(args.teacher)
    result["rows"]["teacher"] = {"params": count_parameters(teacher),
                                 "non_embedding_params": count_non_embedding(teacher),
                                 "scores": score_model(Path(args.teacher), tests, args.batch_size, args.device)}
    for name in args.students:
        print(f"== {name}", flush=True)
        out, summary = train_student(args, name, files)
        model = load_model(out)
        result["rows"][name] = {
            "params": count_parameters(model), "non_embedding_params": count_non_embedding(model),
            "steps": summary["steps"], "epochs": summary["epochs"], "best_step": summary["best_step"],
            "steps_per_epoch": summary["steps_per_epoch"], "stop_reason": summary["stop_reason"],
            "best_epoch": summary["best_step"] / summary["steps_per_epoch"],
            "val_bleu": summary["best_metric"],
            "train_minutes": summary["seconds"] / 60, "train_tokens_per_s": summary["train_tokens_per_s"],
            "val_bleu_curve": [(e["step"], e.get("eval_bleu")) for e in summary["evaluations"]],
            "scores": score_model(out, tests, args.batch_size, args.device), **STUDENTS[name],
        }
        write(result, args, time.perf_counter() - t0)
    write(result, args, time.perf_counter() - t0)


def write(result: dict, args, seconds: float) -> None:
    result["total_minutes"] = seconds / 60
    rows = result["rows"]
    tests = sorted({s["test"] for r in rows.values() for s in r["scores"]})
    students = [n for n in rows if n != "teacher"]
    result["complete"] = set(students) == set(args.students)
    lines = [f"# {args.name}: Kim & Rush (2016) on Multi30k de->en",
             f"Teacher `{Path(args.teacher).name}`; students `{args.student_preset}`, each at most {args.epochs:g} "
             f"epochs over its own training data, early stopping on validation BLEU (500 val sentences, greedy, "
             f"every {args.eval_steps} steps) with patience {args.patience}; the best validation checkpoint is "
             "scored.", ""]
    if not result["complete"]:
        lines += [f"**Incomplete run: {len(students)} of {len(args.students)} students trained so far** "
                  f"({', '.join(students) or 'none'}); rerunning the command continues it.", ""]
    for test in tests:
        lines += [f"## {test}", "", "| model | data | KD | params (outside emb.) | epochs run (best; why it stopped) | "
                  "val BLEU | BLEU greedy | BLEU beam 5 | chrF greedy | chrF beam 5 |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            by = {s["beam"]: s for s in r["scores"] if s["test"] == test}
            kd = "-" if name == "teacher" else (f"{r['kd_mode']} w={r['kd_weight']}" if r["kd_weight"] else "CE")
            ep = "-" if name == "teacher" else f"{r['epochs']:.1f} ({r['best_epoch']:.1f}; {r['stop_reason']})"
            val = "-" if name == "teacher" else f"{r['val_bleu']:.2f}"
            lines.append(f"| {name} | {r.get('data', '-')} | {kd} | {r['params'] / 1e6:.2f}M "
                         f"({r['non_embedding_params'] / 1e6:.2f}M) | {ep} | {val} | {by[1]['bleu']:.2f} | "
                         f"{by[5]['bleu']:.2f} | {by[1]['chrf']:.2f} | {by[5]['chrf']:.2f} |")
        lines += ["", *verdicts(rows, test), ""]
    sigs = sorted({s["bleu_signature"] for r in rows.values() for s in r["scores"]})
    lines += [f"BLEU signature: `{'`, `'.join(sigs)}`", "",
              "Speed (engines, batch sizes, >= 3 passes): benchmarks/cpu_speed.py. Corpus decoding: "
              f"{result.get('corpus_minutes', 0):.1f} min; this run {result['total_minutes']:.0f} min; training "
              "minutes per student: " + (", ".join(f"{n} {rows[n]['train_minutes']:.0f}" for n in students) or "-")
              + "."]
    common.write_results(args.name, result, "\n".join(lines), results_dir=args.results,
                         plot=(lambda path: plot_curves(result, path)) if students else None)


def verdicts(rows: dict, test: str) -> list[str]:
    """Issue 13's quality targets on ``test``, each with the numbers it rests on. The best student is chosen on
    validation BLEU (the test set only reports)."""
    bleu = {n: {s["beam"]: s["bleu"] for s in r["scores"] if s["test"] == test} for n, r in rows.items()}
    distilled = [n for n in rows if n not in ("teacher", "baseline")]
    if "baseline" not in bleu or not distilled:
        return ["Verdicts need the baseline and at least one distilled student."]
    best = max(distilled, key=lambda n: rows[n]["val_bleu"])
    gain = bleu[best][1] - bleu["baseline"][1]
    over_beam = bleu[best][1] - bleu["baseline"][5]
    top = max((n for n in rows if n != "teacher"), key=lambda n: rows[n]["val_bleu"])
    gap = bleu["teacher"][5] - bleu[top][1]

    def verdict(ok: bool, margin: float) -> str:
        near = " (within 0.3 BLEU of the threshold: a re-run could flip it)" if abs(margin) < 0.3 else ""
        return f"**{'met' if ok else 'missed'}**{near}"

    return [
        f"- Best distilled student (on val) greedy ({best}, {bleu[best][1]:.2f}) vs the baseline greedy "
        f"({bleu['baseline'][1]:.2f}): {gain:+.2f} BLEU; target >= +2: {verdict(gain >= 2, gain - 2)}.",
        f"- Best distilled greedy vs the baseline's beam 5 ({bleu['baseline'][5]:.2f}): {over_beam:+.2f}; "
        f"target >= 0: {verdict(over_beam >= 0, over_beam)}.",
        f"- Best student (on val: {top}) greedy within 1.5 BLEU of the teacher's beam 5 ({bleu['teacher'][5]:.2f}): "
        f"gap {gap:.2f}; "
        f"{verdict(gap <= 1.5, gap - 1.5)}.",
    ]


def plot_curves(result: dict, path: Path):
    """Validation BLEU against epochs for every student, up to where early stopping ended it."""
    plt = common.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in result["rows"].items():
        if name != "teacher":
            pts = [(step / r["steps_per_epoch"], b) for step, b in r["val_bleu_curve"] if b is not None]
            ax.plot(*zip(*pts), marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation BLEU (greedy, 500 sentences)")
    ax.set_title("Students on Multi30k de->en until early stopping")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
