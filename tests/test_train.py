"""The CE trainer: loss normalisation, exact resume, and (slow) tiny teachers learning the synthetic task."""

import json

import pytest
import torch
from transformers import TrainerCallback, set_seed

from seqkd.config import TrainConfig
from seqkd.errors import SeqkdError
from seqkd.student.setup import build_trainer, prepare_train
from seqkd.student.train import train
from seqkd.student.trainer import check_out_dir


def _cfg(tmp_path, name, **kw):
    base = dict(out=str(tmp_path / name), model="marian-tiny", data="synthetic", synthetic_size=600,
                vocab_size=128, max_steps=12, lr=2e-3, warmup_steps=4, max_tokens=512, eval_steps=6,
                bleu_samples=20, logging_steps=1, dropout=0.1, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _losses(history):
    return {h["step"]: (h["loss"], h["grad_norm"]) for h in history if "loss" in h and "grad_norm" in h}


@pytest.mark.parametrize("model", ["marian-tiny", "llama-tiny"])
def test_resume_gives_the_same_loss_curve(tmp_path, model):
    # uninterrupted run
    full = train(_cfg(tmp_path, "full", model=model))
    full_hist = json.loads((tmp_path / "full" / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    # interrupted after the checkpoint at step 6, then resumed with --resume
    cfg = _cfg(tmp_path, "cut", model=model)
    set_seed(cfg.seed)
    run = prepare_train(cfg)
    trainer = build_trainer(cfg, run)
    trainer.add_callback(_StopAt(6))
    trainer.train()
    assert trainer.state.global_step == 6
    resumed = train(_cfg(tmp_path, "cut", model=model, resume=True))
    cut_hist = json.loads((tmp_path / "cut" / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    a, b = _losses(full_hist), _losses(cut_hist)
    assert sorted(a) == list(range(1, 13)) and sorted(b) == sorted(a)
    for step in a:  # dropout on, so this also checks that the RNG state was restored
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
    assert full["steps"] == resumed["steps"] == 12
    assert [e["eval_bleu"] for e in full["evaluations"]] == pytest.approx(
        [e["eval_bleu"] for e in resumed["evaluations"]])


def test_loss_is_normalised_by_the_step_token_count(tmp_path):
    """Two micro-batches normalised by the step's total token count give the combined batch's loss,
    so gradient accumulation and DDP splits do not change the objective."""
    cfg = _cfg(tmp_path, "norm", dropout=0.0)
    set_seed(0)
    run = prepare_train(cfg)
    trainer = build_trainer(cfg, run)
    model = trainer.model.train()
    exs = run.train_examples[:8]
    collate = trainer.data_collator
    whole = collate(exs)
    n = int((whole["labels"] != -100).sum())
    parts = [collate(exs[:3]), collate(exs[3:])]
    with torch.no_grad():
        combined = trainer.compute_loss(model, whole, num_items_in_batch=n)
        split = sum(trainer.compute_loss(model, p, num_items_in_batch=n) for p in parts)
        mean = trainer.compute_loss(model, whole)
    assert float(split) == pytest.approx(float(combined), rel=1e-5)
    assert float(mean) == pytest.approx(float(combined), rel=1e-6)  # no count given: mean over the batch


def test_out_dir_guard(tmp_path):
    out = tmp_path / "run"
    assert check_out_dir(out, resume=False, overwrite=False) is None
    with pytest.raises(SeqkdError, match="no complete checkpoint"):
        check_out_dir(out, resume=True, overwrite=False)
    for step in (5, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    with pytest.raises(SeqkdError, match="already holds a run"):
        check_out_dir(out, resume=False, overwrite=False)
    assert check_out_dir(out, resume=True, overwrite=False).name == "checkpoint-10"
    assert check_out_dir(out, resume=False, overwrite=True) is None and not out.exists()


def test_a_checkpoint_killed_while_saving_is_skipped(tmp_path):
    """The HF Trainer writes trainer_state.json last: a folder without it was cut off while saving (the cause of a
    CI failure: a resume from it raised "Can't find a valid checkpoint"); resume from the whole one before it."""
    out = tmp_path / "run"
    (out / "checkpoint-150").mkdir(parents=True)
    (out / "checkpoint-150" / "model.safetensors").write_bytes(b"")
    with pytest.raises(SeqkdError, match="no complete checkpoint"):
        check_out_dir(out, resume=True, overwrite=False)
    (out / "checkpoint-100").mkdir()
    (out / "checkpoint-100" / "trainer_state.json").write_text("{}")
    assert check_out_dir(out, resume=True, overwrite=False).name == "checkpoint-100"


@pytest.mark.parametrize("bad,msg", [
    (dict(data=None), "exactly one of"),
    (dict(schedule="nope"), "--schedule"),
    (dict(max_tokens=0), "--max-tokens"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
    (dict(resume=True, overwrite=True), "contradict"),
])
def test_config_validation(tmp_path, bad, msg):
    with pytest.raises(SeqkdError, match=msg):
        _cfg(tmp_path, "x", **bad)


@pytest.mark.slow
@pytest.mark.parametrize("model,steps,threshold", [("marian-tiny", 500, 40.0), ("llama-tiny", 700, 30.0)])
def test_tiny_teacher_learns_the_synthetic_task(tmp_path, model, steps, threshold):
    """Chance BLEU on this task is ~1 (an untrained model scores 0-2); the thresholds are well below what
    these runs reach (see the closing note of the foundation issue) and far above chance."""
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.evaluate import score
    from seqkd.models import load_model
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.teacher.decoding import translate

    cfg = _cfg(tmp_path, model, model=model, synthetic_size=4000, vocab_size=256, max_steps=steps, lr=3e-3,
               warmup_steps=100, max_tokens=2048, eval_steps=steps, bleu_samples=100, logging_steps=50,
               dropout=0.0, label_smoothing=0.0, seed=0)
    train(cfg)
    src, ref = synthetic_pairs(200, seed=99, multimodality=0.0)
    m = load_model(cfg.out)
    hyps = translate(m, *load_tokenizers(cfg.out), src, batch_size=100, max_new_tokens=40)
    assert score(hyps, ref).bleu > threshold


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    """--resume after --max-steps was reached: no step past it, no checkpoint deleted, the weights untouched."""
    import hashlib

    from seqkd.cli import main

    train(_cfg(tmp_path, "done", max_steps=6, eval_steps=3, bleu_samples=0))
    out = tmp_path / "done"

    def snapshot():
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file()}

    before = snapshot()
    again = train(_cfg(tmp_path, "done", max_steps=6, eval_steps=3, bleu_samples=0, resume=True))
    assert again["already_finished"] and again["steps"] == 6
    assert snapshot() == before
    code = main(["train", "--out", str(out), "--data", "synthetic", "--model", "marian-tiny", "--max-steps", "6",
                 "--resume", "--no-progress"])
    assert code == 0 and "already finished (6 steps" in capsys.readouterr().out
    assert snapshot() == before


# --- epochs and early stopping ---------------------------------------------------------------------------------------
def test_evaluations_since_best_counts_ties_as_no_improvement():
    from seqkd.student.trainer import evaluations_since_best

    assert evaluations_since_best([]) == 0
    assert evaluations_since_best([10.0, 12.0, 11.0, 12.0]) == 2  # the second 12 does not improve on the first
    assert evaluations_since_best([10.0, 12.0, 12.5]) == 0
    assert evaluations_since_best([3.0, 2.5, 2.6, 2.7], sign=-1.0) == 2  # a loss: smaller is better


def test_steps_per_epoch_counts_as_the_hf_trainer_does():
    from seqkd.student.trainer import steps_per_epoch

    assert steps_per_epoch(10, 1, 1) == 10
    assert steps_per_epoch(11, 2, 1) == 6  # accelerate gives each process ceil(11 / 2) batches
    assert steps_per_epoch(11, 2, 4) == 1  # the partial accumulation at the end of an epoch is dropped
    assert steps_per_epoch(3, 1, 4) == 1


def test_epochs_set_the_step_budget(tmp_path):
    from seqkd.data.batching import TokenBudgetBatchSampler

    cfg = _cfg(tmp_path, "ep", epochs=1.5, max_steps=1000, eval_steps=0, bleu_samples=0)
    set_seed(cfg.seed)
    run = prepare_train(cfg)
    trainer = build_trainer(cfg, run)
    n_batches = len(TokenBudgetBatchSampler([len(e["input_ids"]) + len(e["labels"]) for e in run.train_examples],
                                            cfg.max_tokens))
    assert trainer.steps_per_epoch == n_batches > 10
    assert trainer.args.max_steps == -(-3 * n_batches // 2)  # ceil(1.5 epochs)
    with pytest.raises(SeqkdError, match="--epochs must be > 0"):
        _cfg(tmp_path, "bad", epochs=0)
    with pytest.raises(SeqkdError, match="--patience must be >= 0"):
        _cfg(tmp_path, "bad", patience=-1)


def test_a_resumed_run_counts_the_time_before_its_checkpoint(tmp_path):
    """The summary's seconds are wall time across resumes: what the first process logged up to its checkpoint (1,000 s,
    faked by its start time) plus the resumed process's own; every log entry carries the running total."""
    import time

    from seqkd.student.setup import run_training

    cfg = _cfg(tmp_path, "cut", max_steps=6, eval_steps=3, bleu_samples=0)
    set_seed(cfg.seed)
    run = prepare_train(cfg)
    run.started = time.perf_counter() - 1000.0
    trainer = build_trainer(cfg, run)
    trainer.add_callback(_StopAt(3))
    trainer.train()
    first = [h["wall_seconds"] for h in trainer.state.log_history]
    assert len(first) >= 4 and first == sorted(first) and 1000.0 < first[0] < first[-1] < 1000.0 + 60.0

    cfg = _cfg(tmp_path, "cut", max_steps=6, eval_steps=3, bleu_samples=0, resume=True)
    set_seed(cfg.seed)
    run = prepare_train(cfg)
    from seqkd.student.trainer import latest_checkpoint

    run.resume_from = latest_checkpoint(cfg.out)
    resumed_at = time.perf_counter()
    summary = run_training(cfg, run, build_trainer(cfg, run))
    own = time.perf_counter() - run.started
    assert summary["steps"] == 6
    saved = json.loads((tmp_path / "cut" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    before = saved[-1]["wall_seconds"]  # the evaluation at step 3, logged just before the checkpoint was saved
    assert before == max(h["wall_seconds"] for h in saved) > 1000.0
    assert before + (resumed_at - run.started) <= summary["seconds"] <= before + own
    later = [h["wall_seconds"] for h in summary["evaluations"]]
    assert later[0] == before and later[-1] > before


def _scripted_bleu(trainer, by_step):
    """Validation BLEU as a function of the step (the stopping rule, not the model, is under test)."""
    from types import SimpleNamespace

    trainer.bleu_eval = lambda model: SimpleNamespace(bleu=by_step[trainer.state.global_step])


def test_patience_stops_at_the_same_step_after_a_resume(tmp_path):
    """BLEU 5, 7, 6, 6 at steps 3..12 with patience 2: stop at step 12, keep step 6; a run killed at step 6
    and resumed stops there too (the rule reads the saved history), and --resume afterwards changes nothing."""
    from seqkd.student.setup import run_training

    by_step = {3: 5.0, 6: 7.0, 9: 6.0, 12: 6.0, 15: 9.0, 18: 9.0}
    kw = dict(max_steps=18, eval_steps=3, patience=2, save_total_limit=1, logging_steps=3)

    def build(name, **extra):
        cfg = _cfg(tmp_path, name, **kw, **extra)
        set_seed(cfg.seed)
        run = prepare_train(cfg)
        if extra.get("resume"):
            from seqkd.student.trainer import latest_checkpoint

            run.resume_from = latest_checkpoint(cfg.out)
        trainer = build_trainer(cfg, run)
        _scripted_bleu(trainer, by_step)
        return cfg, run, trainer

    cfg, run, trainer = build("full")
    full = run_training(cfg, run, trainer)
    assert (full["steps"], full["stop_reason"], full["best_step"], full["max_steps"]) == (12, "early_stopping", 6, 18)
    assert [e["eval_bleu"] for e in full["evaluations"]] == [5.0, 7.0, 6.0, 6.0]
    assert full["epochs"] == pytest.approx(12 / trainer.steps_per_epoch)

    cfg, run, trainer = build("cut")
    trainer.add_callback(_StopAt(6))
    trainer.train()
    cfg, run, trainer = build("cut", resume=True)
    resumed = run_training(cfg, run, trainer)
    assert (resumed["steps"], resumed["stop_reason"], resumed["best_step"]) == (12, "early_stopping", 6)
    assert train(_cfg(tmp_path, "cut", **kw, resume=True))["already_finished"]


def test_cli_trains_for_epochs_and_says_why_it_stopped(tmp_path, capsys):
    from seqkd.cli import main

    out = tmp_path / "cli"
    args = ["train", "--out", str(out), "--data", "synthetic", "--synthetic-size", "300", "--vocab-size", "128",
            "--model", "marian-tiny", "--epochs", "0.5", "--eval-steps", "0", "--bleu-samples", "0", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["stop_reason"] == "max_steps" and summary["steps"] == -(-summary["steps_per_epoch"] // 2)
    assert f"trained {summary['steps']} steps ({summary['epochs']:.2f} epochs; --epochs 0.5)" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    said = capsys.readouterr().out
    assert f"already finished ({summary['steps']} steps, --epochs 0.5)" in said


def test_without_a_progress_bar_each_logged_step_and_evaluation_is_one_line(tmp_path, capsys):
    """--no-progress (a log file, a recipe's stage): a line per logging step (step, loss, tokens/s, minutes) and one
    per evaluation, so a long run shows where it is."""
    summary = train(_cfg(tmp_path, "lines", logging_steps=4))
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("step ") and ": loss " in line]
    assert [line.split(":")[0] for line in steps] == ["step 4/12", "step 8/12", "step 12/12"]
    assert all("tokens/s" in line and line.endswith(" min") for line in steps[1:])
    evals = [line for line in out.splitlines() if ": val loss " in line]
    assert [line.split(":")[0] for line in evals] == ["step 6", "step 12"]
    assert f"BLEU {summary['evaluations'][-1]['eval_bleu']:.2f}" in evals[-1]

