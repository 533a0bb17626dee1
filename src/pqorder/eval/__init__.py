"""Evaluators: every result carries the protocol that produced it.

A protocol is a frozen dataclass (its fields are part of every run key) with ``name`` (what
its number is), ``lower_is_better``, ``validate()``, ``prepare(lm)`` (load data, check it
fits the model) and ``score(lm)`` (the number), and optionally ``details()`` (what the last
score reported beyond its value, e.g. per-task results; kept in the run record). The order
analysis uses M = −score when lower is better (perplexity), else the score itself (accuracy,
retrieval top-1, fidelity, similarity Spearman, task accuracy).
"""

from dataclasses import fields
from typing import Any, Protocol

from pqorder.eval.perplexity import PerplexityProtocol, PerplexityResult, evaluate_perplexity


class Evaluator(Protocol):
    name: str
    lower_is_better: bool

    def validate(self) -> None: ...
    def prepare(self, lm: object) -> None: ...
    def score(self, lm: object) -> float: ...


def evaluation_details(protocol: Evaluator) -> dict[str, Any]:
    """What the protocol's last score reported beyond its value (per-task results), if any."""
    details = getattr(protocol, "details", None)
    return details() if details is not None else {}


def protocol_dict(protocol: Evaluator) -> dict[str, Any]:
    """The protocol's public fields: what run keys and stored runs record."""
    return {f.name: getattr(protocol, f.name) for f in fields(protocol) if f.name[0] != "_"}


__all__ = [
    "Evaluator",
    "PerplexityProtocol",
    "PerplexityResult",
    "evaluate_perplexity",
    "evaluation_details",
    "protocol_dict",
]
