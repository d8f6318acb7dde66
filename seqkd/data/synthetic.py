"""A built-in toy translation task with reordering and controllable multimodality.

Source language (invented words): subject-object-verb, adjectives after the noun,
postpositions, adverb last, no articles::

    miku graz waro nomat rapo            (cat big dog eats quickly)

Target language (English words): subject-verb-object, adjectives before the noun, "the"
before every noun, prepositions, adverb before the verb::

    the big cat quickly eats the dog

Multimodality: many source words have several valid translations (graz -> big / large /
huge) and the adverb may also go at the end of the sentence. With probability
``multimodality`` each such choice is made uniformly at random, otherwise the first
(canonical) option is used; ``multimodality=0`` gives one deterministic translation per
source. Knowledge distillation from a teacher collapses these modes, which is the effect
this task makes measurable. Vocabulary: 54 source + 88 target words (disjoint); sources have
3-12 words. A ~200k-parameter seq2seq model learns it in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import itertools
import operator
import random
from dataclasses import dataclass

from seqkd.errors import DataError, SeqkdError

# word class -> [(source word, target options: first is canonical)]
LEXICON: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "noun": [
        ("miku", ("cat",)),
        ("waro", ("dog", "puppy")),
        ("pelo", ("bird",)),
        ("tavu", ("man", "guy")),
        ("seni", ("woman", "lady")),
        ("kobe", ("child", "kid")),
        ("rual", ("horse",)),
        ("gaspo", ("fish",)),
        ("dumi", ("ball",)),
        ("lesko", ("book",)),
        ("brona", ("car", "automobile")),
        ("olfi", ("tree",)),
        ("hamu", ("house", "home")),
        ("vinta", ("boat", "ship")),
        ("zeppa", ("apple",)),
        ("nuvo", ("river", "stream")),
    ],
    "adj": [
        ("graz", ("big", "large", "huge")),
        ("pik", ("small", "little", "tiny")),
        ("rosk", ("red",)),
        ("blam", ("blue",)),
        ("verd", ("green",)),
        ("stari", ("old", "aged")),
        ("jun", ("young",)),
        ("felo", ("happy", "glad", "cheerful")),
        ("kwik", ("fast", "quick")),
        ("lank", ("tall",)),
        ("brut", ("angry", "mad")),
        ("sush", ("quiet", "silent")),
    ],
    "vt": [  # transitive verbs
        ("vidat", ("sees", "spots", "notices")),
        ("nomat", ("eats",)),
        ("amat", ("likes", "loves")),
        ("kurat", ("chases", "follows")),
        ("tenat", ("holds", "grabs")),
        ("trovat", ("finds",)),
        ("pulsat", ("pushes",)),
        ("spekat", ("watches", "observes")),
        ("portat", ("carries",)),
        ("pingat", ("draws", "paints")),
    ],
    "vi": [  # intransitive verbs
        ("dormit", ("sleeps", "rests")),
        ("kurit", ("runs",)),
        ("sedit", ("sits",)),
        ("saltit", ("jumps", "leaps")),
        ("mandit", ("waits",)),
    ],
    "adv": [
        ("rapo", ("quickly", "rapidly")),
        ("lento", ("slowly",)),
        ("oftu", ("often", "frequently")),
        ("hodi", ("today",)),
        ("dento", ("again",)),
        ("tasu", ("quietly", "silently")),
    ],
    "post": [  # postpositions in the source, prepositions in the target
        ("ko", ("near", "by")),
        ("su", ("under", "below")),
        ("po", ("behind",)),
        ("ni", ("in", "inside")),
        ("ta", ("with",)),
    ],
}
ARTICLE = "the"
MIN_WORDS, MAX_WORDS = 3, 12

_CLASS = {src: cls for cls, entries in LEXICON.items() for src, _ in entries}
_OPTIONS = {src: opts for entries in LEXICON.values() for src, opts in entries}
_WORDS = {cls: [src for src, _ in entries] for cls, entries in LEXICON.items()}


@dataclass
class _Parse:
    """A source sentence's structure: noun phrases are (noun, adjectives)."""

    subj: tuple[str, tuple[str, ...]]
    obj: tuple[str, tuple[str, ...]] | None
    pp: tuple[str, tuple[str, tuple[str, ...]]] | None  # (postposition, noun phrase)
    verb: str
    adv: str | None

    def source(self) -> list[str]:
        words = [self.subj[0], *self.subj[1]]
        if self.obj:
            words += [self.obj[0], *self.obj[1]]
        if self.pp:
            words += [self.pp[1][0], *self.pp[1][1], self.pp[0]]
        words.append(self.verb)
        if self.adv:
            words.append(self.adv)
        return words

    def slots(self, adv_at_end: bool) -> list[tuple[str, ...]]:
        """The target as a list of slots, each the tuple of valid words (first: canonical)."""

        def np(phrase: tuple[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
            noun, adjs = phrase
            return [(ARTICLE,), *(_OPTIONS[a] for a in adjs), _OPTIONS[noun]]

        out = np(self.subj)
        if self.adv and not adv_at_end:
            out.append(_OPTIONS[self.adv])
        out.append(_OPTIONS[self.verb])
        if self.obj:
            out += np(self.obj)
        if self.pp:
            out += [_OPTIONS[self.pp[0]], *np(self.pp[1])]
        if self.adv and adv_at_end:
            out.append(_OPTIONS[self.adv])
        return out


def vocabulary() -> tuple[list[str], list[str]]:
    """(source words, target words) of the task, sorted."""
    target = {ARTICLE} | {w for opts in _OPTIONS.values() for w in opts}
    return sorted(_CLASS), sorted(target)


def _sample_np(rng: random.Random, avoid: set[str]) -> tuple[str, tuple[str, ...]]:
    noun = rng.choice([n for n in _WORDS["noun"] if n not in avoid])
    avoid.add(noun)
    k = rng.choices((0, 1, 2), weights=(0.5, 0.35, 0.15))[0]
    return noun, tuple(rng.sample(_WORDS["adj"], k))


def _sample_parse(rng: random.Random) -> _Parse:
    while True:  # rejection sampling keeps the length rule in one place
        used: set[str] = set()  # distinct nouns: "the cat sees the cat" is a poor example
        transitive = rng.random() < 0.7
        subj = _sample_np(rng, used)
        obj = _sample_np(rng, used) if transitive else None
        pp = None
        if rng.random() < 0.35:
            pp = (rng.choice(_WORDS["post"]), _sample_np(rng, used))
        verb = rng.choice(_WORDS["vt" if transitive else "vi"])
        adv = rng.choice(_WORDS["adv"]) if rng.random() < 0.4 else None
        parse = _Parse(subj, obj, pp, verb, adv)
        if MIN_WORDS <= len(parse.source()) <= MAX_WORDS:
            return parse


def _parse(source: str) -> _Parse:
    """Parse a source sentence of this task; DataError if it is not one."""
    words = source.split()
    bad = [w for w in words if w not in _CLASS]
    if bad:
        raise DataError(f"not a synthetic-task sentence: unknown word {bad[0]!r} in {source!r}")
    classes = [_CLASS[w] for w in words]
    verbs = [i for i, c in enumerate(classes) if c in ("vt", "vi")]
    if len(verbs) != 1:
        raise DataError(f"not a synthetic-task sentence: expected one verb in {source!r}")
    v = verbs[0]
    tail = words[v + 1 :]
    if len(tail) > 1 or (tail and classes[v + 1] != "adv"):
        raise DataError(f"not a synthetic-task sentence: only an adverb may follow the verb in {source!r}")
    # Before the verb: noun phrases (noun + adjectives), the last one possibly closed by a postposition.
    chunks: list[tuple[str, tuple[str, ...]]] = []
    post = None
    i = 0
    while i < v:
        if classes[i] != "noun" or post is not None:
            raise DataError(f"not a synthetic-task sentence: unexpected {words[i]!r} in {source!r}")
        j = i + 1
        while j < v and classes[j] == "adj":
            j += 1
        chunks.append((words[i], tuple(words[i + 1 : j])))
        if j < v and classes[j] == "post":
            post = words[j]
            j += 1
        i = j
    want = (2 if classes[v] == "vt" else 1) + (post is not None)
    if len(chunks) != want:
        raise DataError(f"not a synthetic-task sentence: wrong number of noun phrases in {source!r}")
    pp = (post, chunks[-1]) if post else None
    obj = chunks[1] if classes[v] == "vt" else None
    return _Parse(chunks[0], obj, pp, words[v], tail[0] if tail else None)


def _translate(parse: _Parse, rng: random.Random, multimodality: float) -> str:
    adv_at_end = bool(parse.adv) and rng.random() < multimodality and rng.random() < 0.5
    words = []
    for opts in parse.slots(adv_at_end):
        if len(opts) > 1 and rng.random() < multimodality:
            words.append(rng.choice(opts))
        else:
            words.append(opts[0])
    return " ".join(words)


def synthetic_pairs(n: int, *, seed: int = 0, multimodality: float = 0.3) -> tuple[list[str], list[str]]:
    """``n`` (source, target) sentence pairs of the toy task, reproducible from ``seed``.

    The sources depend only on ``seed`` (not on ``multimodality``), so tasks that differ in
    multimodality share their sources. ``multimodality`` in [0, 1]: the probability that each
    ambiguous choice (synonym, adverb position) is made at random instead of canonically.
    """
    try:
        count = operator.index(n)  # any integer type (numpy too), but not 1.5
    except TypeError:
        count = -1
    if count < 0:
        raise SeqkdError(f"synthetic_pairs: n must be a non-negative integer, got {n!r}")
    if not 0.0 <= multimodality <= 1.0:
        raise SeqkdError(f"synthetic_pairs: multimodality must be in [0, 1], got {multimodality!r}")
    src_rng = random.Random(seed)
    tgt_rng = random.Random(f"seqkd-synthetic-target-{seed}")  # str seeds are stable across runs
    sources, targets = [], []
    for _ in range(count):
        parse = _sample_parse(src_rng)
        sources.append(" ".join(parse.source()))
        targets.append(_translate(parse, tgt_rng, multimodality))
    return sources, targets


def canonical_translation(source: str) -> str:
    """The translation produced with ``multimodality=0``."""
    return " ".join(opts[0] for opts in _parse(source).slots(adv_at_end=False))


def _variants(parse: _Parse) -> list[list[tuple[str, ...]]]:
    return [parse.slots(False), parse.slots(True)] if parse.adv else [parse.slots(False)]


def is_valid_translation(source: str, target: str) -> bool:
    """Whether ``target`` is one of the valid translations of ``source`` (cheap: no enumeration)."""
    words = target.split()
    return any(
        len(slots) == len(words) and all(w in opts for w, opts in zip(words, slots))
        for slots in _variants(_parse(source))
    )


def count_translations(source: str) -> int:
    """How many distinct valid translations ``source`` has."""
    total = 0
    for slots in _variants(_parse(source)):
        k = 1
        for opts in slots:
            k *= len(opts)
        total += k
    return total


def reference_translations(source: str, *, limit: int = 10_000) -> list[str]:
    """All valid translations of ``source``, sorted (the canonical one is among them).

    SeqkdError if there are more than ``limit`` (use :func:`is_valid_translation` instead).
    """
    count = count_translations(source)
    if count > limit:
        raise SeqkdError(f"{source!r} has {count} valid translations, more than limit={limit}")
    refs = {" ".join(words) for slots in _variants(_parse(source)) for words in itertools.product(*slots)}
    return sorted(refs)


# split -> (seed offset, multimodal references?); val and test are canonical, as the training job's validation set
SPLITS = {"train": (0, True), "val": (10_000, False), "test": (20_000, False), "corpus": (40_000, True)}


def write_splits(out, *, sizes: dict[str, int], seed: int = 0, multimodality: float = 0.3) -> dict[str, int]:
    """The toy task as files: ``out/SPLIT.src`` and ``out/SPLIT.tgt`` for each split of ``sizes`` (train, val,
    test, corpus), written atomically; returns the sizes."""
    from pathlib import Path

    from seqkd.io import atomic_write_lines

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        offset, multimodal = SPLITS[split]
        src, tgt = synthetic_pairs(n, seed=seed + offset, multimodality=multimodality if multimodal else 0.0)
        atomic_write_lines(out / f"{split}.src", src)
        atomic_write_lines(out / f"{split}.tgt", tgt)
    return dict(sizes)
