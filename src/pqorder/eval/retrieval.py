"""Encoder metrics on WordNet: definition → headword retrieval top-1, and embedding fidelity.

Retrieval: ``candidates`` (definition, headword) noun pairs drawn with ``seed``; each
definition's embedding is compared (cosine) with every headword's, and top-1 is the fraction
whose nearest headword is its own. Fidelity: the mean cosine between the model's embeddings
of those definitions and headwords and the embeddings the model gave when the protocol was
prepared (the dense model of a study).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from pqorder.data.wordnet import definition_pairs
from pqorder.errors import ConfigError
from pqorder.models.encoder import embed

TASKS = ("retrieval top-1", "fidelity")


@dataclass(frozen=True)
class RetrievalProtocol:
    dataset: str = "wordnet:noun"
    candidates: int = 1000
    seed: int = 0
    task: Literal["retrieval top-1", "fidelity"] = "retrieval top-1"
    _reference: dict = field(default_factory=dict, compare=False, repr=False)

    lower_is_better: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.task

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"retrieval task must be one of {TASKS}, got '{self.task}'")
        self._texts()

    def _texts(self) -> tuple[list[str], list[str]]:
        source, _, pos = self.dataset.partition(":")
        if source != "wordnet":
            raise ConfigError(f"unknown retrieval dataset '{self.dataset}'; use wordnet:noun")
        pairs = definition_pairs(pos or "noun", self.candidates, self.seed)
        return [d for d, _ in pairs], [w for _, w in pairs]

    def _embeddings(self, lm: object) -> tuple[Tensor, Tensor]:
        if getattr(lm, "kind", "") != "encoder":
            raise ConfigError(f"retrieval needs a text encoder with a tokenizer, not {lm.name}")
        queries, heads = self._texts()
        return embed(lm.model, lm.tokenizer, queries), embed(lm.model, lm.tokenizer, heads)

    def prepare(self, lm: object) -> None:
        """Check the model; for fidelity, embed with the model as it is now (the reference)."""
        if self.task == "fidelity":
            if lm.state.units:
                raise ConfigError(
                    f"fidelity compares with the dense model, and {lm.name} is already "
                    "compressed: use `pqorder compress --task fidelity` or a study"
                )
            self._reference["embeddings"] = self._embeddings(lm)
        elif getattr(lm, "kind", "") != "encoder":
            raise ConfigError(f"retrieval needs a text encoder with a tokenizer, not {lm.name}")

    def score(self, lm: object) -> float:
        q, h = self._embeddings(lm)
        if self.task == TASKS[0]:
            hits = (q @ h.T).argmax(dim=1) == torch.arange(len(q))
            return float(hits.float().mean())
        if "embeddings" not in self._reference:
            raise ConfigError("fidelity needs the reference embeddings: call prepare() first")
        ref_q, ref_h = self._reference["embeddings"]
        return float(torch.cat([(q * ref_q).sum(1), (h * ref_h).sum(1)]).mean())
