"""`seqkd speculate` and `seqkd align` (DistillSpec) on tiny models: reports, errors, acceptance after alignment,
and the aligned draft as an HF assistant_model."""

import json
import shutil

import pytest
import torch

from seqkd.cli import main
from seqkd.data.synthetic import synthetic_pairs
from seqkd.errors import SeqkdError
from seqkd.models import build_model, load_model
from seqkd.models.tokenizer import load_tokenizers, save_tokenizers


@pytest.fixture(scope="module")
def draft_dir(tiny_lm_model, tmp_path_factory):
    """A fresh llama-tiny-student with the target's tokenizer: a poor draft before alignment."""
    target = load_model(tiny_lm_model)
    out = tmp_path_factory.mktemp("draft") / "draft"
    d = build_model("llama-tiny-student", vocab_size=target.config.vocab_size, seed=7)
    d.save_pretrained(out)
    save_tokenizers(*load_tokenizers(tiny_lm_model), out)
    return out


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    train, _ = synthetic_pairs(600, seed=21, multimodality=0.3)
    evals, _ = synthetic_pairs(30, seed=22, multimodality=0.0)
    (d / "train.txt").write_text("\n".join(train) + "\n")
    (d / "eval.txt").write_text("\n".join(evals) + "\n")
    return d / "train.txt", d / "eval.txt"


def test_speculate_cli_greedy_report_is_consistent(tiny_lm_model, draft_dir, prompt_files, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["speculate", "--target", str(tiny_lm_model), "--draft", str(draft_dir), "--input",
                 str(prompt_files[1]), "--gamma", "3", "--temperature", "0", "--max-new-tokens", "20",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["identical_outputs"] == 1.0  # greedy speculation = target-only greedy
    assert r["block_efficiency"] == pytest.approx(r["emitted"] / r["target_calls"])
    assert r["acceptance_rate"] == pytest.approx(r["accepted"] / r["drafted"])
    assert 1.0 <= r["block_efficiency"] <= 4.0
    assert len(r["per_position_acceptance"]) == 3
    assert r["per_position_acceptance"] == sorted(r["per_position_acceptance"], reverse=True)  # i needs i-1
    assert r["cost_ratio"] > 0 and r["leviathan_bound"] > 0
    assert "speedup" in capsys.readouterr().out


def test_speculate_hf_engine_counts_acceptance(tiny_lm_model, prompt_files, tmp_path):
    """The target as its own assistant: every drafted token is accepted."""
    out = tmp_path / "r.json"
    assert main(["speculate", "--target", str(tiny_lm_model), "--draft", str(tiny_lm_model), "--input",
                 str(prompt_files[1]), "--engine", "hf", "--gamma", "3", "--max-new-tokens", "20", "--limit", "8",
                 "--passes", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["acceptance_rate"] > 0.9 and r["block_efficiency"] > 2.0
    # counts come from one pass (both decode the same tokens), rates from each: median within min-max
    assert r["generated"] <= 8 * 20 and r["accepted"] == r["generated"] - r["target_calls"]
    assert r["passes"] == 2 and len(r["tokens_per_s"]["hf_assisted"]["per_pass"]) == 2
    assert r["speedup_spread"]["min"] <= r["speedup"] <= r["speedup_spread"]["max"]


def test_speculate_refuses_a_draft_with_another_vocabulary(tiny_lm_model, draft_dir, prompt_files, tmp_path, capsys):
    # same size, other ids: swap two tokens of the draft's tokenizer
    other = tmp_path / "other"
    shutil.copytree(draft_dir, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    (a, sa), (b, sb) = vocab[10], vocab[11]
    vocab[10], vocab[11] = [b, sa], [a, sb]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    assert main(["speculate", "--target", str(tiny_lm_model), "--draft", str(other), "--input",
                 str(prompt_files[1])]) == 2
    assert "different tokenizers" in capsys.readouterr().err
    with pytest.raises(SeqkdError, match="gamma"):
        from seqkd.speculative.runners import SpeculateConfig

        SpeculateConfig(target="t", draft="d", input="x", gamma=0)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["speculate", "--target", str(tiny_lm_model), "--draft", str(draft_dir), "--input",
                 str(empty)]) == 2
    assert "no prompts" in capsys.readouterr().err


@pytest.mark.slow
def test_align_on_policy_tvd_raises_acceptance_and_the_draft_works_in_hf(tiny_lm_model, draft_dir, prompt_files,
                                                                        tmp_path):
    from seqkd.speculative.align import AlignConfig, align

    out = tmp_path / "aligned"
    r = align(AlignConfig(target=str(tiny_lm_model), draft=str(draft_dir), out=str(out), prompts=str(prompt_files[0]),
                          eval_prompts=str(prompt_files[1]), eval_size=30, max_steps=80, lr=3e-3, warmup_steps=10,
                          max_tokens=1024, max_new_tokens=24, progress=False))
    b, a = r["before"], r["after"]
    # measured with the models the job holds (the target frozen by training): sizes still counted
    assert b["params"] == a["params"] and 0 < a["params"]["draft"] < a["params"]["target"]
    assert r["train"]["onpolicy_fraction"] == 1.0
    assert a["analytic_acceptance"] > b["analytic_acceptance"] + 0.1, (b["analytic_acceptance"],
                                                                        a["analytic_acceptance"])
    assert a["block_efficiency"] > b["block_efficiency"]
    # a plain HF model: transformers' assisted generation with it equals the target's greedy output
    target, draft = load_model(tiny_lm_model), load_model(out)
    ids = torch.tensor([[2, 40, 41, 42, 43, 4]])
    ref = target.generate(input_ids=ids, do_sample=False, max_new_tokens=15)
    assisted = target.generate(input_ids=ids, do_sample=False, max_new_tokens=15, assistant_model=draft)
    assert torch.equal(ref, assisted)
    assert json.loads((out / "align.json").read_text())["after"]["acceptance_rate"] == a["acceptance_rate"]


def test_align_at_temperature_zero_trains_on_the_targets_greedy_outputs(tiny_lm_model, draft_dir, prompt_files,
                                                                       tmp_path):
    """A draft used greedily is aligned on greedy data: --data target at --temperature 0 trains on exactly the target's
    greedy continuations, and the draft then agrees with the target's greedy tokens more often."""
    from seqkd.speculative.align import AlignConfig, align
    from seqkd.teacher.corpus import read_corpus

    out = tmp_path / "greedy"
    r = align(AlignConfig(target=str(tiny_lm_model), draft=str(draft_dir), out=str(out), prompts=str(prompt_files[0]),
                          eval_prompts=str(prompt_files[1]), eval_size=20, data="target", temperature=0.0,
                          eval_temperature=0.0, max_steps=60, lr=3e-3, warmup_steps=5, max_tokens=1024,
                          max_new_tokens=16, limit=64, progress=False))
    target = load_model(tiny_lm_model)
    src_tok, tgt_tok = load_tokenizers(tiny_lm_model)
    from seqkd.teacher.engines import TextCodec

    rec = next(read_corpus(tmp_path / "greedy-work" / "target_corpus"))
    prompt = TextCodec("causal", src_tok, tgt_tok).encode([rec["source"]])[0]
    ref = target.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=16)[0, len(prompt):]
    ids = rec["hypotheses"][0]["token_ids"]
    assert len(ids) > 3 and ref.tolist()[: len(ids)] == ids
    assert r["after"]["acceptance_rate"] > r["before"]["acceptance_rate"]


@pytest.mark.slow
def test_adaspec_selects_the_asked_fraction(tiny_lm_model, draft_dir, prompt_files, tmp_path):
    from seqkd.speculative import align as align_mod

    r = align_mod.align(align_mod.AlignConfig(
        target=str(tiny_lm_model), draft=str(draft_dir), out=str(tmp_path / "ada"), prompts=str(prompt_files[0]),
        eval_prompts=str(prompt_files[1]), eval_size=10, max_steps=20, lr=3e-3, warmup_steps=5, max_tokens=1024,
        max_new_tokens=16, select_fraction=0.4, progress=False))
    assert r["train"]["selected_fraction"] == pytest.approx(0.4, abs=0.02)
    assert (tmp_path / "ada-work" / "reference" / "model.safetensors").is_file()
    assert r["after"]["acceptance_rate"] >= 0


def test_align_config_errors():
    from seqkd.speculative.align import AlignConfig

    with pytest.raises(SeqkdError, match="one of --prompts"):
        AlignConfig(target="t", draft="d", out="o")
    with pytest.raises(SeqkdError, match="--references"):
        AlignConfig(target="t", draft="d", out="o", prompts="p", data="fixed")
    with pytest.raises(SeqkdError, match="select-fraction"):
        AlignConfig(target="t", draft="d", out="o", prompts="p", select_fraction=0)


def test_align_refuses_to_overwrite_the_draft_or_an_earlier_run(tiny_lm_model, draft_dir, prompt_files, tmp_path):
    from seqkd.speculative.align import AlignConfig, align

    kw = dict(target=str(tiny_lm_model), draft=str(draft_dir), prompts=str(prompt_files[0]), progress=False)
    with pytest.raises(SeqkdError, match="the draft or target directory itself"):
        align(AlignConfig(out=str(draft_dir), **kw))
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(SeqkdError, match="not empty.*--overwrite"):
        align(AlignConfig(out=str(used), **kw))
    assert (used / "notes.txt").read_text() == "mine" and (draft_dir / "model.safetensors").is_file()


@pytest.mark.parametrize("data", ["on-policy", "target"])
def test_a_killed_alignment_resumes_to_the_draft_of_an_uninterrupted_run(tiny_lm_model, draft_dir, prompt_files,
                                                                          tmp_path, monkeypatch, data):
    """--resume (what a recipe's align stage does after a kill): an alignment killed after its checkpoint at step 3 of
    6 continues from it and ends with exactly the draft of an uninterrupted run (optimizer, schedule, RNG and the
    draft's on-policy samples restored); a finished target corpus is reused, not decoded again."""
    from transformers import Trainer

    from seqkd.pipeline.jobs import runner_fields
    from seqkd.speculative.align import AlignConfig, align

    kw = dict(target=str(tiny_lm_model), draft=str(draft_dir), prompts=str(prompt_files[0]),
              eval_prompts=str(prompt_files[1]), eval_size=4, data=data, temperature=1.0, max_steps=6, save_steps=3,
              lr=3e-3, warmup_steps=2, max_tokens=512, max_new_tokens=12, limit=96, progress=False)
    whole = align(AlignConfig(out=str(tmp_path / "whole"), **kw))

    class Killed(Exception):
        pass

    real = Trainer._save_checkpoint

    def save_then_die(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.state.global_step == 3:
            raise Killed

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        align(AlignConfig(out=str(out), **kw))
    monkeypatch.undo()
    assert (out / "checkpoint-3").is_dir() and not (out / "align.json").exists()
    with pytest.raises(SeqkdError, match="--resume to continue it"):
        align(AlignConfig(out=str(out), **kw))
    chunks = {p: p.stat().st_mtime_ns for p in tmp_path.glob("killed-work/target_corpus/*/chunk-*.jsonl")}
    assert len(chunks) == (data == "target")
    starts, train = [], Trainer.train

    def spy(self, *args, **kwargs):
        starts.append(kwargs.get("resume_from_checkpoint"))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", spy)
    resumed = align(AlignConfig(out=str(out), resume=True, **kw))
    assert starts == [str(out / "checkpoint-3")]  # from the checkpoint, not from the start
    assert {p: p.stat().st_mtime_ns for p in chunks} == chunks  # the corpus's finished chunk, not decoded again
    assert resumed["train"]["steps"] == whole["train"]["steps"] == 6
    a, b = load_model(tmp_path / "whole"), load_model(out)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert resumed["after"]["acceptance_rate"] == whole["after"]["acceptance_rate"]
    with pytest.raises(SeqkdError, match="--resume and --overwrite"):
        AlignConfig(out=str(out), resume=True, overwrite=True, **kw)
    assert runner_fields("align", False, False) == {"resume": True, "overwrite": False, "progress": False}


def test_a_target_corpus_decoded_elsewhere_trains_the_draft_that_decoding_it_here_would(tiny_lm_model, draft_dir,
                                                                                       prompt_files, tmp_path):
    """--target-corpus (e.g. a vLLM corpus's selection): the target's outputs used as they are; given the pairs that
    --data target decodes with HF, it trains exactly the same draft, and nothing is decoded."""
    from seqkd.speculative.align import AlignConfig, align

    kw = dict(target=str(tiny_lm_model), draft=str(draft_dir), eval_prompts=str(prompt_files[1]), eval_size=4,
              data="target", temperature=0.0, eval_temperature=0.0, max_steps=6, lr=3e-3, warmup_steps=2,
              max_tokens=512, max_new_tokens=12, limit=32, progress=False)
    here = align(AlignConfig(out=str(tmp_path / "here"), prompts=str(prompt_files[0]), **kw))
    corpus = tmp_path / "here-work" / "target.jsonl"
    given = align(AlignConfig(out=str(tmp_path / "given"), target_corpus=str(corpus), **kw))
    assert not (tmp_path / "given-work" / "target_corpus").exists()  # nothing decoded
    assert given["train_prompts"] == here["train_prompts"] == 32
    a, b = load_model(tmp_path / "here"), load_model(tmp_path / "given")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    for bad, msg in [(dict(prompts="p"), "one of --prompts"), (dict(data="on-policy"), "--data target or mixed"),
                     (dict(eval_prompts=None), "--eval-prompts")]:
        with pytest.raises(SeqkdError, match=msg):
            AlignConfig(out="o", **(kw | dict(target_corpus=str(corpus)) | bad))
