"""Train a sentencepiece model and turn it into a Hugging Face fast tokenizer with identical ids.

The fast tokenizer is built directly with the ``tokenizers`` library from the sentencepiece model proto
(Unigram or BPE model, Precompiled normalizer, Metaspace pre-tokenizer and decoder), because the
transformers slow->fast conversion path is version-dependent (transformers 5 can silently produce an
empty vocabulary from ``LlamaTokenizer(vocab_file=...)``). Saved with ``save_pretrained`` so that
``AutoTokenizer.from_pretrained(dir)`` and vLLM load it.

Special tokens (same ids in every seqkd tokenizer)::

    <pad>=0  <unk>=1  <s>=2  </s>=3  <sep>=4

The tokenizer adds no special tokens when encoding (``add_special_tokens=True`` adds nothing):
:mod:`seqkd.data.prompts` adds bos/eos/sep itself. Known difference from sentencepiece: text that
literally contains a special-token string such as ``"</s>"`` is encoded to that token's id (as every
HF tokenizer does), where sentencepiece would split it into ordinary pieces; and the spaces next
to a literal "<sep>" differ ("a <sep> b": sentencepiece "▁a" "▁" "<sep>" "▁b", here "▁a" "<sep>" "▁b";
"x<sep>y": "y" vs "▁y"), as the text on each side of an added token is tokenized on its own. Neither
happens for text seqkd encodes (it adds special ids itself). And a unigram model
can break an exact tie between two segmentations (e.g. "ooo" = "oo"+"o" = "o"+"oo", equal scores)
differently, since sentencepiece sums scores in float32 and ``tokenizers`` in float64: 1 line in
the 62k of all Multi30k with an 8000-piece unigram model; BPE has no ties.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from seqkd.errors import DataError, SeqkdError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, SEP = "<pad>", "<unk>", "<s>", "</s>", "<sep>"
SPECIALS: dict[str, int] = {PAD: 0, UNK: 1, BOS: 2, EOS: 3, SEP: 4}
SPM_FILE = "spm.model"
SOURCE_SUBDIR = "source_tokenizer"  # where a separate source tokenizer lives inside a model/tokenizer dir

# sentencepiece_model.proto enums
_UNIGRAM, _BPE = 1, 2
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED = 1, 2, 3, 4, 5

TextsOrFiles = Sequence[str] | str | os.PathLike | Sequence[os.PathLike]


# --- training -------------------------------------------------------------------------------------------


def _read_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: invalid UTF-8") from None
    return lines


def _collect_texts(texts: TextsOrFiles) -> list[str]:
    """Lines to train on: ``str`` items are lines of text, ``os.PathLike`` items are files to read."""
    if isinstance(texts, os.PathLike):
        texts = [texts]
    elif isinstance(texts, str):
        raise SeqkdError("train_tokenizer: pass a list of lines, or a Path / list of Paths for files")
    lines: list[str] = []
    for item in texts:
        if isinstance(item, os.PathLike):
            lines.extend(_read_file(Path(item)))
        elif isinstance(item, str):
            lines.append(item)
        else:
            raise SeqkdError(f"train_tokenizer: expected str lines or file paths, got {type(item).__name__}")
    # sentencepiece treats every item as one sentence; blank ones carry no information
    return [line for line in lines if line.strip()]


def _train_spm(lines: list[str], *, vocab_size: int, model_type: str, character_coverage: float, seed: int) -> bytes:
    import io

    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise SeqkdError(f"unknown model_type {model_type!r} (expected 'unigram' or 'bpe')")
    if not lines:
        raise DataError("no non-empty text to train the tokenizer on")
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=SPECIALS[PAD],
            unk_id=SPECIALS[UNK],
            bos_id=SPECIALS[BOS],
            eos_id=SPECIALS[EOS],
            user_defined_symbols=[SEP],  # gets the next free id: 4
            hard_vocab_limit=False,  # vocab_size is an upper bound, so tiny corpora still train
            num_threads=min(2, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. vocab_size smaller than the number of distinct characters
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise SeqkdError(f"sentencepiece training failed (vocab_size={vocab_size}, {model_type}): {msg}") from None
    return buf.getvalue()


def train_tokenizer(
    texts: TextsOrFiles,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    seed: int = 0,
) -> PreTrainedTokenizerFast:
    """Train sentencepiece on ``texts`` (list of lines, or ``Path``/list of ``Path`` of text files, .gz ok).

    Writes ``out_dir/spm.model`` and the HF tokenizer files; returns the ``PreTrainedTokenizerFast``.
    ``vocab_size`` is an upper bound (smaller corpora give a smaller vocabulary).
    """
    lines = _collect_texts(texts)
    proto = _train_spm(
        lines, vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage, seed=seed
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPM_FILE).write_bytes(proto)
    tok = fast_tokenizer_from_spm(proto)
    tok.save_pretrained(out)
    return tok


def train_translation_tokenizers(
    sources: TextsOrFiles,
    targets: TextsOrFiles,
    out_dir: str | os.PathLike,
    *,
    joint: bool = True,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    seed: int = 0,
) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """Tokenizers for a language pair -> ``(src_tok, tgt_tok)``.

    joint: one vocabulary trained on both sides, saved in ``out_dir`` (``src_tok is tgt_tok``).
    separate: target tokenizer in ``out_dir``, source tokenizer in ``out_dir/source_tokenizer``
    (the layout :func:`load_tokenizers` reads).
    """
    kw = dict(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage, seed=seed)
    if joint:
        tok = train_tokenizer(_collect_texts(sources) + _collect_texts(targets), out_dir, **kw)
        _remove_stale_source(Path(out_dir))
        return tok, tok
    tgt = train_tokenizer(targets, out_dir, **kw)
    src = train_tokenizer(sources, Path(out_dir) / SOURCE_SUBDIR, **kw)
    return src, tgt


# --- sentencepiece proto -> tokenizers.Tokenizer ---------------------------------------------------------


def _load_proto(model: bytes | str | os.PathLike):
    from sentencepiece import sentencepiece_model_pb2 as pb

    if isinstance(model, bytes):
        data, name = model, "sentencepiece model"
    else:
        if not Path(model).is_file():
            raise SeqkdError(f"{model}: no such sentencepiece model file")
        data, name = Path(model).read_bytes(), str(model)
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf's DecodeError; the message adds nothing for a user
        raise SeqkdError(f"{name}: not a sentencepiece model") from None
    if not proto.pieces:
        raise SeqkdError(f"{name}: not a sentencepiece model (no pieces)")
    return proto


def _bpe_merges(proto) -> list[tuple[str, str]]:
    """Merges in sentencepiece's priority order.

    sentencepiece BPE repeatedly merges the adjacent pair whose concatenation is the highest-scoring
    vocabulary piece (any split of that piece counts), so every split of every mergeable piece is a
    merge, ranked by the merged piece's score (ties: lower id first, as its scores are -id).
    """
    mergeable = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in (_NORMAL, _USER_DEFINED, _UNUSED)}
    ranked = []
    for i, p in enumerate(proto.pieces):
        if p.type != _NORMAL:  # specials and user symbols are atomic, never built by merging
            continue
        piece = p.piece
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                ranked.append((-p.score, i, k, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _backend_from_proto(proto):
    """A ``tokenizers.Tokenizer`` that reproduces ``SentencePieceProcessor.encode`` for this model."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    ts, ns = proto.trainer_spec, proto.normalizer_spec
    if ts.byte_fallback:
        raise SeqkdError("sentencepiece models with byte_fallback are not supported")
    if ts.treat_whitespace_as_suffix or not ns.escape_whitespaces:
        raise SeqkdError("unsupported sentencepiece model: treat_whitespace_as_suffix or no escape_whitespaces")
    if ts.model_type == _UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=ts.unk_id, byte_fallback=False)
    elif ts.model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        # fuse_unk: sentencepiece emits one <unk> for a run of unknown characters
        model = BPE(vocab, _bpe_merges(proto), unk_token=proto.pieces[ts.unk_id].piece, fuse_unk=True, dropout=None)
    else:
        raise SeqkdError(f"unsupported sentencepiece model type {ts.model_type} (only unigram and bpe)")
    tok = Tokenizer(model)

    # sentencepiece normalizes first (charsmap, e.g. NFKC), then drops leading/trailing spaces and
    # collapses runs of spaces; only U+0020 counts as a space at that point.
    steps = []
    if ns.precompiled_charsmap:
        steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
    if ns.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    # spaces -> "▁", a "▁" in front (add_dummy_prefix), words split before "▁" (no piece spans one:
    # split_by_whitespace). The decoder undoes it, dropping the dummy prefix of the first word.
    scheme = "always" if ns.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=ts.split_by_whitespace)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)

    # all are special: found in raw text, and dropped by decode(skip_special_tokens=True)
    added = [
        AddedToken(p.piece, special=True, normalized=False)
        for p in proto.pieces
        if p.type in (_CONTROL, _UNKNOWN, _USER_DEFINED)
    ]
    tok.add_special_tokens(added)
    return tok


def fast_tokenizer_from_spm(model: bytes | str | os.PathLike) -> PreTrainedTokenizerFast:
    """``PreTrainedTokenizerFast`` from a sentencepiece model (file path or serialized proto bytes)."""
    from transformers import PreTrainedTokenizerFast

    proto = _load_proto(model)
    pieces = {p.piece: i for i, p in enumerate(proto.pieces)}
    for name, want in SPECIALS.items():
        if pieces.get(name) != want:
            raise SeqkdError(f"sentencepiece model has {name} at id {pieces.get(name)}, seqkd needs {want}")
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend_from_proto(proto),
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        sep_token=SEP,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == normalized x
    )


# --- load / save ---------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(path)`` with a one-line error for a missing / non-tokenizer dir."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise SeqkdError(f"{p}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise SeqkdError(f"cannot load a tokenizer from {p}: {str(e).splitlines()[0]}") from None


def load_tokenizers(model_dir: str | os.PathLike) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """``(src_tok, tgt_tok)`` from a model or tokenizer dir; the same object when there is no
    ``model_dir/source_tokenizer``."""
    tgt = load_tokenizer(model_dir)
    src_dir = Path(model_dir) / SOURCE_SUBDIR
    src = load_tokenizer(src_dir) if src_dir.is_dir() else tgt
    return src, tgt


def same_vocab(a, b) -> bool:
    """True when two tokenizers map the same tokens to the same ids (sizes alone are not enough)."""
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def _same(a, b) -> bool:
    if a is b:
        return True
    return json.loads(a.backend_tokenizer.to_str()) == json.loads(b.backend_tokenizer.to_str())


def save_tokenizers(src_tok, tgt_tok, out_dir: str | os.PathLike) -> None:
    """Write ``tgt_tok`` to ``out_dir`` and, if it differs, ``src_tok`` to ``out_dir/source_tokenizer``."""
    out = Path(out_dir)
    tgt_tok.save_pretrained(out)
    if _same(src_tok, tgt_tok):
        _remove_stale_source(out)
    else:
        src_tok.save_pretrained(out / SOURCE_SUBDIR)


def _remove_stale_source(out: Path) -> None:
    """A source tokenizer left from an earlier save would silently win in :func:`load_tokenizers`."""
    import shutil

    if (out / SOURCE_SUBDIR).is_dir():
        shutil.rmtree(out / SOURCE_SUBDIR)


def train_tokenizer_job(a) -> dict:
    """``seqkd tokenizer train`` (a :class:`~seqkd.config.TokenizerTrainConfig`): a joint or separate source / target
    tokenizer for a registered parallel dataset, or one tokenizer for text files. Returns the vocabulary sizes
    (``target_tokens`` None for one tokenizer)."""
    if a.data:
        from seqkd.data.registry import load_parallel

        src, tgt = load_parallel(a.data, "train")
        toks = train_translation_tokenizers(src, tgt, a.out, joint=not a.separate, vocab_size=a.vocab_size,
                                            model_type=a.model_type)
        return {"source_tokens": len(toks[0]), "target_tokens": len(toks[1])}
    from seqkd.data.files import read_lines

    texts: list[str] = []
    for path in a.input:
        texts += read_lines(path)[0]
    tok = train_tokenizer(texts, a.out, vocab_size=a.vocab_size, model_type=a.model_type)
    return {"source_tokens": len(tok), "target_tokens": None}
