"""Registered datasets as files (what ``seqkd run``'s ``dataset`` job writes for the stages after it)."""

from __future__ import annotations

from pathlib import Path

from seqkd.data.registry import PARALLEL, TEXT, load_parallel, load_text
from seqkd.errors import DataError
from seqkd.io import atomic_write_lines


def write_dataset(cfg) -> dict:
    """A :class:`~seqkd.config.DatasetConfig`'s files in ``cfg.out``; returns the number of lines of each file."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.name in PARALLEL:
        sizes = {}
        for split in cfg.splits:
            src, tgt = load_parallel(cfg.name, split)
            src, tgt = src[: cfg.limit], tgt[: cfg.limit]
            atomic_write_lines(out / f"{split}.src", src)
            atomic_write_lines(out / f"{split}.tgt", tgt)
            sizes[split] = len(src)
        return {"sizes": sizes}
    if cfg.name in TEXT:
        split = text_prompts(load_text(cfg.name), cfg.train_prompts, cfg.val_prompts, cfg.test_prompts)
        for k, lines in split.items():
            atomic_write_lines(out / f"{k}.txt", [cfg.template.replace("{}", x) for x in lines])
        return {"sizes": {k: len(v) for k, v in split.items()}}
    raise DataError(f"unknown dataset {cfg.name!r}; known: {', '.join([*PARALLEL, *TEXT])}")


def text_prompts(text: str, train: int, val: int, test: int) -> dict[str, list[str]]:
    """Prompt lines of a text: train = every k-th line of the first 90% (k spreads ``train`` over it), val / test =
    every 10th line of the first / second half of the last 10%; lines of 20 characters or less are left out."""
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 20]
    cut = int(len(lines) * 0.9)
    held, half = lines[cut:], (len(lines) - cut) // 2
    step = max(1, cut // train)
    split = {"train": lines[:cut:step][:train], "val": held[:half:10][:val], "test": held[half::10][:test]}
    for k, want in (("train", train), ("val", val), ("test", test)):
        if len(split[k]) < want:
            raise DataError(f"only {len(split[k])} {k} prompts in the text; ask for fewer")
    return split
