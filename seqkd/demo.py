"""The main job on an embedded default (no downloads): the built-in synthetic task end to end.

Today: train a small teacher, decode the held-out test set, print BLEU; the teacher decodes a distillation
corpus (beam n-best with top-k log-probs) and seq-KD / seq-inter select the student's training data; a smaller
student is trained on the references (baseline) and distilled from the corpus (seq-KD + word-KD), and the three
are compared (BLEU, words/s); finally the distilled student is aligned as the teacher's speculative-decoding draft
(DistillSpec: on-policy, TVD) and acceptance and speedup are measured before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

from seqkd.config import TrainConfig


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, seed: int = 0) -> dict:
    """Run the demo pipeline in ``out`` (re-running starts it afresh); returns the numbers it prints."""
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.evaluate import score, timed_translate
    from seqkd.models import describe, load_model
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.student.train import train

    out = Path(out)
    t0 = time.perf_counter()
    steps = 300 if quick else 1200
    print(f"[1/5] teacher: marian-tiny on the built-in synthetic task ({steps} steps)")
    cfg = TrainConfig(
        out=str(out / "teacher"), model="marian-tiny", data="synthetic", synthetic_size=4000 if quick else 20000,
        synthetic_multimodality=0.3, vocab_size=256, max_steps=steps, lr=3e-3, warmup_steps=100,
        max_tokens=2048, eval_steps=steps, bleu_samples=200, logging_steps=50, label_smoothing=0.0,
        seed=seed, overwrite=True, progress=not quick,
    )
    summary = train(cfg)
    model = load_model(cfg.out)
    src_tok, tgt_tok = load_tokenizers(cfg.out)
    print(f"      {describe(model)}; {summary['train_tokens_per_s'] or 0:.0f} training tokens/s")

    print("[2/5] evaluate the teacher on a held-out synthetic test set (greedy)")
    test_src, test_ref = synthetic_pairs(300, seed=seed + 20_000, multimodality=0.0)
    hyps, speed = timed_translate(model, src_tok, tgt_tok, test_src, batch_size=100, max_new_tokens=64)
    s = score(hyps, test_ref)
    print(f"      teacher BLEU {s.bleu:.2f}  chrF {s.chrf:.2f}  ({speed.words_per_s:.0f} words/s)")
    print(f"      {s.bleu_signature}")
    print(f"      example: {test_src[0]!r} -> {hyps[0]!r} (reference {test_ref[0]!r})")
    result = {"teacher_bleu": s.bleu, "teacher_chrf": s.chrf, "teacher_words_per_s": speed.words_per_s}
    result.update(_corpus_step(cfg.out, out / "corpus", n=400 if quick else 2000, seed=seed))
    result.update(_student_step(cfg.out, out, (test_src, test_ref), s.bleu, speed.words_per_s,
                                steps=300 if quick else 1200, seed=seed))
    result.update(_draft_step(cfg.out, out, test_src[:40 if quick else 100], steps=60 if quick else 200,
                              seed=seed))
    print(f"done in {time.perf_counter() - t0:.0f}s; models, corpus and logs under {out}")
    return result


def _corpus_step(teacher: str, out: Path, *, n: int, seed: int) -> dict:
    """The teacher decodes fresh synthetic sources into a corpus; top and seq-inter select training data."""
    from seqkd.data.files import Example
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.evaluate import score
    from seqkd.teacher.corpus import format_summary, generate_corpus, read_corpus
    from seqkd.teacher.engines import DecodeSettings, get_engine
    from seqkd.teacher.selection import select, write_training_data

    settings = DecodeSettings(mode="beam", beam_size=4, nbest=4, max_new_tokens=64, topk_logprobs=8)
    print(f"[3/5] distillation corpus: the teacher decodes {n} sources (beam 4, 4-best, top-8 log-probs)")
    srcs, refs = synthetic_pairs(n, seed=seed + 10_000, multimodality=0.3)
    engine = get_engine("hf", teacher, batch_size=100)
    summary = generate_corpus(engine, [Example(i, a, b) for i, (a, b) in enumerate(zip(srcs, refs))], out,
                              settings, chunk_size=500, overwrite=True, progress=False)
    engine.close()
    print(f"      {format_summary(summary)}")
    result = {"corpus_sentences": summary["sentences"], "corpus_sentences_per_s": summary["sentences_per_s"]}
    for strategy in ("top", "seq-inter"):
        examples = select(read_corpus(out), strategy)
        write_training_data(examples, out / f"train.{strategy}.jsonl")
        sc = score([e["target"] for e in examples], [e["reference"] for e in examples])
        print(f"      {strategy:9s}: {len(examples)} training examples, BLEU {sc.bleu:.2f} against the references"
              f" -> {out / f'train.{strategy}.jsonl'}")
        result[f"{strategy}_bleu"] = sc.bleu
    return result


def _student_step(teacher: str, out: Path, test: tuple[list[str], list[str]], teacher_bleu: float,
                  teacher_wps: float, *, steps: int, seed: int) -> dict:
    """A baseline student (references, CE) and a distilled one (teacher's top outputs, CE + online forward KL),
    same preset and steps; both scored beside the teacher."""
    from seqkd.config import DistillConfig
    from seqkd.evaluate import score, timed_translate
    from seqkd.models import describe, load_model
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.student.distill import distill

    print(f"[4/5] students: marian-tiny-student, {steps} steps each: baseline (references, CE) vs distilled "
          "(teacher outputs, CE + forward KL)")
    common = dict(model="marian-tiny-student", teacher=teacher, max_steps=steps, lr=3e-3, warmup_steps=100,
                  max_tokens=2048, eval_steps=0, bleu_samples=0, logging_steps=50, label_smoothing=0.0,
                  overwrite=True, progress=False, seed=seed)
    corpus = out / "corpus"
    runs = {
        "baseline": DistillConfig(out=str(out / "student-baseline"), train_source=str(corpus / "train.top.jsonl"),
                                  targets="reference", kd_mode="none", kd_weight=0.0, **common),
        "distilled": DistillConfig(out=str(out / "student-distilled"), train_source=str(corpus / "train.top.jsonl"),
                                   targets="teacher", kd_mode="online", kd_weight=0.5, **common),
    }
    rows = {"teacher": (teacher_bleu, teacher_wps)}
    for name, cfg in runs.items():
        distill(cfg)
        model = load_model(cfg.out)
        src_tok, tgt_tok = load_tokenizers(cfg.out)
        hyps, speed = timed_translate(model, src_tok, tgt_tok, test[0], batch_size=100, max_new_tokens=64)
        rows[name] = (score(hyps, test[1]).bleu, speed.words_per_s)
    print(f"      {describe(model)}")
    print("      model       BLEU   words/s")
    for name, (bleu, wps) in rows.items():
        print(f"      {name:10s} {bleu:6.2f}  {wps:7.0f}")
    return {"baseline_bleu": rows["baseline"][0], "distilled_bleu": rows["distilled"][0],
            "student_words_per_s": rows["distilled"][1]}


def _draft_step(teacher: str, out: Path, prompts: list[str], *, steps: int, seed: int) -> dict:
    """DistillSpec: the distilled student aligned to the teacher on its own samples (on-policy, TVD); acceptance
    and speedup of speculative decoding (gamma 4, temperature 1) before and after, on held-out sources."""
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.speculative.align import AlignConfig, align

    print(f"[5/5] draft: the distilled student aligned to the teacher (DistillSpec: on-policy, TVD, {steps} steps); "
          f"speculative decoding of {len(prompts)} test sources, gamma 4, temperature 1")
    train_src, _ = synthetic_pairs(2000, seed=seed + 30_000, multimodality=0.3)
    prompts_file = out / "draft_prompts.txt"
    eval_file = out / "draft_eval.txt"
    prompts_file.write_text("\n".join(train_src) + "\n", encoding="utf-8")
    eval_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    r = align(AlignConfig(target=teacher, draft=str(out / "student-distilled"), out=str(out / "draft-aligned"),
                          prompts=str(prompts_file), eval_prompts=str(eval_file), eval_size=len(prompts),
                          data="on-policy", divergence="tvd", max_steps=steps, lr=1e-3, warmup_steps=10,
                          max_tokens=2048, eval_gamma=4, eval_temperature=1.0, seed=seed, overwrite=True,
                          progress=False))
    print("      draft             acceptance  tokens/target call  speedup")
    for name, key in (("before alignment", "before"), ("after alignment", "after")):
        m = r[key]
        print(f"      {name:17s} {m['acceptance_rate']:10.3f}  {m['block_efficiency']:18.2f}  {m['speedup']:6.2f}x")
    return {"draft_acceptance_before": r["before"]["acceptance_rate"],
            "draft_acceptance_after": r["after"]["acceptance_rate"],
            "draft_speedup_before": r["before"]["speedup"], "draft_speedup_after": r["after"]["speedup"]}
