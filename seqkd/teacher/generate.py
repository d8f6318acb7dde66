"""``seqkd generate`` as a library call: read the examples a :class:`~seqkd.config.GenerateConfig` names, load its
engine, and decode them into a corpus (resumable: :func:`seqkd.teacher.corpus.generate_corpus`)."""

from __future__ import annotations

from seqkd.config import DecodeSettings, GenerateConfig
from seqkd.errors import SeqkdError


def read_examples(a: GenerateConfig):
    """Examples to decode: a registered dataset split, a parallel corpus, or a prompt file (ids = 0-based lines);
    and the file they came from."""
    from seqkd.data.files import Example, read_lines, read_parallel

    if a.data:
        from seqkd.data.registry import parallel_files

        src_path, tgt_path = parallel_files(a.data, a.split)
        exs, _ = read_parallel(src_path, tgt_path, strict=True, max_chars=None)
        path = src_path
    elif a.target or a.input.endswith((".tsv", ".jsonl", ".tsv.gz", ".jsonl.gz")):
        exs, _ = read_parallel(a.input, a.target)
        path = a.input
    else:
        lines, _ = read_lines(a.input, keep_empty=True)
        exs = [Example(i, t, None) for i, t in enumerate(lines) if t]
        path = a.input
    if a.limit is not None:
        exs = exs[: a.limit]
    return exs, path


def engine_options(a: GenerateConfig) -> dict:
    """Keyword arguments of :func:`seqkd.teacher.engines.get_engine` for the config's engine."""
    opts: dict = {"prompt_format": a.prompt_format, "max_source_len": a.max_source_len}
    if a.dtype:
        opts["dtype"] = a.dtype
    if a.engine == "hf":
        opts.update(device=a.device, batch_size=a.batch_size)
        if len(a.teacher) > 1:
            opts.update(ensemble=a.teacher[1:], teacher_weights=a.weights(), ensemble_mode=a.ensemble)
    else:
        opts.update(tensor_parallel_size=a.tensor_parallel_size, engine_args=a.engine_args())
    return opts


def generate(a: GenerateConfig, settings: DecodeSettings, *, command: list[str] | None = None,
             progress: bool = True) -> dict:
    """Decode the config's examples with its engine into ``a.out``; returns the corpus summary. ``command`` is
    recorded in the manifest."""
    from seqkd.teacher.corpus import check_corpus_dir, generate_corpus
    from seqkd.teacher.engines import get_engine

    if a.executor == "ray":
        from seqkd.teacher.ray_executor import generate_on_ray

        return generate_on_ray(a, settings, command=command)
    examples, path = read_examples(a)
    if not examples:
        raise SeqkdError(f"nothing to decode: {a.input or a.data} has no non-empty lines")
    check_corpus_dir(a.out)
    if a.pool:
        from seqkd.teacher.pool import PoolEngine

        member = {k: v for k, v in engine_options(a).items()
                  if k not in ("prompt_format", "max_source_len", "ensemble", "teacher_weights", "ensemble_mode",
                               "device", "batch_size")}
        engine = PoolEngine(a.engine, a.teacher, teacher_weights=a.weights(), ensemble_mode=a.ensemble,
                            device=a.device, batch_size=a.batch_size, prompt_format=a.prompt_format,
                            max_source_len=a.max_source_len, **member)
    else:
        engine = get_engine(a.engine, a.teacher[0], **engine_options(a))
    try:
        return generate_corpus(engine, examples, a.out, settings, shard=a.shard, chunk_size=a.chunk_size,
                               overwrite=a.overwrite, progress=progress, input_path=path, merge=not a.no_merge,
                               manifest_extra={"command": command, "data": a.data,
                                               "split": a.split if a.data else None})
    finally:
        engine.close()
