"""Encoder metric on WordNet: Spearman correlation of embedding cosine with graded relatedness.

Pairs: ``pairs_per_grade`` noun word pairs at each of four grades, drawn with ``seed`` from
``data.noun`` (:func:`pqorder.data.wordnet.graded_pairs`; words lowercased, underscores as
spaces, every word pair once):

* 3 — two different words of one synset (synonyms: the same WordNet node);
* 2 — a synset's first word and the first word of a direct hypernym (``@`` or ``@i``: one
  is-a edge apart, "cyclops" / "giant");
* 1 — first words of two synsets in the same lexicographer file (the same coarse supersense,
  such as noun.animal or noun.artifact), neither a synonym nor a direct hypernym of the other
  in any sense;
* 0 — first words of two synsets whose words share no lexicographer file in any sense.

Why the grade is a relatedness label: it orders pairs by distance in the WordNet noun
taxonomy built by lexicographers — the same node, one is-a edge, the same supersense
(usually several edges apart under a common category), no shared supersense. The ordering
is ordinal, not an interval scale, and the boundary between 1 and 0 is coarse (a supersense
is broad), which is why the score is a rank correlation and why ties within a grade are
ranked by their average rank.

Score: each pair's two words are embedded with :func:`pqorder.models.encoder.embed`
(mean-pooled, L2-normalized, so the dot product is the cosine), and the score is Spearman's
rho between the cosines and the grades (ranks with ties averaged, then Pearson's r of the
ranks). Higher is better; a model whose cosines are all equal has no defined rho (NaN, which
a study records as a failed run).

This is a proxy for STS-B, not STS-B: it keeps STS-B's form (graded pairs, Spearman of
cosine against the grade) but its pairs are single words and short noun phrases, not
sentences, and its grades come from WordNet's taxonomy, not from human 0–5 similarity
judgements. Its numbers are not comparable with published STS-B results; they measure how
well an embedding space keeps lexical relatedness, and are meant for comparing a compressed
encoder with its dense model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pqorder.data.wordnet import graded_pairs
from pqorder.errors import ConfigError
from pqorder.models.encoder import embed


def average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor (float64), tied values getting the mean of their ranks."""
    values, order = torch.sort(x.to(torch.float64).flatten(), stable=True)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # last 1-based rank of each tie group
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rho of two equally long 1-D tensors (ties averaged); NaN when either is
    constant."""
    if x.numel() != y.numel() or x.numel() < 2:
        raise ConfigError(
            f"spearman needs two series of equal length >= 2, got {x.numel()}, {y.numel()}"
        )
    rx = average_ranks(x) - (x.numel() + 1) / 2  # the mean rank is (n + 1) / 2, ties or not
    ry = average_ranks(y) - (y.numel() + 1) / 2
    denom = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


@dataclass(frozen=True)
class SimilarityProtocol:
    dataset: str = "wordnet:noun"
    pairs_per_grade: int = 250
    seed: int = 0

    name: ClassVar[str] = "similarity spearman"
    lower_is_better: ClassVar[bool] = False

    def validate(self) -> None:
        self._pairs()

    def _pairs(self) -> list[tuple[str, str, int]]:
        source, _, pos = self.dataset.partition(":")
        if source != "wordnet" or pos not in ("", "noun"):
            raise ConfigError(f"unknown similarity dataset '{self.dataset}'; use wordnet:noun")
        return graded_pairs(self.pairs_per_grade, self.seed)

    @staticmethod
    def _check(lm: object) -> None:
        if getattr(lm, "kind", "") != "encoder":
            raise ConfigError(f"similarity needs a text encoder with a tokenizer, not {lm.name}")

    def prepare(self, lm: object) -> None:
        """Check the model is an encoder and draw the pairs (before any work starts)."""
        self._check(lm)
        self._pairs()

    def score(self, lm: object) -> float:
        """Spearman's rho between the pairs' embedding cosines and their grades."""
        self._check(lm)
        pairs = self._pairs()
        texts = sorted({w for a, b, _ in pairs for w in (a, b)})
        index = {t: i for i, t in enumerate(texts)}
        emb = embed(lm.model, lm.tokenizer, texts)
        left = emb[torch.tensor([index[a] for a, _, _ in pairs])]
        right = emb[torch.tensor([index[b] for _, b, _ in pairs])]
        grades = torch.tensor([g for _, _, g in pairs], dtype=torch.float64)
        return spearman((left * right).sum(1), grades)
