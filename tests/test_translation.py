
from seqkd.data.batching import Collator, pad
from seqkd.data.prompts import IGNORE_INDEX, Format


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


class _WordTok:
    """Source tokenizer stand-in: each whitespace-separated word is its id; it must be asked for no specials."""

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False, "sources are tokenized without special tokens"
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def test_encode_cuts_the_source_never_the_wrapping():
    from seqkd.data.prompts import DEFAULT_MAX_SOURCE_LEN, source_ids

    tok = _WordTok()
    texts = ["10 11 12 13 14", "10", "10 11 12"]
    assert source_ids(tok, texts, 3) == [[10, 11, 12], [10], [10, 11, 12]]
    assert _fmt("causal").encode(tok, texts, 3) == [[2, 10, 11, 12, 4], [2, 10, 4], [2, 10, 11, 12, 4]]
    assert _fmt("seq2seq").encode(tok, texts, 3) == [[10, 11, 12, 3], [10, 3], [10, 11, 12, 3]]
    for style in ("plain", "chat"):
        f = Format("causal", 0, 2, 3, None, style, prefix=(7,), suffix=(8, 9))
        assert f.encode(tok, texts, 3) == [[7, 10, 11, 12, 8, 9], [7, 10, 8, 9], [7, 10, 11, 12, 8, 9]]
        assert f.encode(tok, texts, 1) == [[7, 10, 8, 9]] * 3
    long = " ".join(str(10 + i % 50) for i in range(DEFAULT_MAX_SOURCE_LEN + 40))
    (p,) = _fmt("causal").encode(tok, [long])  # the default limit
    assert len(p) == DEFAULT_MAX_SOURCE_LEN + 2 and p[0] == 2 and p[-1] == 4
    assert _fmt("causal").encode(tok, []) == [] and source_ids(tok, [], 3) == []


def test_encode_rejects_a_bad_limit():
    import pytest

    from seqkd.errors import SeqkdError

    for bad in (0, -1, 2.5, None, True):
        with pytest.raises(SeqkdError, match="max_source_len must be a positive integer"):
            _fmt("causal").encode(_WordTok(), ["10"], bad)


def test_encode_pairs_prompts_are_the_encoders():
    from seqkd.data.prompts import encode_pairs

    tok = _WordTok()
    srcs, tgts = ["10 11 12 13 14", "10"], ["20 21 22 23", "20"]
    for family in ("causal", "seq2seq"):
        f = _fmt(family)
        for kw, cut in (({"max_len": 3}, 3), ({"max_len": 3, "max_source_len": 2}, 2), ({"max_len": 3,
                                                                                          "max_source_len": 9}, 9)):
            exs = encode_pairs(f, tok, tok, srcs, tgts, **kw)
            prompts = f.encode(tok, srcs, cut)
            for ex, prompt, tgt in zip(exs, prompts, ([20, 21, 22], [20])):
                n = len(ex["input_ids"]) if family == "seq2seq" else ex["labels"].count(IGNORE_INDEX)
                assert ex["input_ids"][:n] == prompt
                assert ex["labels"][-len(tgt) - 1:] == tgt + [3]  # targets: cut to max_len, then eos
    assert encode_pairs(_fmt("causal"), tok, tok, [], []) == []
