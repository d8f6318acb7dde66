"""``seqkd align``: DistillSpec (Zhou et al. 2023, arXiv 2310.08461) — train a draft to match its target, so that
speculative decoding accepts more of its tokens, and measure acceptance before and after.

Data (``--data``): ``on-policy`` (the draft samples continuations of the prompts, the target scores them: the
DistillSpec recommendation), ``target`` (the target samples them once, up front; teacher outputs), ``fixed`` (the
references of a parallel dataset) or ``mixed`` (target outputs, with on-policy batches at ``--mixed-lambda``).
The divergence is chosen by name (``tvd`` by default: acceptance = 1 - TVD for sampling; ``fkl``, ``rkl``,
``jsd``). Training is :class:`seqkd.student.distill.DistillTrainer` (``kd_weight = 1``, the target online).

``--select-fraction f < 1`` is AdaSPEC's selective distillation (Hu et al. 2025, arXiv 2510.19779): a reference
draft is first aligned on all tokens with the same budget; then the draft is aligned only on the fraction ``f``
of each batch's tokens with the largest ``L_draft - L_ref`` (per-token divergence to the target): the tokens the
draft can still learn, leaving out those even the reference cannot fit.

The aligned draft is saved with ``save_pretrained`` (tokenizer included) in ``--out``: a plain HF model, usable as
an ``assistant_model`` and as a vLLM draft model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from seqkd.config import AlignConfig, DistillConfig, SpeculateConfig, as_dict
from seqkd.errors import SeqkdError
from seqkd.io import atomic_write_json, atomic_write_lines, latest_checkpoint
from seqkd.student.distill import DistillTrainer, distill_trainer
from seqkd.student.setup import read_selection, run_training

log = logging.getLogger(__name__)




class SelectiveTrainer(DistillTrainer):
    """AdaSPEC: the divergence on the ``fraction`` of each batch's target tokens with the largest
    ``D(target || draft) - D(target || reference)``; the rest are left out of the loss (scaled by 1/fraction)."""

    def __init__(self, *args, reference=None, fraction: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.fraction = fraction
        self.selected = 0
        self.seen = 0

    def loss_terms(self, model, inputs: dict, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.reference is None or self.fraction >= 1:
            return super().loss_terms(model, inputs, logits, targets)
        teacher = self.teacher_logits(inputs)  # [N, V]
        ref = self.teacher_logits(inputs, model=self.reference)  # [N, V]
        d = self.divergence(logits, teacher, None, reduction="none", **self.div_params)  # [N]
        with torch.no_grad():
            gap = d.detach() - self.divergence(ref, teacher, None, reduction="none", **self.div_params)
            k = max(1, int(round(self.fraction * gap.numel())))
            keep = torch.zeros_like(gap, dtype=torch.bool)
            keep[gap.topk(k).indices] = True
        if model.training:
            self.selected += k
            self.seen += gap.numel()
            self._term_sums["divergence"] += float((d * keep).sum().detach())
        return {"kd": (d * keep).sum() / self.fraction}

    def summary_extra(self) -> dict:
        return super().summary_extra() | {"selected_fraction": self.selected / self.seen if self.seen else None}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.reference is not None and self.reference.device != self.args.device:
            self.reference.to(self.args.device)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _write_pairs(path: Path, sources: list[str], targets: list[str]) -> Path:
    atomic_write_lines(path, (json.dumps({"id": i, "source": s, "target": t}, ensure_ascii=False)
                              for i, (s, t) in enumerate(zip(sources, targets))))
    return path


def _texts(cfg: AlignConfig) -> tuple[list[str], list[str] | None, list[str]]:
    """(training prompts, their references or None, evaluation prompts)."""
    from seqkd.data.files import read_lines
    from seqkd.data.registry import load_parallel

    if cfg.target_corpus:  # (its records are the training file: here only its sources count)
        prompts, refs, evals = [r["source"] for r in read_selection(cfg.target_corpus)], None, None
    elif cfg.dataset:
        prompts, refs = load_parallel(cfg.dataset, "train")
        evals = load_parallel(cfg.dataset, "val")[0]
    else:
        prompts = read_lines(cfg.prompts, max_chars=None, keep_empty=True)[0]
        refs = read_lines(cfg.references, max_chars=None, keep_empty=True)[0] if cfg.references else None
        if refs is not None and len(refs) != len(prompts):
            raise SeqkdError(f"--references has {len(refs)} lines, --prompts {len(prompts)}")
        keep = [i for i, p in enumerate(prompts) if p.strip() and (refs is None or refs[i].strip())]
        prompts, refs = [prompts[i] for i in keep], ([refs[i] for i in keep] if refs is not None else None)
        evals = None
    if cfg.eval_prompts:
        evals = read_lines(cfg.eval_prompts, max_chars=None)[0]
    elif evals is None:  # hold the last eval_size prompts out of training
        if len(prompts) <= cfg.eval_size:
            raise SeqkdError(f"{len(prompts)} prompts: too few to hold out --eval-size {cfg.eval_size}; give "
                             "--eval-prompts FILE")
        prompts, evals = prompts[: -cfg.eval_size], prompts[-cfg.eval_size:]
        refs = refs[: len(prompts)] if refs is not None else None
    n = cfg.limit or len(prompts)
    prompts, refs = prompts[:n], (refs[:n] if refs is not None else None)
    if not prompts:
        raise SeqkdError("no training prompts")
    return prompts, refs, evals[: cfg.eval_size]


def measure_acceptance(target, draft, tokenizers, prompts: list[str], *, gamma: int, temperature: float, seed: int,
                       max_new_tokens: int = 64, device: str = "cpu", prompt_format: str = "auto",
                       names: tuple[str, str] = ("target", "draft")) -> dict[str, Any]:
    """seqkd's speculative decoder over ``prompts`` with loaded models: the
    :class:`~seqkd.speculative.SpecStats` summary plus speedup."""
    from seqkd.speculative.runners import speculate

    cfg = SpeculateConfig(target=names[0], draft=names[1], gamma=gamma, temperature=temperature,
                          max_new_tokens=max_new_tokens, seed=seed, device=device, prompt_format=prompt_format)
    target.to(device), draft.to(device)
    return speculate(cfg, progress=False, target=target, draft=draft, tokenizers=tokenizers, prompts=prompts)


def _training_file(cfg: AlignConfig, prompts: list[str], refs: list[str] | None, work: Path) -> Path:
    """The DistillTrainer's data: target samples (target / mixed), references (fixed), or prompts (on-policy)."""
    if cfg.data == "fixed":
        return _write_pairs(work / "fixed.jsonl", prompts, refs)
    if cfg.target_corpus:  # decoded already: its first (--limit) records verbatim (the target's exact token ids)
        rows = read_selection(cfg.target_corpus)[: len(prompts)]
        atomic_write_lines(work / "target.jsonl", (json.dumps(r, ensure_ascii=False) for r in rows))
        return work / "target.jsonl"
    if cfg.data == "on-policy":
        # every batch is replaced by draft samples, so the targets here only size the batches (token budget):
        # the references where there are some, else the prompt itself as a stand-in of a continuation's length
        return _write_pairs(work / "prompts.jsonl", prompts, refs or prompts)
    from seqkd.data.files import Example
    from seqkd.teacher.corpus import generate_corpus, read_corpus
    from seqkd.teacher.engines import DecodeSettings, get_engine
    from seqkd.teacher.selection import select, write_training_data

    engine = get_engine("hf", cfg.target, prompt_format=cfg.prompt_format)
    settings = DecodeSettings(mode="sample", num_samples=1, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed) if cfg.temperature > 0 else \
        DecodeSettings(mode="greedy", max_new_tokens=cfg.max_new_tokens)
    exs = [Example(id=i, source=s, target=None) for i, s in enumerate(prompts)]
    generate_corpus(engine, exs, work / "target_corpus", settings, chunk_size=512, progress=cfg.progress,
                    overwrite=cfg.overwrite and not cfg.resume)
    engine.close()
    out = work / "target.jsonl"
    write_training_data(select(read_corpus(work / "target_corpus"), "top"), out)
    return out


def _distill_config(cfg: AlignConfig, train_file: Path, out: Path) -> DistillConfig:
    """The DistillTrainer run: divergence only (kd_weight 1), target online, no CE, no validation (its eval steps
    only checkpoint). ``--resume``: from ``out``'s newest complete checkpoint where it has one, else from the start."""
    lam = {"on-policy": 1.0, "mixed": cfg.mixed_lambda}.get(cfg.data, 0.0)
    resume = cfg.resume and latest_checkpoint(out) is not None
    return DistillConfig(
        out=str(out), model=cfg.draft, teacher=cfg.target, train_source=str(train_file), kd_mode="online",
        kd_weight=1.0, divergence=cfg.divergence, jsd_beta=cfg.jsd_beta, onpolicy_lambda=lam,
        onpolicy_temperature=cfg.temperature, onpolicy_max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps,
        lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.max_steps), max_tokens=cfg.max_tokens,
        eval_steps=min(cfg.save_steps, cfg.max_steps), bleu_samples=0, label_smoothing=0.0,
        logging_steps=max(1, cfg.max_steps // 10), seed=cfg.seed, resume=resume, overwrite=not resume,
        progress=cfg.progress, save_total_limit=1, prompt_format=cfg.prompt_format,
    )


def _train(dcfg: DistillConfig, **kw):
    """One DistillTrainer run; returns (summary, the trained draft, the target it was aligned to)."""
    trainer, run = distill_trainer(dcfg, **kw)
    summary = run_training(dcfg, run, trainer)
    return summary, trainer.accelerator.unwrap_model(trainer.model), run.teacher


def align(cfg: AlignConfig) -> dict[str, Any]:
    """Run DistillSpec as ``cfg`` says; returns the report (also ``out/align.json``). The acceptance is measured
    with the models the job holds: the draft and target loaded once before, the trained draft and the target of the
    training run after."""
    from seqkd.models import load_model
    from seqkd.models.draft_vocab import refuse_training
    from seqkd.speculative.runners import check_pair

    started = time.perf_counter()
    out = Path(cfg.out)
    if out.resolve() in (Path(cfg.draft).resolve(), Path(cfg.target).resolve()):
        raise SeqkdError(f"--out {out} is the draft or target directory itself: choose a new directory")
    if out.exists() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise SeqkdError(f"{out} is not empty (an earlier alignment?): use --resume to continue it or --overwrite to "
                         "replace it")
    refuse_training(cfg.draft, "seqkd align")
    tokenizers = check_pair(cfg.target, cfg.draft)
    prompts, refs, evals = _texts(cfg)
    work = out.with_name(out.name + "-work")  # not inside out: the training run owns that directory
    measure = dict(gamma=cfg.eval_gamma, temperature=cfg.eval_temperature, seed=cfg.seed, device=cfg.device,
                   prompt_format=cfg.prompt_format, max_new_tokens=cfg.max_new_tokens)
    target = load_model(cfg.target, device=cfg.device)
    before = measure_acceptance(target, load_model(cfg.draft, device=cfg.device), tokenizers, evals, **measure,
                                names=(cfg.target, cfg.draft))
    del target
    train_file = _training_file(cfg, prompts, refs, work)
    report: dict[str, Any] = {"config": as_dict(cfg), "before": before, "train_prompts": len(prompts),
                              "eval_prompts": len(evals)}
    if cfg.select_fraction < 1:
        ref_dir = work / "reference"
        ref_summary, reference, _ = _train(_distill_config(cfg, train_file, ref_dir))
        report["reference_train"] = _summary(ref_summary)
        summary, draft, target = _train(_distill_config(cfg, train_file, out), trainer_cls=SelectiveTrainer,
                                        reference=reference.eval().requires_grad_(False),
                                        fraction=cfg.select_fraction)
    else:
        summary, draft, target = _train(_distill_config(cfg, train_file, out))
    report["train"] = _summary(summary)
    report["after"] = measure_acceptance(target, draft, tokenizers, evals, **measure, names=(cfg.target, str(out)))
    report["seconds"] = time.perf_counter() - started
    atomic_write_json(out / "align.json", report)
    return report


def _summary(s: dict) -> dict:
    return {k: s[k] for k in ("steps", "seconds", "train_tokens_per_s", "onpolicy_fraction", "selected_fraction")
            if k in s}
