"""Cross-entropy training of translation models on the HF ``Trainer`` (so ``torchrun`` / ``accelerate launch``
work unchanged), with token-budget batching, validation BLEU, best/last checkpoints and exact resume.

The loss is a hook: :meth:`SeqkdTrainer.loss_terms` returns per-term *sums* over real target tokens, and the
trainer divides their total by the number of target tokens in the whole optimizer step (across gradient
accumulation and processes: HF's ``num_items_in_batch``), so results do not depend on the batch split. The
distillation trainer overrides ``loss_terms`` and nothing else of the training loop.
"""

from __future__ import annotations

import inspect
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from seqkd.config import TrainConfig, as_dict
from seqkd.data.batching import TokenBudgetBatchSampler
from seqkd.data.prompts import IGNORE_INDEX, Format
from seqkd.errors import SeqkdError
from seqkd.io import atomic_write_json, latest_checkpoint

MODEL_INPUTS = ("input_ids", "attention_mask", "decoder_input_ids")


class ListDataset(Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


def logits_at_targets(model, inputs: dict, family: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """``model`` on a batch: logits at the real target positions ``[N, V]`` (row-major order of ``labels !=
    -100``), their targets ``[N]``, and the model outputs.

    Decoder-only: position t predicts token t+1, and only positions from the first target's predecessor on get
    the output layer (``logits_to_keep``): over a large vocabulary it costs more than the rest of a small model,
    and prompts are often half of a batch."""
    labels = inputs["labels"]
    kw = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}  # batches may carry more (top-k, ...)
    if family != "causal":
        outputs = model(**kw)
        logits = outputs.logits
    else:
        real = (labels[:, 1:] != IGNORE_INDEX).any(0)  # [S-1]: position j predicts a real target in some row
        first = int(real.float().argmax()) if bool(real.any()) else labels.shape[1] - 1
        if _takes_logits_to_keep(model):
            outputs = model(**kw, logits_to_keep=labels.shape[1] - first)  # positions first .. S-1
            logits = outputs.logits[:, :-1]
        else:
            outputs = model(**kw)
            logits = outputs.logits[:, first:-1]
        labels = labels[:, first + 1:]
    mask = labels != IGNORE_INDEX
    return logits[mask], labels[mask], outputs


def _takes_logits_to_keep(model) -> bool:
    forward = getattr(model, "module", model).forward  # DDP / accelerate wrappers take **kwargs
    return "logits_to_keep" in inspect.signature(forward).parameters


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over tokens of the cross-entropy, fp32 math. logits ``[N, V]``, targets ``[N]`` -> scalar."""
    return F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)


class SeqkdTrainer(Trainer):
    """HF Trainer for translation: token-budget batches, a loss hook, validation BLEU.

    Args (besides the Trainer's): ``fmt`` (the prompt format), ``batch_sampler`` (token-budget batches of the
    train set), ``bleu_eval`` (callable model -> :class:`seqkd.evaluate.Scores`, run at each evaluation),
    ``label_smoothing``.
    """

    steps_per_epoch: int = 1  # optimizer steps per pass over the data; make_trainer sets it (summaries report epochs)

    def __init__(self, *args, fmt: Format, batch_sampler=None, bleu_eval=None, label_smoothing: float = 0.0,
                 started: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # this process's start (``time.perf_counter``; the run's setup counts), and the wall seconds of the processes
        # before the checkpoint it resumed from (read from the history once the checkpoint is loaded)
        self.started = time.perf_counter() if started is None else started
        self._seconds_before: float | None = None
        self.fmt = fmt
        self.batch_sampler = batch_sampler
        self.bleu_eval = bleu_eval
        self.label_smoothing = label_smoothing
        # Our compute_loss normalises by num_items_in_batch itself; have HF count it and not rescale.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_tokens = 0
        self._speed_mark: tuple[float, int] | None = None

    # --- data ----------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        if self.batch_sampler is None:
            return super().get_train_dataloader()
        dl = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
                        num_workers=self.args.dataloader_num_workers)
        return self.accelerator.prepare(dl)

    def summary_extra(self) -> dict:
        """What a subclass adds to the run's summary (``train_summary.json``)."""
        return {}

    # --- loss ------------------------------------------------------------------------------------------
    def forward_logits(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Run the model; return logits at real target positions ``[N, V]``, their targets ``[N]``, outputs."""
        return logits_at_targets(model, inputs, self.fmt.family)

    def save_extras(self, out_dir: Path, checkpoint: str | None) -> None:
        """Save what a subclass trains beside the model into ``out_dir``: its current state, or that of
        ``checkpoint`` when the saved model comes from there (the best one). Nothing here."""

    def loss_terms(self, model, inputs: dict, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The hook: named loss terms, each a *sum* over the N real target tokens (logits ``[N, V]``)."""
        return {"ce": token_cross_entropy(logits, targets, self.label_smoothing)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits, targets, outputs = self.forward_logits(model, inputs)
        terms = self.loss_terms(model, inputs, logits, targets)
        total = sum(terms.values())
        n = targets.numel()
        if model.training:
            for k, v in terms.items():
                self._term_sums[k] += float(v.detach())
            self._term_tokens += n
            self.state.num_input_tokens_seen += int(inputs["attention_mask"].sum()) + (
                n if self.fmt.family == "seq2seq" else 0
            )
        if num_items_in_batch is not None:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        else:
            loss = total / max(n, 1)
        return (loss, outputs) if return_outputs else loss

    # --- evaluation and logging ------------------------------------------------------------------------
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self.bleu_eval is not None:
            model = self.accelerator.unwrap_model(self.model)
            was_training = model.training
            output.metrics[f"{metric_key_prefix}_bleu"] = self.bleu_eval(model).bleu
            model.train(was_training)
        return output

    def wall_seconds(self) -> float:
        """Wall seconds this run has taken, across resumes: the last ``wall_seconds`` the history of the checkpoint it
        resumed from logged (its evaluation, just before the save), plus this process's own. Work a killed process
        did after its last checkpoint is redone by the next one, so it is counted once."""
        if self._seconds_before is None:  # first call after train() loaded the checkpoint's state (or found none)
            self._seconds_before = max((h["wall_seconds"] for h in self.state.log_history if "wall_seconds" in h),
                                       default=0.0)
        return self._seconds_before + time.perf_counter() - self.started

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["wall_seconds"] = self.wall_seconds()
        if "loss" in logs and self._term_tokens:
            for k, v in self._term_sums.items():
                logs[k] = v / self._term_tokens
            self._term_sums.clear()
            self._term_tokens = 0
            now, seen = time.perf_counter(), self.state.num_input_tokens_seen
            if self._speed_mark is not None and now > self._speed_mark[0]:
                logs["tokens_per_s"] = (seen - self._speed_mark[1]) / (now - self._speed_mark[0])
            self._speed_mark = (now, seen)
        elif self._speed_mark is None:
            self._speed_mark = (time.perf_counter(), self.state.num_input_tokens_seen)
        super().log(logs, start_time)


class _Progress(TrainerCallback):
    """A step progress bar showing loss and tokens/s, and one line per evaluation."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            post = {"loss": f"{logs['loss']:.3f}", "lr": f"{logs.get('learning_rate', 0):.2e}"}
            if "tokens_per_s" in logs:
                post["tok/s"] = f"{logs['tokens_per_s']:.0f}"
            self.bar.set_postfix(post)
        if "eval_loss" in logs:
            self.bar.write(_eval_line(state, logs))

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _eval_line(state, logs: dict[str, float]) -> str:
    bleu = f"  BLEU {logs['eval_bleu']:.2f}" if "eval_bleu" in logs else ""
    return f"step {state.global_step}: val loss {logs['eval_loss']:.3f}{bleu}"


class _LogLines(TrainerCallback):
    """Without a progress bar (``--no-progress``: a log file, a recipe's stage): one line per logged step and one per
    evaluation, so a run of hours shows where it is."""

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            rate = f", {logs['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in logs else ""
            print(f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}{rate}, "
                  f"{logs.get('wall_seconds', 0.0) / 60:.1f} min", flush=True)
        if "eval_loss" in logs:
            print(_eval_line(state, logs), flush=True)


class _TimeBudget(TrainerCallback):
    """Stop after ``minutes`` of training in this process, evaluating and saving at that step."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = None

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if time.perf_counter() - self.start > self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = True


class _EarlyStopping(TrainerCallback):
    """Stop when validation ``metric`` has not improved for ``patience`` evaluations in a row.

    Stateless on purpose: the evaluations are read from ``state.log_history``, which every checkpoint saves, so a
    resumed run stops at the same step as an uninterrupted one (a counter kept in the callback would restart at 0).
    HF's ``EarlyStoppingCallback`` needs ``load_best_model_at_end``, which would overwrite the last weights we keep.
    """

    def __init__(self, patience: int, metric: str, greater_is_better: bool):
        self.patience, self.key, self.sign = patience, f"eval_{metric}", 1.0 if greater_is_better else -1.0
        self.stopped_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        # Trainer.evaluate logs the metrics before this event fires, so the current evaluation is in the history.
        if evaluations_since_best([h[self.key] for h in state.log_history if self.key in h], self.sign) \
                >= self.patience:
            control.should_training_stop = True
            self.stopped_at = state.global_step


def evaluations_since_best(values: list[float], sign: float = 1.0) -> int:
    """How many evaluations came after the best one (the first of equal bests: a tie is no improvement).
    ``sign`` is +1 when larger is better (BLEU), -1 when smaller is (loss)."""
    if not values:
        return 0
    best = max(range(len(values)), key=lambda i: (sign * values[i], -i))
    return len(values) - 1 - best


def steps_per_epoch(n_batches: int, world_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over ``n_batches`` batches, as the HF Trainer counts them (accelerate gives each
    of ``world_size`` processes ``ceil(n / world_size)`` batches; a partial accumulation at the end is dropped)."""
    return max(1, math.ceil(n_batches / world_size) // grad_accum)


def training_arguments(cfg: TrainConfig, *, has_valid: bool, metric: str | None,
                       max_steps: int | None = None) -> TrainingArguments:
    """Map a TrainConfig onto HF TrainingArguments (one place, so the distillation job reuses it).
    ``max_steps``: the resolved step budget (from ``--epochs``), default ``cfg.max_steps``."""
    max_steps = max_steps or cfg.max_steps
    every = cfg.eval_steps or max_steps
    return TrainingArguments(
        output_dir=cfg.out,
        max_steps=max_steps,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.schedule,
        weight_decay=cfg.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        max_grad_norm=cfg.clip,
        gradient_accumulation_steps=cfg.grad_accum,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_valid else "no",
        eval_steps=every if has_valid else None,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=cfg.save_total_limit,
        metric_for_best_model=metric,
        greater_is_better=(metric == "bleu") if metric else None,
        per_device_eval_batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        bf16=cfg.bf16,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
        save_only_model=False,
    )


def check_out_dir(out: str | Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to mix runs: returns the checkpoint to resume from (or None for a fresh run)."""
    out = Path(out)
    ckpt = latest_checkpoint(out) if out.exists() else None
    used = out.exists() and any(out.iterdir())
    if resume:
        if ckpt is None:
            raise SeqkdError(f"--resume: no complete checkpoint-* directory in {out} to resume from")
        return ckpt
    if used:
        if not overwrite:
            raise SeqkdError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
        shutil.rmtree(out)
    return None


def make_trainer(cfg: TrainConfig, model, src_tok, tgt_tok, train_ex, valid, *, trainer_cls=SeqkdTrainer,
                 collator_cls=None, **trainer_kw) -> SeqkdTrainer:
    """Build the trainer for prepared examples. ``valid`` is ``(examples, sources, references)`` or None."""
    from seqkd.data.batching import Collator
    from seqkd.evaluate import score
    from seqkd.models import family
    from seqkd.teacher.decoding import translate

    fmt = Format.from_tokenizer(family(model), tgt_tok, cfg.prompt_format)
    lengths = [fmt.length(ex) for ex in train_ex]
    sampler = TokenBudgetBatchSampler(lengths, cfg.max_tokens, seed=cfg.seed)
    bleu_eval = None
    if valid is not None and cfg.bleu_samples > 0:
        srcs, refs = valid[1][: cfg.bleu_samples], valid[2][: cfg.bleu_samples]

        def bleu_eval(m):
            hyps = translate(m, src_tok, tgt_tok, srcs, batch_size=cfg.eval_batch_size,
                             max_new_tokens=cfg.max_len, max_len_ratio=2.0, prompt_format=cfg.prompt_format,
                             max_source_len=cfg.max_source_len)
            return score(hyps, refs)

    metric = ("bleu" if bleu_eval else "loss") if valid is not None else None
    if cfg.patience and valid is None:
        raise SeqkdError("--patience needs validation data (--valid-source/--valid-target)")
    per_epoch = steps_per_epoch(len(sampler), run_state().num_processes, cfg.grad_accum)
    max_steps = cfg.max_steps if cfg.epochs is None else math.ceil(cfg.epochs * per_epoch)
    trainer = trainer_cls(
        model=model,
        args=training_arguments(cfg, has_valid=valid is not None, metric=metric, max_steps=max_steps),
        train_dataset=ListDataset(train_ex),
        eval_dataset=ListDataset(valid[0]) if valid is not None else None,
        data_collator=(collator_cls or Collator)(fmt.pad_id, decoder_start_id=model.config.decoder_start_token_id
                               if fmt.family == "seq2seq" else None),
        processing_class=tgt_tok,
        fmt=fmt,
        batch_sampler=sampler,
        bleu_eval=bleu_eval,
        label_smoothing=cfg.label_smoothing,
        **trainer_kw,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # our _Progress prints what matters
    trainer.add_callback(_Progress() if cfg.progress else _LogLines())
    if cfg.max_minutes is not None:
        trainer.add_callback(_TimeBudget(cfg.max_minutes))
    if cfg.patience:
        trainer.add_callback(_EarlyStopping(cfg.patience, metric, greater_is_better=metric == "bleu"))
    trainer.steps_per_epoch = per_epoch
    return trainer


def finish(trainer: SeqkdTrainer, cfg: TrainConfig, src_tok, tgt_tok, data_stats: dict | None = None) -> dict:
    """Save ``out/last`` and the best model at ``out/`` (model + tokenizer), and the run's summary
    (``out/train_summary.json``: :func:`summarize`, the data's statistics, the trainer's :meth:`summary_extra`)."""
    from seqkd.models import save_model

    out = Path(cfg.out)
    model = trainer.accelerator.unwrap_model(trainer.model)
    summary = summarize(trainer, cfg)
    summary["data"] = data_stats or {}
    summary.update(trainer.summary_extra())
    summary["is_main_process"] = trainer.accelerator.is_main_process
    if not trainer.accelerator.is_main_process:
        return summary
    save_model(model, (src_tok, tgt_tok), out / "last")
    trainer.save_extras(out / "last", None)
    best = trainer.state.best_model_checkpoint
    best = best if best and Path(best).exists() and Path(best).name != f"checkpoint-{trainer.state.global_step}" \
        else None
    if best:
        model = type(model).from_pretrained(best)
    save_model(model, (src_tok, tgt_tok), out)
    trainer.save_extras(out, best)
    atomic_write_json(out / "train_summary.json", summary)
    return summary


def summarize(trainer: SeqkdTrainer, cfg) -> dict:
    """What a run did, from the trainer's log history (tokens/s: per process; seconds: wall time across resumes)."""
    history = trainer.state.log_history
    speeds = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    best = trainer.state.best_model_checkpoint
    steps, per_epoch = trainer.state.global_step, trainer.steps_per_epoch
    return {
        "steps": steps,
        "max_steps": trainer.args.max_steps,
        "stop_reason": stop_reason(trainer),
        "steps_per_epoch": per_epoch,
        "epochs": steps / per_epoch,
        "best_checkpoint": Path(best).name if best else None,
        "best_step": int(Path(best).name.split("-")[-1]) if best else None,
        "best_metric": trainer.state.best_metric,
        "evaluations": [h for h in history if "eval_loss" in h],
        "train_tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "seconds": trainer.wall_seconds(),
        "config": as_dict(cfg),
    }


def stop_reason(trainer: SeqkdTrainer) -> str:
    """Why training ended: ``max_steps`` (the budget, from --max-steps or --epochs), ``early_stopping``
    (--patience) or ``max_minutes``."""
    if trainer.state.global_step >= trainer.args.max_steps:
        return "max_steps"
    if any(isinstance(c, _EarlyStopping) and c.stopped_at is not None for c in trainer.callback_handler.callbacks):
        return "early_stopping"
    return "max_minutes"


def resume_point(cfg: TrainConfig, state) -> Path | None:
    """The checkpoint to resume from (or None). Only the main process checks ``--out`` (refusing to mix runs, or
    clearing it with ``--overwrite``); call it inside ``state.main_process_first()`` so the others see the result."""
    if state.is_main_process:
        return check_out_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    return latest_checkpoint(cfg.out) if cfg.resume else None


def run_state():
    """The launch's process group as accelerate sees it, known before the Trainer exists (so the main process can
    prepare the run first). ``ACCELERATE_USE_CPU`` must be honoured here too, or every CPU rank thinks it is main."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
