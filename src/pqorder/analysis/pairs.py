"""Both orders of every pruning × quantization pair, through the Study.

Each run is stored and each single-method prefix is computed once (the Study's prefix reuse),
under any metric the study measures. The order advantage of quantizing first is
A(Q→P) = M(P∘Q) − M(Q∘P): positive when Q→P wins (for perplexity, M = −perplexity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from pqorder.errors import ConfigError, check_format
from pqorder.eval import Evaluator
from pqorder.methods.base import Method
from pqorder.store import Direction, Run, m_text, v1_direction
from pqorder.study import Study
from pqorder.tables import Table, cell

FORMAT = 2  # version of PairGrid.to_dict (1: without the direction; read as well)


@dataclass(frozen=True)
class PairResult:
    """One (P, Q) pair: each alone and both orders, as the protocol's numbers (None: failed)."""

    prune: str
    quant: str
    prune_alone: float | None
    quant_alone: float | None
    prune_then_quant: float | None
    quant_then_prune: float | None
    advantage_q_first: float | None  # A(Q→P) in M (higher is better)


@dataclass(frozen=True)
class PairGrid:
    metric: str  # what the values are (perplexity, top-1 accuracy, ...)
    dense: float | None
    pairs: list[PairResult]
    direction: Direction  # which values of the metric are better

    @property
    def m_text(self) -> str:
        """How M, the unit of the advantages, is written."""
        return m_text(self.metric, self.direction)

    def table(self) -> Table:
        """Each pair: both steps alone, both orders, A(Q→P) and the better order."""
        rows = []
        for r in self.pairs:
            a = r.advantage_q_first
            better = "—" if a is None else "Q→P" if a > 0 else "P→Q" if a < 0 else "tie"
            values = (r.prune_alone, r.quant_alone, r.prune_then_quant, r.quant_then_prune)
            rows.append((r.prune, r.quant, *values, a, better))
        columns = ("prune P", "quant Q", "P alone", "Q alone", "P→Q", "Q→P", "A(Q→P)")
        title = f"{self.metric}; dense {cell(self.dense)}"
        return Table(title, (*columns, "better order"), tuple(rows))

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> PairGrid:
        """Read ``to_dict``'s form or format 1 (its direction is the one perplexity implied)."""
        version = check_format("pair grid", raw.get("format"), (1, FORMAT))
        direction = raw["direction"] if version == FORMAT else v1_direction(raw["metric"])
        pairs = [PairResult(**p) for p in raw["pairs"]]
        return cls(raw["metric"], raw["dense"], pairs, direction)


def _value(run: Run) -> float | None:
    return run.value if run.ok else None


def check_families(prune_steps: Sequence[Method], quant_steps: Sequence[Method]) -> None:
    """Each side is non-empty and of its family (raised before any work)."""
    for steps, family in ((prune_steps, "prune"), (quant_steps, "quantize")):
        if not steps:
            raise ConfigError(f"a pair grid needs at least one {family} step")
        for s in steps:
            if s.family != family:
                raise ConfigError(f"{s.to_text()} is a {s.family} step, not {family}")


def pair_grid(
    study: Study,
    prune_steps: Sequence[Method],
    quant_steps: Sequence[Method],
    progress: bool = True,
) -> PairGrid:
    """Dense, each step alone, and both orders of every (P, Q) pair (all runs stored)."""
    runs = pair_runs(study, prune_steps, quant_steps, (study.protocol,), progress)[0]
    return grid_from_runs(runs, prune_steps, quant_steps)


PairRuns = dict[tuple[Method, ...], Run]  # dense (), each step alone, both orders of each pair


def pair_runs(
    study: Study,
    prune_steps: Sequence[Method],
    quant_steps: Sequence[Method],
    protocols: Sequence[Evaluator],
    progress: bool = True,
) -> list[PairRuns]:
    """The grid's runs under each protocol: every pipeline is compressed once and evaluated
    under each (protocols other than the study's are prepared on its dense model first)."""
    check_families(prune_steps, quant_steps)
    for p in prune_steps:  # every order is checked before any work
        for q in quant_steps:
            study.check((p, q))
            study.check((q, p))
    for protocol in protocols:
        if protocol is not study.protocol:
            study.add_protocol(protocol)
    runs: list[PairRuns] = [{} for _ in protocols]
    singles = [(s,) for s in (*prune_steps, *quant_steps)]
    both = [o for p in prune_steps for q in quant_steps for o in ((p, q), (q, p))]
    study.prefetch([(), *singles, *both], protocols)

    def evaluate(steps: tuple[Method, ...]) -> None:
        for i, protocol in enumerate(protocols):
            runs[i][steps] = study.evaluate(steps, protocol)

    total = 2 * len(prune_steps) * len(quant_steps)
    with tqdm(total=total, desc="pair grid", disable=not progress) as bar:
        # first-step-major order: each first step's prefix is applied once and extended
        for first, then in ((prune_steps, quant_steps), (quant_steps, prune_steps)):
            for a in first:
                evaluate((a,))
                for b in then:
                    evaluate((a, b))
                    bar.update()
    evaluate(())
    return runs


def grid_from_runs(
    runs: PairRuns, prune_steps: Sequence[Method], quant_steps: Sequence[Method]
) -> PairGrid:
    """The pair grid of one protocol's runs."""
    pairs = []
    for p in prune_steps:
        for q in quant_steps:
            pq, qp = runs[(p, q)], runs[(q, p)]
            adv = qp.metric - pq.metric if pq.ok and qp.ok else None
            pairs.append(
                PairResult(
                    p.label(),
                    q.label(),
                    _value(runs[(p,)]),
                    _value(runs[(q,)]),
                    _value(pq),
                    _value(qp),
                    adv,
                )
            )
    dense = runs[()]
    return PairGrid(dense.metric_name, _value(dense), pairs, dense.direction)
