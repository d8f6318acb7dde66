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

    python benchmarks/kd_loss_memory.py             # V=32000, N=8x512, H=512; forward_kl and jsd
    python benchmarks/kd_loss_memory.py --smoke     # tiny sizes: checks the script works (seconds)

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
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = p.parse_args(argv)
    if args.smoke:
        args.vocab, args.batch, args.seq_len, args.hidden, args.chunk_sizes, args.repeats = 2000, 2, 96, 32, [64], 2
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


def worker(spec: dict) -> dict:
    import torch

    from seqkd.student import losses

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

    out: dict = {"threads": torch.get_num_threads(), "padding_pct": round(100 * (1 - mask.float().mean().item()), 1)}
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
        out["grad_norms"] = [float(hidden.grad.float().norm()), float(weight.grad.float().norm())]
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
    lines = [
        "# KD divergence memory: plain vs chunked vs chunked+fused",
        "",
        f"Forward + backward of the divergence, student logits = hidden @ W.T; V={cfg['vocab']}, "
        f"N={cfg['batch']}x{cfg['seq_len']}={cfg['batch'] * cfg['seq_len']} tokens ({cfg['padding_pct']}% padding "
        f"masked), H={cfg['hidden']}, {cfg['dtype']}; "
        f"{result['machine']}, torch {result['torch']}, {result['threads']} threads. {result['note']}".rstrip(),
        "",
        "| divergence | variant | chunk | peak MiB | × plain | seconds, median (min–max) | × plain | same loss/grads |",
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
    return "\n".join(lines)


def _label(row: dict) -> str:
    return row["variant"] + (f" c={row['chunk_size']}" if row["chunk_size"] else "")


def plot(path: Path, result: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    import torch

    base = {k: getattr(args, k) for k in ("vocab", "batch", "seq_len", "hidden", "dtype", "repeats")}
    rows, method, threads, padding = [], "", None, None
    runs = [("plain", None)] + [(v, c) for c in args.chunk_sizes for v in VARIANTS[1:]]
    for divergence in args.divergences:
        for variant, chunk_size in runs:
            spec = {**base, "divergence": divergence, "variant": variant, "chunk_size": chunk_size}
            mem = run_worker({**spec, "measure": "memory"})
            tim = run_worker({**spec, "measure": "time"})
            method, threads, padding = mem["memory_method"], tim["threads"], mem["padding_pct"]
            rows.append({"divergence": divergence, "variant": variant, "chunk_size": chunk_size,
                         "peak_mib": mem["peak_mib"],
                         "seconds": tim["seconds"], "all_seconds": tim["all_seconds"], "loss": mem["loss"],
                         "grad_norms": mem["grad_norms"]})
            print(f"{divergence:>12} {variant:>14} {chunk_size or '':>5}: peak {mem['peak_mib']:9.1f} MiB  "
                  f"{tim['seconds']:.3f} s", flush=True)
    target = {}
    for r in rows:
        ref = next(x for x in rows if x["divergence"] == r["divergence"] and x["variant"] == "plain")
        r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        tol = 1e-4 if args.dtype == "float32" else 2e-2
        r["agrees"] = abs(r["loss"] - ref["loss"]) <= tol * max(abs(ref["loss"]), 1e-6) and all(
            abs(a - b) <= 10 * tol * max(abs(b), 1e-6) for a, b in zip(r["grad_norms"], ref["grad_norms"]))
        fused_ok = r["memory_ratio"] <= TARGET_MEMORY and r["time_ratio"] <= TARGET_TIME
        if r["variant"] == "chunked+fused" and fused_ok:
            target.setdefault(r["divergence"], []).append(r["chunk_size"])
    result = {
        "config": {**base, "chunk_sizes": args.chunk_sizes, "divergences": args.divergences, "smoke": args.smoke,
                   "padding_pct": padding},
        "target": {"memory_ratio_max": TARGET_MEMORY, "time_ratio_max": TARGET_TIME},
        "machine": common.machine_line(),
        "torch": torch.__version__, "threads": threads, "note": args.note, "memory_method": method,
        "rows": rows, "target_met_at_chunk_sizes": {d: target.get(d, []) for d in args.divergences},
    }
    paths = common.write_results(args.name, result, markdown(result), plot=lambda p: plot(p, result),
                                 results_dir=args.results, indent=2)
    if paths["png"]:
        result["plot"] = str(paths["png"])
    print(f"wrote {common.rel(paths['json'])} / .md" + (" / .png" if "plot" in result else ""))
    return result


if __name__ == "__main__":
    main()
