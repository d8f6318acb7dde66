"""Benchmark: Kim & Rush's table on Multi30k de->en — baseline student, word-KD, seq-KD, seq-KD + word-KD and
seq-inter, all with the same step budget, beside their teacher.

1. The teacher (the foundation's ``marian-teacher``, ``data/models/multi30k-de-en-marian-teacher``, made by
   benchmarks/teacher_multi30k.py) decodes Multi30k train with beam 5 (5-best): ``seqkd generate``'s corpus,
   resumable, kept in ``data/corpora/``.
2. ``seqkd select``: ``top`` (seq-KD targets) and ``seq-inter`` (the 5-best entry with the best sentence BLEU
   against the reference).
3. Five ``marian-student`` students, same steps, same settings (chosen on val), each validated on val:
   baseline = references + CE; word-KD = references + online forward KL (w=0.5); seq-KD = teacher's top + CE;
   seq-KD + word-KD = teacher's top + online forward KL (w=0.5); seq-inter = seq-inter targets + CE.
4. Every student and the teacher decode the test sets greedy and with beam 5: sacrebleu BLEU / chrF with
   signatures and words/s.

    python benchmarks/distill_multi30k.py                                  # test_2016_flickr
    python benchmarks/distill_multi30k.py --test SRC REF --test SRC2 REF2   # any other test sets
    python benchmarks/distill_multi30k.py --students baseline seq-kd --max-steps 2000

A rerun skips the corpus chunks and students that are done (``--retrain`` retrains the students).
Writes benchmarks/results/distill_multi30k.{json,md}.
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
    p.add_argument("--student-preset", default="marian-student")
    p.add_argument("--corpus", default=str(ROOT / "data" / "corpora" / "multi30k-de-en-marian-beam5"))
    p.add_argument("--models-dir", default=str(ROOT / "data" / "models" / "students"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="distill_multi30k")
    p.add_argument("--max-steps", type=int, default=1500, help="optimizer steps, the same for every student")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=400)
    p.add_argument("--eval-steps", type=int, default=500)
    p.add_argument("--decode-batch-size", type=int, default=64, help="teacher prompts per generate call")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per test decoding batch")
    p.add_argument("--device", default=None, help="cpu or cuda for decoding and scoring (default: cuda if available;"
                   " training uses the Trainer's device)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training pairs only (quick checks)")
    p.add_argument("--retrain", action="store_true", help="retrain students that already exist")
    p.add_argument("--note", default="")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the Markdown and JSON from the JSON (paths made portable), measuring nothing")
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

    out = Path(args.models_dir) / f"multi30k-de-en-{name}"
    if (out / "train_summary.json").exists() and not args.retrain:
        return out, json.loads((out / "train_summary.json").read_text())
    spec = STUDENTS[name]
    vsrc, vref = parallel_files("multi30k:de-en", "val")
    cfg = DistillConfig(
        out=str(out), model=args.student_preset, teacher=args.teacher, train_source=str(files[spec["data"]]),
        valid_source=str(vsrc), valid_target=str(vref), kd_mode=spec["kd_mode"], kd_weight=spec["kd_weight"],
        max_steps=args.max_steps, max_tokens=args.max_tokens, lr=args.lr, warmup_steps=args.warmup_steps,
        eval_steps=args.eval_steps, bleu_samples=500, logging_steps=100, label_smoothing=0.1, overwrite=True,
        seed=0,
    )
    return out, distill(cfg)


def main(argv=None) -> None:
    import torch
    from teacher_multi30k import score_model

    from seqkd.data.registry import parallel_files
    from seqkd.models import count_parameters, load_model

    args = parse_args(argv)
    if args.render_only:
        render_only(args)
        return
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    tests = [tuple(t) for t in args.test] if args.test else [tuple(map(str, parallel_files("multi30k:de-en",
                                                                                             "test_2016_flickr")))]
    if not Path(args.teacher).is_dir():
        sys.exit(f"{args.teacher} is missing: run benchmarks/teacher_multi30k.py --families marian first")
    result = {"benchmark": args.name, "machine": common.machine_line(gpu=args.device == "cuda"),
              "torch": torch.__version__, "tests": [[common.rel(f) for f in t] for t in tests],
              "settings": common.rel_args(args) | {"test": None},
              "rows": {}}
    t = time.perf_counter()
    files = build_corpus(args)
    result["corpus_minutes"] = (time.perf_counter() - t) / 60
    print("== teacher", flush=True)
    result["rows"]["teacher"] = {"params": count_parameters(load_model(args.teacher)),
                                 "scores": score_model(Path(args.teacher), tests, args.batch_size, args.device)}
    for name in args.students:
        print(f"== {name}", flush=True)
        out, summary = train_student(args, name, files)
        result["rows"][name] = {
            "params": count_parameters(load_model(out)), "steps": summary["steps"],
            "train_minutes": summary["seconds"] / 60, "train_tokens_per_s": summary["train_tokens_per_s"],
            "val_bleu_curve": [(e["step"], e.get("eval_bleu")) for e in summary["evaluations"]],
            "scores": score_model(out, tests, args.batch_size, args.device), **STUDENTS[name],
        }
        write(result, args, time.perf_counter() - t0)
    write(result, args, time.perf_counter() - t0)


def render_only(args) -> None:
    """Results written before paths were made portable: the same numbers, every path through common.rel."""
    result = json.loads((Path(args.results) / f"{args.name}.json").read_text())
    result["tests"] = [[common.rel(f) for f in t] for t in result["tests"]]
    result["settings"] = common.rel_args(result["settings"])
    result.setdefault("run", {**common.run_info(), "note": "re-rendered from the JSON (--render-only); the "
                              "measurements are the earlier run's (its commit was not recorded)"})
    result.setdefault("environment", None)  # the measuring machine's details were not recorded (see the title)
    saved = argparse.Namespace(**{**result["settings"], "results": args.results})
    write(result, saved, result["total_minutes"] * 60)


def write(result: dict, args, seconds: float) -> None:
    result["total_minutes"] = seconds / 60
    tests = sorted({s["test"] for r in result["rows"].values() for s in r["scores"]})
    lines = [f"# {args.name}: Kim & Rush (2016) on Multi30k de->en ({result['machine']})", "",
             f"Teacher {Path(args.teacher).name}; students `{args.student_preset}`, {args.max_steps} steps each.", ""]
    for test in tests:
        lines += [f"## {test}", "", "| model | data | KD | params | BLEU greedy | BLEU beam 5 | chrF beam 5 | "
                  "words/s greedy | words/s beam 5 |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in result["rows"].items():
            by = {s["beam"]: s for s in r["scores"] if s["test"] == test}
            kd = "-" if name == "teacher" else (f"{r['kd_mode']} w={r['kd_weight']}" if r["kd_weight"] else "CE")
            lines.append(f"| {name} | {r.get('data', '-')} | {kd} | {r['params'] / 1e6:.1f}M | {by[1]['bleu']:.2f} | "
                         f"{by[5]['bleu']:.2f} | {by[5]['chrf']:.2f} | {by[1]['words_per_s']:.0f} | "
                         f"{by[5]['words_per_s']:.0f} |")
        lines.append("")
    sigs = sorted({s["bleu_signature"] for r in result["rows"].values() for s in r["scores"]})
    lines += [f"BLEU signature: `{'`, `'.join(sigs)}`", "",
              f"Corpus decoding: {result.get('corpus_minutes', 0):.1f} min; "
              f"whole run {result['total_minutes']:.0f} min."]
    common.write_results(args.name, result, "\n".join(lines), results_dir=args.results)


if __name__ == "__main__":
    main()
