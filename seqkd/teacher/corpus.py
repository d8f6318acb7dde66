"""Distillation corpora: a teacher decodes a source corpus into resumable, shardable JSONL chunks plus a manifest.

Layout of an output directory::

    manifest.json                         what made the corpus (written first; see below)
    shard-000-of-003/chunk-000000.jsonl   one JSONL file per chunk of ``chunk_size`` examples
    shard-001-of-003/chunk-000001.jsonl
    ...
    corpus.jsonl                          the merged corpus, sorted by id (written by merge_corpus)

**Chunks and shards.** Examples are sorted by id and cut into fixed chunks of ``chunk_size`` (chunk ``c`` holds
examples ``c*chunk_size .. (c+1)*chunk_size - 1``). Chunk ``c`` belongs to shard ``c % n``: shards get interleaved
chunks (balanced when lengths drift through the file), and a chunk is decoded the same way whichever shard and
whichever run decodes it. So a sharded run merged equals the unsharded run, byte for byte.

**Faults.** A chunk is decoded completely, then written as one file atomically (temporary file, fsync,
``os.replace``, directory fsync): a chunk file is either absent or complete. A restart with the same arguments
skips the chunks whose files exist, so a run killed at any moment (SIGKILL included) loses at most the chunk in
flight, duplicates nothing, and produces the same corpus as an uninterrupted run. Sampling is seeded per chunk
with a seed derived from ``(settings.seed, chunk index)`` (see :func:`chunk_seed`), so seeded samples do not depend
on resumption or sharding either (HF engine: on the same kind of machine; its device, dtype and batch size are
part of the manifest).

**Manifest.** ``manifest.json`` records the teacher (path and sha256 of its weight, config and tokenizer files), an
ensemble's other teachers the same way (``ensemble``; its weights and mode are engine options), the engine and its
output-affecting options, the decoding settings, the tokenizer and prompt format, the seqkd version, the input (path,
its sha256, the number of examples and a hash of their ids/sources/references), the shard count and chunk size, and
``extra`` (the caller's, e.g. the command line). A run whose manifest differs from the one in the directory is refused
unless ``overwrite=True``; paths and ``extra`` are recorded but not compared (a moved teacher or input with the same
content is the same corpus). ``merge_corpus`` adds ``merged`` (counts).

**Records** (one JSON object per line, ``datasets.load_dataset("json", data_files=...)`` reads them)::

    {"id": 17, "source": "...", "reference": "..." | null,
     "hypotheses": [{"text", "token_ids", "logprob", "norm_logprob", "token_logprobs", "finished",
                     "topk_ids", "topk_logprobs"  (only with topk_logprobs > 0)}, ...]}

``token_ids`` include the final eos when ``finished`` (see :mod:`seqkd.teacher.engines`). Hypotheses are best first:
beam search's n-best in the beam's order; samples sorted by ``logprob``, highest first (stable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from seqkd import __version__
from seqkd.data.files import Example, sha256_file
from seqkd.errors import DataError, SeqkdError
from seqkd.io import atomic_write_lines
from seqkd.teacher.engines import DecodeSettings, Engine

FORMAT = "seqkd-corpus/1"
MANIFEST = "manifest.json"
CORPUS_FILE = "corpus.jsonl"
# Recorded in the manifest but not part of a corpus's identity (see the module docstring).
_NOT_COMPARED = {"created", "merged", "extra", "teacher.path", "input.path", "tokenizer.name", "tokenizer.source_name"}


# --- names -----------------------------------------------------------------------------------------------------------
def shard_dir_name(i: int, n: int) -> str:
    return f"shard-{i:03d}-of-{n:03d}"


def chunk_file_name(c: int) -> str:
    return f"chunk-{c:06d}.jsonl"


def parse_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """``(i, n)`` from ``(i, n)`` or ``"i/n"`` (0-based ``i``), validated."""
    if isinstance(shard, str):
        try:
            a, b = shard.split("/")
            shard = (int(a), int(b))
        except ValueError:
            raise SeqkdError(f"shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    try:
        i, n = shard
    except (TypeError, ValueError):
        raise SeqkdError(f"shard must be (i, n), got {shard!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (i, n)) or n < 1 or not 0 <= i < n:
        raise SeqkdError(f"shard {i}/{n}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of one chunk: a hash of (seed, chunk index), so chunks get independent streams."""
    digest = hashlib.sha256(f"seqkd-chunk:{seed}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_lines(path, json.dumps(obj, indent=1, ensure_ascii=False).split("\n"))


def _dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- manifest --------------------------------------------------------------------------------------------------------
def teacher_files(model_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of the files that decide a local teacher's outputs: weights (``*.safetensors``, ``pytorch_model*.bin``,
    ``*.gguf``), the JSON configs (model, generation, tokenizer) and sentencepiece models, at the top level and in
    ``source_tokenizer/``. Empty for a hub id."""
    p = Path(model_dir)
    if p.is_file():
        return {p.name: sha256_file(p)}
    if not p.is_dir():
        return {}
    out = {}
    for d in (p, p / "source_tokenizer"):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            keep = f.suffix in (".safetensors", ".gguf", ".json", ".model") or (
                f.name.startswith("pytorch_model") and f.suffix == ".bin")
            if f.is_file() and keep and f.name != "train_summary.json":
                out[str(f.relative_to(p))] = sha256_file(f)
    return out


def _examples_sha256(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(_dumps([ex.id, ex.source, ex.target]).encode())
        h.update(b"\n")
    return h.hexdigest()


def build_manifest(
    engine: Engine,
    examples: Sequence[Example],
    settings: DecodeSettings,
    *,
    shards: int,
    chunk_size: int,
    input_path: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> dict:
    """The manifest of a corpus (before merging). ``examples`` must be sorted by id."""
    inp = Path(input_path) if input_path is not None else None

    def teacher(model_dir: str) -> dict:
        return {"path": str(Path(model_dir).resolve()) if Path(model_dir).exists() else model_dir,
                "family": engine.family, "files": teacher_files(model_dir)}

    others = getattr(engine, "ensemble_dirs", [])  # an ensemble's other teachers (weights and mode: engine options)
    return {
        "format": FORMAT,
        "seqkd_version": __version__,
        "teacher": teacher(engine.model_dir),
        **({"ensemble": {str(i): teacher(d) for i, d in enumerate(others, 1)}} if others else {}),
        "engine": {"name": engine.name, **engine.options},
        "settings": settings.as_dict(),
        "tokenizer": engine.codec.describe(),
        "input": {
            "path": str(inp.resolve()) if inp is not None else None,
            "sha256": sha256_file(inp) if inp is not None and inp.is_file() else None,
            "examples": len(examples),
            "content_sha256": _examples_sha256(examples),
        },
        "shards": shards,
        "chunk_size": chunk_size,
        "chunks": math.ceil(len(examples) / chunk_size),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "extra": extra or {},
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and key not in _NOT_COMPARED and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def manifest_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every compared manifest field that differs."""
    # paths are not compared (a moved teacher or input with the same content is the same corpus; files are)
    a = {k: v for k, v in _flatten(old).items() if k not in _NOT_COMPARED and not k.endswith(".path")}
    b = {k: v for k, v in _flatten(new).items() if k not in _NOT_COMPARED and not k.endswith(".path")}
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
            if key.startswith(("teacher.files", "ensemble.")) or key.endswith("sha256"):
                va, vb = str(va)[:12], str(vb)[:12]
            diffs.append(f"{key}: {va} -> {vb}")
    return diffs


def read_manifest(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise SeqkdError(f"{out_dir}: no {MANIFEST}: not a seqkd corpus directory")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    return obj


def _our_files(out: Path) -> list[Path]:
    """What a corpus run writes in ``out`` (never anything else)."""
    found = [out / n for n in (MANIFEST, CORPUS_FILE) if (out / n).exists()]
    found += sorted(d for d in out.glob("shard-*-of-*") if d.is_dir())
    return found


def _remove_corpus(out: Path) -> None:
    for p in _our_files(out):
        if p.is_dir():
            for f in p.iterdir():
                if f.is_file() and f.name.startswith(("chunk-", ".chunk-")):
                    f.unlink()
            try:
                p.rmdir()
            except OSError as e:
                raise SeqkdError(f"{p}: holds files seqkd did not write; remove them or choose another "
                                 f"output directory ({e.strerror})") from None
        else:
            p.unlink()


def check_corpus_dir(out: str | os.PathLike) -> None:
    """Before the teacher is loaded: refuse an output directory that holds a model (corpus files would mix into it)
    or that cannot be written."""
    from seqkd.io import check_writable, is_model_dir

    if is_model_dir(out):
        raise SeqkdError(f"{out} holds a model (config.json + weights): a corpus needs a directory of its own")
    check_writable(out, directory=True)


def _prepare_out_dir(out: Path, manifest: dict, overwrite: bool) -> None:
    mpath = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise SeqkdError(f"{out} is a file; the corpus output must be a directory")
    out.mkdir(parents=True, exist_ok=True)
    if mpath.is_file():
        try:
            old = read_manifest(out)
        except DataError:
            if not overwrite:
                raise
            old = None
        diffs = manifest_differences(old, manifest) if old is not None else ["unreadable manifest"]
        if not diffs:
            return  # same corpus: resume (the old manifest stays; it may already hold the merge counts)
        if not overwrite:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
            raise SeqkdError(f"{out} holds a corpus made with different settings ({shown}); rerun with the same "
                             "settings to resume, choose another output directory, or overwrite it (--overwrite)")
        _remove_corpus(out)
    elif _our_files(out):
        if not overwrite:
            raise SeqkdError(f"{out} holds corpus files but no {MANIFEST}; choose another output directory "
                             "or overwrite it (--overwrite)")
        _remove_corpus(out)
    _write_json(mpath, manifest)


# --- generation ------------------------------------------------------------------------------------------------------
def _sorted_examples(examples: Sequence[Example]) -> list[Example]:
    exs = sorted(examples, key=lambda e: e.id)
    for a, b in zip(exs, exs[1:]):
        if a.id == b.id:
            raise SeqkdError(f"example id {a.id} occurs twice in the input")
    return exs


def generate_corpus(
    engine: Engine,
    examples: Sequence[Example],
    out_dir: str | os.PathLike,
    settings: DecodeSettings,
    *,
    shard: tuple[int, int] | str = (0, 1),
    chunk_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    manifest_extra: dict | None = None,
    input_path: str | os.PathLike | None = None,
    merge: bool = True,
) -> dict:
    """Decode this shard's chunks of ``examples`` with ``engine`` into ``out_dir`` (resuming what exists).

    ``input_path``: the file the examples came from (its path and sha256 go into the manifest). ``merge``: when
    this run leaves every chunk of every shard present, also write ``corpus.jsonl`` (:func:`merge_corpus`).
    Returns a summary: sentences, hypotheses and tokens decoded by this run, seconds, rates, chunks done / skipped,
    and ``corpus`` (the merged file, or None).
    """
    i, n = parse_shard(shard)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise SeqkdError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(settings, DecodeSettings):
        raise TypeError(f"settings must be DecodeSettings, not {type(settings).__name__}")
    exs = _sorted_examples(examples)
    if not exs:
        where = f" ({input_path})" if input_path is not None else ""
        raise SeqkdError(f"nothing to decode: the input{where} has no examples")
    out = Path(out_dir)
    manifest = build_manifest(engine, exs, settings, shards=n, chunk_size=chunk_size, input_path=input_path,
                              extra=manifest_extra)
    _prepare_out_dir(out, manifest, overwrite)

    sdir = out / shard_dir_name(i, n)
    sdir.mkdir(exist_ok=True)
    for stale in sdir.glob(".chunk-*.tmp"):  # a temporary file of a killed run: never data
        stale.unlink(missing_ok=True)
    n_chunks = manifest["chunks"]
    mine = list(range(i, n_chunks, n))
    todo = [c for c in mine if not (sdir / chunk_file_name(c)).is_file()]

    def size(c: int) -> int:
        return min(chunk_size, len(exs) - c * chunk_size)

    total = sum(size(c) for c in mine)
    skipped = total - sum(size(c) for c in todo)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=skipped, unit="sent", desc=f"generate {i}/{n}", disable=not progress,
               dynamic_ncols=True)
    sentences = hypotheses = tokens = 0
    t0 = time.perf_counter()
    try:
        for c in todo:
            chunk = exs[c * chunk_size : c * chunk_size + size(c)]
            s = dataclasses.replace(settings, seed=chunk_seed(settings.seed, c)) if settings.mode == "sample" \
                else settings
            cands = engine.generate(engine.encode([ex.source for ex in chunk]), s)
            if len(cands) != len(chunk):
                raise RuntimeError(f"engine {engine.name} returned {len(cands)} results for {len(chunk)} prompts")
            lines = []
            for ex, hs in zip(chunk, cands):
                if settings.mode == "sample":
                    hs = sorted(hs, key=lambda h: -h.logprob)
                lines.append(_dumps({"id": ex.id, "source": ex.source, "reference": ex.target,
                                     "hypotheses": [h.as_dict() for h in hs]}))
                hypotheses += len(hs)
                tokens += sum(len(h.token_ids) for h in hs)
            atomic_write_lines(sdir / chunk_file_name(c), lines)
            sentences += len(chunk)
            bar.update(len(chunk))
            dt = time.perf_counter() - t0
            bar.set_postfix_str(f"{tokens / dt:.0f} tok/s", refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = {
        "out_dir": str(out),
        "shard": f"{i}/{n}",
        "sentences": sentences,
        "hypotheses": hypotheses,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "sentences_per_s": sentences / seconds if seconds > 0 else None,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "chunks_done": len(todo),
        "chunks_skipped": len(mine) - len(todo),
        "shard_sentences": total,
        "corpus": None,
    }
    if merge and not missing_chunks(out, manifest):
        merged = out / CORPUS_FILE
        if todo or not merged.is_file() or "merged" not in read_manifest(out):
            merged = merge_corpus(out)
        summary["corpus"] = str(merged)
    return summary


def format_summary(summary: dict) -> str:
    """One line for people: what this run decoded and how fast."""
    rate = summary["sentences_per_s"] or 0.0
    tok = summary["tokens_per_s"] or 0.0
    s = (f"shard {summary['shard']}: {summary['sentences']} sentences, {summary['hypotheses']} hypotheses, "
         f"{summary['tokens']} tokens in {summary['seconds']:.1f}s ({rate:.1f} sentences/s, {tok:.0f} tokens/s)")
    if summary["chunks_skipped"]:
        s += f"; {summary['chunks_skipped']} chunk(s) already done"
    if summary["corpus"]:
        s += f"; corpus: {summary['corpus']}"
    return s


# --- merging and reading ---------------------------------------------------------------------------------------------
def missing_chunks(out_dir: str | os.PathLike, manifest: dict | None = None) -> list[Path]:
    """The chunk files not (yet) written, for every shard."""
    out = Path(out_dir)
    m = manifest or read_manifest(out)
    n = m["shards"]
    return [p for c in range(m["chunks"])
            if not (p := out / shard_dir_name(c % n, n) / chunk_file_name(c)).is_file()]


def merge_corpus(out_dir: str | os.PathLike) -> Path:
    """Check that every shard is complete and consistent with the manifest (each example exactly once, in order,
    with the manifest's sources and references), write ``corpus.jsonl`` (sorted by id) atomically and add the
    counts to the manifest. Returns the corpus path."""
    out = Path(out_dir)
    m = read_manifest(out)
    n, cs, n_chunks, n_ex = m["shards"], m["chunk_size"], m["chunks"], m["input"]["examples"]
    missing = missing_chunks(out, m)
    if missing:
        by_shard: dict[str, list[str]] = {}
        for p in missing:
            by_shard.setdefault(p.parent.name, []).append(p.name)
        parts = [f"{d}: {len(v)} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})" for d, v in by_shard.items()]
        raise SeqkdError(f"{out}: corpus incomplete, {len(missing)} of {n_chunks} chunks missing: {'; '.join(parts)}; "
                         "run (or resume) those shards with the same command")
    stats = {"hypotheses": 0, "tokens": 0}
    digest = hashlib.sha256()
    last_id: list[int | None] = [None]

    def lines() -> Iterator[str]:
        for c in range(n_chunks):
            path = out / shard_dir_name(c % n, n) / chunk_file_name(c)
            count = 0
            for lineno, line, rec in _iter_file(path):
                if last_id[0] is not None and rec["id"] <= last_id[0]:
                    raise DataError(f"{path}:{lineno}: id {rec['id']} out of order or duplicated "
                                    f"(after id {last_id[0]})")
                last_id[0] = rec["id"]
                digest.update(_dumps([rec["id"], rec["source"], rec["reference"]]).encode())
                digest.update(b"\n")
                stats["hypotheses"] += len(rec["hypotheses"])
                stats["tokens"] += sum(len(h["token_ids"]) for h in rec["hypotheses"])
                count += 1
                yield line
            want = min(cs, n_ex - c * cs)
            if count != want:
                raise DataError(f"{path}: {count} records, expected {want} (examples {c * cs}.."
                                f"{c * cs + want - 1} of the input)")
        # Raised inside the generator, before the temporary file replaces anything.
        if digest.hexdigest() != m["input"]["content_sha256"]:
            raise DataError(f"{out}: the chunk files do not hold the examples the manifest describes (ids, sources "
                            "or references differ); regenerate with --overwrite")

    target = out / CORPUS_FILE
    written = atomic_write_lines(target, lines())
    m["merged"] = {"file": CORPUS_FILE, "examples": written, **stats,
                   "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_json(out / MANIFEST, m)
    return target


def _check_record(obj: Any) -> str | None:
    """What is wrong with a corpus record, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key in ("id", "source", "reference", "hypotheses"):
        if key not in obj:
            return f'missing field "{key}"'
    if not isinstance(obj["id"], int) or isinstance(obj["id"], bool):
        return 'field "id" must be an integer'
    if not isinstance(obj["source"], str):
        return 'field "source" must be a string'
    if obj["reference"] is not None and not isinstance(obj["reference"], str):
        return 'field "reference" must be a string or null'
    hyps = obj["hypotheses"]
    if not isinstance(hyps, list):
        return 'field "hypotheses" must be a list'
    for k, h in enumerate(hyps):
        if not isinstance(h, dict):
            return f"hypothesis {k} is not an object"
        for key, types in (("text", str), ("token_ids", list), ("logprob", (int, float)),
                           ("norm_logprob", (int, float))):
            if key not in h:
                return f'hypothesis {k}: missing field "{key}"'
            if not isinstance(h[key], types) or isinstance(h[key], bool):
                return f'hypothesis {k}: field "{key}" has the wrong type ({type(h[key]).__name__})'
        for key in ("token_logprobs", "topk_ids", "topk_logprobs"):
            if key in h and (not isinstance(h[key], list) or len(h[key]) != len(h["token_ids"])):
                return f'hypothesis {k}: field "{key}" must be a list with one entry per token'
    return None


def _iter_file(path: Path) -> Iterator[tuple[int, str, dict]]:
    try:
        f = open(path, encoding="utf-8", newline="\n")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        lineno = 0
        while True:
            try:
                raw = f.readline()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno + 1}: invalid UTF-8 ({e.reason})") from None
            if not raw:
                return
            lineno += 1
            line = raw.rstrip("\n")
            if not raw.endswith("\n"):
                raise DataError(f"{path}:{lineno}: truncated line (no newline at the end of the file)")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            problem = _check_record(obj)
            if problem:
                raise DataError(f"{path}:{lineno}: {problem}")
            yield lineno, line, obj


def read_corpus(path_or_dir: str | os.PathLike) -> Iterator[dict]:
    """The records of a merged corpus (``corpus.jsonl``, or a corpus directory holding one), in file order.
    A missing or unmerged corpus fails here; a bad line fails when it is reached, as a one-line
    :class:`DataError` naming ``file:line``."""
    p = Path(path_or_dir)
    if p.is_dir():
        if not (p / CORPUS_FILE).is_file():
            if (p / MANIFEST).is_file():
                left = len(missing_chunks(p))
                why = f"{left} chunk(s) still missing" if left else "merge it with merge_corpus"
                raise SeqkdError(f"{p}: the corpus is not merged yet ({why})")
            raise DataError(f"{p}: no {CORPUS_FILE} and no {MANIFEST}: not a seqkd corpus")
        p = p / CORPUS_FILE
    elif not p.exists():
        raise DataError(f"{p}: file not found")
    return (rec for _, _, rec in _iter_file(p))


def corpus_statistics(path_or_dir: str | os.PathLike, *, bins: int = 20) -> dict[str, Any]:
    """What a corpus looks like, for reports: sentences, hypotheses, the hypotheses' token lengths (mean and a
    histogram), n-best diversity (distinct hypotheses per source, as a fraction of the hypotheses) and the teacher's
    log-probability (per token and per hypothesis, mean over the best hypotheses and over all)."""
    lengths: list[int] = []
    best_tok_lp: list[float] = []
    all_tok_lp: list[float] = []
    best_seq_lp: list[float] = []
    distinct = sentences = hyps = 0
    for rec in read_corpus(path_or_dir):
        sentences += 1
        seen = set()
        for rank, h in enumerate(rec["hypotheses"]):
            hyps += 1
            n = max(len(h["token_ids"]), 1)
            lengths.append(len(h["token_ids"]))
            all_tok_lp.append(h["logprob"] / n)
            if rank == 0:
                best_tok_lp.append(h["logprob"] / n)
                best_seq_lp.append(h["logprob"])
            seen.add(tuple(h["token_ids"]))
        distinct += len(seen)
    if not sentences:
        raise SeqkdError(f"{path_or_dir}: the corpus has no records")
    top = max(lengths) + 1
    width = max(1, math.ceil(top / bins))
    hist = [0] * math.ceil(top / width)
    for n in lengths:
        hist[n // width] += 1
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"sentences": sentences, "hypotheses": hyps, "hypotheses_per_source": hyps / sentences,
            "distinct_fraction": distinct / hyps, "mean_length": mean(lengths), "tokens": sum(lengths),
            "length_histogram": {"bin_width": width, "counts": hist},
            "best_logprob_per_token": mean(best_tok_lp), "all_logprob_per_token": mean(all_tok_lp),
            "best_logprob": mean(best_seq_lp)}
