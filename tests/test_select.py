"""Selection of training targets from an n-best list: top, seq-inter (by hand-computed BLEU) and all."""

import json
import math

import pytest

from seqkd.data.files import read_parallel
from seqkd.errors import SeqkdError
from seqkd.teacher.selection import select, sentence_metric, write_training_data

REF = "the small dog runs in the park"
# The teacher's n-best, best first: a short, confident hypothesis, then two full-length ones that each change one
# word of the reference ("the" -> "a"), near the end (A) or at the start (B).
C = "the small dog"
A = "the small dog runs in a park"
B = "a small dog runs in the park"


def _hyp(text, logprob, **extra):
    ids = [5 + sum(map(ord, w)) % 100 for w in text.split()] + [3]  # distinct texts, distinct ids
    return {"text": text, "token_ids": ids, "logprob": logprob, "norm_logprob": logprob / len(ids),
            "token_logprobs": [logprob / len(ids)] * len(ids), "finished": True, **extra}


def _record(rid=0, reference=REF, hyps=None):
    hyps = hyps or [_hyp(C, -2.0, topk_ids=[[5, 6]] * 4, topk_logprobs=[[-0.1, -2.5]] * 4),
                    _hyp(A, -6.0), _hyp(B, -7.0)]
    return {"id": rid, "source": f"src {rid}", "reference": reference, "hypotheses": hyps}


def _bleu_by_hand(matches, totals, hyp_len, ref_len):
    """Sentence BLEU from n-gram matches/totals (no zero counts here, so smoothing plays no part; n-gram orders
    longer than the hypothesis are left out, as sacrebleu's effective order does), brevity penalty included."""
    orders = [(m, t) for m, t in zip(matches, totals) if t > 0]
    log_p = sum(math.log(m / t) for m, t in orders) / len(orders)
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def test_seq_inter_picks_the_hypothesis_with_the_best_hand_computed_sentence_bleu():
    # Reference: the small dog runs in the park (7 words).
    # C "the small dog": all 1..3-grams match (3/3, 2/2, 1/1), no 4-grams; brevity penalty exp(1 - 7/3).
    # A "... in a park": 1-grams 6/7; 2-grams 4/6 (in a, a park miss); 3-grams 3/5; 4-grams 2/4.
    # B "a small dog ...": 1-grams 6/7; 2-grams 5/6 (only "a small" misses); 3-grams 4/5; 4-grams 3/4.
    # A mismatch at the edge of the sentence breaks fewer n-grams than one inside it: B wins.
    hand = {
        C: _bleu_by_hand([3, 2, 1, 0], [3, 2, 1, 0], 3, 7),  # 26.36
        A: _bleu_by_hand([6, 4, 3, 2], [7, 6, 5, 4], 7, 7),  # (6/7 * 4/6 * 3/5 * 2/4) ** 1/4 = 64.35
        B: _bleu_by_hand([6, 5, 4, 3], [7, 6, 5, 4], 7, 7),  # (3/7) ** 1/4 = 80.91
    }
    assert [round(hand[h], 2) for h in (C, A, B)] == [26.36, 64.35, 80.91]
    bleu = sentence_metric("bleu")
    for h, value in hand.items():
        assert bleu(h, REF) == pytest.approx(value, abs=1e-6)

    (ex,) = select([_record()], "seq-inter", "bleu")
    assert ex["target"] == B and ex["rank"] == 2 and ex["weight"] == 1.0
    assert ex["score"] == pytest.approx(hand[B])
    assert "topk_ids" not in ex  # B has no stored top-k; the chosen hypothesis's own fields are carried
    (top,) = select([_record()], "top")
    assert top["target"] == C and top["rank"] == 0 and top["topk_ids"] == [[5, 6]] * 4
    assert top["logprob"] == -2.0 and top["token_logprobs"] == [-0.5] * 4
    assert top["token_ids"] == _record()["hypotheses"][0]["token_ids"]


def test_seq_inter_with_chrf_ties_and_external_references():
    hyps = [_hyp("a cat sleeps", -1.0), _hyp("the dog sleeps", -2.0), _hyp("the dog sleeps", -3.0)]
    # chrF: the exact match scores 100; its duplicate ties and loses to the better-ranked copy
    (ex,) = select([_record(reference="the dog sleeps", hyps=hyps)], "seq-inter", "chrf")
    assert ex["rank"] == 1 and ex["score"] == pytest.approx(100.0)
    # references given separately (line i = id i) replace the records' own
    recs = [_record(0, reference=None), _record(1, reference=None)]
    out = select(recs, "seq-inter", references=[C, B])
    assert [x["target"] for x in out] == [C, B]
    out = select(recs, "seq-inter", references={0: A, 1: A})
    assert [x["target"] for x in out] == [A, A]
    with pytest.raises(SeqkdError, match="seq-inter needs a reference .*id 0 has none"):
        select(recs, "seq-inter")
    with pytest.raises(SeqkdError, match="record id 1 has no reference: the references have 1 lines"):
        select(recs, "seq-inter", references=[C])
    with pytest.raises(SeqkdError, match="strategy must be one of"):
        select(recs, "best")
    with pytest.raises(SeqkdError, match="metric must be one of"):
        select(recs, "seq-inter", "ter", references=[C, B])
    with pytest.raises(SeqkdError, match="id 5 has no hypotheses"):
        select([{"id": 5, "source": "x", "reference": None, "hypotheses": []}], "top")


def test_all_weights_are_the_normalised_teacher_probabilities_of_distinct_hypotheses():
    hyps = [_hyp("x y", -1.0), _hyp("x z", -2.0), _hyp("x y", -1.0), _hyp("w", -3.0)]
    out = select([_record(hyps=hyps)], "all")
    assert [x["rank"] for x in out] == [0, 1, 3]  # the repeated sample is kept once
    z = math.exp(-1) + math.exp(-2) + math.exp(-3)
    assert [x["weight"] for x in out] == pytest.approx([math.exp(-1) / z, math.exp(-2) / z, math.exp(-3) / z])
    # very negative log-probs do not underflow to 0/0
    far = select([_record(hyps=[_hyp("x", -2000.0), _hyp("y", -2000.0 - math.log(3))])], "all")
    assert [x["weight"] for x in far] == pytest.approx([0.75, 0.25])


def test_training_data_file_is_jsonl_with_the_teacher_fields_and_a_parallel_corpus(tmp_path):
    examples = select([_record(0), _record(1)], "top")
    path = write_training_data(examples, tmp_path / "sub" / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == examples
    assert set(rows[0]) >= {"source", "target", "weight", "token_ids", "token_logprobs", "topk_ids",
                            "topk_logprobs", "logprob", "norm_logprob"}
    pairs, stats = read_parallel(path)
    assert [(p.source, p.target) for p in pairs] == [("src 0", C), ("src 1", C)] and stats.kept == 2
    assert not list(path.parent.glob(".*"))  # no temporary file left behind
