"""How often an ordering rule picks the measured-better order: the hypothesis against constants.

A point of a sweep measures both orders of one (pruning, quantization) pair; A(Q→P) > 0 means
quantizing first was better. Three rules are scored on every usable point:

- **weaker first** (the paper's hypothesis): the weaker method goes first, so it predicts Q→P
  when pruning alone hurts the metric more than quantization alone (which is the CER gap
  C*_P − C_Q > 0 wherever both CERs exist: the reference curve maps M monotonically; points
  stored before the singles were kept use the CER gap);
- **prune first** and **quantize first**: the two constant rules a rule must beat to be worth
  anything;
- **local errors** (the predictor's sign, ``pqorder.analysis.predictor``): quantize first when
  quantizing first leaves the smaller unit-wise reconstruction error (log e_P→Q / e_Q→P > 0);
  weaker first where the point has no local errors (a model-level method), as in ``recommend``.

Usable points have both orders evaluated, A ≠ 0, no collapse (the paper excludes collapse
zones) and a known intensity order (both methods alone evaluated, or a non-zero CER gap); ρ is
over those with a CER gap. Scores are given per pair family — the pruner against the
quantizer's method and granularity (``sparsegpt × gptq g128``), since bit-width and ratio are
what a family's sweep varies — and over all points, with Spearman ρ(A, CER gap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pqorder.analysis.sweep import SweepPoint, spearman
from pqorder.pipeline import parse_step
from pqorder.tables import Table

RULES = ("weaker first", "prune first", "quantize first", "local errors")


def family_of(point: SweepPoint) -> str:
    """The pair family of a point: pruner × quantizer method and granularity."""
    quant = parse_step(point.quant)
    group = getattr(quant.config, "group", 0)
    return f"{point.prune} × {quant.name} {f'g{group}' if group else 'per-channel'}"


def usable(point: SweepPoint) -> bool:
    """Whether the point can score a rule (see the module docstring)."""
    return (
        not point.collapse
        and point.advantage_q_first not in (None, 0.0)
        and (point.prune_stronger is not None or point.cer_gap not in (None, 0.0))
    )


def predicts_quantize_first(rule: str, point: SweepPoint) -> bool:
    """Which order ``rule`` recommends at ``point``: True for Q→P."""
    if rule == "local errors" and point.local_log_ratio is not None:
        return point.local_log_ratio > 0
    if rule in ("weaker first", "local errors"):  # pruning is the stronger: quantize first
        return point.cer_gap > 0 if point.prune_stronger is None else point.prune_stronger
    return rule == "quantize first"


@dataclass(frozen=True)
class RuleScores:
    """Each rule's hits over one family's usable points (or over all of them)."""

    family: str
    points: int  # usable points
    excluded: int  # collapse points and points without both orders or an intensity order
    hits: tuple[int, ...]  # per rule, in ``RULES`` order
    rho: float | None  # Spearman ρ(A, CER gap) over the usable points

    def rate(self, rule: str) -> float | None:
        """The fraction of usable points where ``rule`` picked the better order."""
        return self.hits[RULES.index(rule)] / self.points if self.points else None


def _score(family: str, points: Sequence[SweepPoint]) -> RuleScores:
    kept = [p for p in points if usable(p)]
    hits = tuple(
        sum(predicts_quantize_first(rule, p) == (p.advantage_q_first > 0) for p in kept)
        for rule in RULES
    )
    gaps = [p for p in kept if p.cer_gap is not None]
    rho = spearman([p.cer_gap for p in gaps], [p.advantage_q_first for p in gaps])
    return RuleScores(family, len(kept), len(points) - len(kept), hits, rho)


def score_rules(points: Sequence[SweepPoint]) -> list[RuleScores]:
    """Per pair family (sorted), then "all"."""
    families: dict[str, list[SweepPoint]] = {}
    for p in points:
        families.setdefault(family_of(p), []).append(p)
    scores = [_score(name, pts) for name, pts in sorted(families.items())]
    return [*scores, _score("all", points)]


def scores_table(scores: Sequence[RuleScores]) -> Table:
    """Hit rates of the three rules and ρ per family."""
    rows = tuple(
        (s.family, s.points, s.excluded, *(s.rate(rule) for rule in RULES), s.rho) for s in scores
    )
    columns = ("pair family", "points", "excluded", *RULES, "ρ(A, CER gap)")
    return Table("which order wins: hit rate of each rule (non-collapse points)", columns, rows)
