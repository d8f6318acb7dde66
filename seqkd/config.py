"""Job configurations: one dataclass per job, every field with help text, validated in ``__post_init__``.

The dataclasses are the CLI (``seqkd train --help`` is generated from :class:`TrainConfig`) and the Python
API (``seqkd.train.train(TrainConfig(...))``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SeqkdError
from .translation import PROMPT_FORMATS

SCHEDULES = ("inverse_sqrt", "cosine", "linear", "constant_with_warmup")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    """Cross-entropy training of a translation model (a teacher, or a baseline student) of either family."""

    out: str = _help("Output directory: the trained model + tokenizer, checkpoints, logs.")
    model: str = _help(
        "A preset (llama-tiny|student|teacher, marian-tiny|student|teacher) for a fresh model, "
        "or a local HF model directory / hub id to continue training.",
        default="marian-tiny",
    )
    data: str | None = _help(
        "A registered dataset: 'multi30k:de-en', 'multi30k:en-de' (train/val splits), or "
        "'synthetic' (the built-in toy task). Or give --train-source/--train-target.",
        default=None,
    )
    train_source: str | None = _help(
        "Training sources: a text file (with --train-target), or a .tsv / .jsonl holding both sides.", default=None
    )
    train_target: str | None = _help("Training targets, aligned line by line with --train-source.", default=None)
    valid_source: str | None = _help("Validation sources (file, .tsv or .jsonl).", default=None)
    valid_target: str | None = _help("Validation targets, aligned with --valid-source.", default=None)
    tokenizer: str | None = _help(
        "Tokenizer directory (from `seqkd tokenizer train`). Default: the model directory's own, or, for a "
        "preset, a new sentencepiece tokenizer trained on the training data.",
        default=None,
    )
    vocab_size: int = _help("Vocabulary size when a new tokenizer is trained.", default=8000)
    tokenizer_type: str = _help("unigram or bpe, when a new tokenizer is trained.", default="unigram")
    synthetic_size: int = _help("Training pairs generated for --data synthetic.", default=20000)
    synthetic_multimodality: float = _help(
        "For --data synthetic: probability that a word with synonyms takes a random one.", default=0.0
    )
    max_len: int = _help("Longest source or target kept, in tokens (longer ones are truncated).", default=128)
    prompt_format: str = _help(
        "How a source becomes a decoder-only prompt: translation (<s> src <sep>), plain (the tokenizer's own special "
        "tokens around it) or chat (one user turn of the tokenizer's chat template, as `seqkd generate "
        "--prompt-format chat` gave the teacher); auto = translation where the tokenizer has <sep>, else plain.",
        default="auto",
    )
    strict: bool = _help("Fail on empty or over-long lines instead of skipping / truncating them.", default=False)
    max_tokens: int = _help("Token budget of one batch (padded source + target tokens).", default=4096)
    grad_accum: int = _help("Gradient accumulation steps.", default=1)
    max_steps: int = _help("Optimizer steps to train for.", default=1000)
    max_minutes: float | None = _help(
        "Also stop (evaluating and checkpointing first) after this much wall-clock training time.", default=None)
    lr: float = _help("Peak learning rate (AdamW).", default=5e-4)
    warmup_steps: int = _help("Linear warm-up steps.", default=200)
    schedule: str = _help(f"Learning-rate schedule after warm-up: {', '.join(SCHEDULES)}.", default="inverse_sqrt")
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    clip: float = _help("Gradient-norm clipping (0 = off).", default=1.0)
    label_smoothing: float = _help("Label smoothing of the cross-entropy.", default=0.1)
    dropout: float | None = _help("Dropout (default: the preset's).", default=None)
    eval_steps: int = _help("Validate (loss and BLEU) and checkpoint every N steps (0 = only at the end).", default=500)
    bleu_samples: int = _help("Validation sentences decoded (greedy) for the BLEU at each evaluation.", default=500)
    eval_batch_size: int = _help("Sentences per batch when decoding for validation BLEU.", default=100)
    logging_steps: int = _help("Log loss, learning rate and tokens/s every N steps.", default=50)
    save_total_limit: int = _help("Checkpoints kept (the best one is always kept).", default=2)
    seed: int = _help("Seed for model init, data order and dropout.", default=0)
    resume: bool = _help("Resume from the newest checkpoint in --out (exactly: optimizer, schedule, RNG, data).",
                         default=False)
    overwrite: bool = _help("Delete an existing run in --out first.", default=False)
    bf16: bool = _help("bfloat16 mixed precision (GPUs).", default=False)
    progress: bool = _help("Show a progress bar.", default=True)

    def __post_init__(self):
        if not self.out:
            raise SeqkdError("--out is required")
        has_files = self.train_source is not None
        if (self.data is None) == (not has_files):
            raise SeqkdError("give exactly one of --data NAME or --train-source FILE [--train-target FILE]")
        if self.train_target is not None and not has_files:
            raise SeqkdError("--train-target needs --train-source")
        if (self.valid_target is not None) and self.valid_source is None:
            raise SeqkdError("--valid-target needs --valid-source")
        if self.schedule not in SCHEDULES:
            raise SeqkdError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise SeqkdError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.tokenizer_type not in ("unigram", "bpe"):
            raise SeqkdError(f"--tokenizer-type must be unigram or bpe, got {self.tokenizer_type!r}")
        for name in ("max_tokens", "max_steps", "grad_accum", "max_len", "vocab_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise SeqkdError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_steps", "bleu_samples", "clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise SeqkdError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise SeqkdError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if not 0 <= self.label_smoothing < 1:
            raise SeqkdError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0:
            raise SeqkdError(f"--lr must be > 0, got {self.lr}")
        if self.resume and self.overwrite:
            raise SeqkdError("--resume and --overwrite contradict each other")
