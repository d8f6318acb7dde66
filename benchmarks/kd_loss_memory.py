"""Benchmark: peak memory and time of a distillation divergence's forward + backward, plain vs chunked vs fused.

The student's logits come from its output projection, ``hidden [N, H] @ W[V, H].T``, and the teacher's logits
``[N, V]`` are given (already computed, as by an online teacher under no_grad). Three variants compute the same
loss and the same gradients w.r.t. ``hidden`` and ``W``:

* ``plain``: ``logits = hidden @ W.T`` then ``seqkd.student.losses.<divergence>(logits, teacher, mask)``;
* ``chunked``: the same logits, then ``seqkd.student.losses.chunked(...)`` (float32 intermediates one chunk at a time);
* ``chunked+fused``: ``seqkd.student.losses.fused(...)`` (student logits one chunk at a time as well).

Memory: each variant runs in its own fresh process. After the inputs are built and one warm-up step has run,
the process's resident-set high-water mark is reset (``/proc/self/clear_refs`` ← 5, Linux) and the peak of one
more step is read from ``VmHWM``; the reported peak is that minus the resident set just before the step. So it
counts everything the step allocates (the student logits of ``plain`` and ``chunked`` included, and the
gradients of hidden and W, which every variant makes) and not the inputs. The process runs with a fixed
``MALLOC_MMAP_THRESHOLD_`` (64 KiB) so that glibc returns every freed tensor to the system and RSS follows live
memory (otherwise a reused free list could hide allocations). Where the reset is not possible, the fallback is
``ru_maxrss`` after the first step minus the resident set before it (no warm-up; reported as such).
Time: a second fresh process with the default allocator; median of ``--repeats`` steps after one warm-up.

A second table measures a whole distillation step the same way, once per ``seqkd distill --loss-impl``: a
``DistillTrainer`` (online KD, kd_weight 0.5, label smoothing 0.1) with a small Llama student and a larger Llama
teacher of the same vocabulary (``--step-student`` / ``--step-teacher`` presets, ``--vocab``) runs
``compute_loss`` (the teacher's no-grad forward, the student's forward, CE + divergence) and ``backward`` on a
batch of ``--step-batch`` decoder-only sequences of ``--step-seq-len`` tokens (the first half of each a prompt, so
about half the positions are targets; rows of random lengths, padded). Counted: everything that step allocates
above the resident set before it -- the teacher's transient activations and its logits ``[N, V]`` (plain,
chunked; fused: its hidden states ``[N, H]``), the student's activations kept for backward, its logits and their
gradient (plain, chunked; fused: one chunk at a time), the loss intermediates and the gradient of every student
parameter (set to None before the step). Not counted: the two models' weights, the batch, and optimizer state (no
optimizer step is taken; Adam's moments would add twice the student's parameters to every implementation alike).

    python benchmarks/kd_loss_memory.py             # V=32000, N=8x512, H=512; forward_kl and jsd; + the step
    python benchmarks/kd_loss_memory.py --smoke     # tiny sizes: checks the script works (seconds)
    python benchmarks/kd_loss_memory.py --only-step # just the whole-step table

Writes ``benchmarks/results/kd_loss_memory.{json,md,png}`` (``kd_loss_memory_smoke.*`` with ``--smoke``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "chunked", "chunked+fused")  # the two chunked ones run at each --chunk-sizes value
STEP_IMPLS = ("plain", "chunked", "fused")  # seqkd distill --loss-impl
TARGET_MEMORY, TARGET_TIME = 0.3, 1.3  # chunked+fused vs plain


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the script works")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=8, help="sequences")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (N = batch x seq-len)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 512],
                   help="chunk sizes for chunked and chunked+fused (the fused peak is ~chunk/N of plain's)")
    p.add_argument("--divergences", nargs="+", default=["forward_kl", "jsd"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="timed steps (after one warm-up); the median is kept")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where JSON/Markdown/PNG go")
    p.add_argument("--name", default=None, help="result file stem (default kd_loss_memory[_smoke])")
    p.add_argument("--note", default="", help="a remark stored with the results")
    p.add_argument("--step-student", default="llama-student", help="whole step: the student preset")
    p.add_argument("--step-teacher", default="llama-teacher", help="whole step: the (online) teacher preset")
    p.add_argument("--step-batch", type=int, default=8, help="whole step: sequences")
    p.add_argument("--step-seq-len", type=int, default=512, help="whole step: tokens per sequence, half prompt")
    p.add_argument("--step-chunk-size", type=int, default=1024, help="whole step: --loss-chunk-size of chunked/fused")
    p.add_argument("--step-impls", nargs="+", default=list(STEP_IMPLS), choices=STEP_IMPLS)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--skip-step", action="store_true", help="only the divergence table")
    group.add_argument("--only-step", action="store_true", help="only the whole-step table")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = p.parse_args(argv)
    if args.smoke:
        args.vocab, args.batch, args.seq_len, args.hidden, args.chunk_sizes, args.repeats = 2000, 2, 96, 32, [64], 2
        args.step_student, args.step_teacher, args.step_batch, args.step_seq_len, args.step_chunk_size = \
            "llama-tiny-student", "llama-tiny", 2, 64, 16
    args.name = args.name or ("kd_loss_memory_smoke" if args.smoke else "kd_loss_memory")
    return args


# --------------------------------------------------------------------------------------------- worker side
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024
    except OSError:
        return False


def _measure(spec: dict, step, grad_norms) -> dict:
    """Peak memory (or time) of ``step()`` as the module docstring says; ``grad_norms()`` after it."""
    import torch

    out: dict = {"threads": torch.get_num_threads()}
    if spec["measure"] == "memory":
        gc.collect()
        if _reset_peak():
            step()
            gc.collect()
            before = _status_kib("VmRSS")
            _reset_peak()
            out["loss"] = step()
            out["peak_mib"] = (_status_kib("VmHWM") - before) / 1024
            out["memory_method"] = "VmHWM reset (clear_refs) after warm-up, minus VmRSS before the step"
        else:
            before = _status_kib("VmRSS")
            out["loss"] = step()
            out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            out["memory_method"] = "ru_maxrss after the first step minus VmRSS before it (no reset available)"
        out["grad_norms"] = grad_norms()
    else:
        step()
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out["seconds"] = common.summary(times)["median"]
        out["all_seconds"] = times
    return out


def step_worker(spec: dict) -> dict:
    """One whole distillation step (DistillTrainer.compute_loss + backward) with ``--loss-impl spec["impl"]``."""
    import random
    import tempfile

    import torch
    from transformers import TrainingArguments

    from seqkd.config import DistillConfig
    from seqkd.data.batching import DistillCollator
    from seqkd.data.prompts import IGNORE_INDEX, Format
    from seqkd.models import build_model
    from seqkd.student.distill import DistillTrainer

    torch.manual_seed(0)
    v, pad_id, bos_id, eos_id = spec["vocab"], 0, 2, 3
    student = build_model(spec["student"], vocab_size=v, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, seed=1)
    teacher = build_model(spec["teacher"], vocab_size=v, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, seed=2)
    teacher.eval().requires_grad_(False)
    student.train()
    rng = random.Random(0)
    examples = []
    for _ in range(spec["batch"]):
        length = rng.randint(spec["seq_len"] * 3 // 4, spec["seq_len"])
        prompt = length // 2
        ids = [rng.randrange(4, v) for _ in range(length)]
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:], "prompt_len": prompt})
    batch = DistillCollator(pad_id)(examples)
    n_targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with tempfile.TemporaryDirectory() as tmp:
        dcfg = DistillConfig(out=tmp, teacher="(in memory)", train_source="(in memory)", kd_mode="online",
                             kd_weight=0.5, divergence=spec["divergence"], label_smoothing=0.1,
                             loss_impl=spec["impl"], loss_chunk_size=spec["chunk_size"])
        args = TrainingArguments(output_dir=tmp, report_to=[], use_cpu=True, disable_tqdm=True)
        trainer = DistillTrainer(model=student, args=args, fmt=Format("causal", pad_id, bos_id, eos_id, None),
                                 teacher=teacher, dcfg=dcfg, label_smoothing=0.1)
        assert trainer.loss_impl == spec["impl"], (trainer.loss_impl, spec["impl"])
        params = [p for p in student.parameters() if p.requires_grad]

        def step() -> float:
            student.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(student, batch)
            loss.backward()
            return loss.item()

        def grad_norms() -> list[float]:
            return [float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params])))]

        out = _measure(spec, step, grad_norms)
    out["targets"] = n_targets
    out["student_params_m"] = sum(p.numel() for p in params) / 1e6
    out["teacher_params_m"] = sum(p.numel() for p in teacher.parameters()) / 1e6
    return out


def worker(spec: dict) -> dict:
    import torch

    from seqkd.student import losses

    if spec.get("kind") == "step":
        return step_worker(spec)

    torch.manual_seed(0)
    dtype = getattr(torch, spec["dtype"])
    n, v, h_dim = spec["batch"] * spec["seq_len"], spec["vocab"], spec["hidden"]
    hidden = torch.randn(n, h_dim, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h_dim) * h_dim ** -0.5).to(dtype).requires_grad_()
    with torch.no_grad():
        teacher = torch.randn(n, h_dim, dtype=dtype) @ (torch.randn(v, h_dim) * 1.5 * h_dim ** -0.5).to(dtype).T
    lengths = torch.randint(spec["seq_len"] * 3 // 4, spec["seq_len"] + 1, (spec["batch"],))
    mask = (torch.arange(spec["seq_len"])[None, :] < lengths[:, None]).reshape(-1)
    name, variant, chunk = spec["divergence"], spec["variant"], spec["chunk_size"]
    fn = losses.get_divergence(name)

    def step() -> float:
        hidden.grad = weight.grad = None
        if variant == "plain":
            loss = fn(hidden @ weight.T, teacher, mask)
        elif variant == "chunked":
            loss = losses.chunked(name, hidden @ weight.T, teacher, mask, chunk_size=chunk)
        else:
            loss = losses.fused(name, hidden, weight, teacher, mask, chunk_size=chunk)
        loss.backward()
        return loss.item()

    out = _measure(spec, step, lambda: [float(hidden.grad.float().norm()), float(weight.grad.float().norm())])
    out["padding_pct"] = round(100 * (1 - mask.float().mean().item()), 1)
    return out


# ------------------------------------------------------------------------------------------- driver side
def run_worker(spec: dict) -> dict:
    env = dict(os.environ)
    if spec["measure"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = ["# KD divergence memory: plain vs chunked vs chunked+fused", ""]
    if result["rows"]:
        lines += [
            f"Forward + backward of the divergence, student logits = hidden @ W.T; V={cfg['vocab']}, "
            f"N={cfg['batch']}x{cfg['seq_len']}={cfg['batch'] * cfg['seq_len']} tokens ({cfg['padding_pct']}% "
            f"padding masked), H={cfg['hidden']}, {cfg['dtype']}; "
            f"{result['machine']}, torch {result['torch']}, {result['threads']} threads. {result['note']}".rstrip(),
            "",
            "| divergence | variant | chunk | peak MiB | × plain | seconds, median (min–max) | × plain "
            "| same loss/grads |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in result["rows"]:
            lines.append(f"| {r['divergence']} | {r['variant']} | {r['chunk_size'] or ''} | {r['peak_mib']:.1f} | "
                         f"{r['memory_ratio']:.2f} | {common.fmt_summary(common.summary(r['all_seconds']), '.3f')} | "
                         f"{r['time_ratio']:.2f} | "
                         f"{'yes' if r['agrees'] else 'NO'} |")
        met = result["target_met_at_chunk_sizes"]
        lines += ["", f"Target for chunked+fused: ≤ {TARGET_MEMORY}× the plain peak memory at ≤ {TARGET_TIME}× its "
                  "time: " + ", ".join(f"{d} " + (f"met at chunk {', '.join(map(str, c))}" if c else "NOT met")
                                       for d, c in met.items()),
                  "", "Peak memory: " + result["memory_method"] + ", each variant in a fresh process; the inputs "
                  "(hidden, W, the teacher's [N, V] logits, the mask) are not counted, everything the step allocates "
                  "is. Time: median of " f"{cfg['repeats']} steps after a warm-up, in another fresh process.", ""]
    if result.get("step_rows"):
        sc = result["step_config"]
        first = result["step_rows"][0]
        lines += [
            "## Whole distillation step: `seqkd distill --loss-impl plain|chunked|fused`", "",
            f"`DistillTrainer.compute_loss` + `backward` (no optimizer step), online KD ({sc['divergence']}, "
            f"kd_weight 0.5, label smoothing 0.1): student `{sc['student']}` ({first['student_params_m']:.2f}M "
            f"parameters), teacher `{sc['teacher']}` ({first['teacher_params_m']:.2f}M), V={cfg['vocab']}, "
            f"{sc['batch']} sequences of up to {sc['seq_len']} tokens, {first['targets']} target tokens; "
            f"float32; {result['machine']}, torch {result['torch']}.", "",
            "| --loss-impl | chunk | peak MiB | × plain | seconds, median (min–max) | × plain | same loss/grads |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in result["step_rows"]:
            lines.append(f"| {r['impl']} | {r['chunk_size'] or ''} | {r['peak_mib']:.1f} | {r['memory_ratio']:.2f} | "
                         f"{common.fmt_summary(common.summary(r['all_seconds']), '.3f')} | {r['time_ratio']:.2f} | "
                         f"{'yes' if r['agrees'] else 'NO'} |")
        lines += ["", "Peak memory: " + result["step_memory_method"] + ", each implementation in a fresh process. "
                  "Counted: everything the step allocates -- the teacher's transient activations and its logits "
                  "[N, V] (plain, chunked; fused: its last hidden states [N, H], its logits made one chunk at a "
                  "time), the student's activations kept for backward, its logits [N, V] and their gradient (plain, "
                  "chunked; fused: one chunk at a time), the loss's intermediates, and the gradients of all student "
                  "parameters (set to None before the step). Not counted: the student's and the teacher's weights, "
                  "the batch, and optimizer state (no optimizer step is taken; Adam's two moments would add twice "
                  "the student's parameters to every implementation alike). Time: median of "
                  f"{cfg['repeats']} steps after a warm-up, in another fresh process. Same loss/grads: the loss and "
                  "the norm of the student's whole gradient agree with plain's.", ""]
    return "\n".join(lines)


def _label(row: dict) -> str:
    return row["variant"] + (f" c={row['chunk_size']}" if row["chunk_size"] else "")


def plot(path: Path, result: dict) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    divs = list(dict.fromkeys(r["divergence"] for r in result["rows"]))
    labels = list(dict.fromkeys(_label(r) for r in result["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        rows = [next(r for r in result["rows"] if r["divergence"] == d and _label(r) == label) for d in divs]
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(divs))]
        axes[0].bar(xs, [r["peak_mib"] for r in rows], width, label=label)
        axes[1].bar(xs, [r["seconds"] for r in rows], width, label=label)
    for ax, ylabel in zip(axes, ("peak memory above inputs (MiB)", "forward + backward (s, median)")):
        ax.set_xticks(range(len(divs)), divs)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"V={cfg['vocab']}, N={cfg['batch'] * cfg['seq_len']}, H={cfg['hidden']}, {cfg['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _agrees(row: dict, ref: dict, dtype: str) -> bool:
    tol = 1e-4 if dtype == "float32" else 2e-2
    return abs(row["loss"] - ref["loss"]) <= tol * max(abs(ref["loss"]), 1e-6) and all(
        abs(a - b) <= 10 * tol * max(abs(b), 1e-6) for a, b in zip(row["grad_norms"], ref["grad_norms"]))


def measure_divergences(args, base: dict) -> tuple[list[dict], dict]:
    """The divergence table's rows, and what the run found out (memory method, threads, padding)."""
    rows, info = [], {"memory_method": "", "threads": None, "padding_pct": None}
    runs = [("plain", None)] + [(v, c) for c in args.chunk_sizes for v in VARIANTS[1:]]
    for divergence in args.divergences:
        for variant, chunk_size in runs:
            spec = {**base, "divergence": divergence, "variant": variant, "chunk_size": chunk_size}
            mem = run_worker({**spec, "measure": "memory"})
            tim = run_worker({**spec, "measure": "time"})
            info = {"memory_method": mem["memory_method"], "threads": tim["threads"],
                    "padding_pct": mem["padding_pct"]}
            rows.append({"divergence": divergence, "variant": variant, "chunk_size": chunk_size,
                         "peak_mib": mem["peak_mib"],
                         "seconds": tim["seconds"], "all_seconds": tim["all_seconds"], "loss": mem["loss"],
                         "grad_norms": mem["grad_norms"]})
            print(f"{divergence:>12} {variant:>14} {chunk_size or '':>5}: peak {mem['peak_mib']:9.1f} MiB  "
                  f"{tim['seconds']:.3f} s", flush=True)
    for r in rows:
        ref = next(x for x in rows if x["divergence"] == r["divergence"] and x["variant"] == "plain")
        r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["agrees"] = _agrees(r, ref, args.dtype)
    return rows, info


def measure_steps(args) -> tuple[list[dict], dict]:
    """The whole-step table's rows (one per --loss-impl), and its settings."""
    cfg = {"student": args.step_student, "teacher": args.step_teacher, "batch": args.step_batch,
           "seq_len": args.step_seq_len, "chunk_size": args.step_chunk_size, "divergence": args.divergences[0],
           "impls": args.step_impls}
    rows, method = [], ""
    for impl in args.step_impls:
        chunk = 0 if impl == "plain" else args.step_chunk_size
        spec = {"kind": "step", "vocab": args.vocab, "student": args.step_student, "teacher": args.step_teacher,
                "batch": args.step_batch, "seq_len": args.step_seq_len, "divergence": args.divergences[0],
                "impl": impl, "chunk_size": chunk, "repeats": args.repeats}
        mem = run_worker({**spec, "measure": "memory"})
        tim = run_worker({**spec, "measure": "time"})
        method = mem["memory_method"]
        rows.append({"impl": impl, "chunk_size": chunk or None, "peak_mib": mem["peak_mib"], "seconds": tim["seconds"],
                     "all_seconds": tim["all_seconds"], "loss": mem["loss"], "grad_norms": mem["grad_norms"],
                     "targets": mem["targets"], "student_params_m": mem["student_params_m"],
                     "teacher_params_m": mem["teacher_params_m"]})
        print(f"{'step':>12} {impl:>14} {chunk or '':>5}: peak {mem['peak_mib']:9.1f} MiB  {tim['seconds']:.3f} s",
              flush=True)
    ref = next((r for r in rows if r["impl"] == "plain"), rows[0] if rows else None)
    for r in rows:
        r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["agrees"] = _agrees(r, ref, "float32")
    cfg["memory_method"] = method
    return rows, cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    import torch

    base = {k: getattr(args, k) for k in ("vocab", "batch", "seq_len", "hidden", "dtype", "repeats")}
    rows, info = ([], {"memory_method": "", "threads": torch.get_num_threads(), "padding_pct": None}) \
        if args.only_step else measure_divergences(args, base)
    step_rows, step_cfg = ([], {}) if args.skip_step else measure_steps(args)
    target = {}
    for r in rows:
        fused_ok = r["memory_ratio"] <= TARGET_MEMORY and r["time_ratio"] <= TARGET_TIME
        if r["variant"] == "chunked+fused" and fused_ok:
            target.setdefault(r["divergence"], []).append(r["chunk_size"])
    result = {
        "config": {**base, "chunk_sizes": args.chunk_sizes, "divergences": args.divergences, "smoke": args.smoke,
                   "padding_pct": info["padding_pct"]},
        "target": {"memory_ratio_max": TARGET_MEMORY, "time_ratio_max": TARGET_TIME},
        "machine": common.machine_line(),
        "torch": torch.__version__, "threads": info["threads"], "note": args.note,
        "memory_method": info["memory_method"],
        "rows": rows, "target_met_at_chunk_sizes": {d: target.get(d, []) for d in args.divergences} if rows else {},
        "step_config": step_cfg, "step_rows": step_rows,
        "step_memory_method": step_cfg.get("memory_method", ""),
    }
    paths = common.write_results(args.name, result, markdown(result),
                                 plot=(lambda p: plot(p, result)) if rows else None,
                                 results_dir=args.results, indent=2)
    if paths["png"]:
        result["plot"] = str(paths["png"])
    print(f"wrote {common.rel(paths['json'])} / .md" + (" / .png" if "plot" in result else ""))
    return result


if __name__ == "__main__":
    main()
