"""The ``seqkd`` command line: parses, calls the library, prints. One subcommand per job.

Every subcommand is built from its job's dataclasses in :mod:`seqkd.config`, field by field as
``transformers.HfArgumentParser`` builds them (``Literal`` fields become choices, shown in ``--help``), and every
subcommand takes ``--config FILE`` (YAML or JSON, keys = field names) whose values the flags override. Building the
parser imports neither torch, transformers nor any trainer: the handlers import what their job needs when they run.

User errors (:class:`seqkd.errors.SeqkdError`, and the parser's own) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable, Literal

from seqkd import config as C
from seqkd.errors import SeqkdError


# --- handlers: each gets its configs (in the order the command declares them) and the argv --------------------------
def cmd_data_check(a: C.DataCheckConfig, argv) -> None:
    from seqkd.data.files import read_lines, read_parallel

    if a.target or a.source.endswith((".tsv", ".jsonl", ".tsv.gz", ".jsonl.gz")):
        _, stats = read_parallel(a.source, a.target, strict=a.strict, max_chars=a.max_chars)
    else:
        _, stats = read_lines(a.source, strict=a.strict, max_chars=a.max_chars)
    if a.strict and stats.kept == 0:
        raise SeqkdError(f"{a.source}: no examples (--strict)")
    print(stats)


def cmd_data_path(a: C.DataPathConfig, argv) -> None:
    from seqkd.data.registry import load_text, parallel_files, resolve_file

    if a.name == "tinyshakespeare":
        load_text(a.name)
        print(resolve_file("tinyshakespeare", "input.txt"))
        return
    for p in parallel_files(a.name, a.split):
        print(p)


def cmd_tokenizer_train(a: C.TokenizerTrainConfig, argv) -> None:
    from seqkd.models.tokenizer import train_tokenizer_job

    r = train_tokenizer_job(a)
    if r["target_tokens"] is not None:
        print(f"tokenizer(s) written to {a.out}: source {r['source_tokens']} tokens, target {r['target_tokens']} "
              "tokens")
    else:
        print(f"tokenizer written to {a.out}: {r['source_tokens']} tokens")


def cmd_model_info(a: C.ModelInfoConfig, argv) -> None:
    from seqkd.models import PRESETS, build_model, describe, load_model

    model = build_model(a.model, vocab_size=a.vocab_size) if a.model in PRESETS else load_model(a.model)
    print(describe(model))


def cmd_model_convert_gguf(a: C.ConvertGgufConfig, argv) -> None:
    from seqkd.models import convert_gguf, smollm2_gguf_path

    src = smollm2_gguf_path() if a.gguf == "smollm2" else Path(a.gguf)
    out = convert_gguf(src, a.out)
    print(f"converted {src} -> {out}")


def cmd_train(a: C.TrainConfig, argv) -> None:
    from seqkd.student.train import train

    _report_training(a, train(a), "trained", "model")


def _report_training(a: C.TrainConfig, summary: dict, verb: str, what: str, extra: str = "") -> None:
    """One line for a finished training job (train and distill): steps, epochs, why it stopped, speed, best."""
    why = {"early_stopping": f"stopped early, --patience {a.patience}", "max_minutes": "--max-minutes reached",
           "max_steps": f"--epochs {a.epochs:g}" if a.epochs is not None else f"--max-steps {a.max_steps}"}
    reason = why.get(summary.get("stop_reason"), f"--max-steps {a.max_steps}")
    if summary.get("already_finished"):
        print(f"{a.out}: already finished ({summary['steps']} steps, {reason}); nothing to do")
        return
    if not summary.get("is_main_process", True):
        return
    best, speed = summary.get("best_metric"), summary.get("train_tokens_per_s")
    print(f"{verb} {summary['steps']} steps ({summary.get('epochs', 0):.2f} epochs; {reason}) in "
          f"{summary['seconds']:.0f}s ({f'{speed:.0f}' if speed else 'n/a'} tokens/s{extra}); {what}: {a.out}"
          + (f"; best validation {best:.2f} at step {summary.get('best_step')}" if best is not None else ""))


def _translator(model_dir: str, d: C.TranslateSettings):
    """The model, ready to decode in the chosen engine; a wrong engine for the directory is a one-line error before
    anything is loaded."""
    from seqkd.deploy.ct2 import is_ct2_export
    from seqkd.evaluate import load_translator

    if d.engine == "ct2" and not is_ct2_export(model_dir):
        raise SeqkdError(f"{model_dir} is not a CTranslate2 export; make one with: "
                         f"seqkd export --model {model_dir} --out DIR, then --engine ct2 --model DIR")
    return load_translator(model_dir, engine=d.engine, threads=d.threads)


def cmd_translate(a: C.TranslateConfig, d: C.TranslateSettings, argv) -> None:
    from seqkd.data.files import read_lines, write_lines
    from seqkd.evaluate import timed
    from seqkd.io import check_writable

    lines, _ = read_lines(a.input, keep_empty=True)  # an empty line translates to an empty line
    check_writable(a.output)
    translator = _translator(a.model, d)
    hyps, speed = timed(translator, lines, progress=True, **d.decode_kwargs())
    write_lines(a.output, hyps)
    print(f"{speed.sentences} sentences -> {a.output}: {speed}", file=sys.stderr)


def cmd_eval(a: C.EvalConfig, d: C.TranslateSettings, argv) -> None:
    from seqkd.data.files import read_lines, write_lines
    from seqkd.evaluate import score, timed

    refs = read_lines(a.ref, keep_empty=True)[0]
    result: dict = {}
    if a.model:
        srcs = read_lines(a.src, keep_empty=True)[0]
        translator = _translator(a.model, d)
        hyps, speed = timed(translator, srcs, progress=True, **d.decode_kwargs())
        result["speed"] = speed.as_dict()
        if a.hyp:
            write_lines(a.hyp, hyps)
    else:
        hyps = read_lines(a.hyp, keep_empty=True)[0]  # an empty hypothesis still pairs with its reference
    scores = score(hyps, refs)
    result["scores"] = scores.as_dict()
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(scores)
    if a.model:
        print(f"speed: {speed}")


def cmd_export(a: C.ExportConfig, argv) -> None:
    from seqkd.deploy.ct2 import export_ctranslate2

    out = export_ctranslate2(a.model, a.out, quantization=a.quantization, force=a.force)
    print(f"exported {a.model} -> {out} (CTranslate2, {a.quantization}); decode it with --engine ct2 --model {out}")


def cmd_generate(a: C.GenerateConfig, settings: C.DecodeSettings, argv) -> None:
    from seqkd.teacher.corpus import format_summary
    from seqkd.teacher.generate import generate

    print(format_summary(generate(a, settings, command=argv)))


def cmd_merge(a: C.MergeConfig, argv) -> None:
    from seqkd.teacher.corpus import merge_corpus, read_manifest

    path = merge_corpus(a.corpus)
    print(f"{path}: {read_manifest(a.corpus)['merged']}")


def cmd_select(a: C.SelectConfig, argv) -> None:
    from seqkd.evaluate import Scores
    from seqkd.teacher.selection import select_to_file

    r = select_to_file(a.corpus, a.out, a.strategy, a.metric, references=a.references)
    line = f"{r['examples']} training examples ({a.strategy}) -> {a.out}"
    if "scores" in r:
        line += f"; {Scores(**r['scores'])}"
    print(line)


def cmd_distill(a: C.DistillConfig, argv) -> None:
    from seqkd.student.distill import distill

    summary = distill(a)
    extra = f", on-policy fraction {summary['onpolicy_fraction']:.2f}" if "onpolicy_fraction" in summary else ""
    _report_training(a, summary, "distilled", "student", extra)


def cmd_speculate(a: C.SpeculateConfig, argv) -> None:
    from seqkd.speculative.runners import speculate

    print(format_spec_report(speculate(a)))


def _opt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def cmd_draft_init(a: C.DraftInitConfig, argv) -> None:
    from seqkd.speculative.draft import init_draft

    r = init_draft(a)
    for c in r.get("choices", []):
        print(f"layers {c['layers_spec']:>12s}: acceptance {c['acceptance_rate']:.3f}  c {_opt(c['cost_ratio'])}  "
              f"v {_opt(c['verification_cost'])}  speedup {c['speedup']:.2f}x"
              + ("  <- kept" if c["layers_spec"] == r["chosen"] else ""))
    print(f"draft: {a.out} (target layers {r['layers']} of {r['target_layers']}; {r['params'] / 1e6:.1f}M "
          f"parameters, {r['non_embedding_params'] / 1e6:.1f}M outside the embeddings; target "
          f"{r['target_params'] / 1e6:.1f}M)")


def cmd_draft_vocab(a: C.DraftVocabConfig, argv) -> None:
    from seqkd.speculative.draft import prune_draft_vocab

    r = prune_draft_vocab(a)
    print(f"draft: {a.out} (output layer {r['vocab_size']} -> {r['top']} rows, covering {r['coverage']:.1%} of the "
          f"{r['corpus_tokens']:,} corpus tokens; {r['params'] / 1e6:.1f}M parameters, was "
          f"{r['params_before'] / 1e6:.1f}M); decode it with seqkd speculate --engine seqkd")


def cmd_align(a: C.AlignConfig, argv) -> None:
    from seqkd.speculative.align import align

    r = align(a)
    print(f"aligned draft: {a.out} ({r['train']['steps']} steps, {r['train']['seconds']:.0f}s, data {a.data}, "
          f"divergence {a.divergence}" + (f", select fraction {a.select_fraction}" if a.select_fraction < 1 else "")
          + ")")
    for name in ("before", "after"):
        m = r[name]
        print(f"  {name:6s} acceptance {m['acceptance_rate']:.3f}  per-token {m['verified_acceptance_rate']:.3f}  "
              f"block efficiency {m['block_efficiency']:.2f}  speedup {m['speedup']:.2f}x")


def format_spec_report(r: dict) -> str:
    """A few lines: acceptance, block efficiency, speeds and speedup (and the bound where measured)."""
    engine = r["engine"] + (" (compiled)" if r.get("compile") else "") + (" (oneDNN)" if r.get("onednn") else "") + (
        " (int8 draft)" if r.get("draft_quantize", "none") != "none" else "")
    lines = [f"{engine}: {r['prompts']} prompts, gamma {r['gamma']}, temperature {r['temperature']}",
             f"  acceptance rate {r['acceptance_rate']:.3f} ({r['accepted']} accepted / {r['drafted']} drafted)   "
             f"block efficiency {r['block_efficiency']:.2f} tokens/target call ({r['target_calls']} calls)"]
    if "verified_acceptance_rate" in r:
        lines.append(f"  per-token acceptance {r['verified_acceptance_rate']:.3f} (expected on the same contexts "
                     f"{r['analytic_acceptance']:.3f})")
    if r.get("cost_ratio") is not None:
        lines.append(f"  cost ratio c {r['cost_ratio']:.3f} (draft step / target step)   verification cost v "
                     f"{r['verification_cost']:.2f} target steps")
    if r.get("per_position_acceptance"):
        lines.append("  per position: " + " ".join(f"{x:.2f}" for x in r["per_position_acceptance"]))
    line = (f"  target-only {r['target_only_tokens_per_s']:.1f} tok/s   speculative "
            f"{r['speculative_tokens_per_s']:.1f} tok/s   speedup {r['speedup']:.2f}x")
    if r.get("leviathan_bound") is not None:
        line += (f"   (Leviathan bound {r['leviathan_bound']:.2f}x; with the measured v: "
                 f"{r['predicted_speedup']:.2f}x)")
    lines.append(line)
    if r.get("comparison"):
        c = r["comparison"]
        lines.append(f"  tokens/s over {r['passes']} interleaved pass(es), median (min-max); speedup over HF generate:")
        for k, v in c["tokens_per_s"].items():
            sp = c["speedup_over_baseline"].get(k)
            lines.append(f"    {k:18s} {v['median']:8.1f} ({v['min']:.1f}-{v['max']:.1f})"
                         + (f"   {sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})" if sp else "   (baseline)"))
    return "\n".join(lines)


def cmd_run(a: C.RunConfig, argv) -> None:
    from seqkd.pipeline.run import main_run

    main_run(a, argv)


# --- the command table: (words, help, config classes, handler) ------------------------------------------------------
COMMANDS: list[tuple[tuple[str, ...], str, tuple[type, ...], Callable]] = [
    (("run",), "a whole pipeline from a recipe, in cached, resumable stages, with a report (the main job: "
     "seqkd run synthetic)", (C.RunConfig,), cmd_run),
    (("data", "check"), "validate a corpus (two aligned files, .tsv, .jsonl) or a prompt file", (C.DataCheckConfig,),
     cmd_data_check),
    (("data", "path"), "print the files of a registered dataset (downloading them if needed)", (C.DataPathConfig,),
     cmd_data_path),
    (("tokenizer", "train"), "train sentencepiece and save a Hugging Face fast tokenizer",
     (C.TokenizerTrainConfig,), cmd_tokenizer_train),
    (("model", "info"), "print family, size and parameter count of a preset or model directory",
     (C.ModelInfoConfig,), cmd_model_info),
    (("model", "convert-gguf"), "convert a GGUF file into a safetensors model directory", (C.ConvertGgufConfig,),
     cmd_model_convert_gguf),
    (("train",), "train a translation model with cross-entropy (either family)", (C.TrainConfig,), cmd_train),
    (("distill",), "train a student from a teacher: seq-KD, word-KD (online / offline top-k), on-policy",
     (C.DistillConfig,), cmd_distill),
    (("speculate",), "speculative decoding with a draft: acceptance, block efficiency, speedup (seqkd's exact "
     "decoder, HF assisted generation, or vLLM)", (C.SpeculateConfig,), cmd_speculate),
    (("draft", "init"), "make a speculative-decoding draft from its target: a subset of its layers, its "
     "embeddings and output layer", (C.DraftInitConfig,), cmd_draft_init),
    (("draft", "vocab"), "prune a draft's output layer to the target's most frequent tokens (exact decoding, "
     "seqkd's decoder only)", (C.DraftVocabConfig,), cmd_draft_vocab),
    (("align",), "DistillSpec: align a draft to its target (on-policy / target / fixed data, TVD / KL / JSD), "
     "acceptance before and after", (C.AlignConfig,), cmd_align),
    (("translate",), "translate a file with a trained model", (C.TranslateConfig, C.TranslateSettings),
     cmd_translate),
    (("eval",), "BLEU/chrF (sacrebleu) of hypotheses, or of a model's translations + speed",
     (C.EvalConfig, C.TranslateSettings), cmd_eval),
    (("export",), "export a trained model to CTranslate2 (float32 or int8) for fast CPU decoding (--engine ct2)",
     (C.ExportConfig,), cmd_export),
    (("generate",), "a teacher decodes a corpus into a distillation corpus (resumable, shardable)",
     (C.GenerateConfig, C.DecodeSettings), cmd_generate),
    (("merge",), "check that every shard of a corpus is complete and write corpus.jsonl", (C.MergeConfig,),
     cmd_merge),
    (("select",), "turn a corpus into student training data (top, seq-inter, all)", (C.SelectConfig,), cmd_select),
]
GROUPS = {"data": "check data files, locate registered datasets", "tokenizer": "train tokenizers",
          "model": "presets, model info, GGUF conversion", "draft": "make speculative-decoding drafts"}


def _string_to_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    hint = ""
    if "=" in v:  # `--dry-run a.b=1`: a bare true/false flag takes the next word as its value (as HfArgumentParser)
        hint = ": a true/false flag reads the word after it; put KEY=VALUE settings before it, or write FLAG true"
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}{hint}")


def _choice_type(choices: tuple) -> Callable[[str], Any]:
    """The command-line string -> the choice it names (so Literal[1, 2] gives ints, like HfArgumentParser)."""
    by_text = {str(c): c for c in choices}
    return lambda text: by_text.get(text, text)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of ``cls`` with the same strings, types, choices, defaults and ``--no-`` complements as
    ``transformers.HfArgumentParser`` builds (``tests/test_cli.py`` checks this for every command against
    HfArgumentParser itself). Not HfArgumentParser itself: importing transformers costs more than a second, and
    ``seqkd --help`` must start at once. Fields with ``metadata["positional"]`` become positional arguments."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        kw: dict[str, Any] = {k: v for k, v in f.metadata.items() if k not in ("positional", "aliases")}
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if f.metadata.get("positional"):
            many = typing.get_origin(tp) is list
            parser.add_argument(f.name, nargs="*" if many else "?" if has_default else None, default=default,
                                help=kw["help"])
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))  # X | None -> X
        options = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else []) + list(
            f.metadata.get("aliases", []))
        if typing.get_origin(tp) is Literal:
            kw.update(choices=typing.get_args(tp), type=_choice_type(typing.get_args(tp)))
        elif tp is bool:
            kw.update(type=_string_to_bool, nargs="?", const=True)
            default = bool(default)
            has_default = True
        elif typing.get_origin(tp) is list:
            kw.update(type=typing.get_args(tp)[0], nargs="+")
        else:
            kw["type"] = tp
        if has_default:
            kw["default"] = default
        else:
            kw["required"] = True
        parser.add_argument(*options, **kw)
        if tp is bool and default is True:
            parser.add_argument(f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}", action="store_false",
                                dest=f.name, help=kw["help"], default=False)


class Parser(argparse.ArgumentParser):
    """argparse with the dataclass fields of ``dataclass_types`` as options, and one-line errors."""

    def __init__(self, *args, dataclass_types: tuple[type, ...] = (), **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        for cls in dataclass_types:
            add_dataclass_arguments(self, cls)

    def error(self, message: str):
        where = self.prog.removeprefix("seqkd").strip()
        self.exit(2, f"seqkd: error: {where + ': ' if where else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (every subcommand from its dataclasses); imports no torch."""
    from seqkd import __version__

    top = Parser(prog="seqkd", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"seqkd {__version__}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)
    groups: dict[str, Any] = {}
    for words, help_, classes, func in COMMANDS:
        where = sub
        if len(words) == 2:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=GROUPS[words[0]])
                groups[words[0]] = g.add_subparsers(dest=f"{words[0]}_command", required=True, parser_class=Parser)
            where = groups[words[0]]
        p = where.add_parser(words[-1], help=help_, description=classes[0].__doc__, dataclass_types=classes)
        p.add_argument("--config", metavar="FILE", default=None,
                       help="YAML or JSON file of field: value (the flags' names with _ or -); flags override it")
        p.set_defaults(func=func, config_classes=classes)
    return top


def _find_subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser | None:
    """The parser of the subcommand named in ``argv`` (None if argv names none)."""
    p = parser
    for word in argv:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return p
        if word not in subs[0].choices:
            return None
        p = subs[0].choices[word]
    return p if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions) else None


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``--config FILE``: the file's values become the subcommand's defaults (so any flag still overrides them)."""
    path = _config_path(argv)
    if path is None:
        return
    sub = _find_subparser(parser, argv)
    if sub is None:
        raise SeqkdError("--config goes after a subcommand (e.g. seqkd distill --config distill.yaml)")
    values = C.load_config_file(path)
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config", "func", "config_classes")}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise SeqkdError(f"--config {path}: unknown field(s) {', '.join(unknown)} for `seqkd "
                         f"{sub.prog.removeprefix('seqkd ')}`")
    for action in sub._actions:
        if action.dest in values:
            action.default = values[action.dest]
            action.required = False
            if not action.option_strings and action.nargs is None:
                action.nargs = "?"


def parse(argv: list[str]) -> tuple[Callable, list]:
    """argv -> (handler, its config objects): every value is parsed and validated here, before any job starts."""
    parser = build_parser()
    apply_config_file(parser, argv)
    ns, extra = parser.parse_known_args(argv)
    if extra and getattr(ns, "overrides", None) is not None and not any(x.startswith("-") for x in extra):
        ns.overrides = [*ns.overrides, *extra]  # `seqkd run RECIPE --out DIR k=v`: overrides after an option
    elif extra:
        parser.parse_args(argv)  # the parser's own one-line error for what it does not know
    cfgs = [cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init})
            for cls in ns.config_classes]
    return ns.func, cfgs


def _quiet_libraries() -> None:
    """Per-file 'Loading weights' / 'Writing model shards' bars would bury seqkd's own output. transformers reads
    this setting when it is imported (so a job that never loads a model never imports it here)."""
    import os

    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    try:
        try:
            func, cfgs = parse(argv)
        except SystemExit as e:  # --help, --version, or the parser's one-line error
            return int(e.code or 0)
        _quiet_libraries()
        func(*cfgs, argv)  # argv: recorded in corpus manifests
    except SeqkdError as e:
        print(f"seqkd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqkd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `seqkd ... | head`: the reader left; no traceback (as Python's docs advise)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
