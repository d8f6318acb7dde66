"""What each recipe job does: the library call behind the subcommand of the same name, on the stage's configs.

Every runner takes the stage's config objects (built by :func:`seqkd.pipeline.recipe.configs`, ``out`` inside the
stage's directory) and returns a JSON-able result: what the report reads. Heavy imports happen inside the runners.
"""

from __future__ import annotations

import os
from typing import Any, Callable


def _synthetic_data(cfg) -> dict:
    from seqkd.data.synthetic import write_splits

    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size, "corpus": cfg.corpus_size}
    return {"sizes": write_splits(cfg.out, sizes=sizes, seed=cfg.seed, multimodality=cfg.multimodality)}


def _model(cfg) -> dict:
    import json

    from seqkd.errors import SeqkdError
    from seqkd.io import atomic_write_json, is_model_dir

    if not is_model_dir(cfg.path):
        raise SeqkdError(f"{cfg.path}: not a model directory (config.json + weights); for a GGUF file use the "
                         "convert-gguf job")
    info = {"path": cfg.path, "model_type": json.loads(open(os.path.join(cfg.path, "config.json")).read()).get(
        "model_type")}
    atomic_write_json(os.path.join(cfg.out, "model.json"), info)
    return info


def _dataset(cfg) -> dict:
    from seqkd.data.splits import write_dataset

    return write_dataset(cfg)


def _convert_gguf(cfg) -> dict:
    from seqkd.models import convert_gguf, smollm2_gguf_path

    src = smollm2_gguf_path() if cfg.gguf == "smollm2" else cfg.gguf
    return {"model": str(convert_gguf(src, cfg.out))}


def _tokenizer(cfg) -> dict:
    from seqkd.models.tokenizer import train_tokenizer_job

    return train_tokenizer_job(cfg)


def _train(cfg, processes: int = 1) -> dict:
    if processes > 1:
        return _describe_model(_launched("train", cfg, processes), cfg.out)
    from seqkd.student.train import train

    return _describe_model(train(cfg), cfg.out)


def _distill(cfg, processes: int = 1) -> dict:
    if processes > 1:
        return _describe_model(_launched("distill", cfg, processes), cfg.out)
    from seqkd.student.distill import distill

    return _describe_model(distill(cfg), cfg.out)


def _launched(job: str, cfg, processes: int) -> dict:
    """``seqkd JOB`` in ``processes`` processes under torchrun (DDP through the HF Trainer / accelerate: one GPU per
    process, or CPU processes with gloo and the cores shared out); returns the run's summary."""
    import json
    import sys

    import torch

    env = {}
    if not torch.cuda.is_available():
        env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    _in_subprocess([job], cfg, launcher=launcher, env=env)
    return json.loads(open(os.path.join(cfg.out, "train_summary.json"), encoding="utf-8").read())


def _describe_model(summary: dict, out: str) -> dict:
    from seqkd.models import count_parameters, load_model
    from seqkd.models.presets import count_non_embedding

    model = load_model(out)
    return summary | {"parameters": count_parameters(model), "non_embedding_parameters": count_non_embedding(model)}


def _in_subprocess(words: list[str], *cfgs, launcher: list[str] | None = None, env: dict | None = None) -> None:
    """Run ``seqkd WORDS --config FILE`` (the configs' fields) in a fresh process (or under ``launcher``, e.g.
    torchrun): vLLM changes the thread settings of the process that starts it, which would slow every later stage;
    its own process keeps ours as they are."""
    import json
    import subprocess
    import sys
    import tempfile

    from seqkd.config import as_dict

    fields = {k: v for c in cfgs for k, v in as_dict(c).items()}
    if "progress" in fields:
        fields["progress"] = False  # one bar per process would interleave
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(fields, f)
    try:
        subprocess.run([*(launcher or [sys.executable]), "-m", "seqkd", *words, "--config", f.name], check=True,
                       env={**os.environ, **(env or {})})
    except subprocess.CalledProcessError as e:
        from seqkd.errors import SeqkdError

        raise SeqkdError(f"seqkd {' '.join(words)} failed (exit status {e.returncode}; its error is above)") from None
    finally:
        os.unlink(f.name)


def _generate(cfg, settings, command=None) -> dict:
    from seqkd.teacher.corpus import corpus_statistics, read_manifest
    from seqkd.teacher.generate import generate

    if cfg.engine == "vllm":
        _in_subprocess(["generate"], cfg, settings)
        summary = {"merged": read_manifest(cfg.out).get("merged")}
    else:
        summary = generate(cfg, settings, command=command)
    return summary | {"statistics": corpus_statistics(cfg.out)}


def _select(cfg) -> dict:
    from seqkd.teacher.selection import select_to_file

    return select_to_file(cfg.corpus, cfg.out, cfg.strategy, cfg.metric, references=cfg.references)


def _export(cfg) -> dict:
    from seqkd.deploy.ct2 import export_ctranslate2

    export_ctranslate2(cfg.model, cfg.out, quantization=cfg.quantization, force=cfg.force)
    return {"quantization": cfg.quantization, "format": cfg.format}


def _draft_init(cfg) -> dict:
    from seqkd.speculative.draft import init_draft

    return init_draft(cfg)


def _draft_vocab(cfg) -> dict:
    from seqkd.speculative.draft import prune_draft_vocab

    return prune_draft_vocab(cfg)


def _align(cfg) -> dict:
    from seqkd.speculative.align import align

    return align(cfg)


def _speculate(cfg) -> dict:
    import json

    from seqkd.speculative.runners import speculate

    if cfg.engine == "vllm":
        _in_subprocess(["speculate"], cfg)
        return json.loads(open(cfg.out, encoding="utf-8").read())
    return speculate(cfg, progress=False)


def _speculate_sweep(cfgs: list) -> list[dict]:
    """A sweep over gamma or over drafts in one call: one target-only baseline for every value (seqkd's decoder and
    HF assisted generation), models loaded once."""
    from seqkd.speculative.runners import speculate_sweep

    if cfgs[0].engine == "vllm" or cfgs[0].compare_hf:  # (HF assisted generation is compared at one config a call)
        return [_speculate(c) for c in cfgs]
    return speculate_sweep(cfgs, progress=False)


def _evaluate(cfg) -> dict:
    from seqkd.evaluate import evaluate_models

    return evaluate_models(cfg, progress=True)


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "model": _model, "synthetic-data": _synthetic_data, "dataset": _dataset, "convert-gguf": _convert_gguf,
    "tokenizer": _tokenizer, "train": _train, "generate": _generate, "select": _select, "distill": _distill,
    "export": _export, "draft-init": _draft_init, "draft-vocab": _draft_vocab, "align": _align,
    "speculate": _speculate, "evaluate": _evaluate,
}
# (job, swept field) -> a runner that takes the sweep's configs in one call (the default runs the job once a value)
SWEEP_RUNNERS: dict[tuple[str, str], Callable[[list], list[dict[str, Any]]]] = {
    ("speculate", "gamma"): _speculate_sweep,
    ("speculate", "draft"): _speculate_sweep,
}
# runner-set fields (seqkd.pipeline.recipe.RUNNER_FIELDS) for a stage whose directory holds a killed run's files:
# training resumes from its checkpoint (or starts over before the first one); a corpus resumes by itself (chunks);
# an alignment from its trainings' checkpoints; speculative timing from its last finished pass (seqkd and hf
# engines); the rest start over (their outputs are written whole: a partial one is never taken for a finished one)
def runner_fields(job: str, partial_checkpoint: bool, progress: bool) -> dict[str, Any]:
    if job in ("train", "distill"):
        return {"resume": partial_checkpoint, "overwrite": not partial_checkpoint, "progress": progress}
    if job == "generate":
        return {"overwrite": False}
    if job == "align":  # (each of its trainings resumes where it has a checkpoint, and starts where it has none)
        return {"resume": True, "overwrite": False, "progress": progress}
    return {"overwrite": True, "force": True, "progress": progress, "resume": job == "speculate"}
