"""``seqkd align``: DistillSpec (Zhou et al. 2023, arXiv 2310.08461) — train a draft to match its target, so that
speculative decoding accepts more of its tokens, and measure acceptance before and after.

Data (``--data``): ``on-policy`` (the draft samples continuations of the prompts, the target scores them: the
DistillSpec recommendation), ``target`` (the target samples them once, up front; teacher outputs), ``fixed`` (the
references of a parallel dataset) or ``mixed`` (target outputs, with on-policy batches at ``--mixed-lambda``).
The divergence is chosen by name (``tvd`` by default: acceptance = 1 - TVD for sampling; ``fkl``, ``rkl``,
``jsd``). Training is :class:`seqkd.distill.DistillTrainer` (``kd_weight = 1``, the target online).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import _help
from .distill import DistillTrainer, distill
from .distill_config import DistillConfig
from .errors import SeqkdError
from .translation import PROMPT_FORMATS

log = logging.getLogger(__name__)
SOURCES = ("on-policy", "target", "fixed", "mixed")
DIVERGENCES = ("tvd", "fkl", "rkl", "jsd", "forward_kl", "reverse_kl", "skew_kl", "skew_reverse_kl")


@dataclass
class AlignConfig:
    """DistillSpec: align ``draft`` to ``target`` on prompts; report acceptance before and after."""

    target: str = _help("Target model directory (kept frozen).")
    draft: str = _help("Draft model directory to align (the result is saved in --out).")
    out: str = _help("Output directory: the aligned draft (HF save_pretrained), its training logs, align.json. "
                     "Generated data and the AdaSPEC reference draft go to OUT-work beside it.")
    prompts: str | None = _help("Prompt file (one prompt / source per line).", default=None)
    references: str | None = _help("Targets aligned with --prompts (needed for --data fixed).", default=None)
    dataset: str | None = _help("Instead of --prompts: a registered parallel dataset (its train sources are the "
                                "prompts, its references the fixed data, its val split the evaluation prompts).",
                                default=None)
    data: str = field(default="on-policy", metadata={"choices": SOURCES, "help": (
        "Training data: on-policy (draft samples), target (target samples), fixed (references) or mixed.")})
    divergence: str = field(default="tvd", metadata={"choices": DIVERGENCES, "help": (
        "Token-level divergence between target and draft.")})
    jsd_beta: float = _help("beta of jsd.", default=0.5)
    mixed_lambda: float = _help("--data mixed: probability that a batch is draft-generated.", default=0.5)
    temperature: float = _help("Sampling temperature of generated training data (draft and target).", default=1.0)
    max_new_tokens: int = _help("Longest generated training continuation.", default=64)
    prompt_format: str = _help("How a prompt line becomes model input: auto, translation, plain or chat (as "
                               "`seqkd generate`; chat for an instruct target such as SmolLM2-Instruct).",
                               default="auto")
    limit: int | None = _help("Use the first N training prompts only.", default=None)
    select_fraction: float = _help("AdaSPEC: align on this fraction of tokens (largest L_draft - L_ref) after a "
                                   "reference alignment with the same budget; 1 = plain DistillSpec.", default=1.0)
    max_steps: int = _help("Optimizer steps.", default=300)
    lr: float = _help("Peak learning rate.", default=3e-4)
    warmup_steps: int = _help("Linear warm-up steps.", default=30)
    max_tokens: int = _help("Token budget of one batch.", default=4096)
    eval_prompts: str | None = _help("Prompts for the acceptance measurement (default: --dataset's val split, or "
                                     "the last --eval-size training prompts, held out).", default=None)
    eval_size: int = _help("Evaluation prompts used.", default=100)
    eval_gamma: int = _help("gamma of the acceptance measurement.", default=4)
    eval_temperature: float = _help("Temperature of the acceptance measurement (0 = greedy).", default=1.0)
    seed: int = _help("Seed of training and measurement.", default=0)
    device: str = _help("cpu or cuda for the acceptance measurement (training uses the Trainer's device).",
                        default="cpu")
    overwrite: bool = _help("Replace an existing --out.", default=False)
    progress: bool = _help("Show progress bars.", default=True)

    def __post_init__(self) -> None:
        if self.data not in SOURCES:
            raise SeqkdError(f"--data must be one of {', '.join(SOURCES)}, got {self.data!r}")
        if self.divergence not in DIVERGENCES:
            raise SeqkdError(f"--divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if bool(self.prompts) == bool(self.dataset):
            raise SeqkdError("give either --prompts FILE or --dataset NAME")
        if self.data == "fixed" and not (self.references or self.dataset):
            raise SeqkdError("--data fixed trains on references: give --references FILE (or --dataset NAME)")
        if not 0 < self.select_fraction <= 1:
            raise SeqkdError(f"--select-fraction must be in (0, 1], got {self.select_fraction}")
        if not 0 <= self.mixed_lambda <= 1:
            raise SeqkdError(f"--mixed-lambda must be in [0, 1], got {self.mixed_lambda}")
        for name in ("max_steps", "eval_size", "eval_gamma", "max_new_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise SeqkdError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise SeqkdError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.temperature <= 0:
            raise SeqkdError(f"--temperature must be > 0 (training data is sampled), got {self.temperature}")


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

    def extra_summary(self) -> dict:
        return {"selected_fraction": self.selected / self.seen if self.seen else None}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.reference is not None and self.reference.device != self.args.device:
            self.reference.to(self.args.device)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _write_pairs(path: Path, sources: list[str], targets: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (s, t) in enumerate(zip(sources, targets)):
            f.write(json.dumps({"id": i, "source": s, "target": t}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _texts(cfg: AlignConfig) -> tuple[list[str], list[str] | None, list[str]]:
    """(training prompts, their references or None, evaluation prompts)."""
    from .data import read_lines
    from .datasets import load_parallel

    if cfg.dataset:
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


def measure_acceptance(target_dir: str, draft_dir: str, prompts: list[str], *, gamma: int, temperature: float,
                       seed: int, max_new_tokens: int = 64, device: str = "cpu",
                       prompt_format: str = "auto") -> dict[str, Any]:
    """seqkd's speculative decoder over ``prompts``: the :class:`~seqkd.spec.SpecStats` summary plus speedup."""
    import tempfile

    from .speculate import SpeculateConfig, speculate

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "prompts.txt"
        f.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        cfg = SpeculateConfig(target=target_dir, draft=draft_dir, input=str(f), gamma=gamma,
                              temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, device=device,
                              prompt_format=prompt_format)
        return speculate(cfg, progress=False)


def _training_file(cfg: AlignConfig, prompts: list[str], refs: list[str] | None, work: Path) -> Path:
    """The DistillTrainer's data: target samples (target / mixed), references (fixed), or prompts (on-policy)."""
    if cfg.data == "fixed":
        return _write_pairs(work / "fixed.jsonl", prompts, refs)
    if cfg.data == "on-policy":
        # every batch is replaced by draft samples, so the targets here only size the batches (token budget):
        # the references where there are some, else the prompt itself as a stand-in of a continuation's length
        return _write_pairs(work / "prompts.jsonl", prompts, refs or prompts)
    from .corpus import generate_corpus, read_corpus
    from .data import Example
    from .engines import DecodeSettings, get_engine
    from .select import select, write_training_data

    engine = get_engine("hf", cfg.target, prompt_format=cfg.prompt_format)
    settings = DecodeSettings(mode="sample", num_samples=1, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    exs = [Example(id=i, source=s, target=None) for i, s in enumerate(prompts)]
    generate_corpus(engine, exs, work / "target_corpus", settings, chunk_size=512, progress=cfg.progress,
                    overwrite=cfg.overwrite)
    engine.close()
    out = work / "target.jsonl"
    write_training_data(select(read_corpus(work / "target_corpus"), "top"), out)
    return out


def _distill_config(cfg: AlignConfig, train_file: Path, out: Path) -> DistillConfig:
    """The DistillTrainer run: divergence only (kd_weight 1), target online, no CE, no validation."""
    lam = {"on-policy": 1.0, "mixed": cfg.mixed_lambda}.get(cfg.data, 0.0)
    return DistillConfig(
        out=str(out), model=cfg.draft, teacher=cfg.target, train_source=str(train_file), kd_mode="online",
        kd_weight=1.0, divergence=cfg.divergence, jsd_beta=cfg.jsd_beta, onpolicy_lambda=lam,
        onpolicy_temperature=cfg.temperature, onpolicy_max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps,
        lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.max_steps), max_tokens=cfg.max_tokens,
        eval_steps=0, bleu_samples=0, label_smoothing=0.0, logging_steps=max(1, cfg.max_steps // 10),
        seed=cfg.seed, overwrite=True, progress=cfg.progress, save_total_limit=1, prompt_format=cfg.prompt_format,
    )


def align(cfg: AlignConfig) -> dict[str, Any]:
    """Run DistillSpec as ``cfg`` says; returns the report (also ``out/align.json``)."""
    from .speculate import check_pair

    started = time.perf_counter()
    out = Path(cfg.out)
    if out.resolve() in (Path(cfg.draft).resolve(), Path(cfg.target).resolve()):
        raise SeqkdError(f"--out {out} is the draft or target directory itself: choose a new directory")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise SeqkdError(f"{out} is not empty (an earlier alignment?): use --overwrite to replace it")
    check_pair(cfg.target, cfg.draft)
    prompts, refs, evals = _texts(cfg)
    work = out.with_name(out.name + "-work")  # not inside out: the training run owns that directory
    measure = dict(gamma=cfg.eval_gamma, temperature=cfg.eval_temperature, seed=cfg.seed, device=cfg.device,
                   prompt_format=cfg.prompt_format)
    before = measure_acceptance(cfg.target, cfg.draft, evals, **measure)
    train_file = _training_file(cfg, prompts, refs, work)
    report: dict[str, Any] = {"config": vars(cfg), "before": before, "train_prompts": len(prompts),
                              "eval_prompts": len(evals)}
    if cfg.select_fraction < 1:
        from .models import load_model

        ref_dir = work / "reference"
        report["reference_train"] = _summary(distill(_distill_config(cfg, train_file, ref_dir)))
        reference = load_model(ref_dir).eval().requires_grad_(False)
        summary = distill(_distill_config(cfg, train_file, out), trainer_cls=SelectiveTrainer, reference=reference,
                          fraction=cfg.select_fraction)
    else:
        summary = distill(_distill_config(cfg, train_file, out))
    report["train"] = _summary(summary)
    report["after"] = measure_acceptance(cfg.target, str(out), evals, **measure)
    report["seconds"] = time.perf_counter() - started
    (out / "align.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _summary(s: dict) -> dict:
    return {k: s.get(k) for k in ("steps", "seconds", "train_tokens_per_s", "onpolicy_fraction")}
