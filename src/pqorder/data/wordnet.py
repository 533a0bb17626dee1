"""WordNet glosses (Debian ``wordnet-base``): definition → headword pairs for retrieval.

``data.noun`` lines read ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the
synset's first word is its headword and the gloss up to the first ';' its definition (the
examples after it often contain the headword itself). Pairs are drawn with a seed among
synsets whose headword is unique, so every query has exactly one right answer.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from pqorder.data.debian import package_folder
from pqorder.errors import ConfigError
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
