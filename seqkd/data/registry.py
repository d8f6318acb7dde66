"""The dataset registry: named datasets resolved from a local folder, a cache, or a verified download.

Lookup order for ``<dataset>/<filename>``:
  1. ``$SEQKD_DATA_DIR/<dataset>/<filename>``
  2. the cache: ``$SEQKD_CACHE_DIR``, else ``<repo>/data/cache`` for a checkout, else ``~/.cache/seqkd``
  3. download from the public URL into the cache, decompressing ``.gz`` and verifying sha256.
``SEQKD_OFFLINE=1`` skips step 3.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from seqkd.data.files import read_parallel
from seqkd.errors import DataError

_MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/"
_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    """Where to download one dataset file and the sha256 of its (decompressed) content."""

    url: str
    sha256: str


# sha256 of the decompressed files (from shared/data/README.md).
FILES: dict[str, dict[str, RemoteFile]] = {
    "multi30k": {
        name: RemoteFile(_MULTI30K_URL + name + ".gz", sha)
        for name, sha in {
            "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
            "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
            "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
            "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
            "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
            "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
        }.items()
    },
    "tinyshakespeare": {
        "input.txt": RemoteFile(
            _SHAKESPEARE_URL, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
        ),
    },
}

# Parallel datasets: "<dataset>:<src>-<tgt>" -> splits; files are <split>.<lang>.
PARALLEL: dict[str, tuple[str, ...]] = {
    "multi30k:de-en": ("train", "val", "test_2016_flickr"),
    "multi30k:en-de": ("train", "val", "test_2016_flickr"),
}
# Text datasets: name -> file.
TEXT: dict[str, str] = {"tinyshakespeare": "input.txt"}


def cache_dir() -> Path:
    """The download cache: ``$SEQKD_CACHE_DIR``, else ``<repo>/data/cache`` when seqkd runs from a
    checkout (editable install), else ``~/.cache/seqkd``."""
    env = os.environ.get("SEQKD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / "seqkd" / "__init__.py").is_file():
        return repo / "data" / "cache"
    return Path.home() / ".cache" / "seqkd"


def _download(remote: RemoteFile, dest: Path) -> None:
    """Fetch ``remote`` into ``dest`` atomically; ``.gz`` URLs are decompressed; sha256 verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(remote.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                stream = gzip.GzipFile(fileobj=resp) if remote.url.endswith(".gz") else resp
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != remote.sha256:
            raise DataError(
                f"sha256 mismatch for {remote.url}: expected {remote.sha256}, got {digest.hexdigest()}"
                " (the download is corrupt or the file changed upstream); nothing was saved"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_file(dataset: str, filename: str) -> Path:
    """Path to ``<dataset>/<filename>`` on this machine, downloading it into the cache if needed."""
    if dataset not in FILES:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(FILES))}")
    if filename not in FILES[dataset]:
        raise DataError(
            f"unknown file {filename!r} in dataset {dataset!r}; known: {', '.join(sorted(FILES[dataset]))}"
        )
    tried: list[str] = []
    data_dir = os.environ.get("SEQKD_DATA_DIR")
    if data_dir:
        local = Path(data_dir).expanduser() / dataset / filename
        if local.is_file():
            return local
        tried.append(str(local))
    cached = cache_dir() / dataset / filename
    if cached.is_file():
        return cached
    tried.append(str(cached))
    remote = FILES[dataset][filename]
    hint = (
        f"put {filename} in {cached.parent} or in DIR/{dataset}/ and set SEQKD_DATA_DIR=DIR"
        + ("" if data_dir else " (SEQKD_DATA_DIR is not set)")
    )
    if os.environ.get("SEQKD_OFFLINE", "") not in ("", "0"):
        raise DataError(
            f"{dataset}/{filename} not found (tried {', '.join(tried)}; SEQKD_OFFLINE is set, "
            f"so no download from {remote.url}): {hint}"
        )
    try:
        _download(remote, cached)
    except DataError:
        raise
    except (urllib.error.URLError, OSError, EOFError, zlib.error, ValueError) as e:
        reason = str(getattr(e, "reason", None) or e).strip()
        reason = reason.splitlines()[0] if reason else type(e).__name__
        raise DataError(
            f"{dataset}/{filename} not found (tried {', '.join(tried)}) and the download from "
            f"{remote.url} failed ({reason}): {hint}"
        ) from None
    return cached


def _split_name(name: str) -> tuple[str, str, str]:
    if name not in PARALLEL:
        raise DataError(f"unknown parallel dataset {name!r}; known: {', '.join(PARALLEL)}")
    dataset, pair = name.split(":")
    src, tgt = pair.split("-")
    return dataset, src, tgt


def parallel_files(name: str, split: str) -> tuple[Path, Path]:
    """(source file, target file) of a parallel dataset split, e.g. ``("multi30k:de-en", "val")``."""
    dataset, src, tgt = _split_name(name)
    if split not in PARALLEL[name]:
        raise DataError(f"unknown split {split!r} of {name}; known: {', '.join(PARALLEL[name])}")
    return resolve_file(dataset, f"{split}.{src}"), resolve_file(dataset, f"{split}.{tgt}")


def load_parallel(name: str, split: str) -> tuple[list[str], list[str]]:
    """(sources, targets) of a split, every line kept in order (strict: a bad file is an error)."""
    src_path, tgt_path = parallel_files(name, split)
    examples, _ = read_parallel(src_path, tgt_path, strict=True, max_chars=None)
    return [e.source for e in examples], [e.target or "" for e in examples]


def load_text(name: str) -> str:
    """The whole text of a text dataset, e.g. ``"tinyshakespeare"``."""
    if name not in TEXT:
        raise DataError(f"unknown text dataset {name!r}; known: {', '.join(TEXT)}")
    path = resolve_file(name, TEXT[name])
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_parallel` and :func:`load_text`."""
    return [*PARALLEL, *TEXT]
