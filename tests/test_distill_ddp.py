"""`seqkd distill` under DDP (2 CPU processes, gloo) matches one process on the combined batch.

accelerate shards the token-budget batches across processes (process r gets batches r, r+2, ...), so one optimizer
step of 2 processes x 1 micro-batch sees the same two batches as one process x 2 accumulated micro-batches
(``--grad-accum 2``). The trainer divides each step's loss by the step's *global* target-token count (and multiplies
by the process count, which DDP's gradient averaging undoes), so both runs take the same steps: the same logged loss
and gradient norm, and the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqkd.data.synthetic import synthetic_pairs
from seqkd.student.trainer import latest_checkpoint

# Measured (torch 2.13 CPU, gloo): the two runs' weights are bit-identical (max |diff| 0.0) and so are the logged
# losses and gradient norms -- the only difference in the reduction is (g0 + g1) * 2 / 2 in DDP against g0 + g1
# accumulated in one process, which is exact in float32. The tolerances leave room for another reduction order.
WEIGHT_TOL = dict(atol=1e-6, rtol=1e-5)
LOSS_REL = 1e-5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        ACCELERATE_USE_CPU="true",  # TrainingArguments -> accelerate: MULTI_CPU with the gloo backend
        CUDA_VISIBLE_DEVICES="",  # also on a GPU machine: 2 processes must not share (or need) one GPU
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _run(cmd: list[str], log: Path) -> None:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr[-4000:]}"


def _log_history(out: Path) -> dict[int, tuple[float, float]]:
    ckpt = latest_checkpoint(out)
    assert ckpt is not None, f"no checkpoint in {out}"
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: (h["loss"], h["grad_norm"]) for h in history if "loss" in h}


@pytest.mark.slow
def test_ddp_matches_one_process_with_grad_accum(tmp_path, tiny_mt_model):
    src, tgt = synthetic_pairs(64, seed=3)
    train_file = tmp_path / "train.tsv"
    train_file.write_text("".join(f"{s}\t{t}\n" for s, t in zip(src, tgt)), encoding="utf-8")

    common = [
        "distill", "--teacher", tiny_mt_model, "--model", "marian-tiny", "--train-source", train_file,
        "--dropout", 0, "--kd-mode", "online", "--kd-weight", 0.5, "--label-smoothing", 0.1,
        # 64 pairs at a 200-token budget: ~10 batches, of which 2 steps use 4
        "--max-tokens", 200, "--max-steps", 2, "--lr", 1e-2, "--warmup-steps", 0, "--seed", 5,
        "--logging-steps", 1, "--eval-steps", 0, "--bleu-samples", 0, "--no-progress",
    ]  # no --valid-source: no evaluation, one checkpoint at the last step
    common = [str(a) for a in common]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "seqkd", *common, "--out", str(ddp), "--grad-accum", "1"], tmp_path / "ddp.log")
    _run([sys.executable, "-m", "seqkd", *common, "--out", str(single), "--grad-accum", "2"], tmp_path / "single.log")

    # the logged loss (the mean over processes of what each backpropagated) and gradient norm of every step
    hist_ddp, hist_single = _log_history(ddp), _log_history(single)
    assert sorted(hist_ddp) == sorted(hist_single) == [1, 2]
    for step in (1, 2):
        (loss_d, norm_d), (loss_s, norm_s) = hist_ddp[step], hist_single[step]
        assert loss_d == pytest.approx(loss_s, rel=LOSS_REL), (step, loss_d, loss_s)
        assert norm_d == pytest.approx(norm_s, rel=LOSS_REL), (step, norm_d, norm_s)

    w_ddp = load_file(ddp / "last" / "model.safetensors")
    w_single = load_file(single / "last" / "model.safetensors")
    assert w_ddp.keys() == w_single.keys()
    worst = max((w_ddp[k] - w_single[k]).abs().max().item() for k in w_ddp)
    for k in w_ddp:
        torch.testing.assert_close(w_ddp[k], w_single[k], **WEIGHT_TOL, msg=lambda m, k=k: f"{k} (max {worst}): {m}")

    # ... and the runs did train: the weights moved away from the student's initialisation (same seed, same preset)
    from seqkd.config import DistillConfig
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.student.setup import model_for

    src_tok, tgt_tok = load_tokenizers(tiny_mt_model)
    cfg = DistillConfig(out=str(tmp_path / "unused"), teacher=str(tiny_mt_model), model="marian-tiny",
                        train_source=str(train_file), dropout=0.0, seed=5)
    init = model_for(cfg, src_tok, tgt_tok).state_dict()
    moved = max((w_ddp[k] - init[k]).abs().max().item() for k in w_ddp if k in init)
    assert moved > 1e-3, moved
