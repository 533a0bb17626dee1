"""Does the better order agree across metrics? The same pair grid under several protocols.

The paper checks that the order effect is not a perplexity artifact by repeating it on
zero-shot tasks. Here every pipeline of the grid is compressed once and evaluated under each
protocol (perplexity, lm-eval tasks, ...); per pair, the better order under each metric is
the sign of its A(Q→P), and the pair agrees when every metric picks the same order. A
difference smaller than a metric's noise is not a disagreement the study can see, so each
pair also gives each metric's 95% half-width of A where its runs recorded standard errors
(lm-eval tasks: √(se₁² + se₂²) of the two orders' means, independent errors assumed; the
orders are scored on the same documents, so this is conservative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pqorder.analysis.pairs import PairGrid, PairRuns, grid_from_runs, pair_runs
from pqorder.errors import ConfigError, check_format
from pqorder.eval import Evaluator
from pqorder.methods.base import Method
from pqorder.study import Study
from pqorder.tables import Table

FORMAT = 1


def _better(advantage: float | None) -> str:
    if advantage is None:
        return "—"
    return "Q→P" if advantage > 0 else "P→Q" if advantage < 0 else "tie"


@dataclass(frozen=True)
class MetricAgreement:
    """One pair grid per metric over the same pairs, and where their better orders agree."""

    grids: list[PairGrid]
    noise: list[list[float | None]]  # per grid, per pair: 95% half-width of A (None: unknown)

    def agrees(self) -> list[bool | None]:
        """Per pair: every metric picks the same order (None: a run failed or a tie)."""
        out = []
        for pairs in zip(*(g.pairs for g in self.grids), strict=True):
            orders = {_better(p.advantage_q_first) for p in pairs}
            out.append(None if orders & {"—", "tie"} else len(orders) == 1)
        return out

    @property
    def agreement(self) -> float | None:
        """The fraction of comparable pairs whose better order agrees across metrics."""
        known = [a for a in self.agrees() if a is not None]
        return sum(known) / len(known) if known else None

    def table(self) -> Table:
        """Each pair: A(Q→P) and the better order under each metric, and whether they agree."""
        columns = ["prune P", "quant Q"]
        for g in self.grids:
            columns += [f"A(Q→P) {g.m_text}", "±95%", f"better ({g.metric})"]
        rows = []
        agree = self.agrees()
        for i, pairs in enumerate(zip(*(g.pairs for g in self.grids), strict=True)):
            row: list[object] = [pairs[0].prune, pairs[0].quant]
            for p, noise in zip(pairs, self.noise, strict=True):
                row += [p.advantage_q_first, noise[i], _better(p.advantage_q_first)]
            rows.append((*row, "—" if agree[i] is None else "yes" if agree[i] else "no"))
        share = self.agreement
        title = "better order across metrics" + (
            "" if share is None else f"; agreement {share:.0%} of comparable pairs"
        )
        return Table(title, (*columns, "agree"), tuple(rows))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "grids": [g.to_dict() for g in self.grids],
            "noise": self.noise,
            "agreement": self.agreement,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> MetricAgreement:
        check_format("metric agreement", raw.get("format"), (FORMAT,))
        return cls([PairGrid.from_dict(g) for g in raw["grids"]], raw["noise"])


def run_metric_agreement(
    study: Study,
    prune_steps: Sequence[Method],
    quant_steps: Sequence[Method],
    protocols: Sequence[Evaluator],
    progress: bool = True,
) -> MetricAgreement:
    """The pair grid under the study's protocol and each of ``protocols`` (all runs stored)."""
    every = [study.protocol, *(p for p in protocols if p != study.protocol)]
    if len(every) < 2:
        raise ConfigError("a metric agreement study needs a second metric besides the study's")
    runs = pair_runs(study, prune_steps, quant_steps, every, progress)
    grids = [grid_from_runs(r, prune_steps, quant_steps) for r in runs]
    noise = [[_noise(r, (p, q), (q, p)) for p in prune_steps for q in quant_steps] for r in runs]
    return MetricAgreement(grids, noise)


def _noise(runs: PairRuns, first: tuple[Method, ...], second: tuple[Method, ...]) -> float | None:
    """95% half-width of M(second) − M(first) from the runs' recorded standard errors."""
    errors = [runs[steps].details.get("stderr") for steps in (first, second)]
    if any(e is None for e in errors):
        return None
    return 1.96 * (errors[0] ** 2 + errors[1] ** 2) ** 0.5
