"""The toy translation task: seeding, grammar, reordering, and the multimodality knob."""

from __future__ import annotations

from collections import Counter

import pytest

from seqkd.data.synthetic import (
    LEXICON,
    canonical_translation,
    count_translations,
    is_valid_translation,
    reference_translations,
    synthetic_pairs,
    vocabulary,
)
from seqkd.errors import DataError, SeqkdError


def test_vocabulary_sizes_and_disjointness():
    src, tgt = vocabulary()
    assert (len(src), len(tgt)) == (54, 88)
    assert not set(src) & set(tgt)  # a joint tokenizer can tell the languages apart
    all_targets = [w for entries in LEXICON.values() for _, opts in entries for w in opts]
    assert len(all_targets) == len(set(all_targets)) == 87  # + "the"; no target word is ambiguous


def test_seeded_and_reproducible():
    a = synthetic_pairs(200, seed=7)
    assert a == synthetic_pairs(200, seed=7)
    assert a != synthetic_pairs(200, seed=8)
    assert synthetic_pairs(50, seed=7) == (a[0][:50], a[1][:50])  # a prefix of a longer run


def test_exact_first_pairs_are_stable():
    # Pinned so that a change to the generator (which would change every benchmark) is noticed.
    src, tgt = synthetic_pairs(3, seed=0, multimodality=0.0)
    assert src == [
        "lesko stari lank kurit",
        "tavu verd nuvo sush amat tasu",
        "brona waro lesko su portat dento",
    ]
    assert tgt == [
        "the old tall book runs",
        "the green man quietly likes the quiet river",
        "the car again carries the dog under the book",
    ]


def test_lengths_and_counts():
    src, tgt = synthetic_pairs(3000, seed=1)
    assert len(src) == len(tgt) == 3000
    lengths = Counter(len(s.split()) for s in src)
    assert min(lengths) == 3 and max(lengths) <= 12
    assert 4.5 < sum(k * v for k, v in lengths.items()) / 3000 < 6.5
    assert all(len(t.split()) > len(s.split()) for s, t in zip(src, tgt))  # "the" per noun
    assert len(set(src)) > 2800  # few duplicates: the task is not memorisable
    src_vocab, tgt_vocab = map(set, vocabulary())
    assert {w for s in src for w in s.split()} == src_vocab  # every word is used
    assert {w for t in tgt for w in t.split()} <= tgt_vocab


def test_reordering_examples():
    # SOV, adjectives after nouns, postpositions -> SVO, adjectives before nouns, prepositions.
    assert canonical_translation("miku graz waro nomat rapo") == "the big cat quickly eats the dog"
    assert canonical_translation("kobe pik rosk nuvo ko dormit") == "the small red child sleeps near the river"
    assert (
        canonical_translation("seni lesko blam hamu su portat")
        == "the woman carries the blue book under the house"
    )


def test_multimodality_zero_is_deterministic():
    src, tgt = synthetic_pairs(2000, seed=3, multimodality=0.0)
    assert all(canonical_translation(s) == t for s, t in zip(src, tgt))


def test_sources_do_not_depend_on_multimodality():
    assert synthetic_pairs(300, seed=5, multimodality=0.0)[0] == synthetic_pairs(300, seed=5, multimodality=0.9)[0]


@pytest.mark.parametrize("mm", [0.3, 1.0])
def test_all_targets_are_valid_translations(mm):
    src, tgt = synthetic_pairs(2000, seed=4, multimodality=mm)
    assert all(is_valid_translation(s, t) for s, t in zip(src, tgt))


def test_multimodality_controls_how_often_choices_are_random():
    src, canonical = synthetic_pairs(3000, seed=11, multimodality=0.0)
    options = {w: len(opts) for entries in LEXICON.values() for w, opts in entries}
    adverbs = {w for w, _ in LEXICON["adv"]}
    rates = {}
    for mm in (0.3, 1.0):
        _, tgt = synthetic_pairs(3000, seed=11, multimodality=mm)
        rate = rates[mm] = sum(c != t for c, t in zip(canonical, tgt)) / len(src)
        # Each word with k options stays canonical with probability 1 - mm + mm/k; an adverb
        # stays before the verb with probability 1 - mm/2.
        expected = 0.0
        for s in src:
            p = 1.0
            for w in s.split():
                p *= 1 - mm + mm / options[w]
                p *= (1 - mm / 2) if w in adverbs else 1
            expected += (1 - p) / len(src)
        assert abs(rate - expected) < 0.025, (mm, rate, expected)
    assert 0.38 < rates[0.3] < 0.45 and rates[1.0] > 0.8, rates


def test_adverb_position_is_random_with_probability_multimodality_over_two():
    _, tgt = synthetic_pairs(4000, seed=11, multimodality=0.6)
    adverbs = {w for _, opts in LEXICON["adv"] for w in opts}
    with_adv = [t for t in tgt if adverbs & set(t.split())]
    at_end = sum(t.split()[-1] in adverbs for t in with_adv) / len(with_adv)
    assert 0.25 < at_end < 0.35 and len(with_adv) > 1400


def test_synonyms_are_uniform_at_full_multimodality():
    src, tgt = synthetic_pairs(4000, seed=2, multimodality=1.0)
    # "graz" (big) has three translations; count them in the targets of sources that use it once.
    big = Counter(
        w
        for s, t in zip(src, tgt)
        if s.split().count("graz") == 1
        for w in t.split()
        if w in {"big", "large", "huge"}
    )
    total = sum(big.values())
    assert total > 300
    assert all(abs(n / total - 1 / 3) < 0.07 for n in big.values()) and len(big) == 3


def test_reference_translations_enumerates_every_mode():
    refs = reference_translations("miku graz waro nomat rapo")
    # graz: 3 options, waro: 2, rapo: 2, adverb position: 2  ->  24
    assert len(refs) == count_translations("miku graz waro nomat rapo") == 24
    assert "the big cat quickly eats the dog" in refs
    assert "the huge cat eats the puppy rapidly" in refs
    assert refs == sorted(set(refs))
    assert all(is_valid_translation("miku graz waro nomat rapo", r) for r in refs)


def test_is_valid_translation_rejects_wrong_outputs():
    s = "miku graz waro nomat rapo"
    assert not is_valid_translation(s, "the big dog quickly eats the cat")  # roles swapped
    assert not is_valid_translation(s, "the cat big quickly eats the dog")  # adjective order
    assert not is_valid_translation(s, "the big cat quickly eats")  # missing object
    assert not is_valid_translation(s, "")


def test_reference_translations_limit():
    s = "tavu graz pik seni felo kwik vinta brut sush ko vidat rapo"
    assert count_translations(s) == 2 * 3 * 3 * 2 * 3 * 2 * 2 * 2 * 2 * 2 * 3 * 2 * 2
    with pytest.raises(SeqkdError, match=r"has 41472 valid translations, more than limit=10000$"):
        reference_translations(s)


@pytest.mark.parametrize(
    "source,expect",
    [
        ("miku graz hello nomat", "unknown word 'hello'"),
        ("miku waro", "expected one verb"),
        ("miku waro nomat vidat", "expected one verb"),
        ("miku waro nomat rapo lento", "only an adverb may follow the verb"),
        ("graz miku waro nomat", "unexpected 'graz'"),
        ("miku nomat", "wrong number of noun phrases"),
        ("miku waro dormit", "wrong number of noun phrases"),
    ],
)
def test_parse_errors(source, expect):
    with pytest.raises(DataError, match=f"not a synthetic-task sentence: {expect}"):
        canonical_translation(source)


@pytest.mark.parametrize(
    "n,mm,expect",
    [(-1, 0.3, "n must be"), (1.5, 0.3, "n must be"), (3, 1.5, r"in \[0, 1\]"), (3, -0.1, r"in \[0, 1\]")],
)
def test_bad_arguments(n, mm, expect):
    with pytest.raises(SeqkdError, match=f"synthetic_pairs: .*{expect}"):
        synthetic_pairs(n, multimodality=mm)


def test_zero_pairs():
    assert synthetic_pairs(0) == ([], [])
