"""Student training by distillation: data alignment, the loss hook against hand computations, student
initialisation from the teacher, bad input, and end-to-end distillation on the synthetic task."""

import json

import pytest
import torch

from seqkd.config import DistillConfig
from seqkd.data.batching import DistillCollator
from seqkd.data.prompts import IGNORE_INDEX, Format
from seqkd.errors import DataError, SeqkdError
from seqkd.models.student_init import init_from_teacher, layer_map
from seqkd.student.distill import distill_trainer
from seqkd.student.setup import read_selection, selection_examples


def _corpus(teacher, tmp_path, n=40, topk=0, seed=5):
    """A beam n-best corpus of the teacher on synthetic sources and its top-1 selection file."""
    from seqkd.data.files import Example
    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.teacher.corpus import generate_corpus, read_corpus
    from seqkd.teacher.engines import DecodeSettings, get_engine
    from seqkd.teacher.selection import select, write_training_data

    srcs, refs = synthetic_pairs(n, seed=seed, multimodality=0.3)
    engine = get_engine("hf", str(teacher), batch_size=50)
    generate_corpus(engine, [Example(i, a, b) for i, (a, b) in enumerate(zip(srcs, refs))], tmp_path / "corpus",
                    DecodeSettings(mode="beam", beam_size=4, nbest=2, max_new_tokens=32, topk_logprobs=topk),
                    progress=False, chunk_size=1000)
    path = write_training_data(select(read_corpus(tmp_path / "corpus"), "top"), tmp_path / "train.jsonl")
    return path


def _cfg(tmp_path, teacher, train, **kw):
    base = dict(out=str(tmp_path / "student"), model="marian-tiny", teacher=str(teacher), train_source=str(train),
                max_steps=5, eval_steps=0, bleu_samples=0, logging_steps=1, progress=False, dropout=0.0,
                label_smoothing=0.0, max_tokens=4096, overwrite=True)
    base.update(kw)
    return DistillConfig(**base)


def test_selection_examples_keep_the_teachers_tokens_and_align_topk(tiny_mt_model, tiny_lm_model, tmp_path):
    from seqkd.models.tokenizer import load_tokenizers

    src_tok, tgt_tok = load_tokenizers(tiny_lm_model)
    rec = {"id": 0, "source": "lesko sush", "target": "x", "reference": "the man", "token_ids": [7, 8, 3],
           "topk_ids": [[7, 1], [8, 2], [3, 4]], "topk_logprobs": [[-0.1, -3.0], [-0.2, -2.0], [-0.3, -1.5]]}
    for family in ("causal", "seq2seq"):
        fmt = Format.from_tokenizer(family, tgt_tok) if family == "causal" else \
            Format(family, tgt_tok.pad_token_id, tgt_tok.bos_token_id, tgt_tok.eos_token_id, None)
        exs = selection_examples(fmt, src_tok, tgt_tok, [rec], targets="both", max_len=64, vocab_size=160,
                                 with_topk=False)
        assert len(exs) == 2
        teacher_ex, ref_ex = exs
        assert [l for l in teacher_ex["labels"] if l != IGNORE_INDEX] == [7, 8, 3]  # verbatim: no second eos
        ref_ids = tgt_tok("the man", add_special_tokens=False)["input_ids"] + [fmt.eos_id]
        assert [l for l in ref_ex["labels"] if l != IGNORE_INDEX] == ref_ids
        ex = selection_examples(fmt, src_tok, tgt_tok, [rec], targets="teacher", max_len=64, vocab_size=160,
                                with_topk=True)[0]
        batch = DistillCollator(fmt.pad_id, decoder_start_id=0 if family == "seq2seq" else None)([ex, ref_ex | {
            "topk_ids": [[0, 0]] * 3, "topk_logprobs": [[0.0, 0.0]] * 3}])
        labels = batch["labels"][0]
        at = labels != IGNORE_INDEX
        # the stored top-k of target token t sits at the label position of token t
        assert batch["topk_ids"][0][at].tolist() == rec["topk_ids"]
        assert batch["topk_ids"][0][at][:, 0].tolist() == labels[at].tolist()
        assert batch["weight"].tolist() == [1.0, 1.0]
    with pytest.raises(DataError, match="token id 9 >= the student's vocabulary"):
        selection_examples(fmt, src_tok, tgt_tok, [rec | {"token_ids": [9]}], targets="teacher", max_len=8,
                           vocab_size=9, with_topk=False)
    with pytest.raises(DataError, match="no top-k log-probs"):
        selection_examples(fmt, src_tok, tgt_tok, [{k: v for k, v in rec.items() if "topk" not in k}],
                           targets="teacher", max_len=8, vocab_size=160, with_topk=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: missing field 'token_ids'"):
        read_selection(bad)


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.args.device) for k, v in batch.items()}


def test_offline_topk_with_the_full_vocabulary_equals_online_kd(tiny_mt_model, tmp_path):
    """Stored top-k with k = V is the teacher's whole distribution: the offline KD term equals the online one."""
    from seqkd.models.tokenizer import load_tokenizers

    vocab = len(load_tokenizers(tiny_mt_model)[1])
    train = _corpus(tiny_mt_model, tmp_path, n=12, topk=vocab)
    terms = {}
    for mode in ("online", "offline"):
        torch.manual_seed(0)
        trainer, _ = distill_trainer(_cfg(tmp_path, tiny_mt_model, train, kd_mode=mode, kd_weight=0.5,
                                             divergence="jsd", seed=3))
        model = trainer.model
        model.train()
        batch = _first_batch(trainer)
        logits, targets, _ = trainer.forward_logits(model, batch)
        terms[mode] = {k: float(v) for k, v in trainer.loss_terms(model, batch, logits, targets).items()}
    assert terms["online"]["kd"] > 0
    assert terms["offline"]["kd"] == pytest.approx(terms["online"]["kd"], rel=1e-5)  # float32 stored log-probs
    assert terms["offline"]["ce"] == pytest.approx(terms["online"]["ce"], rel=1e-6)


def test_loss_hook_matches_a_hand_computation(tiny_mt_model, tmp_path):
    """(1 - w) * CE + w * T^2 * D summed over real tokens, each token weighted by its example's weight."""
    train = _corpus(tiny_mt_model, tmp_path, n=8)
    rows = [json.loads(l) for l in train.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["weight"] = 0.25 + 0.5 * (i % 2)
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w, temp = 0.3, 2.0
    trainer, _ = distill_trainer(_cfg(tmp_path, tiny_mt_model, train, kd_weight=w, kd_temperature=temp,
                                         divergence="tvd"))
    model = trainer.model
    batch = _first_batch(trainer)
    logits, targets, _ = trainer.forward_logits(model, batch)
    terms = trainer.loss_terms(model, batch, logits, targets)
    with torch.no_grad():
        t_logits = trainer.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   decoder_input_ids=batch["decoder_input_ids"]).logits
    ce = d = 0.0
    for b in range(batch["labels"].shape[0]):
        for t in range(batch["labels"].shape[1]):
            y = int(batch["labels"][b, t])
            if y == IGNORE_INDEX:
                continue
            ls = trainer.model(input_ids=batch["input_ids"][b:b + 1], attention_mask=batch["attention_mask"][b:b + 1],
                               decoder_input_ids=batch["decoder_input_ids"][b:b + 1]).logits[0, t].double()
            lt = t_logits[b, t].double()
            wt = float(batch["weight"][b])
            ce += wt * float(-(ls.log_softmax(-1)[y]))
            d += wt * float(0.5 * ((lt / temp).softmax(-1) - (ls / temp).softmax(-1)).abs().sum())
    assert float(terms["ce"]) == pytest.approx((1 - w) * ce, rel=1e-4)
    assert float(terms["kd"]) == pytest.approx(w * temp ** 2 * d, rel=1e-4)


def test_layer_map_and_init_from_teacher():
    from seqkd.models import build_model

    assert layer_map(6, 2) == [2, 5] and layer_map(3, 1) == [2] and layer_map(3, 3) == [0, 1, 2]
    with pytest.raises(SeqkdError, match="cannot take every k-th"):
        layer_map(2, 3)
    teacher = build_model("llama-teacher", vocab_size=64, seed=1)
    student = build_model("llama-student", vocab_size=64, seed=2)
    assert init_from_teacher(student, teacher) == {"layers": [2, 5]}
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"])
    assert torch.equal(s["model.layers.0.mlp.up_proj.weight"], t["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(s["model.layers.1.self_attn.q_proj.weight"], t["model.layers.5.self_attn.q_proj.weight"])
    assert torch.equal(s["model.norm.weight"], t["model.norm.weight"])
    mt_t = build_model("marian-teacher", vocab_size=64, seed=1)
    mt_s = build_model("marian-student", vocab_size=64, seed=2)
    assert init_from_teacher(mt_s, mt_t) == {"encoder.layers": [0, 1, 2], "decoder.layers": [2]}
    assert torch.equal(mt_s.state_dict()["model.decoder.layers.0.fc1.weight"],
                       mt_t.state_dict()["model.decoder.layers.2.fc1.weight"])
    with pytest.raises(SeqkdError, match="shape mismatch"):
        init_from_teacher(build_model("llama-tiny", vocab_size=64, seed=0), teacher)
    with pytest.raises(SeqkdError, match="cannot initialise a MarianMTModel student from a LlamaForCausalLM"):
        init_from_teacher(mt_s, teacher)


@pytest.mark.parametrize("kw, msg", [
    (dict(teacher=None), "--teacher is required"),
    (dict(kd_mode="sideways"), "--kd-mode must be one of"),
    (dict(kd_weight=1.5), "--kd-weight must be in"),
    (dict(kd_mode="none", kd_weight=0.5), "--kd-mode none trains on CE only"),
    (dict(kd_mode="offline", onpolicy_lambda=0.5), "scored by the teacher online"),
    (dict(kd_mode="offline", targets="both"), "--targets teacher"),
    (dict(kd_mode="offline", kd_temperature=2.0), "--topk-tail renorm"),
])
def test_config_validation(tmp_path, kw, msg):
    with pytest.raises(SeqkdError, match=msg):
        DistillConfig(**(dict(out=str(tmp_path), teacher="t", train_source="x") | kw))


def test_bad_teacher_student_pairs(tiny_mt_model, tiny_lm_model, tmp_path):
    train = _corpus(tiny_mt_model, tmp_path, n=4)
    other = tmp_path / "other"
    from seqkd.models import build_model, save_model
    from seqkd.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["completely different words here"] * 50, tmp_path / "tok", vocab_size=40)
    save_model(build_model("marian-tiny", vocab_size=len(tok), seed=0), (tok, tok), other)
    with pytest.raises(SeqkdError, match="different tokenizers"):
        distill_trainer(_cfg(tmp_path, tiny_mt_model, train, model=str(other)))
    with pytest.raises(SeqkdError, match="online KD runs the teacher on the student's inputs"):
        distill_trainer(_cfg(tmp_path, tiny_lm_model, tmp_path / "train.jsonl", model="marian-tiny"))
    with pytest.raises(SeqkdError, match="give a `seqkd select` file"):
        src = tmp_path / "plain.tsv"
        src.write_text("a b\tc d\n")
        distill_trainer(_cfg(tmp_path, tiny_mt_model, src, kd_mode="offline"))


def test_offline_validation_loss_is_the_plain_cross_entropy(tiny_mt_model, tmp_path):
    """Validation batches (references) have no stored top-k: their loss is the CE itself, not (1 - w) * CE (which
    was 0 at --kd-weight 1, so the first checkpoint was kept as "best" with --bleu-samples 0)."""
    import torch.nn.functional as F

    from seqkd.data.synthetic import synthetic_pairs
    from seqkd.student.distill import distill_trainer

    train = _corpus(tiny_mt_model, tmp_path, n=12, topk=4)
    vsrc, vtgt = synthetic_pairs(6, seed=9, multimodality=0.0)
    (tmp_path / "v.de").write_text("\n".join(vsrc) + "\n")
    (tmp_path / "v.en").write_text("\n".join(vtgt) + "\n")
    trainer, _ = distill_trainer(_cfg(tmp_path, tiny_mt_model, train, kd_mode="offline", kd_weight=1.0,
                                      valid_source=str(tmp_path / "v.de"), valid_target=str(tmp_path / "v.en"),
                                      label_smoothing=0.1))
    model = trainer.model.eval()
    batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        logits, targets, _ = trainer.forward_logits(model, batch)
        terms = trainer.loss_terms(model, batch, logits, targets)
        ce = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=0.1)
    assert set(terms) == {"ce"} and float(ce) > 0
    assert float(terms["ce"]) == pytest.approx(float(ce), rel=1e-6)
    assert trainer.evaluate()["eval_loss"] > 0


def test_generated_tokens_are_returned_exactly_as_sampled():
    """A pad id the model itself produced before its eos is one of its tokens; a row cut at the length limit has
    no eos. (Pads used to be stripped anywhere, and an eos the model never produced appended.)"""
    from types import SimpleNamespace

    from seqkd.data.prompts import Format
    from seqkd.teacher.decoding import generate_ids, generation_config

    rows = [[7, 0, 8, 3, 0, 0], [9, 0, 9, 9, 9, 9]]  # pad = 0, eos = 3

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, generation_config):
            return SimpleNamespace(sequences=torch.cat([input_ids, torch.tensor(rows)], 1))

    fmt = Format("causal", pad_id=0, bos_id=2, eos_id=3, sep_id=4)
    model = Fake()
    hyps = generate_ids(model, fmt, [[2, 5, 4], [2, 6, 4]], generation_config(model, fmt, max_new_tokens=6))
    assert (hyps[0][0].ids, hyps[0][0].finished) == ([7, 0, 8], True)
    assert (hyps[1][0].ids, hyps[1][0].finished) == ([9, 0, 9, 9, 9, 9], False)


def test_onpolicy_targets_are_the_samples_exactly(tiny_lm_model, tmp_path, monkeypatch):
    from seqkd.student.distill import distill_trainer
    from seqkd.teacher import decoding
    from seqkd.teacher.decoding import Hypothesis

    train = _corpus(tiny_lm_model, tmp_path, n=4)
    trainer, _ = distill_trainer(_cfg(tmp_path, tiny_lm_model, train, model="llama-tiny", onpolicy_lambda=1.0,
                                      onpolicy_max_new_tokens=6, kd_weight=1.0))
    pad, eos = trainer.fmt.pad_id, trainer.fmt.eos_id
    samples = [Hypothesis([7, pad, 8], finished=True), Hypothesis([9, pad, 9, 9, 9, 9], finished=False)]
    monkeypatch.setattr(decoding, "generate_ids",
                        lambda model, fmt, prompts, gen, **kw: [[samples[i % 2]] for i in range(len(prompts))])
    batch = _first_batch(trainer)
    new = trainer.onpolicy_batch(trainer.model, batch)
    for i in range(new["labels"].shape[0]):
        target = [int(x) for x in new["labels"][i] if x != IGNORE_INDEX]
        want = [7, pad, 8, eos] if i % 2 == 0 else [9, pad, 9, 9, 9, 9]
        assert target == want, (i, target)


def test_onpolicy_temperature_zero_trains_on_the_students_greedy_outputs(tiny_lm_model, tmp_path):
    """A draft used at temperature 0 is aligned on its greedy outputs: deterministic, equal to greedy generate."""
    from seqkd.student.distill import distill_trainer
    from seqkd.teacher.decoding import generate_ids, generation_config

    train = _corpus(tiny_lm_model, tmp_path, n=4)
    trainer, _ = distill_trainer(_cfg(tmp_path, tiny_lm_model, train, model="llama-tiny", onpolicy_lambda=1.0,
                                      onpolicy_max_new_tokens=6, kd_weight=1.0, onpolicy_temperature=0.0))
    batch = _first_batch(trainer)
    a, b = (trainer.onpolicy_batch(trainer.model, batch) for _ in range(2))
    assert torch.equal(a["labels"], b["labels"])
    prompts = [row[:n].tolist() for row, n in zip(batch["input_ids"], batch["prompt_len"].tolist())]
    greedy = generate_ids(trainer.model, trainer.fmt, prompts,
                          generation_config(trainer.model, trainer.fmt, max_new_tokens=6), batch_size=len(prompts))
    for i, hs in enumerate(greedy):
        want = list(hs[0].ids) + ([trainer.fmt.eos_id] if hs[0].finished else [])
        assert [int(x) for x in a["labels"][i] if x != IGNORE_INDEX] == want
    with pytest.raises(SeqkdError, match="--onpolicy-temperature must be >= 0"):
        _cfg(tmp_path, tiny_lm_model, train, model="llama-tiny", onpolicy_temperature=-1.0)
