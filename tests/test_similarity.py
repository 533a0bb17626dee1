"""WordNet graded word pairs, the tie-aware Spearman, and the encoder similarity metric."""

import math
from collections import Counter

import pytest
import torch
from torch import nn

from pqorder.core import LoadedModel
from pqorder.data.wordnet import _graded, _key, _noun_synsets, _parse_synset, graded_pairs
from pqorder.engine import apply_step
from pqorder.errors import AssetError, ConfigError
from pqorder.eval import protocol_dict
from pqorder.eval.similarity import SimilarityProtocol, average_ranks, spearman
from pqorder.pipeline import parse_step
from pqorder.snapshot import restore_snapshot, take_snapshot

# 100 pairs per grade keep an evaluation to a few seconds (the default is 250).
SMALL = SimilarityProtocol("wordnet:noun", 100, 0)


def test_synset_lines_parse_fully():
    words = " ".join(f"w_{i} {i % 10}" for i in range(11))  # w_cnt is hex: 11 words → 0b
    line = (
        f"00000042 05 n 0b {words} 004 @ 00000001 n 0000 @i 00000002 n 0000 "
        "~ 00000003 n 0000 + 00000004 v 0101 | a gloss; with an example"
    )
    s = _parse_synset(line)
    assert (s.offset, s.lex_filenum) == (42, 5)
    assert s.words == tuple(f"w {i}" for i in range(11))
    assert s.hypernyms == (1, 2)
    s = _parse_synset("00000007 03 n 02 Big_Apple 0 big_apple 0 000 | a city  ")
    assert s.words == ("big apple",) and s.hypernyms == ()  # lowercased, deduplicated
    with pytest.raises(AssetError, match="malformed"):
        _parse_synset("00000042 05 n 02 one 0 003 @ 00000001 n 0000 | truncated")


def test_graded_pairs_are_seeded_balanced_and_distinct():
    pairs = graded_pairs(100, 0)
    assert pairs == graded_pairs(100, 0)
    assert pairs != graded_pairs(100, 1)
    assert len(pairs) == 400
    assert Counter(g for _a, _b, g in pairs) == {3: 100, 2: 100, 1: 100, 0: 100}
    assert len({_key(a, b) for a, b, _g in pairs}) == 400  # no pair twice, in either order
    assert all(a != b and a == a.lower() and "_" not in a + b for a, b, _g in pairs)


def test_graded_pairs_follow_wordnet():
    synsets = _noun_synsets()
    by_offset = {s.offset: s for s in synsets}
    senses: dict[str, list] = {}
    for s in synsets:
        for w in s.words:
            senses.setdefault(w, []).append(s)
    related = _graded().related
    for a, b, grade in graded_pairs(100, 3):
        files_a = {s.lex_filenum for s in senses[a]}
        files_b = {s.lex_filenum for s in senses[b]}
        if grade == 3:
            assert any(b in s.words for s in senses[a])
        elif grade == 2:
            assert any(
                s.words[0] == a and any(by_offset[h].words[0] == b for h in s.hypernyms)
                for s in senses[a]
            )
            assert not any(b in s.words for s in senses[a])  # not synonyms in any sense
        else:
            assert _key(a, b) not in related
            assert bool(files_a & files_b) == (grade == 1)


def test_graded_pairs_refuse_bad_sizes():
    for n in (1, 10**7):
        with pytest.raises(ConfigError, match="pairs per grade") as err:
            graded_pairs(n, 0)
        assert "\n" not in str(err.value)


def test_average_ranks_and_spearman_with_ties_by_hand():
    x = torch.tensor([0.1, 0.4, 0.4, 0.9, 0.2])
    y = torch.tensor([0, 1, 0, 1, 0])
    assert average_ranks(x).tolist() == [1.0, 3.5, 3.5, 5.0, 2.0]
    assert average_ranks(y).tolist() == [2.0, 4.5, 2.0, 4.5, 2.0]
    # centred ranks (-2, .5, .5, 2, -1) and (-1, 1.5, -1, 1.5, -1): 6.25 / sqrt(9.5 * 7.5)
    assert spearman(x, y) == pytest.approx(6.25 / math.sqrt(9.5 * 7.5), abs=1e-12)
    assert spearman(x, x) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, torch.ones(5)))
    with pytest.raises(ConfigError, match="equal length"):
        spearman(x, y[:4])


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    grades = torch.randint(0, 4, (500,), generator=gen)
    for x in (
        grades + torch.randn(500, generator=gen) * 2,  # continuous against heavy ties
        torch.randint(0, 7, (500,), generator=gen).float(),  # ties on both sides
    ):
        expected = stats.spearmanr(x.numpy(), grades.numpy()).statistic
        assert spearman(x, grades) == pytest.approx(expected, abs=1e-12)


def test_protocol_fields_and_refusals():
    assert protocol_dict(SMALL) == {"dataset": "wordnet:noun", "pairs_per_grade": 100, "seed": 0}
    assert SimilarityProtocol.name == "similarity spearman"
    assert not SimilarityProtocol.lower_is_better
    with pytest.raises(ConfigError, match="unknown similarity dataset"):
        SimilarityProtocol("wordnet:verb").validate()
    with pytest.raises(ConfigError, match="pairs per grade"):
        SimilarityProtocol(pairs_per_grade=1).validate()
    vision = LoadedModel("a-cnn", nn.Linear(2, 2), None, kind="vision")
    with pytest.raises(ConfigError, match="needs a text encoder") as err:
        SMALL.prepare(vision)
    assert "\n" not in str(err.value)


def test_minilm_similarity_is_positive_and_falls_when_damaged(minilm):
    SMALL.prepare(minilm)
    dense = SMALL.score(minilm)
    assert dense > 0.55  # measured 0.652 (0.636 at the default 250 pairs per grade)
    snap = take_snapshot(minilm)
    apply_step(minilm, parse_step("magnitude:ratio=0.9"), progress=False)
    damaged = SMALL.score(minilm)
    restore_snapshot(minilm, snap)
    assert damaged < dense - 0.1  # measured 0.477
