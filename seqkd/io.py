"""The one place for writing files: atomic writes (a reader sees the old file or the whole new one, never a part)
and the checks that an output location is usable, made before anything slow starts."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from seqkd.errors import SeqkdError

PathLike = str | os.PathLike


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, flushed and fsynced, ``os.replace``, then
    an fsync of the folder. Creates the parent folder. An OS error becomes one :class:`SeqkdError` line."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:
        raise SeqkdError(f"{p}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise SeqkdError(f"{p}: cannot write ({e.strerror or e})") from None
        raise
    _fsync_dir(p.parent)
    return p


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_lines(path: PathLike, lines: Iterable[str]) -> int:
    """Write ``lines`` (each without a newline) atomically, one per line; returns how many."""
    parts = list(lines)
    atomic_write_bytes(path, "".join(s + "\n" for s in parts).encode("utf-8"))
    return len(parts)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


@contextmanager
def staged_dir(out: PathLike) -> Iterator[Path]:
    """A directory that appears at ``out`` complete or not at all: the caller writes into the yielded (empty)
    staging directory, made beside ``out`` on the same filesystem; when the block ends normally it replaces ``out``
    (rename), and on an exception it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = tmp / "staged"
        staged.mkdir()
        yield staged
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
        _fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: PathLike, *, directory: bool = False) -> None:
    """Fail now, in one line, if ``path`` (a file, or with ``directory`` a folder) could not be created or written:
    found before a decode or a training run starts, not after it."""
    p = Path(path)
    if p.exists():
        if directory and not p.is_dir():
            raise SeqkdError(f"{p} is a file, not a directory")
        if not directory and p.is_dir():
            raise SeqkdError(f"{p} is a directory, not a file")
        target = p if directory else p.parent
    else:
        target = _nearest_existing(p.parent if not directory else p)
        if not target.is_dir():
            raise SeqkdError(f"cannot create {p}: {target} is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise SeqkdError(f"cannot write {p}: {target} is not writable")


def is_model_dir(path: PathLike) -> bool:
    """A saved model (HF ``config.json`` + weights) lives here."""
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors")) or (p / "pytorch_model.bin").is_file()


def latest_checkpoint(out: PathLike) -> Path | None:
    """The newest *complete* ``checkpoint-N`` in ``out`` (or None). The HF Trainer writes a checkpoint's files in
    place and ``trainer_state.json`` last, so a run killed while saving leaves a folder without it: resuming from
    that folder fails, the one before it is whole."""
    cps = [p for p in Path(out).glob("checkpoint-*")
           if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(cps, key=lambda p: int(p.name.split("-")[-1])) if cps else None


def fingerprint(path: PathLike) -> Any:
    """Size and modification time of a file, or of every file under a directory: whether an input changed, without
    reading gigabytes of weights (a recipe's stage keys, a resumed timing run)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    return sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns]
                  for f in p.rglob("*") if f.is_file())
