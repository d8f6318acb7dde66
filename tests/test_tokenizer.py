"""seqkd.models.tokenizer: the HF fast tokenizer gives exactly sentencepiece's ids, reloads, and round-trips."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

sentencepiece = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from seqkd.errors import DataError, SeqkdError  # noqa: E402
from seqkd.models.tokenizer import (  # noqa: E402
    SOURCE_SUBDIR,
    SPECIALS,
    SPM_FILE,
    fast_tokenizer_from_spm,
    load_tokenizers,
    save_tokenizers,
    train_tokenizer,
    train_translation_tokenizers,
)

N_TRAIN = 3000  # lines per language: enough for a realistic vocabulary, a couple of seconds to train
N_VAL = 1014

# strings that exercise normalization (NFKC, odd whitespace, control chars) and unknown characters
EDGE_CASES = [
    "",
    "   ",
    "  Zwei   Männer  ",
    "a\tb\u00a0c\u3000d",
    "ﬁne ① ǅ Ｈｅｌｌｏ",
    "\x01x\x1fy\u200bz",
    "日本語 テキスト ∮",
    "Ein Hund.Ein Mann...",
]


def _multi30k(split: str) -> tuple[list[str], list[str]]:
    """(German, English) lines of a Multi30k split; skip (or fail in CI) when the data is absent."""
    try:
        from seqkd.data.registry import parallel_files
    except ImportError:  # the dataset registry is not there: read $SEQKD_DATA_DIR directly
        root = Path(os.environ.get("SEQKD_DATA_DIR", "/nonexistent")) / "multi30k"

        def parallel_files(name, split):
            de, en = root / f"{split}.de", root / f"{split}.en"
            if not (de.is_file() and en.is_file()):
                raise DataError(f"{de} not found; set SEQKD_DATA_DIR")
            return de, en

    try:
        de, en = parallel_files("multi30k:de-en", split)
    except DataError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Multi30k {split}: {e}")
        pytest.skip(f"Multi30k {split}: {e}")
    return Path(de).read_text(encoding="utf-8").splitlines(), Path(en).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def val():
    de, en = _multi30k("val")
    assert len(de) == len(en) == N_VAL
    return de, en


@pytest.fixture(scope="module")
def train():
    de, en = _multi30k("train")
    return de[:N_TRAIN], en[:N_TRAIN]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def joint(request, train, tmp_path_factory):
    """A joint de+en tokenizer of each kind, with its sentencepiece processor and directory."""
    out = tmp_path_factory.mktemp(f"tok_{request.param}")
    src, tgt = train_translation_tokenizers(*train, out, joint=True, vocab_size=4000, model_type=request.param)
    assert src is tgt
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / SPM_FILE))
    return tgt, sp, out


def _ids(tok, lines):
    return tok(lines, add_special_tokens=True)["input_ids"]


def test_ids_equal_sentencepiece_on_multi30k_val(joint, val):
    tok, sp, _ = joint
    for lines in val:  # German, then English
        got, want = _ids(tok, lines), sp.encode(lines)
        bad = [(line, w, g) for line, w, g in zip(lines, want, got) if w != g]
        assert not bad, f"{len(bad)} of {len(lines)} lines differ, first: {bad[0]}"
    assert _ids(tok, EDGE_CASES) == sp.encode(EDGE_CASES)
    # a real subword vocabulary, not characters: ~1.3 tokens per word on Multi30k val
    n_tok = sum(map(len, sp.encode(val[1])))
    n_words = sum(len(line.split()) for line in val[1])
    assert 1.0 < n_tok / n_words < 2.0
    assert 3000 <= sp.get_piece_size() == tok.vocab_size == len(tok) <= 4000


def test_decode_round_trip(joint, val):
    tok, sp, _ = joint
    lines = val[0] + val[1]
    ids = sp.encode(lines)
    decoded = [tok.decode(i) for i in ids]
    assert decoded == [sp.decode(i) for i in ids]
    # lossless up to normalization: only a line with a no-break space (NFKC -> " ") changes
    changed = [(line, d) for line, d in zip(lines, decoded) if line != d]
    assert len(changed) == 1 and changed[0][1] == changed[0][0].replace("\u00a0", " ")
    assert tok.decode(tok("  Zwei   Männer  ")["input_ids"]) == "Zwei Männer"
    assert tok.decode([]) == ""


def test_special_tokens(joint):
    tok, sp, _ = joint
    assert SPECIALS == {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "<sep>": 4}
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.sep_token_id == tok.convert_tokens_to_ids("<sep>") == 4
    assert [sp.id_to_piece(i) for i in range(5)] == list(SPECIALS)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    # no post-processor: add_special_tokens=True adds nothing (seqkd.data.prompts adds bos/eos/sep)
    text = "Ein Mann fährt Fahrrad."
    plain = tok(text, add_special_tokens=False)["input_ids"]
    assert tok(text)["input_ids"] == plain == sp.encode(text)
    assert all(i >= 5 for i in plain)
    assert tok.decode([2, *plain, 4, 3], skip_special_tokens=True) == text
    # unknown characters -> <unk> (one per run, as sentencepiece)
    assert tok("日本語")["input_ids"] == sp.encode("日本語") and 1 in sp.encode("日本語")
    # documented difference: literal special-token strings in text become their ids
    assert tok("a <sep> b")["input_ids"] == tok("a")["input_ids"] + [4] + tok("b")["input_ids"]
    assert 3 in tok("x </s>")["input_ids"] and 3 not in sp.encode("x </s>")
    # padding uses <pad>=0
    batch = tok(["Ein Hund.", "Ein sehr großer brauner Hund rennt."], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_autotokenizer_reload_identical(joint, val):
    tok, sp, out = joint
    assert {"tokenizer.json", "tokenizer_config.json", SPM_FILE} <= {p.name for p in out.iterdir()}
    lines = val[0] + val[1] + EDGE_CASES
    # a model's config.json in the same dir must not make AutoTokenizer pick a model-specific class
    # (MarianTokenizer / LlamaTokenizer would rebuild the vocabulary differently)
    for model_type, arch in [(None, None), ("llama", "LlamaForCausalLM"), ("marian", "MarianMTModel")]:
        if model_type:
            cfg = {"model_type": model_type, "architectures": [arch], "vocab_size": len(tok)}
            (out / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        reloaded = transformers.AutoTokenizer.from_pretrained(out)
        assert reloaded.is_fast and reloaded.get_vocab() == tok.get_vocab(), model_type
        assert _ids(reloaded, lines) == _ids(tok, lines) == sp.encode(lines), model_type
        ids = (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id, reloaded.sep_token_id)
        assert ids == (0, 2, 3, 4), model_type
    (out / "config.json").unlink()
    src, tgt = load_tokenizers(out)
    assert src is tgt and _ids(tgt, val[1][:50]) == sp.encode(val[1][:50])


def test_conversion_from_spm_file_is_deterministic(joint):
    tok, _, out = joint
    again = fast_tokenizer_from_spm(out / SPM_FILE)
    assert json.loads(again.backend_tokenizer.to_str()) == json.loads(tok.backend_tokenizer.to_str())


def test_separate_vocabularies(train, val, tmp_path):
    src, tgt = train_translation_tokenizers(*train, tmp_path, joint=False, vocab_size=2000, model_type="bpe")
    assert src is not tgt and src.get_vocab() != tgt.get_vocab()
    assert "▁Männer" in src.get_vocab() and "▁Männer" not in tgt.get_vocab()
    assert "▁men" in tgt.get_vocab() and "▁men" not in src.get_vocab()
    sp_src = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / SOURCE_SUBDIR / SPM_FILE))
    sp_tgt = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / SPM_FILE))
    assert _ids(src, val[0]) == sp_src.encode(val[0])
    assert _ids(tgt, val[1]) == sp_tgt.encode(val[1])
    for tok in (src, tgt):
        assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == list(SPECIALS.values())

    loaded_src, loaded_tgt = load_tokenizers(tmp_path)
    assert loaded_src is not loaded_tgt
    assert _ids(loaded_src, val[0]) == _ids(src, val[0]) and _ids(loaded_tgt, val[1]) == _ids(tgt, val[1])

    # save_tokenizers: a separate source tokenizer gets its subdir, a shared one does not
    save_tokenizers(loaded_src, loaded_tgt, tmp_path / "model")
    s2, t2 = load_tokenizers(tmp_path / "model")
    assert _ids(s2, val[0][:100]) == sp_src.encode(val[0][:100])
    assert _ids(t2, val[1][:100]) == sp_tgt.encode(val[1][:100])
    save_tokenizers(loaded_tgt, loaded_tgt, tmp_path / "model")  # the old source_tokenizer must go
    assert not (tmp_path / "model" / SOURCE_SUBDIR).exists()
    s3, t3 = load_tokenizers(tmp_path / "model")
    assert s3 is t3 and _ids(s3, val[1][:100]) == sp_tgt.encode(val[1][:100])


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tiny_corpus(model_type, tmp_path):
    lines = ["the cat sat", "the dog ran", "a cat and a dog"]
    tok = train_tokenizer(lines, tmp_path, vocab_size=8000, model_type=model_type)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / SPM_FILE))
    # vocab_size is only an upper bound (hard_vocab_limit=False)
    assert 5 + len(set("".join(lines).replace(" ", ""))) < len(tok) == sp.get_piece_size() < 100
    probe = lines + ["the cat ran and sat", "a zebra", "  dog  "]
    assert _ids(tok, probe) == sp.encode(probe)
    assert tok.decode(tok("the cat ran")["input_ids"]) == "the cat ran"


def test_train_from_files_equals_lines(tmp_path):
    lines = ["Ein Mann schläft.", "", "Zwei Hunde spielen im Schnee.", "Ein Kind lacht."] * 5
    plain, gz = tmp_path / "a.txt", tmp_path / "b.txt.gz"
    plain.write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[10:]) + "\n")
    from_files = train_tokenizer([plain, gz], tmp_path / "f", vocab_size=60)
    from_lines = train_tokenizer(lines, tmp_path / "l", vocab_size=60)
    assert (tmp_path / "f" / SPM_FILE).read_bytes() == (tmp_path / "l" / SPM_FILE).read_bytes()
    assert from_files.get_vocab() == from_lines.get_vocab()
    single = train_tokenizer(plain, tmp_path / "s", vocab_size=60)  # one Path, not a list
    assert len(single) > 5


def test_errors(tmp_path):
    with pytest.raises(SeqkdError, match="model_type"):
        train_tokenizer(["a b"], tmp_path / "x", model_type="wordpiece")
    with pytest.raises(DataError, match="no non-empty text"):
        train_tokenizer(["", "  "], tmp_path / "x")
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt: no such file"):
        train_tokenizer([missing], tmp_path / "x")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nbroken \xff\xfe\n")
    with pytest.raises(DataError, match=r"bad.txt:2: invalid UTF-8"):
        train_tokenizer(bad, tmp_path / "x")
    with pytest.raises(SeqkdError, match="list of lines"):
        train_tokenizer("just one string", tmp_path / "x")
    # fewer pieces than distinct characters: a one-line error, not a sentencepiece traceback
    with pytest.raises(SeqkdError, match="sentencepiece training failed") as info:
        train_tokenizer(["abcdefghijklmnopqrstuvwxyz"], tmp_path / "x", vocab_size=8)
    assert "\n" not in str(info.value)
    with pytest.raises(SeqkdError, match="no tokenizer files"):
        load_tokenizers(tmp_path)
    with pytest.raises(SeqkdError, match="nope.model: no such sentencepiece model file"):
        fast_tokenizer_from_spm(tmp_path / "nope.model")
    with pytest.raises(SeqkdError, match="bad.txt: not a sentencepiece model"):
        fast_tokenizer_from_spm(bad)
