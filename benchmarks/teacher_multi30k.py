"""Benchmark: the `teacher` preset of each family trained on Multi30k de->en on this machine, then scored.

For each family: train (cross-entropy, time-capped), then decode every test set greedy and with beam 5 and
report sacrebleu BLEU / chrF with signatures, training tokens/s and decoding words/s. Writes
``benchmarks/results/teacher_multi30k.{json,md}``; the trained models stay in ``data/models/`` (git-ignored)
for the corpus, distillation and speculative-decoding benchmarks to reuse.

    python benchmarks/teacher_multi30k.py                       # both families, test_2016_flickr
    python benchmarks/teacher_multi30k.py --test SRC REF --test SRC2 REF2   # any other test sets
    python benchmarks/teacher_multi30k.py --families marian --reuse          # score already-trained models
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["marian", "llama"], choices=["marian", "llama"])
    p.add_argument("--test", nargs=2, action="append", metavar=("SRC", "REF"),
                   help="a test set to score (repeatable); default: Multi30k test_2016_flickr de->en")
    p.add_argument("--models-dir", default=str(ROOT / "data" / "models"), help="where trained models are kept")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where JSON/Markdown go")
    p.add_argument("--name", default="teacher_multi30k", help="result file stem")
    p.add_argument("--max-steps", type=int, default=20000, help="step cap (the time cap usually binds first)")
    p.add_argument("--max-minutes", type=float, default=40.0, help="training time cap per family")
    p.add_argument("--max-tokens", type=int, default=4096, help="token budget per batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=800)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--eval-steps", type=int, default=1000, help="validate (val BLEU) every N steps")
    p.add_argument("--patience", type=int, default=0,
                   help="stop after this many evaluations without a better validation BLEU (0: train to the caps)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per decoding batch")
    p.add_argument("--reuse", action="store_true", help="skip training where a trained model exists (and resume "
                   "one whose training was killed)")
    p.add_argument("--train-only", action="store_true",
                   help="train and stop (e.g. on a GPU); a later --reuse run scores the models where they are used")
    p.add_argument("--note", default="", help="a remark stored with the results (e.g. the card used)")
    p.add_argument("--seed", type=int, default=0, help="training seed; another seed trains another teacher, kept as "
                                                       "multi30k-de-en-FAMILY-teacher-seedN (ensembles, issue 16)")
    return p.parse_args(argv)


def train_family(args, family: str, tok_dir: Path) -> tuple[Path, dict]:
    from seqkd.config import TrainConfig
    from seqkd.student.train import train
    from seqkd.student.trainer import latest_checkpoint

    out = Path(args.models_dir) / (f"multi30k-de-en-{family}-teacher" + (f"-seed{args.seed}" if args.seed else ""))
    summary_file = out / "train_summary.json"
    if args.reuse and summary_file.exists():
        return out, json.loads(summary_file.read_text())
    resume = args.reuse and latest_checkpoint(out) is not None  # a run killed mid-training continues
    cfg = TrainConfig(
        out=str(out), model=f"{family}-teacher", data="multi30k:de-en", tokenizer=str(tok_dir),
        max_steps=args.max_steps, max_minutes=args.max_minutes, max_tokens=args.max_tokens, lr=args.lr,
        warmup_steps=args.warmup_steps, eval_steps=args.eval_steps, bleu_samples=500, logging_steps=100,
        label_smoothing=0.1, patience=args.patience, save_total_limit=1, resume=resume, overwrite=not resume,
        seed=args.seed,
    )
    summary = train(cfg)
    return out, summary


def score_model(model_dir: Path, tests: list[tuple[str, str]], batch_size: int, device: str = "cpu") -> list[dict]:
    from seqkd.data.files import read_lines
    from seqkd.evaluate import score, timed_translate
    from seqkd.models import load_model
    from seqkd.models.tokenizer import load_tokenizers

    model = load_model(model_dir, device=device)
    src_tok, tgt_tok = load_tokenizers(model_dir)
    rows = []
    for src_file, ref_file in tests:
        srcs = read_lines(src_file, strict=True)[0]
        refs = read_lines(ref_file, strict=True)[0]
        for beam in (1, 5):
            hyps, speed = timed_translate(model, src_tok, tgt_tok, srcs, beam_size=beam, batch_size=batch_size,
                                          max_new_tokens=128, max_len_ratio=2.0)
            s = score(hyps, refs)
            rows.append({"test": Path(src_file).name, "beam": beam, "bleu": s.bleu, "chrf": s.chrf,
                         "bleu_signature": s.bleu_signature, "words_per_s": speed.words_per_s,
                         "sentences_per_s": speed.sentences_per_s, "decode_seconds": speed.seconds})
            print(f"  {Path(src_file).name} beam {beam}: BLEU {s.bleu:.2f} chrF {s.chrf:.2f} "
                  f"{speed.words_per_s:.0f} words/s", flush=True)
    return rows


def main(argv=None) -> None:
    from seqkd.data.registry import load_parallel
    from seqkd.models import count_parameters, load_model
    from seqkd.models.tokenizer import load_tokenizers, train_translation_tokenizers

    args = parse_args(argv)
    t0 = time.perf_counter()
    tests = common.test_sets(args.test)
    tok_dir = Path(args.models_dir) / "multi30k-de-en-tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        src, tgt = load_parallel("multi30k:de-en", "train")
        train_translation_tokenizers(src, tgt, tok_dir, joint=True, vocab_size=args.vocab_size, model_type="unigram")
    vocab = len(load_tokenizers(tok_dir)[1])
    result = {"benchmark": args.name, "machine": common.machine_line(),
              "torch": torch.__version__, "tests": [[common.rel(f) for f in t] for t in tests], "vocab": vocab,
              "settings": {k: v for k, v in common.rel_args(args).items() if k not in ("test",)}, "families": {}}
    previous = Path(args.results) / f"{args.name}.json"
    if previous.exists():  # keep the other families' rows when only some are re-run
        old = json.loads(previous.read_text())
        for fam, r in old.get("families", {}).items():
            if fam not in args.families:
                r.setdefault("settings", old.get("settings"))  # rows from before settings were kept per family
                if r["settings"]:  # rows written before paths were made repo-relative
                    r["settings"] = common.rel_args(r["settings"])
                result["families"][fam] = r
    for family in args.families:
        print(f"== {family}-teacher", flush=True)
        model_dir, summary = train_family(args, family, tok_dir)
        if args.train_only:
            continue
        rows = score_model(model_dir, tests, args.batch_size)
        result["families"][family] = {
            "preset": f"{family}-teacher",
            "max_minutes": args.max_minutes,
            "settings": result["settings"],
            "note": args.note,
            "params": count_parameters(load_model(model_dir)),
            "train_steps": summary["steps"],
            "train_minutes": summary["seconds"] / 60,
            "train_tokens_per_s": summary["train_tokens_per_s"],
            "best_checkpoint": summary.get("best_checkpoint"),
            "epochs": summary.get("epochs"),  # summaries before --epochs / --patience existed lack these three
            "best_step": summary.get("best_step"),
            "stop_reason": summary.get("stop_reason"),
            "val_bleu_curve": [(e["step"], e.get("eval_bleu")) for e in summary["evaluations"]],
            "scores": rows,
            "model_dir": common.rel(model_dir),
            "commit": common.run_info()["commit"],  # rows of other families may come from earlier runs
        }
        write(result, args, time.perf_counter() - t0)  # partial results survive an interrupted run
    if not args.train_only:
        write(result, args, time.perf_counter() - t0)


def steps_cell(r: dict) -> str:
    """``steps (best step; epochs; why it stopped)`` where the summary says so."""
    if r.get("epochs") is None:
        return str(r["train_steps"])
    return f"{r['train_steps']} (best {r['best_step']}; {r['epochs']:.1f} epochs; {r['stop_reason']})"


def write(result: dict, args, seconds: float) -> None:
    result["total_minutes"] = seconds / 60
    lines = [
        f"# {args.name}: teacher presets on Multi30k de->en ({result['machine']})", "",
        "| family | params | steps | train min | train tok/s | test set | beam | BLEU | chrF | words/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fam, r in result["families"].items():
        for row in r["scores"]:
            lines.append(
                f"| {fam} | {r['params'] / 1e6:.2f}M | {steps_cell(r)} | {r['train_minutes']:.1f} | "
                f"{r['train_tokens_per_s'] or 0:.0f} | {row['test']} | {row['beam']} | {row['bleu']:.2f} | "
                f"{row['chrf']:.2f} | {row['words_per_s']:.0f} |")
    sigs = sorted({row["bleu_signature"] for r in result["families"].values() for row in r["scores"]})
    lines += ["", f"BLEU signature: `{'`, `'.join(sigs)}`", "",
              "Commands (one per family row):", ""]
    for fam, r in result["families"].items():
        st = r["settings"]
        cmd = (f"python benchmarks/teacher_multi30k.py --families {fam} --max-steps {st['max_steps']} "
               f"--max-minutes {st['max_minutes']:g} "
               f"--lr {st['lr']:g} --warmup-steps {st['warmup_steps']} --eval-steps {st['eval_steps']} "
               f"--max-tokens {st['max_tokens']}" + (f" --patience {st['patience']}" if st.get("patience") else "")
               + (f" --seed {st['seed']} --name {args.name}" if st.get("seed") else ""))
        note = f" — {r['note']}" if r.get("note") else ""
        lines.append(f"- {fam}: `{cmd}` ({r['train_minutes']:.0f} min training){note}")
    common.write_results(args.name, result, "\n".join(lines), results_dir=args.results)


if __name__ == "__main__":
    main()
