"""Benchmark (issue 14, item 4): what one matrix product costs on this CPU as the number of rows grows, per path.

Speculative decoding's verification call multiplies every weight matrix by gamma + 1 rows where a target step
multiplies it by one; the Leviathan bound assumes that costs the same. Here it costs what each path makes it cost:
fp32 through torch's default (MKL), fp32 through oneDNN (``torch.utils.mkldnn``), int8 weights with int8 dynamic
activations through fbgemm and through oneDNN (``torch.ao`` dynamic quantization, the path
``seqkd.models.quantize`` uses), and bf16. Shapes: SmolLM2-135M's matrices (576 wide: attention 576x576, MLP
576x1536 and 1536x576, the 49,152-token output layer) and a 1.5B model's MLP (1536x8960).

Every path and shape is timed in turn (rows 1..16), a pass is all of them, ``--passes`` passes after a warm-up
pass; each time is the median of ``--calls`` calls, reported as median (min-max) over passes. By default the calls
go round copies of the matrix that together take ``--cold-mib`` (3x this CPU's 32 MiB L3), so each call reads its
weights from memory, as a model's step does (a model's layers do not stay in cache between steps);
``--cold-mib 0`` times one matrix over and over, in cache once it fits (int8 weights a quarter the size fit where
fp32 ones do not, which flatters int8 beyond what a model sees).

    python benchmarks/matmul_rows.py           # about 3 minutes on 2 cores

Writes benchmarks/results/matmul_rows.{json,md,png}.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import common
import torch
from torch import nn

SHAPES = {"attn 576x576": (576, 576), "mlp up 576x1536": (576, 1536), "mlp down 1536x576": (1536, 576),
          "head 576x49152": (576, 49152), "1.5B mlp 1536x8960": (1536, 8960)}
PATHS = ("fp32", "fp32 oneDNN", "int8 fbgemm", "int8 oneDNN", "bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 16])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    p.add_argument("--calls", type=int, default=30, help="calls per timing (their median is the time)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cold-mib", type=float, default=96.0,
                   help="weights cycled per timing so that they come from memory (0: one matrix, cache-resident)")
    p.add_argument("--name", default="matmul_rows")
    a = p.parse_args(argv)
    if min(a.rows) < 1 or a.calls < 1 or a.passes < 1:
        p.error("--rows, --calls and --passes must be >= 1")
    return a


def make_layers(path: str, d_in: int, d_out: int, cold_mib: float) -> tuple[list[nn.Module], torch.dtype]:
    """Copies of one linear layer as ``path`` computes it, enough to fill ``cold_mib`` (at least one), and the dtype
    of its input."""
    bytes_per = d_in * d_out * {"bf16": 2, "int8 fbgemm": 1, "int8 oneDNN": 1}.get(path, 4)
    n = max(1, math.ceil(cold_mib * 2**20 / bytes_per))
    layers = [make_layer(path, d_in, d_out, seed=i) for i in range(n)]
    return [m for m, _ in layers], layers[0][1]


def make_layer(path: str, d_in: int, d_out: int, seed: int = 0) -> tuple[nn.Module, torch.dtype]:
    """One linear layer (seeded weights) as ``path`` computes it, and the dtype of its input."""
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out, bias=False).eval()
    if path == "fp32":
        return lin, torch.float32
    if path == "fp32 oneDNN":
        from torch.utils import mkldnn

        return mkldnn.to_mkldnn(lin), torch.float32  # converts a dense input per call, as a model would
    if path == "bf16":
        return lin.to(torch.bfloat16), torch.bfloat16
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = "fbgemm" if path == "int8 fbgemm" else "onednn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return q, torch.float32


def time_call(layers: list[nn.Module], x: torch.Tensor, calls: int) -> float:
    """Median seconds of one ``layer(x)`` over ``calls`` calls (at least one per layer, so that the working set is
    all of them; after two untimed), going round ``layers``."""
    times = []
    with torch.no_grad():
        for i in range(max(calls, len(layers)) + 2):
            layer = layers[i % len(layers)]
            t0 = time.perf_counter()
            layer(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(a) -> list[dict]:
    samples: dict[tuple, list[float]] = {}
    for pass_ in range(a.passes + 1):  # pass 0 warms up
        for s in a.shapes:
            for p in a.paths:
                # the engine is global: set it for the layer about to run (oneDNN and fbgemm layers alternate)
                if p.startswith("int8"):
                    torch.backends.quantized.engine = "fbgemm" if p == "int8 fbgemm" else "onednn"
                layer, dtype = make_layers(p, *SHAPES[s], a.cold_mib)  # made per pass: memory stays bounded
                for r in a.rows:
                    x = torch.randn(r, SHAPES[s][0], generator=torch.Generator().manual_seed(r)).to(dtype)
                    t = time_call(layer, x, a.calls)
                    if pass_:
                        samples.setdefault((s, p, r), []).append(t)
        print(f"pass {pass_} done" + (" (warm-up)" if not pass_ else ""), flush=True)
    rows = []
    for (s, p, r), ts in samples.items():
        rows.append({"shape": s, "path": p, "rows": r, "ms": common.summary([t * 1e3 for t in ts])})
    return rows


def _ms(rows, s, p, r) -> float:
    return next(x["ms"]["median"] for x in rows if x["shape"] == s and x["path"] == p and x["rows"] == r)


def render(rows: list[dict], a) -> str:
    r_max = 5 if 5 in a.rows else max(a.rows)
    lines = ["# matmul_rows: one matrix product's cost as the rows grow, per path", "",
             f"Milliseconds per product, median (min–max) of {a.passes} passes (each the median of {a.calls} calls; "
             + (f"weights from memory: calls go round copies filling {a.cold_mib:g} MiB), " if a.cold_mib else
                "one matrix called over and over: in cache once it fits), ") +
             f"torch {torch.__version__}, {torch.get_num_threads()} threads. '{r_max} rows / 1 row' is what "
             f"{r_max} rows cost over one row on the same path (a verification call over gamma + 1 = 5 positions "
             "pays this per matrix where the bound counts 1); 'vs fp32' is fp32's time over this path's at the same "
             "rows.", ""]
    for s in a.shapes:
        lines += [f"## {s}", "", "| path | " + " | ".join(f"{r} row{'s' if r > 1 else ''}" for r in a.rows)
                  + f" | {r_max} rows / 1 row | vs fp32, 1 row | vs fp32, {r_max} rows |",
                  "|---|" + "---:|" * (len(a.rows) + 3)]
        for p in a.paths:
            cells = [common.fmt_summary(x["ms"], ".3f") for r in a.rows for x in rows
                     if x["shape"] == s and x["path"] == p and x["rows"] == r]
            one, many = _ms(rows, s, p, 1) if 1 in a.rows else None, _ms(rows, s, p, r_max)
            growth = f"{many / one:.2f}×" if one else "-"
            vs1 = f"{_ms(rows, s, 'fp32', 1) / one:.2f}×" if one and "fp32" in a.paths else "-"
            vsm = f"{_ms(rows, s, 'fp32', r_max) / many:.2f}×" if "fp32" in a.paths else "-"
            lines.append(f"| {p} | " + " | ".join(cells) + f" | {growth} | {vs1} | {vsm} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], a, path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(a.shapes), figsize=(3.2 * len(a.shapes), 3.4), sharey=False)
    for ax, s in zip(axes if len(a.shapes) > 1 else [axes], a.shapes):
        for p in a.paths:
            ax.plot(a.rows, [_ms(rows, s, p, r) for r in a.rows], marker="o", ms=3, label=p)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("rows")
        ax.grid(alpha=0.3)
    (axes[0] if len(a.shapes) > 1 else axes).set_ylabel("ms per product")
    (axes[-1] if len(a.shapes) > 1 else axes).legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return True


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = measure(a)
    common.write_results(a.name, {"rows": rows, "settings": common.rel_args(a), "threads": torch.get_num_threads(),
                                  "torch": torch.__version__}, render(rows, a), plot=lambda p: plot(rows, a, p))


if __name__ == "__main__":
    main()
