"""WordNet (Debian ``wordnet-base``): definition → headword pairs for retrieval, and word
pairs graded by relatedness for similarity.

``data.noun`` lines read ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the
synset's first word is its headword and the gloss up to the first ';' its definition (the
examples after it often contain the headword itself). Pairs are drawn with a seed among
synsets whose headword is unique, so every query has exactly one right answer.

Graded pairs parse each line fully (``w_cnt`` is 2-digit hex, then ``p_cnt`` 3-digit decimal
pointers ``symbol offset pos source/target``) and grade word pairs 3 (one synset), 2 (direct
hypernym, ``@``/``@i``), 1 (one lexicographer file, unrelated) and 0 (different files).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pqorder.data.debian import package_folder
from pqorder.errors import AssetError, ConfigError
from pqorder.paths import data_dir

PACKAGE = "wordnet-base"
SYSTEM = Path("/usr/share/wordnet")
POS = ("noun", "verb", "adj", "adv")


def wordnet_file(pos: str) -> Path:
    names = (f"data.{pos}",)
    return package_folder(SYSTEM, PACKAGE, "wordnet", names, data_dir() / "wordnet") / names[0]


@lru_cache(maxsize=4)
def _pairs(pos: str) -> tuple[tuple[str, str], ...]:
    if pos not in POS:
        raise ConfigError(f"unknown WordNet part of speech '{pos}'; use one of {', '.join(POS)}")
    pairs = []
    for line in wordnet_file(pos).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" ") or " | " not in line:
            continue  # licence header
        head, gloss = line.split(" | ", 1)
        word = head.split()[4].replace("_", " ")
        definition = gloss.split(";", 1)[0].strip()
        if definition:
            pairs.append((definition, word.lower()))
    counts: dict[str, int] = {}
    for _d, w in pairs:
        counts[w] = counts.get(w, 0) + 1
    return tuple(p for p in pairs if counts[p[1]] == 1)


def definition_pairs(pos: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (definition, headword) pairs with distinct headwords, drawn with ``seed``."""
    pairs = _pairs(pos)
    if not 2 <= n <= len(pairs):
        raise ConfigError(f"retrieval needs 2..{len(pairs)} candidates from data.{pos}, got {n}")
    return random.Random(seed).sample(list(pairs), n)


# -- graded word pairs (STS-style similarity) -------------------------------------------------
GRADES = (3, 2, 1, 0)
HYPERNYM = ("@", "@i")  # hypernym, instance hypernym


@dataclass(frozen=True)
class Synset:
    """One fully parsed ``data.noun`` line: its words (lowercased, spaces) and hypernyms."""

    offset: int
    lex_filenum: int
    words: tuple[str, ...]
    hypernyms: tuple[int, ...]


def _parse_synset(line: str) -> Synset:
    """``offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt (symbol offset pos st)* | gloss``."""
    fields = line.split(" | ", 1)[0].split()
    try:
        w_cnt = int(fields[3], 16)
        words = [fields[4 + 2 * i] for i in range(w_cnt)]
        at = 4 + 2 * w_cnt
        p_cnt = int(fields[at])
        pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(p_cnt)]
        if not words or len(fields) < at + 1 + 4 * p_cnt:
            raise IndexError
    except (IndexError, ValueError) as exc:
        raise AssetError(f"malformed WordNet synset line: {line[:60]!r}") from exc
    norm: list[str] = []
    for word in words:
        text = word.split("(", 1)[0].replace("_", " ").lower()  # adjectives carry "(a)" marks
        if text not in norm:
            norm.append(text)
    hyper = tuple(int(p[1]) for p in pointers if p[0] in HYPERNYM and p[2] == "n")
    return Synset(int(fields[0]), int(fields[1]), tuple(norm), hyper)


@lru_cache(maxsize=1)
def _noun_synsets() -> tuple[Synset, ...]:
    text = wordnet_file("noun").read_text(encoding="utf-8", errors="replace")
    return tuple(
        _parse_synset(line) for line in text.splitlines() if line and not line.startswith(" ")
    )


Pair = tuple[str, str]


def _key(a: str, b: str) -> Pair:
    """A word pair in either order."""
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True)
class _Graded:
    """Candidate pairs of grades 3 and 2, and what grades 1 and 0 must avoid."""

    synonyms: tuple[Pair, ...]  # grade 3, file order
    hypernyms: tuple[Pair, ...]  # grade 2: (hyponym, hypernym) first words, file order
    related: frozenset[Pair]  # keys of every synonym or direct-hypernym word pair
    lexfiles: dict[str, frozenset[int]]  # the lexicographer files each word occurs in
    by_file: dict[int, tuple[Synset, ...]]  # the synsets of each lexicographer file


@lru_cache(maxsize=1)
def _graded() -> _Graded:
    synsets = _noun_synsets()
    by_offset = {s.offset: s for s in synsets}
    synonyms: list[Pair] = []
    related: set[Pair] = set()
    lexfiles: dict[str, set[int]] = {}
    by_file: dict[int, list[Synset]] = {}
    for s in synsets:
        by_file.setdefault(s.lex_filenum, []).append(s)
        for i, a in enumerate(s.words):
            lexfiles.setdefault(a, set()).add(s.lex_filenum)
            for b in s.words[i + 1 :]:
                if (key := _key(a, b)) not in related:
                    related.add(key)
                    synonyms.append((a, b))
    taken = set(related)  # a grade-2 pair is neither a synonym pair nor drawn twice
    hypernyms: list[Pair] = []
    for s in synsets:
        for h in (by_offset[o] for o in s.hypernyms):
            related.update(_key(a, b) for a in s.words for b in h.words if a != b)
            a, b = s.words[0], h.words[0]
            if a != b and (key := _key(a, b)) not in taken:
                taken.add(key)
                hypernyms.append((a, b))
    return _Graded(
        tuple(synonyms),
        tuple(hypernyms),
        frozenset(related),
        {w: frozenset(f) for w, f in lexfiles.items()},
        {f: tuple(group) for f, group in by_file.items()},
    )


def _draw_unrelated(rng: random.Random, n: int, same_file: bool, taken: set[Pair]) -> list[Pair]:
    """``n`` pairs of first words of two synsets, in the same lexicographer file (grade 1)
    or in files no sense of either word shares (grade 0), never synonyms or hypernyms."""
    synsets = _noun_synsets()
    graded = _graded()
    out: list[Pair] = []
    for _ in range(1000 * n):
        a = rng.choice(synsets)
        b = rng.choice(graded.by_file[a.lex_filenum] if same_file else synsets)
        x, y = a.words[0], b.words[0]
        key = _key(x, y)
        if x == y or key in taken or key in graded.related:
            continue
        if same_file != bool(graded.lexfiles[x] & graded.lexfiles[y]):
            continue  # grade 0: no sense of x shares a lexicographer file with one of y
        taken.add(key)
        out.append((x, y))
        if len(out) == n:
            return out
    raise ConfigError(f"could not draw {n} unrelated WordNet pairs; use fewer pairs per grade")


def graded_pairs(n_per_grade: int, seed: int) -> list[tuple[str, str, int]]:
    """``n_per_grade`` (word, word, grade) noun pairs per grade 3, 2, 1, 0 (in that order),
    drawn with ``seed``: 3 synonyms (one synset), 2 a synset's and its direct hypernym's first
    words, 1 unrelated synsets of one lexicographer file, 0 synsets of different files.

    Every word pair occurs once (either order) and gets the highest grade it qualifies for.
    """
    graded = _graded()
    most = min(len(graded.synonyms), len(graded.hypernyms))
    if not 2 <= n_per_grade <= most:
        raise ConfigError(
            f"similarity needs 2..{most} pairs per grade from data.noun, got {n_per_grade}"
        )
    rng = random.Random(seed)
    drawn = {
        3: rng.sample(graded.synonyms, n_per_grade),
        2: rng.sample(graded.hypernyms, n_per_grade),
    }
    taken = {_key(a, b) for pairs in drawn.values() for a, b in pairs}
    drawn[1] = _draw_unrelated(rng, n_per_grade, True, taken)
    drawn[0] = _draw_unrelated(rng, n_per_grade, False, taken)
    return [(a, b, grade) for grade in GRADES for a, b in drawn[grade]]
