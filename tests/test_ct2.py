"""CTranslate2 export and decoding (seqkd.deploy.ct2): a float32 export decodes exactly what HF decodes, for both
families and for separate vocabularies; int8 stays close; the CLI exports and translates; bad input is one line."""

import json
import sys
from pathlib import Path

import pytest
import torch
from test_cli import assert_error, run
from test_models import word_tokenizer

from seqkd.data.prompts import Format
from seqkd.data.synthetic import synthetic_pairs
from seqkd.deploy.ct2 import EXPORT_FILE, CT2Translator, export_ctranslate2
from seqkd.errors import SeqkdError
from seqkd.evaluate import load_translator, score
from seqkd.models import build_model, load_model, save_model
from seqkd.models.tokenizer import load_tokenizers
from seqkd.teacher.decoding import generate_ids, generation_config


def _hf_ids(model_dir, prompts, *, beam_size=1, max_new_tokens=40, batch_size=16):
    model = load_model(model_dir)
    _, tgt = load_tokenizers(model_dir)
    fmt = Format.from_tokenizer("seq2seq" if model.config.is_encoder_decoder else "causal", tgt)
    gen = generation_config(model, fmt, beam_size=beam_size, max_new_tokens=max_new_tokens)
    return [[h.ids for h in hs] for hs in generate_ids(model, fmt, prompts, gen, batch_size=batch_size)]


def _prompts(model_dir, n=24, seed=7):
    src, tgt = load_tokenizers(model_dir)
    fam = "seq2seq" if load_model(model_dir).config.is_encoder_decoder else "causal"
    return Format.from_tokenizer(fam, tgt).encode(src, synthetic_pairs(n, seed=seed)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Both families trained on the synthetic task long enough to translate it (BLEU ~17 / ~56 on 200 sentences:
    varied outputs, so that token-for-token equality means something); 20 s together."""
    from seqkd.config import TrainConfig
    from seqkd.student.train import train

    root, out = tmp_path_factory.mktemp("ct2-models"), {}
    for name, preset in (("mt", "marian-tiny"), ("lm", "llama-tiny")):
        out[name] = root / name
        train(TrainConfig(out=str(out[name]), model=preset, data="synthetic", synthetic_size=3000, vocab_size=160,
                          max_steps=400, lr=3e-3, warmup_steps=30, max_tokens=1024, eval_steps=0, bleu_samples=0,
                          logging_steps=400, progress=False, seed=1))
    return out


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2")
    return {(name, q): export_ctranslate2(model, root / f"{name}-{q}", quantization=q)
            for name, model in trained.items() for q in ("float32", "int8")}


@pytest.mark.parametrize("name", ["mt", "lm"])
def test_float32_export_greedy_equals_hf_generate(name, exports, trained):
    model_dir = trained[name]
    prompts = _prompts(model_dir)
    hf = _hf_ids(model_dir, prompts)
    ct = CT2Translator(exports[name, "float32"], threads=1).generate_ids(prompts, max_new_tokens=40, batch_size=16)
    assert ct == hf
    # not a vacuous equality: the outputs are real, different, and mostly end with eos before the limit
    assert len({tuple(h[0]) for h in hf}) > 10 and sum(len(h[0]) < 40 for h in hf) > 20


def test_separate_vocabularies_and_a_pad_token_in_the_middle(tmp_path):
    """Source and target vocabularies of different sizes, pad = id 0 (CTranslate2's stock Marian loader would delete
    the last row): an untrained model's greedy output, token for token."""
    src_tok, tgt_tok = word_tokenizer(40), word_tokenizer(57)
    model = build_model("marian-tiny", vocab_size=len(src_tok), decoder_vocab_size=len(tgt_tok), seed=3)
    with torch.no_grad():  # make the ids only the target vocabulary has likely, so that their mapping is exercised
        model.get_output_embeddings().weight[len(src_tok):] *= 4
    save_model(model, (src_tok, tgt_tok), tmp_path / "m")
    export_ctranslate2(tmp_path / "m", tmp_path / "e")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, len(src_tok), (int(n),), generator=g).tolist() + [3]
               for n in torch.randint(2, 12, (10,), generator=g)]
    ct = CT2Translator(tmp_path / "e", threads=1).generate_ids(prompts, max_new_tokens=12)
    assert ct == _hf_ids(tmp_path / "m", prompts, max_new_tokens=12)
    assert sum(i >= len(src_tok) for h in ct for i in h[0]) > 20  # target-only ids were produced


@pytest.mark.parametrize("name", ["mt", "lm"])
def test_int8_is_smaller_and_close_to_float32(name, exports, trained):
    f32, i8 = exports[name, "float32"], exports[name, "int8"]
    assert (i8 / "model.bin").stat().st_size < 0.5 * (f32 / "model.bin").stat().st_size
    assert json.loads((i8 / EXPORT_FILE).read_text())["quantization"] == "int8"
    src, ref = synthetic_pairs(200, seed=11)
    bleu = {q: score(load_translator(str(exports[name, q]), engine="ct2").translate(src, max_new_tokens=40),
                     ref).bleu for q in ("float32", "int8")}
    hf = score(load_translator(str(trained[name])).translate(src, max_new_tokens=40), ref).bleu
    assert bleu["float32"] == pytest.approx(hf, abs=1e-9)
    assert abs(bleu["int8"] - bleu["float32"]) <= 0.5, bleu


def test_beam_search_and_empty_sources(exports, trained):
    t = load_translator(str(exports["mt", "float32"]), engine="ct2")
    src = synthetic_pairs(12, seed=2)[0]
    out = t.translate(["", *src, "  "], beam_size=4, num_return_sequences=2, max_new_tokens=40)
    assert out[0] == ["", ""] and out[-1] == ["", ""] and all(len(o) == 2 and o[0] for o in out[1:-1])
    hf_beam = load_translator(str(trained["mt"])).translate(src, beam_size=4, max_new_tokens=40)
    # beam search: CTranslate2 and HF stop a beam differently, so agreement is high, not exact
    assert sum(a[0] == b for a, b in zip(out[1:-1], hf_beam)) >= 9


def test_cli_export_then_translate_and_eval(capsys, trained, tmp_path):
    tiny_mt_model = trained["mt"]
    src, ref = synthetic_pairs(30, seed=4)
    (tmp_path / "src").write_text("\n".join(src) + "\n")
    (tmp_path / "ref").write_text("\n".join(ref) + "\n")
    code, out, err = run(capsys, "export", "--model", tiny_mt_model, "--out", tmp_path / "e", "--quantization",
                         "float32")
    assert code == 0 and "--engine ct2" in out
    for engine, model in (("ct2", tmp_path / "e"), ("hf", tiny_mt_model)):
        code, _, err = run(capsys, "translate", "--model", model, "--input", tmp_path / "src", "--output",
                           tmp_path / f"out.{engine}", "--engine", engine, "--threads", "1", "--max-new-tokens", 40)
        assert code == 0 and f"engine {engine}, batch 64, beam 1, 1 threads" in err, err
    assert (tmp_path / "out.ct2").read_text() == (tmp_path / "out.hf").read_text()
    code, out, _ = run(capsys, "eval", "--model", tmp_path / "e", "--src", tmp_path / "src", "--ref", tmp_path / "ref",
                       "--engine", "ct2", "--json", "--max-new-tokens", 40)
    speed = json.loads(out)["speed"]
    assert code == 0 and speed["engine"] == "ct2" and speed["threads"] >= 1 and speed["batch_size"] == 64


def test_bad_input_is_one_line(capsys, tiny_mt_model, tmp_path):
    assert_error(capsys, ["translate", "--model", tiny_mt_model, "--input", tmp_path / "x", "--output",
                          tmp_path / "y", "--engine", "ct3"], "--engine")
    (tmp_path / "x").write_text("a b\n")
    assert_error(capsys, ["translate", "--model", tiny_mt_model, "--input", tmp_path / "x", "--output",
                          tmp_path / "y", "--engine", "ct2"], "not a CTranslate2 export", "seqkd export")
    assert_error(capsys, ["export", "--model", tiny_mt_model, "--out", tmp_path / "e", "--quantization", "int4"],
                 "--quantization")
    (tmp_path / "e").mkdir()
    assert_error(capsys, ["export", "--model", tiny_mt_model, "--out", tmp_path / "e"], "already exists")
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (other / "model.safetensors").write_bytes(b"")
    assert_error(capsys, ["export", "--model", other, "--out", tmp_path / "e2"], "'t5'", "marian", "llama")
    assert not (tmp_path / "e2").exists()


def test_hf_engine_refuses_an_export_and_ct2_refuses_a_missing_package(exports, monkeypatch):
    with pytest.raises(SeqkdError, match="is a CTranslate2 export: decode it with --engine ct2"):
        load_translator(str(exports["mt", "float32"]), engine="hf")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    with pytest.raises(SeqkdError, match=r"^the ct2 engine needs CTranslate2, which is not installed: pip install"):
        CT2Translator(exports["mt", "float32"])
