"""The report of a ``seqkd run``: ``report.json`` (everything, as data), ``report.md`` (tables, plots beside it in
``report_files/``) and ``report.html`` (the same, self-contained: plots inline), built from the stages' markers.

What it shows, where the recipe has it: every model's quality and speed (table and plot), training curves, the
corpus's statistics, the selected training data, the drafts' acceptance and speedup against gamma and per drafted
position, the stages (ran or cached, wall time), the machine, the versions and the command. Plots need matplotlib
(``pip install seqkd[bench]``); without it the report has the tables only and says so.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from seqkd.io import atomic_write_bytes, atomic_write_json, atomic_write_text

Block = tuple  # ("h2", text) | ("p", text) | ("table", headers, rows) | ("img", name, png bytes, caption)


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _times(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _labels(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# --- sections --------------------------------------------------------------------------------------------------------
def _models(markers: dict[str, dict], plt) -> tuple[list[Block], dict]:
    rows = [r for m in markers.values() if m["job"] == "evaluate" for r in _as_list(m["result"])
            for r in r["rows"]]
    if not rows:
        return [], {}
    tests = {_as_list(m["result"])[0]["test"] for m in markers.values() if m["job"] == "evaluate"}
    blocks: list[Block] = [("h2", "Models: quality and speed"),
                           ("p", f"Test set: {', '.join(sorted(tests))}; {rows[0]['sentences']} sentences. BLEU and "
                                 f"chrF by sacrebleu ({rows[0]['bleu_signature']}; {rows[0]['chrf_signature']}). "
                                 "Words/s: output words over the wall time of the whole decoding loop, one pass after "
                                 "a warm-up.")]
    table = [[r["model"], r["engine"], str(r["beam_size"]), _fmt(r["bleu"]), _fmt(r["chrf"]),
              _fmt(r["words_per_s"], ".0f"), str(r["speed"].get("batch_size")), str(r["speed"].get("threads")),
              f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "n/a"] for r in rows]
    blocks.append(("table", ["model", "engine", "beam", "BLEU", "chrF", "words/s", "batch", "threads", "parameters"],
                   table))
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name in dict.fromkeys(r["model"] for r in rows):
            pts = [r for r in rows if r["model"] == name]
            ax.plot([r["words_per_s"] for r in pts], [r["bleu"] for r in pts], "o-", label=name)
            for r in pts:
                ax.annotate(f"beam {r['beam_size']}", (r["words_per_s"], r["bleu"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 3))
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # crowded labels between the decades
        _labels(ax, "words/s (log scale)", "BLEU", "quality vs speed")
        blocks.append(("img", "quality_speed", _png(fig), "BLEU against words/s, one point per model and beam size"))
    return blocks, {"rows": rows}


def _training(markers: dict[str, dict], plt) -> tuple[list[Block], dict]:
    runs = {n: m["result"] for n, m in markers.items() if m["job"] in ("train", "distill")}
    if not runs:
        return [], {}
    blocks: list[Block] = [("h2", "Training")]
    table = []
    for name, r in runs.items():
        table.append([name, r.get("config", {}).get("model", "?"),
                      f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "n/a",
                      f"{r['non_embedding_parameters'] / 1e6:.2f}M" if r.get("non_embedding_parameters") else "n/a",
                      str(r.get("steps")), _fmt(r.get("epochs")), str(r.get("stop_reason")),
                      _fmt(r.get("best_metric")), _fmt(r.get("best_step")), _fmt(r.get("train_tokens_per_s"), ".0f"),
                      _fmt(r.get("seconds"), ".0f")])
    blocks.append(("table", ["stage", "model", "parameters", "non-embedding", "steps", "epochs", "stopped by",
                             "best val. BLEU", "best step", "tokens/s", "seconds"], table))
    curves = {n: [(e["step"], e["eval_bleu"]) for e in r.get("evaluations", []) if "eval_bleu" in e]
              for n, r in runs.items()}
    curves = {n: c for n, c in curves.items() if c}
    if plt is not None and curves:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for name, c in curves.items():
            ax.plot([s for s, _ in c], [b for _, b in c], "o-", label=name, markersize=3)
        _labels(ax, "step", "validation BLEU (greedy)", "training curves")
        blocks.append(("img", "training_curves", _png(fig), "validation BLEU during training, per stage"))
    return blocks, {"runs": {n: {k: v for k, v in r.items() if k != "config"} for n, r in runs.items()},
                    "curves": curves}


def _corpus(markers: dict[str, dict], plt) -> tuple[list[Block], dict]:
    corpora = {n: m["result"] for n, m in markers.items() if m["job"] == "generate"}
    selections = {n: m["result"] for n, m in markers.items() if m["job"] == "select"}
    if not corpora and not selections:
        return [], {}
    blocks: list[Block] = [("h2", "Distillation corpus")]
    data: dict[str, Any] = {"corpora": {}, "selections": selections}
    for name, r in corpora.items():
        st = r["statistics"]
        data["corpora"][name] = st
        blocks.append(("table", ["corpus", "sentences", "hypotheses / source", "distinct", "mean length (tokens)",
                                 "teacher log-prob / token (best)", "(all)", "decoding sentences/s"],
                       [[name, str(st["sentences"]), _fmt(st["hypotheses_per_source"]),
                         f"{st['distinct_fraction']:.1%}", _fmt(st["mean_length"], ".1f"),
                         _fmt(st["best_logprob_per_token"], ".3f"), _fmt(st["all_logprob_per_token"], ".3f"),
                         _fmt(r.get("sentences_per_s"), ".1f")]]))
        if plt is not None:
            h = st["length_histogram"]
            fig, ax = plt.subplots(figsize=(6.0, 3.0))
            ax.bar([i * h["bin_width"] for i in range(len(h["counts"]))], h["counts"], width=h["bin_width"] * 0.9,
                   align="edge")
            ax.set_xlabel("hypothesis length (tokens)")
            ax.set_ylabel("hypotheses")
            ax.set_title(f"{name}: lengths")
            blocks.append(("img", f"{name}_lengths", _png(fig), f"{name}: hypothesis lengths"))
    if selections:
        blocks.append(("table", ["selection", "strategy", "examples", "BLEU vs references", "chrF"],
                       [[n, r["strategy"], str(r["examples"]), _fmt(r.get("scores", {}).get("bleu")),
                         _fmt(r.get("scores", {}).get("chrf"))] for n, r in selections.items()]))
    return blocks, data


def _drafts(markers: dict[str, dict], plt) -> tuple[list[Block], dict]:
    aligns = {n: m["result"] for n, m in markers.items() if m["job"] == "align"}
    specs = {n: m for n, m in markers.items() if m["job"] == "speculate"}
    if not aligns and not specs:
        return [], {}
    blocks: list[Block] = [("h2", "Speculative decoding")]
    data: dict[str, Any] = {"align": {}, "speculate": {}}
    for name, r in aligns.items():
        rows = [[f"{name} {w}", _fmt(r[w]["acceptance_rate"], ".3f"), _fmt(r[w].get("verified_acceptance_rate"),
                                                                            ".3f"),
                 _fmt(r[w]["block_efficiency"]), _fmt(r[w]["speedup"]) + "x"] for w in ("before", "after")]
        data["align"][name] = {w: r[w] for w in ("before", "after")}
        blocks.append(("table", ["draft", "acceptance rate", "per-token acceptance", "tokens / target call",
                                 "speedup"], rows))
    for name, m in specs.items():
        data["speculate"][name] = _labelled(m)
    (headers, rows), (hf_headers, hf_rows) = speculative_tables(data["speculate"])
    choices = {n: m["result"] for n, m in markers.items() if m["job"] == "draft-init" and m["result"].get("choices")}
    for name, r in choices.items():  # the layer choice, measured on validation prompts as untrained drafts
        data.setdefault("layer_choice", {})[name] = r
        blocks.append(("p", f"{name}: the target layers a draft keeps, each choice measured untrained on validation "
                            f"prompts (greedy); kept: {r['chosen']}."))
        blocks.append(("table", ["layers", "parameters", "acceptance", "tokens / call", "c", "v", "speedup"],
                       [[c["layers_spec"], f"{c['params'] / 1e6:.1f}M", _fmt(c["acceptance_rate"], ".3f"),
                         _fmt(c["block_efficiency"]), _fmt(c["cost_ratio"], ".3f"), _fmt(c["verification_cost"]),
                         _fmt(c["speedup"]) + "x"] for c in r["choices"]]))
    if rows:
        blocks.append(("p", "Acceptance rate and per-position acceptance as vLLM defines them (accepted / drafted; "
                            "the share of drafted positions i accepted); tokens per target call and the bound as "
                            "Leviathan et al. (2023); c = draft step / target step, v = verification call / target "
                            "step; predicted = tokens per call / (drafted per call x c + v), the overhead-aware "
                            "speedup; speedup = speculative tokens/s over target-only tokens/s on the same prompts, "
                            "interleaved, median (min-max) over the passes; a gamma sweep of seqkd's decoder "
                            "decodes each prompt target-only once and at every gamma, so its rows share one "
                            "target-only baseline."))
        blocks.append(("table", headers, rows))
    if hf_rows:
        blocks.append(("p", "The same prompts in HF transformers, interleaved: tokens/s (speedup over HF generate "
                            "with the target alone)."))
        blocks.append(("table", hf_headers, hf_rows))
    time_headers, time_rows = time_table(data["speculate"])
    if time_rows:
        blocks.append(("p", "Where the time goes (seqkd's decoder, the first pass): the shares of the speculative "
                            "wall time spent in the draft's forward calls, the target's (prefills included) and the "
                            "decoder's own work between them (sampling, the acceptance rule, cache crops); the step "
                            "times behind c and v; and the measured speedup as a share of Leviathan's bound."))
        blocks.append(("table", time_headers, time_rows))
    if plt is not None and specs:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        for name, results in data["speculate"].items():
            g = [r["gamma"] for r in results]
            if len(set(g)) > 1:  # a sweep over gamma (a sweep over the batch size is in the table only)
                axes[0].plot(g, [r["acceptance_rate"] for r in results], "o-", label=name)
                axes[1].plot(g, [r["speedup"] for r in results], "o-", label=name)
            # each swept draft's curve, else the largest gamma's
            for r in [r for r in results if "label" in r] or [max(results, key=lambda r: r["gamma"])]:
                pos = r.get("per_position_acceptance") or []
                axes[2].plot(range(1, len(pos) + 1), pos, "o-",
                             label=f"{name} ({r['label'] + ', ' if 'label' in r else ''}gamma {r['gamma']})")
        for ax, title, ylabel in ((axes[0], "acceptance vs gamma", "acceptance rate"),
                                  (axes[1], "speedup vs gamma", "speedup (x)"),
                                  (axes[2], "per-position acceptance", "accepted share")):
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("gamma" if ax is not axes[2] else "drafted position")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # a panel with nothing swept stays empty
                ax.legend(fontsize=7)
        blocks.append(("img", "speculative", _png(fig), "acceptance and speedup against gamma; acceptance per "
                                                       "drafted position at the largest gamma"))
    return blocks, data


def speculative_tables(speculate: dict[str, list[dict]]) -> tuple[tuple[list[str], list[list[str]]], ...]:
    """The report's two speculative tables from its ``drafts.speculate`` data (stage -> results): every measured row
    (engine, batch, draft precision, gamma, T, acceptance, tokens per call, c, v, rates, speedup with its min-max,
    Leviathan's bound, the overhead-aware prediction, passes), and seqkd's decoder beside HF generate and HF assisted
    generation where a stage compared them. Each as (headers, rows of strings); the README's tables use them too."""
    rows, hf_rows = [], []
    for name, results in speculate.items():
        for r in results:
            spread = r.get("speedup_spread") or {}
            rows.append([name + (f" ({r['label']})" if "label" in r else ""),
                         r.get("engine", "seqkd") + (" compiled" if r.get("compile") else "")
                         + (" oneDNN" if r.get("onednn") else ""),
                         str(r.get("batch_size", 1)),
                         "int8" if r.get("draft_quantize", "none") != "none" else "fp32", str(r["gamma"]),
                         _fmt(r["temperature"]), _fmt(r["acceptance_rate"], ".3f"), _fmt(r["block_efficiency"]),
                         _fmt(r.get("cost_ratio"), ".3f"), _fmt(r.get("verification_cost")),
                         _fmt(r.get("target_only_tokens_per_s"), ".1f"), _fmt(r.get("speculative_tokens_per_s"), ".1f"),
                         _fmt(r["speedup"]) + "x" + (f" ({spread['min']:.2f}-{spread['max']:.2f})"
                                                     if "min" in spread else ""),
                         _times(r.get("leviathan_bound")), _times(r.get("predicted_speedup")),
                         _passes(r)])
            cmp = r.get("comparison")
            if cmp:  # seqkd's decoder beside HF generate and HF assisted generation, on the same prompts
                rate, over = cmp["tokens_per_s"], cmp["speedup_over_baseline"]
                hf_rows.append([f"{name} (gamma {r['gamma']})", _fmt(rate["hf_generate"]["median"], ".1f")]
                               + [f"{rate[k]['median']:.1f} ({over[k]['median']:.2f}x)"
                                  for k in ("seqkd_target_only", "seqkd_speculative", "hf_assisted")])
    headers = ["stage", "engine", "batch", "draft", "gamma", "T", "acceptance", "tokens / call", "c", "v",
               "target-only tok/s", "speculative tok/s", "speedup", "bound", "predicted", "passes"]
    hf_headers = ["stage", "HF generate tok/s", "seqkd target-only", "seqkd speculative", "HF assisted generation"]
    return (headers, rows), (hf_headers, hf_rows)


def _passes(r: dict) -> str:
    """The passes column: how many, and how many decodes were timed again because torch compiled during them."""
    again = r.get("retimed_calls")
    return str(r.get("passes", 1)) + (f" ({again} timed again)" if again else "")


def time_table(speculate: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Where the time goes, per row of seqkd's decoder (``drafts.speculate`` data: stage -> results): the draft's,
    the target's and the decoder's own share of the speculative wall time, the draft step, the verification call and
    the target-only step (ms), and the measured speedup over Leviathan's bound (the issue's "share of the bound").
    Rows without step times (vLLM's, which reports no per-call times) are left out."""
    rows = []
    for name, results in speculate.items():
        for r in results:
            shares = r.get("time_shares") or {}
            if shares.get("draft") is None or not r.get("target_step_seconds"):
                continue
            bound = r.get("leviathan_bound")
            rows.append([name + (f" ({r['label']})" if "label" in r else ""), str(r.get("batch_size", 1)),
                         str(r["gamma"]), _fmt(r["temperature"]), _fmt(r["block_efficiency"]),
                         *(f"{100 * shares[k]:.0f}%" for k in ("draft", "target", "decoder")),
                         _fmt(1e3 * r["draft_step_seconds"], ".1f"), _fmt(1e3 * r["verification_seconds"], ".1f"),
                         _fmt(1e3 * r["target_step_seconds"], ".1f"),
                         f"{100 * r['speedup'] / bound:.0f}%" if bound else "n/a"])
    headers = ["stage", "batch", "gamma", "T", "tokens / call", "draft", "target", "decoder", "draft step ms",
               "verification ms", "target step ms", "speedup / bound"]
    return headers, rows


# the fields the speculative table shows in columns of their own: a sweep over any other field labels its rows
_SPEC_COLUMNS = frozenset({"gamma", "batch_size", "draft_quantize", "temperature", "engine", "compile", "onednn"})


def _labelled(marker: dict) -> list[dict]:
    """A speculate stage's results, each with ``label`` (the swept value: a draft by its stage's name) where the
    sweep's field has no column of its own."""
    from seqkd.pipeline.recipe import sweep_label

    results = _as_list(marker["result"])
    sweep = marker.get("sweep") or {}
    if not sweep or sweep["field"] in _SPEC_COLUMNS:
        return results
    tag = "" if sweep["field"] == "draft" else f"{sweep['field']}="
    return [dict(r, label=tag + sweep_label(v)) for r, v in zip(results, sweep["values"])]


def drafts_compared(spec: dict[str, list[dict]]) -> list[str]:
    """One line per stage that sweeps drafts on one target-only baseline: each draft's speedup, and each over the
    first's (e.g. aligned over unaligned)."""
    lines = []
    for name, rs in spec.items():
        if len(rs) < 2 or not all("label" in r for r in rs):
            continue
        each = ", ".join(f"{r['label']} {r['speedup']:.2f}x" + (f" ({sp['min']:.2f}-{sp['max']:.2f})"
                                                                if "min" in (sp := r.get("speedup_spread") or {})
                                                                else "") for r in rs)
        over = ", ".join(f"{r['label']} / {rs[0]['label']} = {r['speedup'] / rs[0]['speedup']:.2f}"
                         for r in rs[1:] if rs[0]["speedup"])
        lines.append(f"Compared on one target-only baseline ({name}, gamma {rs[0]['gamma']}, T "
                     f"{rs[0]['temperature']:g}): {each}" + (f"; speedup {over}" if over else "") + ".")
    return lines


def _relative(x: Any, out: Path, prefixes: list[str] | None = None) -> Any:
    """``x`` with the run directory's paths made relative to it (a report moves with its run, and names no path of
    the machine that made it): ``out`` as given, resolved, and any other spelling of it that the stages recorded
    (a run reached through a symlink, then through its target: a path before ``/stages/`` that resolves to it)."""
    if prefixes is None:
        from seqkd.pipeline.recipe import strings

        spellings = {str(out), str(out.resolve())}
        for s in strings(x):
            for m in re.finditer(r"(/[^\s'\"()\[\]]*?)/stages/", s):
                if m.group(1) not in spellings and os.path.realpath(m.group(1)) == str(out.resolve()):
                    spellings.add(m.group(1))
        prefixes = sorted(spellings, key=len, reverse=True)
    if isinstance(x, str):
        for p in prefixes:
            x = re.sub(re.escape(p) + r"(/|(?![\w.-]))", lambda m: "" if m.group(1) else ".", x)
        return x
    if isinstance(x, dict):
        return {k: _relative(v, out, prefixes) for k, v in x.items()}
    if isinstance(x, list):
        return [_relative(v, out, prefixes) for v in x]
    return x



def _machine_line(env: dict) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    return (f"{env['cpu']['model']}, {env['cpu']['usable_cores']} cores, {env.get('memory_gib')} GiB; {gpus}; "
            f"{env['python']}; {pk}.")


def _summary(sections: dict, markers: dict[str, dict]) -> list[str]:
    """The headline's sentences: each model's greedy BLEU and speed, the gamma chosen on validation prompts, drafts
    compared on one baseline, the best draft speedup, the wall time."""
    lines = []
    rows = sections.get("models", {}).get("rows", [])
    greedy = [r for r in rows if r["beam_size"] == min(x["beam_size"] for x in rows)] if rows else []
    if greedy:
        lines.append("Greedy BLEU (words/s): " + ", ".join(f"{r['model']} {r['bleu']:.2f} ({r['words_per_s']:,.0f})"
                                                          for r in sorted(greedy, key=lambda r: -r["bleu"])) + ".")
    spec = sections.get("drafts", {}).get("speculate", {})
    lines += gamma_chosen_on_val(spec)
    lines += drafts_compared(spec)
    held_out = {n: rs for n, rs in spec.items() if not n.endswith(VAL_SUFFIX)}
    if held_out:
        best = max(((n, r) for n, rs in held_out.items() for r in rs), key=lambda t: t[1]["speedup"])
        lines.append(f"Best speculative speedup: {best[1]['speedup']:.2f}x ({best[0]}, gamma {best[1]['gamma']}, "
                     f"acceptance {best[1]['acceptance_rate']:.3f}).")
    total = sum(m["seconds"] for m in markers.values())
    lines.append(f"{len(markers)} stages, {total / 60:.1f} minutes of stage wall time in all.")
    return lines


# a speculate stage named NAME-val (a gamma sweep on validation prompts) chooses the gamma of the stage NAME (the
# same sweep on the test prompts): the headline reports the test speedup at the gamma chosen there
VAL_SUFFIX = "-val"


def at_gamma_chosen_on_val(spec: dict[str, list[dict]], name: str) -> dict | None:
    """The row of test stage ``name`` at the gamma with the best speedup in ``name-val`` (None where either is
    missing, or the test stage lacks that gamma)."""
    val, test = spec.get(name + VAL_SUFFIX), spec.get(name)
    if not val or not test:
        return None
    g = max(val, key=lambda r: r["speedup"])["gamma"]
    return next((r for r in test if r["gamma"] == g), None)


def gamma_chosen_on_val(spec: dict[str, list[dict]]) -> list[str]:
    """One line per stage ``NAME-val`` beside a stage ``NAME``: the gamma with the best speedup on the validation
    prompts, and the test prompts' speedup and acceptance at that gamma (the test set only reports)."""
    lines = []
    for name in spec:
        r = at_gamma_chosen_on_val(spec, name[: -len(VAL_SUFFIX)]) if name.endswith(VAL_SUFFIX) else None
        if r is not None:
            g, rng = r["gamma"], r.get("speedup_spread") or {}
            lines.append(f"Gamma chosen on the validation prompts ({name}): {g}; on the test prompts "
                         f"({name[: -len(VAL_SUFFIX)]}) at gamma {g}: {r['speedup']:.2f}x"
                         + (f" ({rng['min']:.2f}-{rng['max']:.2f})" if "min" in rng else "")
                         + f", acceptance {r['acceptance_rate']:.3f}.")
    return lines


def _as_list(x):
    return x if isinstance(x, list) else [x]


# --- rendering -------------------------------------------------------------------------------------------------------
def _md(blocks: list[Block], files: Path, title: str) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b[0] == "h2":
            out += [f"## {b[1]}", ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "table":
            out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b[2]] + [""]
        elif b[0] == "img":
            atomic_write_bytes(files / f"{b[1]}.png", b[2])
            out += [f"![{b[3]}]({files.name}/{b[1]}.png)", ""]
        elif b[0] == "pre":
            out += ["```", b[1], "```", ""]
        elif b[0] == "details":
            out += [f"**{b[1]}**", "", "```", b[2], "```", ""]
    return "\n".join(out)


def _html(blocks: list[Block], title: str) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if b[0] == "h2":
            body.append(f"<h2>{e(b[1])}</h2>")
        elif b[0] == "p":
            body.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2])
            wide = ' class="wide"' if len(b[1]) > 10 else ""  # (the speculative table: 16 columns)
            body.append(f"<div class=\"scroll\"><table{wide}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                        "</table></div>")
        elif b[0] == "img":
            src = "data:image/png;base64," + base64.b64encode(b[2]).decode()
            body.append(f'<figure><img src="{src}" alt="{e(b[3])}"><figcaption>{e(b[3])}</figcaption></figure>')
        elif b[0] == "pre":
            body.append(f"<pre>{e(b[1])}</pre>")
        elif b[0] == "details":  # long and rarely read: folded
            body.append(f"<details><summary>{e(b[1])}</summary><pre>{e(b[2])}</pre></details>")
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
           "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
           "table.wide{font-size:12px}table.wide td,table.wide th{padding:3px 5px}table.wide td{white-space:nowrap}"
           "div.scroll{overflow-x:auto}"
           "img{max-width:100%}figcaption{font-size:13px;color:#555}pre{background:#f6f6f6;padding:1em;"
           "overflow-x:auto;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{css}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write_report(out: str | Path, recipe, steps, markers: dict[str, dict], *, argv: list[str] | None = None
                 ) -> dict[str, Path]:
    """Write ``report.{json,md,html}`` in ``out`` from the finished stages' ``markers``; returns the three paths."""
    from seqkd.machine import machine

    out = Path(out)
    plt = _pyplot()
    blocks: list[Block] = []
    if recipe.description:
        blocks.append(("p", recipe.description))
    if plt is None:
        blocks.append(("p", "Plots left out: matplotlib is not installed (pip install seqkd[bench])."))
    sections: dict[str, Any] = {}
    for key, fn in (("models", _models), ("training", _training), ("corpus", _corpus), ("drafts", _drafts)):
        b, d = fn(markers, plt)
        blocks += b
        if d:
            sections[key] = d
    ran = {st.stage.name: st.action for st in steps}
    stage_rows = [[n, m["job"], "cached" if ran.get(n) == "cached" else "ran", _fmt(m["seconds"], ".1f"),
                   f"stages/{m['dir']}"] for n, m in markers.items()]
    blocks += [("h2", "Stages"), ("table", ["stage", "job", "this run", "wall time (s)", "directory"], stage_rows)]
    env = machine()
    cmd = _relative(" ".join(argv), out) if argv else f"seqkd run {recipe.name}"
    blocks += [("h2", "Machine, versions, command"), ("p", _machine_line(env)),
               ("pre", cmd + (("\noverrides: " + " ".join(recipe.overrides)) if recipe.overrides else "")),
               ("details", "the machine and versions (JSON)", json.dumps(env, indent=1)),
               ("details", f"the recipe ({recipe.name})", recipe.source.strip())]
    at = 1 if recipe.description else 0
    summary = _summary(sections, markers)
    blocks[at:at] = [("h2", "Summary"), ("p", " ".join(summary))]
    title = f"seqkd run {recipe.name}"
    report = {"recipe": recipe.name, "description": recipe.description, "overrides": recipe.overrides,
              "command": argv, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": env, "stages": {n: {"job": m["job"], "key": m["key"], "seconds": m["seconds"],
                                             "this_run": "cached" if ran.get(n) == "cached" else "ran"}
                                         for n, m in markers.items()},
              "summary": summary, **sections}
    report = _relative(report, out)
    blocks = [tuple(_relative(list(b), out) if b[0] != "img" else b) for b in blocks]  # the text, not the PNGs
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    files = out / "report_files"
    files.mkdir(exist_ok=True)
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], _md(blocks, files, title) + "\n")
    atomic_write_text(paths["html"], _html(blocks, title))
    return paths
