"""CTranslate2: export a seqkd model (either family) and translate with it on CPU, in float32 or int8.

CTranslate2 is the engine MT students are deployed with (OPUS-MT's and Bergamot's practice: C++ kernels, int8 GEMMs,
no Python in the decoding loop). Its stock Marian loader assumes an OPUS-MT checkpoint: ``<pad>`` is the *last*
vocabulary entry (it deletes that row) and the decoder starts from a zero vector. In a seqkd Marian ``<pad>`` is id 0
and the decoder starts from pad's *learned* embedding, so :class:`_MarianLoader` keeps every row and starts from the
pad token; the exported model then computes what the HF model computes (an OPUS-MT checkpoint too, whose pad row is
zero). Llama goes through CTranslate2's own loader; it takes the layers out of the model it converts, so export
always loads a fresh copy from disk.

An export directory holds CTranslate2's ``model.bin`` + vocabularies, seqkd's tokenizers (the same files as the HF
model directory) and :data:`EXPORT_FILE`, which says what it is. Only this module imports ``ctranslate2``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from seqkd.config import DEFAULT_MAX_SOURCE_LEN
from seqkd.errors import SeqkdError

EXPORT_FILE = "seqkd_export.json"  # {"format": "ctranslate2", "family", "quantization", "architecture", "parameters"}
QUANTIZATIONS = ("float32", "int8")
INSTALL_HINT = "pip install ctranslate2 (or: pip install 'seqkd[ct2]')"


def _ct2():
    try:
        import ctranslate2
    except ImportError:
        raise SeqkdError(f"the ct2 engine needs CTranslate2, which is not installed: {INSTALL_HINT}") from None
    return ctranslate2


def is_ct2_export(path: str | os.PathLike) -> bool:
    """A directory written by :func:`export_ctranslate2`."""
    return (Path(path) / EXPORT_FILE).is_file() and (Path(path) / "model.bin").is_file()


def check_exportable(model_dir: str | os.PathLike) -> str:
    """The model's architecture ("marian" or "llama") from its config alone; a one-line error for anything else.
    Runs before any weights are loaded."""
    from seqkd.io import is_model_dir

    p = Path(model_dir)
    if is_ct2_export(p):
        raise SeqkdError(f"{p} is already a CTranslate2 export; export the Hugging Face model it came from")
    if not is_model_dir(p):
        raise SeqkdError(f"{p}: not a model directory (config.json + weights)")
    model_type = json.loads((p / "config.json").read_text()).get("model_type")
    if model_type not in ("marian", "llama"):
        raise SeqkdError(f"{p}: CTranslate2 export supports seqkd's two architectures, marian (encoder-decoder) and "
                         f"llama (decoder-only); this model is {model_type!r}")
    return model_type


def _vocabulary(tok, size: int) -> list[str]:
    """Token strings by id, padded to the model's ``size`` (an embedding may have rows no token uses): CTranslate2
    looks tokens up by string, so every id needs a distinct one."""
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    if len(tokens) > size:
        raise SeqkdError(f"the tokenizer has {len(tokens)} tokens but the model only {size} embedding rows")
    tokens += [f"<seqkd_unused_{i}>" for i in range(size - len(tokens))]
    if len(set(tokens)) != len(tokens):
        raise SeqkdError("the tokenizer maps two ids to the same token string; CTranslate2 needs distinct tokens")
    return tokens


def _loaders(ct2):
    """seqkd's loaders, built on CTranslate2's (defined here because their base classes need ctranslate2)."""
    from ctranslate2.converters import transformers as T

    class _MarianLoader(T.MarianMTLoader):
        """The stock Marian loader without its OPUS-MT assumptions (see the module docstring)."""

        def __init__(self, src_tok, tgt_tok):
            self.src_tok, self.tgt_tok = src_tok, tgt_tok

        def get_model_spec(self, model):
            model.config.normalize_before = False  # Marian is post-norm, without an embedding layer norm
            model.config.normalize_embedding = False
            return T.BartLoader.get_model_spec(self, model)  # every vocabulary row kept

        def set_decoder(self, spec, decoder):
            T.BartLoader.set_decoder(self, spec, decoder)
            spec.start_from_zero_embedding = False  # HF starts from decoder_start_token_id's own embedding row

        def set_config(self, config, model, tokenizer):
            tok = self.tgt_tok
            config.bos_token = tok.bos_token
            config.eos_token = tok.eos_token
            config.unk_token = tok.unk_token
            config.decoder_start_token = tok.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def get_vocabulary(self, model, tokenizer):
            c = model.config
            return (_vocabulary(self.src_tok, c.vocab_size),
                    _vocabulary(self.tgt_tok, getattr(c, "decoder_vocab_size", None) or c.vocab_size))

        def set_vocabulary(self, spec, tokens):
            src, tgt = tokens
            spec.register_source_vocabulary(src)
            spec.register_target_vocabulary(tgt)

    class _LlamaLoader(T.LlamaLoader):
        def __init__(self, tok):
            self.tok = tok

        def get_vocabulary(self, model, tokenizer):
            return _vocabulary(self.tok, model.config.vocab_size)

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, self.tok)

    class _Converter(ct2.converters.Converter):
        def __init__(self, model, loader):
            self.model, self.loader = model, loader

        def _load(self):
            return self.loader(self.model, None)

    return _MarianLoader, _LlamaLoader, _Converter


def export_ctranslate2(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quantization: str = "float32",
    force: bool = False,
) -> Path:
    """Convert the HF model in ``model_dir`` (model + tokenizers) into a CTranslate2 model in ``out_dir``.

    quantization: ``float32`` (output equal to HF's up to float rounding) or ``int8`` (weights in int8, about a
    quarter of the size; CTranslate2 computes the GEMMs in int8 on CPU). The directory appears complete or not at all:
    it is written beside ``out_dir`` and renamed into place. ``force`` replaces an existing export.
    """
    from seqkd.io import check_writable, staged_dir
    from seqkd.models import count_parameters, load_model
    from seqkd.models.tokenizer import load_tokenizers, save_tokenizers

    if quantization not in QUANTIZATIONS:
        raise SeqkdError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    arch = check_exportable(model_dir)
    out = Path(out_dir)
    if out.exists() and not (force and is_ct2_export(out)):
        hint = " (--force replaces it)" if is_ct2_export(out) else ""
        raise SeqkdError(f"{out} already exists{hint}")
    check_writable(out, directory=True)
    ct2 = _ct2()
    marian_loader, llama_loader, converter = _loaders(ct2)

    src_tok, tgt_tok = load_tokenizers(model_dir)
    model = load_model(model_dir)  # a fresh copy: the llama loader takes the layers out of what it converts
    params = count_parameters(model)
    loader = marian_loader(src_tok, tgt_tok) if arch == "marian" else llama_loader(tgt_tok)
    with staged_dir(out) as staged:
        converter(model, loader).convert(str(staged), quantization=quantization, force=True)  # force: it exists
        save_tokenizers(src_tok, tgt_tok, staged)
        meta = {"format": "ctranslate2", "architecture": arch, "family": "seq2seq" if arch == "marian" else "causal",
                "quantization": quantization, "ctranslate2": ct2.__version__, "parameters": params}
        (staged / EXPORT_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return out


class CT2Translator:
    """A CTranslate2 export, loaded for translation: :meth:`translate` takes the arguments of
    :func:`seqkd.teacher.decoding.translate` and encodes prompts with the same :class:`~seqkd.data.prompts.Format`.

    threads: CPU cores to use (0 = every core this process may use). They are spent as CTranslate2
    ``inter_threads`` replicas of one thread each, and every batch is split evenly across them, not as
    ``intra_threads`` inside one replica: with CTranslate2 4.8.5 (MKL, packed GEMM on by default) on a 2-core VM,
    two intra-op threads made a d256 Marian 1.4-2.4× slower at batch 64 and 4-10× slower at batch 1 than one
    (int8 and float32 alike; ``CT2_PACKED_GEMM=0`` repairs float32 only), while two one-thread replicas decode a
    64-sentence batch 1.9× faster than one. A batch of one sentence thus runs on one core. Seeded sampling is
    reproducible with ``threads=1`` only (replicas draw from their own generators).
    """

    engine = "ct2"

    def __init__(self, export_dir: str | os.PathLike, *, threads: int = 0, device: str = "cpu"):
        from seqkd.models.tokenizer import load_tokenizers

        p = Path(export_dir)
        if not is_ct2_export(p):
            raise SeqkdError(f"{p} is not a CTranslate2 export; make one with: seqkd export --model {p} --out DIR")
        ct2 = _ct2()
        self.meta: dict[str, Any] = json.loads((p / EXPORT_FILE).read_text())
        self.family: str = self.meta["family"]
        self.src_tok, self.tgt_tok = load_tokenizers(p)
        cls = ct2.Translator if self.family == "seq2seq" else ct2.Generator
        # compute_type "default": what the export holds (int8 weights compute in int8, float32 in float32)
        self.threads = threads or len(os.sched_getaffinity(0))  # explicit, so that a reported rate names it
        self.model = cls(str(p), device=device, compute_type="default", inter_threads=self.threads,
                         intra_threads=1)
        self._ct2 = ct2

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        beam_size: int = 1,
        num_return_sequences: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        batch_size: int = 64,
        max_new_tokens: int = 128,
        progress: bool = False,
    ) -> list[list[list[int]]]:
        """Decode prompt id lists (:meth:`Format.prompt_ids`, as :func:`seqkd.teacher.decoding.generate_ids` takes
        them); per prompt, ``num_return_sequences`` lists of target ids without the eos, best first. Batches are
        formed over prompts sorted by length, as HF decoding forms them."""
        opts: dict[str, Any] = dict(beam_size=beam_size, num_hypotheses=num_return_sequences,
                                    sampling_topk=(top_k if do_sample else 1), return_end_token=False)
        if do_sample:
            opts.update(sampling_temperature=temperature, sampling_topp=top_p)
        to_tokens, to_ids = self.src_tok.convert_ids_to_tokens, self.tgt_tok.convert_tokens_to_ids
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        decoded: list[list[list[int]]] = [[] for _ in prompts]
        bar = tqdm(total=len(prompts), desc="decoding (ct2)", unit="sent", disable=not progress, leave=False)
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            batch = [to_tokens(list(prompts[i])) for i in idx]
            share = -(-len(batch) // self.threads)  # ceil: one sub-batch per replica, decoded in parallel
            if self.family == "seq2seq":
                # min_decoding_length 0: HF lets eos come first; max_input_length 0: Format already cut the source
                res = self.model.translate_batch(batch, max_decoding_length=max_new_tokens, min_decoding_length=0,
                                                 max_input_length=0, max_batch_size=share, **opts)
                outs = [r.hypotheses for r in res]
            else:
                res = self.model.generate_batch(batch, max_length=max_new_tokens, min_length=0,
                                                include_prompt_in_result=False, max_batch_size=share, **opts)
                outs = [r.sequences for r in res]
            for i, hyps in zip(idx, outs):
                decoded[i] = [to_ids(h) for h in hyps]
            bar.update(len(idx))
        bar.close()
        return decoded

    def translate(
        self,
        sources: Sequence[str],
        *,
        num_return_sequences: int = 1,
        max_source_len: int = DEFAULT_MAX_SOURCE_LEN,
        seed: int | None = None,
        prompt_format: str = "auto",
        **decode: Any,
    ) -> list[str] | list[list[str]]:
        """Translate ``sources`` (one string per source, or a list of ``num_return_sequences``); an empty source
        translates to ``""``. Takes the arguments of :func:`seqkd.teacher.decoding.translate` (``decode``: those of
        :meth:`generate_ids`); prompts come from the same :class:`~seqkd.data.prompts.Format`."""
        from seqkd.data.prompts import Format

        fmt = Format.from_tokenizer(self.family, self.tgt_tok, prompt_format)
        keep = [i for i, s in enumerate(sources) if s.strip()]
        prompts = fmt.encode(self.src_tok, [sources[i] for i in keep], max_source_len)
        if seed is not None:
            self._ct2.set_random_seed(seed)
        decoded = self.generate_ids(prompts, num_return_sequences=num_return_sequences, **decode)
        texts = [[""] * num_return_sequences for _ in sources]
        for i, hyps in zip(keep, decoded):
            texts[i] = [self.tgt_tok.decode(ids, skip_special_tokens=True) for ids in hyps]
        return [t[0] for t in texts] if num_return_sequences == 1 else texts
