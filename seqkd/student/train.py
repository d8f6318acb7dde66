"""``seqkd train``: cross-entropy training of a translation model (a teacher, or a baseline student)."""

from __future__ import annotations

from seqkd.config import TrainConfig


def train(cfg: TrainConfig) -> dict:
    """Train a translation model as ``cfg`` says; returns the summary written to ``out/train_summary.json``."""
    from seqkd.student.setup import build_trainer, finished_summary, prepare_train, run_training, start

    if (done := finished_summary(cfg)) is not None:
        return done
    run = start(cfg, prepare_train)
    return run_training(cfg, run, build_trainer(cfg, run))
