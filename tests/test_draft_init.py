"""`seqkd draft init`: a draft made of its target's layers — the layer choice, the copy (an early exit, exactly),
the saved directory, and bad input caught before any weights load."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from seqkd.errors import SeqkdError
from seqkd.models.student_init import draft_from_target, parse_layers


def test_parse_layers():
    assert parse_layers("first:3", 30) == [0, 1, 2]
    assert parse_layers("every:10", 30) == [9, 19, 29]
    assert parse_layers("every:4", 30) == [3, 7, 11, 15, 19, 23, 27]
    assert parse_layers("0,10,29", 30) == [0, 10, 29]
    assert parse_layers("first:30", 30) == list(range(30))
    for bad in ("first:0", "every:0", "every:31", "3,1", "1,1", "0,30", "-1,2", "x", "first:", "last:2", "first:31"):
        with pytest.raises(SeqkdError, match="--layers"):
            parse_layers(bad, 30)


def _target(tie: bool = True, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).to(torch.float64).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_first_k_draft_is_the_targets_early_exit(tie):
    target = _target(tie)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        out = target(ids, output_hidden_states=True)
        for k in (1, 2, 4):
            draft = draft_from_target(target, list(range(k)))
            assert draft.config.num_hidden_layers == k and len(draft.model.layers) == k
            # hidden_states[k] is the residual stream after layer k-1, before the final norm (k < number of layers)
            exit_k = out.logits if k == 4 else target.lm_head(target.model.norm(out.hidden_states[k]))
            torch.testing.assert_close(draft(ids).logits, exit_k, rtol=1e-12, atol=1e-12)
    assert (draft.lm_head.weight.data_ptr() == draft.model.embed_tokens.weight.data_ptr()) == tie


def test_an_explicit_layer_list_copies_those_layers():
    target = _target(layers=6)
    draft = draft_from_target(target, [0, 3, 5])
    for j, i in enumerate([0, 3, 5]):
        for (name, p), (tname, q) in zip(draft.model.layers[j].named_parameters(),
                                         target.model.layers[i].named_parameters()):
            assert name == tname and torch.equal(p, q)
    # a copy, not shared: training the draft leaves the target untouched
    assert draft.model.layers[1].mlp.up_proj.weight.data_ptr() != target.model.layers[3].mlp.up_proj.weight.data_ptr()
    assert torch.equal(draft.model.norm.weight, target.model.norm.weight)


def test_cli_makes_a_draft_directory(tiny_lm_model, tmp_path, capsys):
    from seqkd.cli import main
    from seqkd.models import load_model
    from seqkd.models.tokenizer import load_tokenizers

    out = tmp_path / "draft"
    assert main(["draft", "init", "--target", str(tiny_lm_model), "--layers", "first:1", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "target layers [0] of 2" in said
    draft, target = load_model(out), load_model(tiny_lm_model)
    assert draft.config.num_hidden_layers == 1 and draft.config.hidden_size == target.config.hidden_size
    assert torch.equal(draft.model.embed_tokens.weight, target.model.embed_tokens.weight)
    assert load_tokenizers(out)[1].get_vocab() == load_tokenizers(tiny_lm_model)[1].get_vocab()
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        early = target.lm_head(target.model.norm(target(ids, output_hidden_states=True).hidden_states[1]))
        torch.testing.assert_close(draft(ids).logits, early, rtol=1e-5, atol=1e-5)
    # an existing draft is not replaced without --overwrite
    code = main(["draft", "init", "--target", str(tiny_lm_model), "--layers", "first:1", "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_bad_input_is_one_line_before_any_weights_load(tiny_lm_model, tiny_mt_model, tmp_path, capsys, monkeypatch):
    import seqkd.models as models
    from seqkd.cli import main

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(models, "load_model", no_loading)
    cases = [
        (["--target", str(tiny_lm_model), "--layers", "0,2"], "each in 0..1 (the target has 2)"),
        (["--target", str(tiny_lm_model), "--layers", "every:x"], "expected first:K, every:N"),
        (["--target", str(tiny_mt_model), "--layers", "first:1"], "encoder-decoder"),
        (["--target", str(tmp_path), "--layers", "first:1"], "not a model directory"),
        (["--target", str(tiny_lm_model), "--layers", "first:1", "--out", str(tiny_lm_model)], "own directory"),
    ]
    prompts = tmp_path / "val.txt"
    prompts.write_text("a b c\n")
    cases += [
        (["--target", str(tiny_lm_model), "--layers", "first:1 first:2"], "--choose-on PROMPTS picks one"),
        (["--target", str(tiny_lm_model), "--layers", "first:1 first:1", "--choose-on", str(prompts)], "twice"),
        (["--target", str(tiny_lm_model), "--layers", "first:1 0,5", "--choose-on", str(prompts)], "each in 0..1"),
        (["--target", str(tiny_lm_model), "--layers", "first:1 first:2", "--choose-on", str(tmp_path / "no.txt")],
         "no such file"),
    ]
    for args, message in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "d")]
        assert main(["draft", "init", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "d").exists()
    assert json.loads((tiny_lm_model / "config.json").read_text())["num_hidden_layers"] == 2


def test_several_layer_choices_are_measured_on_val_and_the_fastest_kept(tiny_lm_model, tmp_path, capsys):
    """Each choice decodes the val prompts as an untrained draft; first:2 is the whole 2-layer target, so at greedy
    decoding every drafted token is accepted; the saved draft is the choice with the highest measured speedup."""
    from seqkd.cli import main
    from seqkd.models import load_model

    prompts = tmp_path / "val.txt"
    prompts.write_text("".join(f"w{i} w{i + 1} w{i + 2}\n" for i in range(6)))
    out = tmp_path / "draft"
    assert main(["draft", "init", "--target", str(tiny_lm_model), "--layers", "first:1 first:2", "--out", str(out),
                 "--choose-on", str(prompts), "--prompt-format", "plain", "--max-new-tokens", "8",
                 "--gamma", "2"]) == 0
    said = capsys.readouterr().out
    record = json.loads((out / "layer_choice.json").read_text())
    rows = {r["layers_spec"]: r for r in record["choices"]}
    assert set(rows) == {"first:1", "first:2"} and record["gamma"] == 2
    assert rows["first:2"]["acceptance_rate"] == 1.0 and rows["first:2"]["layers"] == [0, 1]
    assert rows["first:2"]["params"] > rows["first:1"]["params"]
    assert record["chosen"] == max(rows.values(), key=lambda r: r["speedup"])["layers_spec"]
    assert load_model(out).config.num_hidden_layers == len(rows[record["chosen"]]["layers"])
    assert "<- kept" in said and f"layers {record['chosen']:>12s}" in said
