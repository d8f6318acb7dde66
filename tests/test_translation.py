import torch

from seqkd.translation import IGNORE_INDEX, Collator, Format, pad


def _fmt(family):
    return Format(family=family, pad_id=0, bos_id=2, eos_id=3, sep_id=4)


def test_causal_example_masks_the_prompt():
    ex = _fmt("causal").example([10, 11], [20, 21, 22])
    assert ex["input_ids"] == [2, 10, 11, 4, 20, 21, 22, 3]
    assert ex["labels"] == [IGNORE_INDEX] * 4 + [20, 21, 22, 3]
    assert _fmt("causal").prompt_ids([10, 11]) == [2, 10, 11, 4]
    assert _fmt("causal").length(ex) == 8


def test_seq2seq_example():
    f = _fmt("seq2seq")
    ex = f.example([10, 11], [20, 21, 22])
    assert ex == {"input_ids": [10, 11, 3], "labels": [20, 21, 22, 3]}
    assert f.length(ex) == 7


def test_collator_pads_and_builds_decoder_inputs():
    f = _fmt("seq2seq")
    batch = Collator(0, decoder_start_id=0)([f.example([10], [20, 21]), f.example([10, 11, 12], [20])])
    assert batch["input_ids"].tolist() == [[10, 3, 0, 0], [10, 11, 12, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[20, 21, 3], [20, 3, IGNORE_INDEX]]
    # decoder input = labels shifted right behind the start token (pad), so position t predicts labels[t]
    assert batch["decoder_input_ids"].tolist() == [[0, 20, 21], [0, 20, 3]]


def test_collator_mask_from_lengths_not_pad_value():
    # a causal sequence whose real tokens include the pad id must still be fully attended
    batch = Collator(3)([{"input_ids": [2, 3, 3], "labels": [-100, 3, 3]}, {"input_ids": [2], "labels": [-100]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "decoder_input_ids" not in batch


def test_pad_left():
    assert pad([[1, 2], [3]], 0, left=True).tolist() == [[1, 2], [0, 3]]
    assert pad([], 0).shape == (0, 0)
