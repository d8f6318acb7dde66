"""The main job on an embedded default (no downloads): the built-in synthetic task end to end.

Today: train a small teacher, decode the held-out test set, print BLEU. Each later stage of seqkd
(corpus, student, draft) appends its step here.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import TrainConfig


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, seed: int = 0) -> dict:
    """Run the demo pipeline in ``out`` (re-running starts it afresh); returns the numbers it prints."""
    from .evaluate import score, timed_translate
    from .models import describe, load_model
    from .synthetic import synthetic_pairs
    from .tokenizer import load_tokenizers
    from .train import train

    out = Path(out)
    t0 = time.perf_counter()
    steps = 300 if quick else 1200
    print(f"[1/2] teacher: marian-tiny on the built-in synthetic task ({steps} steps)")
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

    print("[2/2] evaluate the teacher on a held-out synthetic test set (greedy)")
    test_src, test_ref = synthetic_pairs(300, seed=seed + 20_000, multimodality=0.0)
    hyps, speed = timed_translate(model, src_tok, tgt_tok, test_src, batch_size=100, max_new_tokens=64)
    s = score(hyps, test_ref)
    print(f"      teacher BLEU {s.bleu:.2f}  chrF {s.chrf:.2f}  ({speed.words_per_s:.0f} words/s)")
    print(f"      {s.bleu_signature}")
    print(f"      example: {test_src[0]!r} -> {hyps[0]!r} (reference {test_ref[0]!r})")
    print(f"done in {time.perf_counter() - t0:.0f}s; models and logs under {out}")
    return {"teacher_bleu": s.bleu, "teacher_chrf": s.chrf, "teacher_words_per_s": speed.words_per_s}
