"""Readers and writers for parallel and monolingual text files, with strict validation.

Every problem with the user's files is a one-line :class:`DataError` naming the file and,
where it applies, the 1-based line number (``path:line``). Example ids are 0-based line
indices in the input, so skipped lines leave gaps and ids always point back to the file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from seqkd.errors import DataError, SeqkdError
from seqkd.io import atomic_write_bytes

PathLike = str | os.PathLike


@dataclass
class Example:
    """One sentence pair; ``id`` is the 0-based line index in the input file(s)."""

    id: int
    source: str
    target: str | None


@dataclass
class ReadStats:
    """What a reader saw: ``lines`` read, ``kept``, ``skipped_empty`` and ``truncated`` (among kept)."""

    path: str
    lines: int
    kept: int
    skipped_empty: int
    truncated: int

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.lines} lines, {self.kept} kept, "
            f"{self.skipped_empty} skipped (empty), {self.truncated} truncated"
        )


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _base_suffix(path: Path) -> str:
    """The format suffix, looking through a trailing ``.gz`` (``a.tsv.gz`` -> ``.tsv``)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _read_raw_lines(path: PathLike) -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` ok), without line terminators.

    Splits on ``\\n`` only: ``str.splitlines`` would also split on U+2028, U+0085, form feeds...
    and silently misalign two parallel files.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a text file")
    try:
        if p.name.lower().endswith(".gz"):
            with gzip.open(p, "rb") as f:
                data = f.read()
        else:
            data = p.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{p}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{p}:{line}: invalid UTF-8 (byte 0x{data[e.start]:02x})") from None
    if text.startswith("\ufeff"):  # a BOM is an encoding marker, not text
        text = text[1:]
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":  # the final newline ends the last line; it does not start a new one
        lines.pop()
    return lines


def _check_max_chars(max_chars: int | None) -> None:
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise DataError(f"max_chars must be a positive integer or None, got {max_chars!r}")


class _Cleaner:
    """Strips, checks emptiness and length of one field; counts or raises (strict)."""

    def __init__(self, strict: bool, max_chars: int | None) -> None:
        self.strict = strict
        self.max_chars = max_chars

    def empty(self, text: str, path: Path, lineno: int, what: str = "line") -> bool:
        if text.strip():
            return False
        if self.strict:
            raise DataError(f"{path}:{lineno}: empty {what} (strict mode)")
        return True

    def clip(self, text: str, path: Path, lineno: int) -> tuple[str, bool]:
        text = text.strip()
        if self.max_chars is None or len(text) <= self.max_chars:
            return text, False
        if self.strict:
            raise DataError(
                f"{path}:{lineno}: line has {len(text)} characters, more than max_chars={self.max_chars}"
            )
        return text[: self.max_chars].rstrip(), True


def _read_two_files(src: Path, tgt: Path, c: _Cleaner) -> tuple[list[Example], ReadStats]:
    src_lines = _read_raw_lines(src)
    tgt_lines = _read_raw_lines(tgt)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"line counts differ: {src} has {len(src_lines)} lines, {tgt} has {len(tgt_lines)} lines"
        )
    examples: list[Example] = []
    skipped = truncated = 0
    for i, (s, t) in enumerate(zip(src_lines, tgt_lines)):
        # Check both sides before skipping so that strict mode reports the first bad field.
        s_empty = c.empty(s, src, i + 1)
        t_empty = c.empty(t, tgt, i + 1)
        if s_empty or t_empty:
            skipped += 1
            continue
        s, s_cut = c.clip(s, src, i + 1)
        t, t_cut = c.clip(t, tgt, i + 1)
        truncated += s_cut or t_cut
        examples.append(Example(i, s, t))
    stats = ReadStats(f"{src} | {tgt}", len(src_lines), len(examples), skipped, truncated)
    return examples, stats


def _read_tsv(path: Path, c: _Cleaner) -> tuple[list[Example], ReadStats]:
    lines = _read_raw_lines(path)
    examples: list[Example] = []
    skipped = truncated = 0
    for i, line in enumerate(lines):
        if not line.strip():
            c.empty(line, path, i + 1)
            skipped += 1
            continue
        tabs = line.count("\t")
        if tabs != 1:
            raise DataError(f"{path}:{i + 1}: expected exactly one tab (source<TAB>target), found {tabs}")
        s, t = line.split("\t")
        s_empty = c.empty(s, path, i + 1, "source")
        t_empty = c.empty(t, path, i + 1, "target")
        if s_empty or t_empty:
            skipped += 1
            continue
        s, s_cut = c.clip(s, path, i + 1)
        t, t_cut = c.clip(t, path, i + 1)
        truncated += s_cut or t_cut
        examples.append(Example(i, s, t))
    return examples, ReadStats(str(path), len(lines), len(examples), skipped, truncated)


def _read_jsonl(path: Path, c: _Cleaner) -> tuple[list[Example], ReadStats]:
    lines = _read_raw_lines(path)
    examples: list[Example] = []
    skipped = truncated = 0
    for i, line in enumerate(lines):
        if not line.strip():
            c.empty(line, path, i + 1)
            skipped += 1
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i + 1}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        fields = []
        for key in ("source", "target"):
            if key not in obj:
                raise DataError(f'{path}:{i + 1}: missing field "{key}"')
            if not isinstance(obj[key], str):
                raise DataError(
                    f'{path}:{i + 1}: field "{key}" must be a string, got {type(obj[key]).__name__}'
                )
            fields.append(obj[key])
        s, t = fields
        s_empty = c.empty(s, path, i + 1, "source")
        t_empty = c.empty(t, path, i + 1, "target")
        if s_empty or t_empty:
            skipped += 1
            continue
        s, s_cut = c.clip(s, path, i + 1)
        t, t_cut = c.clip(t, path, i + 1)
        truncated += s_cut or t_cut
        examples.append(Example(i, s, t))
    return examples, ReadStats(str(path), len(lines), len(examples), skipped, truncated)


def read_parallel(
    source: PathLike,
    target: PathLike | None = None,
    *,
    strict: bool = False,
    max_chars: int | None = 1000,
) -> tuple[list[Example], ReadStats]:
    """Read sentence pairs from two aligned files, or one ``.tsv`` / ``.jsonl`` file (``.gz`` ok).

    Text is stripped of surrounding whitespace. Pairs with an empty side are skipped and
    counted; longer than ``max_chars`` characters (None: no limit) is truncated and counted.
    ``strict=True`` turns both into a :class:`DataError` naming ``file:line``.
    """
    _check_max_chars(max_chars)
    c = _Cleaner(strict, max_chars)
    src = Path(source)
    if target is not None:
        return _read_two_files(src, Path(target), c)
    kind = _base_suffix(src)
    if kind == ".tsv":
        return _read_tsv(src, c)
    if kind == ".jsonl":
        return _read_jsonl(src, c)
    raise DataError(
        f"{src}: a single input file must be .tsv (source<TAB>target) or .jsonl "
        f'({{"source": ..., "target": ...}}); for plain text give a target file too'
    )


def read_lines(
    path: PathLike, *, strict: bool = False, max_chars: int | None = 1000, keep_empty: bool = False
) -> tuple[list[str], ReadStats]:
    """Read monolingual lines (e.g. prompts), one per line (``.gz`` ok), with the same checks as
    :func:`read_parallel`: empty lines skipped and counted, long lines truncated and counted.

    ``keep_empty``: keep empty lines as ``""`` (hypothesis / reference files, where line i must stay line i).
    """
    _check_max_chars(max_chars)
    c = _Cleaner(strict, max_chars)
    p = Path(path)
    raw = _read_raw_lines(p)
    out: list[str] = []
    skipped = truncated = 0
    for i, line in enumerate(raw):
        if keep_empty and not line.strip():
            out.append("")
            continue
        if c.empty(line, p, i + 1):
            skipped += 1
            continue
        text, cut = c.clip(line, p, i + 1)
        truncated += cut
        out.append(text)
    return out, ReadStats(str(p), len(raw), len(out), skipped, truncated)


def write_lines(path: PathLike, lines: Iterable[str]) -> None:
    """Write one string per line, atomically (temp file in the same folder, then ``os.replace``).

    Creates the parent folder. A ``.gz`` name writes gzip. A line containing a newline would
    shift every later line of a parallel file, so it is a :class:`DataError`.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{p}: cannot create folder {p.parent} ({e.strerror or e})") from None
    parts = []
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"write_lines({p}): line {i + 1} is {type(line).__name__}, not str")
        if "\n" in line or "\r" in line:
            raise DataError(f"{p}:{i + 1}: line to write contains a line break")
        parts.append(line)
    data = "".join(s + "\n" for s in parts).encode("utf-8")
    if p.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: identical input gives identical bytes
    try:
        atomic_write_bytes(p, data)
    except SeqkdError as e:
        raise DataError(str(e)) from None
