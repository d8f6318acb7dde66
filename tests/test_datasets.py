"""The dataset registry: lookup order, verified downloads (on local file:// URLs), real Multi30k."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from seqkd.data import registry as datasets
from seqkd.data.registry import (
    RemoteFile,
    cache_dir,
    list_datasets,
    load_parallel,
    load_text,
    parallel_files,
    resolve_file,
)
from seqkd.errors import DataError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated registry: empty data dir and cache in tmp_path, no real downloads."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    monkeypatch.setenv("SEQKD_DATA_DIR", str(data))
    monkeypatch.setenv("SEQKD_CACHE_DIR", str(cache))
    monkeypatch.delenv("SEQKD_OFFLINE", raising=False)
    # Every registered URL points at a file that does not exist: a test never reaches the network.
    files = {
        ds: {name: RemoteFile((tmp_path / "missing" / name).as_uri(), r.sha256) for name, r in table.items()}
        for ds, table in datasets.FILES.items()
    }
    monkeypatch.setattr(datasets, "FILES", files)
    return data, cache


def serve(tmp_path: Path, name: str, content: bytes, *, gz: bool) -> str:
    """A file:// URL serving ``content`` (gzipped when ``gz``)."""
    d = tmp_path / "remote"
    d.mkdir(exist_ok=True)
    path = d / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(content) if gz else content)
    return path.as_uri()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- names -------------------------------------------------------------------------------


def test_names():
    assert list_datasets() == ["multi30k:de-en", "multi30k:en-de", "tinyshakespeare"]


def test_unknown_dataset_lists_valid_ones(env):
    known = r"known: multi30k:de-en, multi30k:en-de$"
    with pytest.raises(DataError, match=r"unknown parallel dataset 'wmt14'; " + known):
        load_parallel("wmt14", "val")
    with pytest.raises(DataError, match=known):
        load_parallel("multi30k", "val")  # the pair is required


def test_unknown_split_lists_valid_ones(env):
    expect = r"unknown split 'dev' of multi30k:de-en; known: train, val, test_2016_flickr$"
    with pytest.raises(DataError, match=expect):
        parallel_files("multi30k:de-en", "dev")


def test_unknown_text_and_file(env):
    with pytest.raises(DataError, match=r"unknown text dataset 'multi30k'; known: tinyshakespeare$"):
        load_text("multi30k")
    with pytest.raises(DataError, match=r"unknown file 'test_2017_flickr.de' in dataset 'multi30k'"):
        resolve_file("multi30k", "test_2017_flickr.de")
    with pytest.raises(DataError, match=r"unknown dataset 'nope'; known: multi30k, tinyshakespeare$"):
        resolve_file("nope", "x")


def test_url_table_matches_the_public_locations():
    m = datasets.FILES["multi30k"]
    assert sorted(m) == sorted(f"{s}.{l}" for s in ("train", "val", "test_2016_flickr") for l in ("de", "en"))
    assert m["val.de"].url == "https://github.com/multi30k/dataset/raw/master/data/task1/raw/val.de.gz"
    assert m["val.de"].sha256 == "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"
    t = datasets.FILES["tinyshakespeare"]["input.txt"]
    assert t.url.endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")


# --- lookup order ------------------------------------------------------------------------


def test_data_dir_wins_over_cache(env):
    data, cache = env
    write(cache / "multi30k" / "val.de", "cache\n")
    assert resolve_file("multi30k", "val.de") == cache / "multi30k" / "val.de"
    write(data / "multi30k" / "val.de", "data dir\n")
    assert resolve_file("multi30k", "val.de") == data / "multi30k" / "val.de"


def test_load_parallel_from_data_dir_both_directions(env):
    data, _ = env
    write(data / "multi30k" / "val.de", "Ein Hund .\nZwei Katzen \n")
    write(data / "multi30k" / "val.en", "A dog .\nTwo cats\n")
    assert load_parallel("multi30k:de-en", "val") == (["Ein Hund .", "Zwei Katzen"], ["A dog .", "Two cats"])
    assert load_parallel("multi30k:en-de", "val") == (["A dog .", "Two cats"], ["Ein Hund .", "Zwei Katzen"])
    assert parallel_files("multi30k:en-de", "val") == (data / "multi30k" / "val.en", data / "multi30k" / "val.de")


def test_registry_data_is_read_strictly(env):
    data, _ = env
    write(data / "multi30k" / "val.de", "a\n\nc\n")
    write(data / "multi30k" / "val.en", "A\nB\nC\n")
    with pytest.raises(DataError, match=r"val\.de:2: empty line"):
        load_parallel("multi30k:de-en", "val")


def test_cache_dir_choice(monkeypatch):
    monkeypatch.setenv("SEQKD_CACHE_DIR", "/some/where")
    assert cache_dir() == Path("/some/where")
    monkeypatch.delenv("SEQKD_CACHE_DIR")
    repo = Path(datasets.__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():  # running from a checkout
        assert cache_dir() == repo / "data" / "cache"
    else:
        assert cache_dir() == Path.home() / ".cache" / "seqkd"


# --- downloads ---------------------------------------------------------------------------


def test_download_gz_is_decompressed_verified_and_cached(env, tmp_path, monkeypatch):
    _, cache = env
    content = "Ein Hund.\nZwei Katzen.\n".encode()
    url = serve(tmp_path, "val.de", content, gz=True)
    monkeypatch.setitem(datasets.FILES["multi30k"], "val.de", RemoteFile(url, sha(content)))
    path = resolve_file("multi30k", "val.de")
    assert path == cache / "multi30k" / "val.de"
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == ["val.de"]  # no partial file left
    os.unlink(url.removeprefix("file://"))  # now "offline": the cache must serve it
    assert resolve_file("multi30k", "val.de") == path


def test_download_plain_file(env, tmp_path, monkeypatch):
    content = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    url = serve(tmp_path, "input.txt", content, gz=False)
    monkeypatch.setitem(datasets.FILES["tinyshakespeare"], "input.txt", RemoteFile(url, sha(content)))
    assert load_text("tinyshakespeare") == content.decode()


def test_download_sha_mismatch(env, tmp_path, monkeypatch):
    _, cache = env
    url = serve(tmp_path, "val.en", b"tampered\n", gz=True)
    monkeypatch.setitem(datasets.FILES["multi30k"], "val.en", RemoteFile(url, "0" * 64))
    with pytest.raises(DataError) as e:
        resolve_file("multi30k", "val.en")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"sha256 mismatch for {url}: expected {'0' * 64}, got {sha(b'tampered' + bytes([10]))}" in msg
    assert os.listdir(cache / "multi30k") == []  # nothing saved, no partial file


def test_download_corrupt_gzip(env, tmp_path, monkeypatch):
    d = tmp_path / "remote"
    d.mkdir()
    (d / "val.en.gz").write_bytes(b"not gzip at all")
    monkeypatch.setitem(datasets.FILES["multi30k"], "val.en", RemoteFile((d / "val.en.gz").as_uri(), "0" * 64))
    with pytest.raises(DataError, match=r"download from .*val\.en\.gz failed"):
        resolve_file("multi30k", "val.en")


def test_offline_error_says_what_was_tried_and_what_to_do(env):
    data, cache = env
    with pytest.raises(DataError) as e:
        load_parallel("multi30k:de-en", "test_2016_flickr")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("multi30k/test_2016_flickr.de not found")
    for part in (
        str(data / "multi30k" / "test_2016_flickr.de"),
        str(cache / "multi30k" / "test_2016_flickr.de"),
        "download from file://",
        "failed",
        f"put test_2016_flickr.de in {cache / 'multi30k'}",
        "SEQKD_DATA_DIR=DIR",
    ):
        assert part in msg, (part, msg)


def test_offline_without_data_dir(env, monkeypatch):
    monkeypatch.delenv("SEQKD_DATA_DIR")
    with pytest.raises(DataError, match=r"\(SEQKD_DATA_DIR is not set\)$"):
        resolve_file("tinyshakespeare", "input.txt")


def test_seqkd_offline_skips_the_download(env, tmp_path, monkeypatch):
    content = b"x\n"
    url = serve(tmp_path, "input.txt", content, gz=False)
    monkeypatch.setitem(datasets.FILES["tinyshakespeare"], "input.txt", RemoteFile(url, sha(content)))
    monkeypatch.setenv("SEQKD_OFFLINE", "1")
    with pytest.raises(DataError, match=r"SEQKD_OFFLINE is set, so no download from file://"):
        resolve_file("tinyshakespeare", "input.txt")


# --- the real data (SEQKD_DATA_DIR; skipped when absent, failed in CI) -------------------


def test_multi30k_val_and_test(multi30k_data_dir):
    de, en = load_parallel("multi30k:de-en", "val")
    assert len(de) == len(en) == 1014
    assert de[0] == "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"
    assert en[1] == "A man sleeping in a green room on a couch."
    src, tgt = load_parallel("multi30k:en-de", "test_2016_flickr")
    assert len(src) == len(tgt) == 1000
    assert src[0] == "A man in an orange hat starring at something."
    assert parallel_files("multi30k:de-en", "val") == (
        multi30k_data_dir / "multi30k" / "val.de",
        multi30k_data_dir / "multi30k" / "val.en",
    )


def test_multi30k_train(multi30k_data_dir):
    de, en = load_parallel("multi30k:de-en", "train")
    assert len(de) == len(en) == 29000
    assert en[0] == "Two young, White males are outside near many bushes."
    assert all(s == s.strip() and s for s in de)  # 40 German lines end in a space in the file


def test_multi30k_files_match_the_registry_hashes(multi30k_data_dir):
    for name, remote in datasets.FILES["multi30k"].items():
        assert sha((multi30k_data_dir / "multi30k" / name).read_bytes()) == remote.sha256, name


def test_tinyshakespeare(tinyshakespeare_data_dir):
    text = load_text("tinyshakespeare")
    assert len(text) == 1_115_394 and text.count("\n") == 40_000
    assert text.startswith("First Citizen:\n")
