"""One setup path for every training job (``seqkd train``, ``seqkd distill``, and ``seqkd align`` through distill):
data, tokenizers, model(s) and encoded examples (:class:`Run`), then the trainer, the run and its summary.

:func:`start` is the same for every job: under ``torchrun`` / ``accelerate launch`` the main process checks ``--out``
(refusing to mix runs, or clearing it with ``--overwrite``) and prepares first (it may train the tokenizer, which
the others then find in place); the seed is set before any model is built. A job differs only in its ``prepare``
function (:func:`prepare_train`, :func:`prepare_distill`) and its trainer class.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from seqkd.config import DEFAULT_MAX_SOURCE_LEN, DistillConfig, TrainConfig
from seqkd.data.prompts import IGNORE_INDEX, Format
from seqkd.errors import DataError, SeqkdError


@dataclass
class Run:
    """What a training job prepared before the first step."""

    model: Any
    src_tok: Any
    tgt_tok: Any
    fmt: Format
    train_examples: list[dict]
    valid: tuple[list[dict], list[str], list[str]] | None  # (examples, sources, references)
    data_stats: dict
    teacher: Any = None  # online KD / on-policy scoring (distill), frozen
    resume_from: Path | None = None  # checkpoint to resume from
    started: float = field(default_factory=time.perf_counter)


def load_pairs(cfg: TrainConfig) -> tuple[list[str], list[str], list[str] | None, list[str] | None, dict]:
    """Training and validation text from a registered dataset, the synthetic task, or files."""
    from seqkd.data import files as data_mod
    from seqkd.data import registry as datasets
    from seqkd.data import synthetic

    stats: dict = {}
    if cfg.data == "synthetic":
        src, tgt = synthetic.synthetic_pairs(cfg.synthetic_size, seed=cfg.seed,
                                             multimodality=cfg.synthetic_multimodality)
        vsrc, vtgt = synthetic.synthetic_pairs(500, seed=cfg.seed + 10_000, multimodality=0.0)
        return src, tgt, vsrc, vtgt, {"train": len(src), "valid": len(vsrc), "source": "synthetic"}
    if cfg.data is not None:
        src, tgt = datasets.load_parallel(cfg.data, "train")
        vsrc, vtgt = datasets.load_parallel(cfg.data, "val")
        return src, tgt, vsrc, vtgt, {"train": len(src), "valid": len(vsrc), "source": cfg.data}
    exs, st = data_mod.read_parallel(cfg.train_source, cfg.train_target, strict=cfg.strict)
    stats["train"] = str(st)
    src, tgt = [e.source for e in exs], [e.target for e in exs]
    vsrc = vtgt = None
    if cfg.valid_source:
        vexs, vst = data_mod.read_parallel(cfg.valid_source, cfg.valid_target, strict=cfg.strict)
        vsrc, vtgt = [e.source for e in vexs], [e.target for e in vexs]
        stats["valid"] = str(vst)
    if not src:
        raise SeqkdError(f"no training pairs left in {cfg.train_source} after skipping empty lines")
    return src, tgt, vsrc, vtgt, stats


def tokenizers_for(cfg: TrainConfig, sources: list[str], targets: list[str]):
    """The run's tokenizers: given, the model directory's own, or newly trained into ``out/tokenizer``."""
    from seqkd.models.tokenizer import load_tokenizers, train_translation_tokenizers

    if cfg.tokenizer:
        return load_tokenizers(cfg.tokenizer)
    if Path(cfg.model).is_dir():
        return load_tokenizers(cfg.model)
    tok_dir = Path(cfg.out) / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():  # a resumed run keeps the tokenizer it started with
        return load_tokenizers(tok_dir)
    return train_translation_tokenizers(sources, targets, tok_dir, joint=True, vocab_size=cfg.vocab_size,
                                        model_type=cfg.tokenizer_type)


def model_for(cfg: TrainConfig, src_tok, tgt_tok):
    from seqkd.models import PRESETS, build_model, load_model
    from seqkd.models.draft_vocab import refuse_training

    if cfg.model in PRESETS:
        # Llama has no residual dropout; its one dropout knob is on attention probabilities.
        key = "attention_dropout" if cfg.model.startswith("llama") else "dropout"
        overrides = {} if cfg.dropout is None else {key: cfg.dropout}
        separate = src_tok is not tgt_tok
        return build_model(cfg.model, vocab_size=len(src_tok), decoder_vocab_size=len(tgt_tok) if separate else None,
                           pad_id=tgt_tok.pad_token_id, bos_id=tgt_tok.bos_token_id, eos_id=tgt_tok.eos_token_id,
                           seed=cfg.seed, **overrides)
    refuse_training(cfg.model, "training")
    model = load_model(cfg.model)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tgt_tok) > vocab:
        raise SeqkdError(f"tokenizer has {len(tgt_tok)} tokens but {cfg.model} embeds only {vocab}")
    return model


def check_model_name(name: str) -> None:
    """A preset, an existing directory, or an ``org/name`` hub id; anything else fails before any work."""
    from seqkd.models import PRESETS

    if name in PRESETS or Path(name).is_dir():
        return
    if Path(name).exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise SeqkdError(f"--model {name!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                         "nor a model directory (nor an org/name hub id)")


def prepare_train(cfg: TrainConfig) -> Run:
    """Cross-entropy training: data, tokenizers (given, the model's, or trained into ``out/tokenizer``), model."""
    from seqkd.data.prompts import encode_pairs
    from seqkd.models import family

    check_model_name(cfg.model)
    src, tgt, vsrc, vtgt, stats = load_pairs(cfg)
    src_tok, tgt_tok = tokenizers_for(cfg, src, tgt)
    model = model_for(cfg, src_tok, tgt_tok)
    fmt = Format.from_tokenizer(family(model), tgt_tok, cfg.prompt_format)
    train_ex = encode_pairs(fmt, src_tok, tgt_tok, src, tgt, max_len=cfg.max_len,
                            max_source_len=cfg.max_source_len)
    valid = None
    if vsrc:
        valid = (encode_pairs(fmt, src_tok, tgt_tok, vsrc, vtgt, max_len=cfg.max_len,
                              max_source_len=cfg.max_source_len), vsrc, vtgt)
    return Run(model, src_tok, tgt_tok, fmt, train_ex, valid, stats)


# --- distillation data: `seqkd select` files -------------------------------------------------------------------------
def read_selection(path: str | Path) -> list[dict]:
    """The records of a ``seqkd select`` file (JSONL with source, target, token_ids, ...), checked."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno}: not valid JSON") from None
            for key in ("source", "target", "token_ids"):
                if key not in rec:
                    raise DataError(f"{path}:{lineno}: missing field {key!r} (not a `seqkd select` file?)")
            out.append(rec)
    if not out:
        raise DataError(f"{path}: no training examples")
    return out


def is_selection_file(path: str | None) -> bool:
    """A JSONL whose first record has teacher token ids (``seqkd select`` output)."""
    if not path or not str(path).endswith(".jsonl"):
        return False
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        return "token_ids" in json.loads(first)
    except json.JSONDecodeError:
        return False


def exact_example(fmt: Format, src_ids: list[int], target_ids: list[int]) -> dict:
    """Like :meth:`Format.example` but the target ids are used verbatim (the teacher's, eos included when it
    finished): stored top-k log-probs stay aligned with them token for token."""
    prompt = fmt.prompt_ids(src_ids)
    if fmt.family == "seq2seq":
        return {"input_ids": prompt, "labels": list(target_ids), "prompt_len": len(prompt)}
    return {"input_ids": prompt + list(target_ids), "labels": [IGNORE_INDEX] * len(prompt) + list(target_ids),
            "prompt_len": len(prompt)}


def selection_examples(fmt: Format, src_tok, tgt_tok, records: list[dict], *, targets: str, max_len: int,
                       vocab_size: int, with_topk: bool, max_source_len: int = DEFAULT_MAX_SOURCE_LEN) -> list[dict]:
    """Training examples from selected teacher outputs: ``targets`` 'teacher', 'reference' or 'both'. Sources are
    cut by the one prompt encoder's rule (:func:`seqkd.data.prompts.source_ids`), targets to ``max_len``."""
    from seqkd.data.prompts import source_ids

    srcs = source_ids(src_tok, [r["source"] for r in records], max_source_len)
    refs = [r.get("reference") for r in records]
    ref_ids = tgt_tok([r or "" for r in refs], add_special_tokens=False)["input_ids"]
    out = []
    for rec, s, ref, rids in zip(records, srcs, refs, ref_ids):
        if targets in ("teacher", "both"):
            ids = rec["token_ids"][: max_len + 1]
            if ids and max(ids) >= vocab_size:
                raise DataError(f"example id {rec.get('id')}: token id {max(ids)} >= the student's vocabulary "
                                f"({vocab_size}): the corpus was made with another tokenizer")
            ex = exact_example(fmt, s, ids)
            ex["weight"] = float(rec.get("weight", 1.0))
            if with_topk:
                if "topk_ids" not in rec:
                    raise DataError(f"example id {rec.get('id')} has no top-k log-probs: decode the corpus with "
                                    "--topk-logprobs K for --kd-mode offline")
                ex["topk_ids"] = rec["topk_ids"][: len(ids)]
                ex["topk_logprobs"] = rec["topk_logprobs"][: len(ids)]
            out.append(ex)
        if targets in ("reference", "both"):
            if ref is None:
                raise DataError(f"example id {rec.get('id')} has no reference (--targets {targets})")
            ex = fmt.example(s, rids[:max_len])
            ex["prompt_len"] = len(fmt.prompt_ids(s))
            ex["weight"] = 1.0
            out.append(ex)
    return out


def prepare_distill(cfg: DistillConfig) -> Run:
    """Distillation: the teacher's tokenizers (the student must share them), student, teacher (online KD, on-policy
    scoring, or ``--init-from-teacher``), and examples from a ``seqkd select`` file or a parallel corpus."""
    import dataclasses

    from seqkd.data.prompts import encode_pairs
    from seqkd.models import family, load_model
    from seqkd.models.student_init import init_from_teacher
    from seqkd.models.tokenizer import load_tokenizers, same_vocab

    check_model_name(cfg.model)
    first = cfg.teacher[0]  # its tokenizer is the student's (and every other teacher's)
    for t in cfg.teacher:
        if not Path(t).is_dir():
            raise SeqkdError(f"--teacher {t}: not a model directory")
    if cfg.tokenizer is not None and Path(cfg.tokenizer).resolve() != Path(first).resolve():
        raise SeqkdError("--tokenizer: a student uses its teacher's tokenizer (distillation compares distributions "
                         "token by token); leave --tokenizer out")
    src_tok, tgt_tok = load_tokenizers(first)
    for other in [cfg.model] * Path(cfg.model).is_dir() + cfg.teacher[1:]:
        s_src, s_tgt = load_tokenizers(other)
        if not (same_vocab(s_tgt, tgt_tok) and same_vocab(s_src, src_tok)):
            raise SeqkdError(f"{other} and teacher {first} have different tokenizers; distillation compares "
                             "distributions token by token and needs one vocabulary")
    selection = is_selection_file(cfg.train_source)
    # load_pairs reads sources/targets (a selection file is also a parallel corpus) and the validation set
    src, tgt, vsrc, vtgt, stats = load_pairs(dataclasses.replace(cfg, tokenizer=first))
    student = model_for(dataclasses.replace(cfg, tokenizer=first), src_tok, tgt_tok)
    fam = family(student)
    fmt = Format.from_tokenizer(fam, tgt_tok, cfg.prompt_format)
    teacher = mixture = None
    internals = cfg.hidden_loss != "none" or cfg.attention_loss != "none"
    if cfg.kd_mode == "online" and (cfg.kd_weight > 0 or cfg.onpolicy_lambda > 0 or internals) \
            or cfg.init_from_teacher:
        teachers = [load_model(t) for t in (cfg.teacher if cfg.kd_mode == "online" else cfg.teacher[:1])]
        for t in teachers:
            if family(t) != fam and cfg.kd_mode == "online":
                raise SeqkdError(f"online KD runs the teacher on the student's inputs: teacher is {family(t)}, "
                                 f"student is {fam}; use --kd-mode offline with a corpus, or a student of the same "
                                 "family")
            t.eval().requires_grad_(False)
        teacher = teachers[0]
        if len(teachers) > 1:  # multi-teacher KD: one teacher whose distribution is the weighted mixture
            from seqkd.teacher.ensemble import TeacherMixture, ensemble_weights

            mixture = TeacherMixture(teachers, ensemble_weights(cfg.weights(), len(teachers)), cfg.kd_temperature)
            stats["teachers"] = {"dirs": list(cfg.teacher), "weights": mixture.weights}
    if cfg.init_from_teacher:
        if Path(cfg.model).is_dir():
            raise SeqkdError("--init-from-teacher initialises a preset student (--model PRESET)")
        stats["init_from_teacher"] = init_from_teacher(student, teacher)  # from the first teacher
    if cfg.kd_mode != "online":
        teacher = None
    elif mixture is not None:
        teacher = mixture.eval().requires_grad_(False)
    vocab = student.get_output_embeddings().weight.shape[0]
    if selection:
        records = read_selection(cfg.train_source)
        train_ex = selection_examples(fmt, src_tok, tgt_tok, records, targets=cfg.targets, max_len=cfg.max_len,
                                      max_source_len=cfg.max_source_len,
                                      vocab_size=vocab, with_topk=cfg.kd_mode == "offline" and cfg.kd_weight > 0)
    else:
        if cfg.kd_mode == "offline":
            raise SeqkdError("--kd-mode offline reads stored top-k log-probs: give a `seqkd select` file "
                             "(--train-source train.jsonl) made from a corpus decoded with --topk-logprobs")
        train_ex = encode_pairs(fmt, src_tok, tgt_tok, src, tgt, max_len=cfg.max_len,
                            max_source_len=cfg.max_source_len)
        for ex in train_ex:
            ex["prompt_len"] = len(ex["input_ids"]) if fam == "seq2seq" else ex["labels"].count(IGNORE_INDEX)
    valid = None
    if vsrc:
        valid = (encode_pairs(fmt, src_tok, tgt_tok, vsrc, vtgt, max_len=cfg.max_len,
                              max_source_len=cfg.max_source_len), vsrc, vtgt)
    stats["train_examples"] = len(train_ex)
    return Run(student, src_tok, tgt_tok, fmt, train_ex, valid, stats, teacher=teacher)


# --- the path every job takes ----------------------------------------------------------------------------------------
def finished_summary(cfg: TrainConfig) -> dict | None:
    """``--resume`` on a finished run (it reached its step budget, or ``--patience`` stopped it): its summary,
    marked ``already_finished``; nothing is trained, saved or deleted. A run stopped by ``--max-minutes`` is not
    finished: it resumes; so does one given a larger ``--max-steps`` / ``--epochs`` than it ran with."""
    path = Path(cfg.out) / "train_summary.json"
    if not cfg.resume or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a summary being written by a killed run: resume from the checkpoint
    reason, ran = summary.get("stop_reason"), summary.get("config", {})
    if reason == "early_stopping":
        return summary | {"already_finished": True}
    if cfg.epochs is not None:  # the step budget follows from the data: compare what was asked for
        done = reason == "max_steps" and ran.get("epochs") is not None and ran["epochs"] >= cfg.epochs
    else:
        done = summary.get("steps", 0) >= cfg.max_steps
    return summary | {"already_finished": True} if done else None


def start(cfg: TrainConfig, prepare: Callable[[Any], Run]) -> Run:
    """Check ``--out`` (main process first), seed, and ``prepare`` the run."""
    from transformers import set_seed

    from seqkd.student.trainer import resume_point, run_state

    started = time.perf_counter()
    state = run_state()
    with state.main_process_first():
        resume_from = resume_point(cfg, state)
        set_seed(cfg.seed)
        run = prepare(cfg)
    run.resume_from, run.started = resume_from, started
    return run


def build_trainer(cfg: TrainConfig, run: Run, *, trainer_cls=None, collator_cls=None, **trainer_kw):
    """The run's trainer (:class:`~seqkd.student.trainer.SeqkdTrainer` or a subclass; extra keywords go to it)."""
    from seqkd.student.trainer import SeqkdTrainer, make_trainer

    trainer = make_trainer(cfg, run.model, run.src_tok, run.tgt_tok, run.train_examples, run.valid,
                           trainer_cls=trainer_cls or SeqkdTrainer, collator_cls=collator_cls, started=run.started,
                           **trainer_kw)
    if run.teacher is not None:
        run.teacher.to(trainer.args.device)
    return trainer


def run_training(cfg: TrainConfig, run: Run, trainer) -> dict:
    """Train (resuming where ``run`` says), save the best and last models, write and return the summary."""
    from seqkd.student.trainer import finish

    trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    return finish(trainer, cfg, run.src_tok, run.tgt_tok, run.data_stats)
