"""Speculative decoding and DistillSpec on real data: a target, its draft before and after ``seqkd align``.

Pair ``multi30k``: target = the foundation's llama-teacher trained on Multi30k de-en (8.3M, 6 layers d256;
``data/models/multi30k-de-en-llama-teacher``); draft = ``llama-draft`` (1 layer d256) trained on the same data
(references, cross-entropy) without the teacher. Aligned drafts (same step budget each), made with
``seqkd.align``: on-policy TVD, on-policy FKL, and AdaSPEC selective (on-policy TVD on the 40% most learnable
tokens). Prompts: Multi30k ``test_2016_flickr`` sources (alignment trains on train prompts, its settings were
chosen on val).

For every draft, gamma in ``--gammas`` and temperature in ``--temperatures``: seqkd's exact decoder, target-only
decoding interleaved with it prompt by prompt (acceptance, per-token acceptance and 1 - TVD, block efficiency,
measured c, tokens/s, speedup, Leviathan bound). For the unaligned and the TVD-aligned draft at ``--engine-gamma``:
the same pair in HF assisted generation and in vLLM (greedy; vLLM in a subprocess).

    python benchmarks/speculative.py                       # what the README reports
    python benchmarks/speculative.py --prompts 20 --gammas 4 --temperatures 0   # a quick look

Models are cached in ``data/models/spec/``; writes benchmarks/results/speculative.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ROOT / "data" / "models"
SPEC = MODELS / "spec"
TARGET = MODELS / "multi30k-de-en-llama-teacher"  # --target / --spec-dir replace these two

ALIGNED = {  # name -> AlignConfig fields
    "distillspec-tvd": dict(data="on-policy", divergence="tvd"),
    "distillspec-fkl": dict(data="on-policy", divergence="fkl"),
    "adaspec-tvd": dict(data="on-policy", divergence="tvd", select_fraction=0.4),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=150, help="test prompts per measurement")
    p.add_argument("--gammas", type=int, nargs="+", default=[2, 4, 6])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--engine-gamma", type=int, default=4, help="gamma of the HF / vLLM comparison")
    p.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--draft-steps", type=int, default=2000, help="training steps of the unaligned draft")
    p.add_argument("--align-steps", type=int, default=300, help="steps of each alignment (the same budget)")
    p.add_argument("--align-prompts", type=int, default=8000, help="training prompts of the alignment")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--name", default="speculative")
    p.add_argument("--target", default=str(TARGET), help="the pair's target (the llama-teacher)")
    p.add_argument("--spec-dir", default=str(SPEC), help="where the drafts are kept")
    p.add_argument("--align-only", action="store_true", help="make the aligned drafts and stop (e.g. on a GPU)")
    p.add_argument("--device", default="cpu", help="device of the acceptance measurements inside align")
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown and plot from the JSON")
    return p.parse_args(argv)


def train_draft(steps: int) -> Path:
    from seqkd.config import TrainConfig
    from seqkd.train import train

    out = SPEC / "multi30k-de-en-llama-draft"
    if (out / "train_summary.json").exists():
        return out
    train(TrainConfig(out=str(out), model="llama-draft", data="multi30k:de-en", tokenizer=str(TARGET),
                      max_steps=steps, lr=1e-3, warmup_steps=200, max_tokens=4096, eval_steps=steps,
                      bleu_samples=200, logging_steps=100, overwrite=True, seed=0))
    return out


def aligned_drafts(draft: Path, steps: int, n_prompts: int, device: str = "cpu") -> dict[str, Path]:
    from seqkd.align import AlignConfig, align

    out = {}
    for name, fields in ALIGNED.items():
        d = SPEC / f"multi30k-de-en-llama-draft-{name}"
        if not (d / "align.json").exists():
            align(AlignConfig(target=str(TARGET), draft=str(draft), out=str(d), dataset="multi30k:de-en",
                              limit=n_prompts, max_steps=steps, eval_size=100, overwrite=True, device=device,
                              **fields))
        out[name] = d
    return out


def measure(draft: Path, prompts_file: Path, a, gamma: int, temperature: float, engine: str = "seqkd") -> dict:
    from seqkd.speculate import SpeculateConfig, speculate

    cfg = SpeculateConfig(target=str(TARGET), draft=str(draft), input=str(prompts_file), gamma=gamma,
                          temperature=temperature, max_new_tokens=a.max_new_tokens, engine=engine, warmup=2)
    r = speculate(cfg, progress=False)
    return {k: v for k, v in r.items() if not isinstance(v, (list, dict)) or k == "per_position_acceptance"}


def measure_vllm(draft: Path, prompts_file: Path, a, gamma: int) -> dict:
    """vLLM in its own process (it changes the thread settings of the process that starts it)."""
    code = ("import json,sys\nfrom seqkd.speculate import SpeculateConfig, speculate\n"
            "if __name__ == '__main__':\n"
            f"    r = speculate(SpeculateConfig(target={str(TARGET)!r}, draft={str(draft)!r}, "
            f"input={str(prompts_file)!r}, gamma={gamma}, temperature=0.0, max_new_tokens={a.max_new_tokens}, "
            "engine='vllm', warmup=2), progress=False)\n"
            "    print('RESULT ' + json.dumps(r))\n")
    script = SPEC / "_vllm_measure.py"
    script.write_text(code)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    import torch
    import transformers

    from seqkd.datasets import parallel_files

    global TARGET, SPEC
    a = parse_args(argv)
    if a.render_only:
        data = json.loads((RESULTS / f"{a.name}.json").read_text())
        for r in data["rows"]:  # runs before the draft-name fix stored each draft's directory as "draft"
            if "/" in r["draft"]:
                base = Path(r.pop("draft")).name
                r["draft_dir"] = str(base)
                r["draft"] = base.split("llama-draft-", 1)[1] if "llama-draft-" in base else "unaligned"
        write(data["rows"], data["meta"], a.name)
        return
    TARGET, SPEC = Path(a.target), Path(a.spec_dir)
    t0 = time.perf_counter()
    if not TARGET.is_dir():
        sys.exit(f"{TARGET} is missing: run benchmarks/teacher_multi30k.py --families llama first")
    SPEC.mkdir(parents=True, exist_ok=True)
    src, _ = parallel_files("multi30k:de-en", "test_2016_flickr")
    prompts_file = SPEC / f"test_2016_first{a.prompts}.de"
    prompts_file.write_text("".join(Path(src).read_text(encoding="utf-8").splitlines(True)[: a.prompts]))
    draft = train_draft(a.draft_steps)
    t_train = time.perf_counter() - t0
    drafts = {"unaligned": draft, **aligned_drafts(draft, a.align_steps, a.align_prompts, a.device)}
    t_align = time.perf_counter() - t0 - t_train
    if a.align_only:
        return
    rows = []
    for name, d in drafts.items():
        for temp in a.temperatures:
            for g in a.gammas:
                r = measure(d, prompts_file, a, g, temp)
                rows.append({**r, "pair": "multi30k", "draft": name, "draft_dir": str(d), "engine": "seqkd"})
                print(f"{name:16s} T={temp} g={g}: accept {r['acceptance_rate']:.3f} tau {r['block_efficiency']:.2f} "
                      f"c {r['cost_ratio']:.3f} speedup {r['speedup']:.2f}x (bound {r['leviathan_bound']:.2f}x)",
                      flush=True)
    for name in ("unaligned", "distillspec-tvd"):
        for engine in a.engines:
            temps = [0.0] if engine == "vllm" else a.temperatures
            for temp in temps:
                r = (measure_vllm(drafts[name], prompts_file, a, a.engine_gamma) if engine == "vllm"
                     else measure(drafts[name], prompts_file, a, a.engine_gamma, temp, engine="hf"))
                r = {k: v for k, v in r.items() if not isinstance(v, dict)}
                rows.append({**r, "pair": "multi30k", "draft": name, "draft_dir": str(drafts[name]),
                             "engine": engine, "gamma": a.engine_gamma, "temperature": temp})
                print(f"{name:16s} {engine} T={temp}: {r.get('speedup', r.get('error'))}", flush=True)
    align_info = {n: json.loads((d / "align.json").read_text())["train"] for n, d in drafts.items()
                  if (d / "align.json").exists()}
    meta = {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "prompts": a.prompts, "draft_train_minutes": t_train / 60, "align_minutes": t_align / 60,
            "minutes": (time.perf_counter() - t0) / 60, "align": align_info, "settings": vars(a)}
    write(rows, meta, a.name)


def write(rows: list[dict], meta: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Speculative decoding: Multi30k llama-teacher with its draft, before and after DistillSpec", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}; "
             f"{meta['prompts']} test_2016 prompts, batch size 1, float32; run took {meta['minutes']:.0f} min "
             f"({meta['date']}).", "",
             "| draft | engine | T | gamma | acceptance | per-token (1-TVD) | tau | c | target tok/s | spec tok/s | "
             "speedup | bound | speedup/bound |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['draft']} | {r['engine']} | {r['temperature']} | {r['gamma']} | failed: "
                         f"{r['error']} |||||||||")
            continue
        per_tok = (f"{r['verified_acceptance_rate']:.3f} ({r['analytic_acceptance']:.3f})"
                   if "verified_acceptance_rate" in r else "-")
        bound = r.get("leviathan_bound")
        lines.append(
            f"| {r['draft']} | {r['engine']} | {r['temperature']:g} | {r['gamma']} | {r['acceptance_rate']:.3f} | "
            f"{per_tok} | {r['block_efficiency']:.2f} | {r.get('cost_ratio', 0):.3f} | "
            f"{r['target_only_tokens_per_s']:.0f} | {r['speculative_tokens_per_s']:.0f} | **{r['speedup']:.2f}x** | "
            + (f"{bound:.2f}x | {r['speedup'] / bound:.0%} |" if bound else "- | - |"))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    seq = [r for r in rows if r["engine"] == "seqkd"]
    temps = sorted({r["temperature"] for r in seq})
    fig, axes = plt.subplots(2, len(temps), figsize=(5 * len(temps), 6), squeeze=False)
    for j, t in enumerate(temps):
        for d in dict.fromkeys(r["draft"] for r in seq):
            rs = sorted((r for r in seq if r["draft"] == d and r["temperature"] == t), key=lambda r: r["gamma"])
            axes[0][j].plot([r["gamma"] for r in rs], [r["acceptance_rate"] for r in rs], "o-", label=d)
            axes[1][j].plot([r["gamma"] for r in rs], [r["speedup"] for r in rs], "o-", label=d)
        axes[0][j].set_title(f"temperature {t:g}")
        axes[0][j].set_ylabel("acceptance rate")
        axes[1][j].set_ylabel("speedup over target-only")
        axes[1][j].set_xlabel("gamma")
        axes[1][j].axhline(1.0, color="black", lw=0.8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
