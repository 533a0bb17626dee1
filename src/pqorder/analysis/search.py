"""Order search: every permutation for n ≤ 4 methods, PIH-seeded beam search beyond.

Orders share prefixes through the Study (stored runs, cached prefixes), so the single-method
runs that intensity needs are the search's first level and no prefix is compressed twice.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

from tqdm.auto import tqdm

from pqorder.analysis.recommend import strength
from pqorder.errors import ConfigError, FormatError, check_format
from pqorder.methods.base import Method
from pqorder.pipeline import STEP_SEPARATOR, label, parse_step
from pqorder.store import Measurement, Run, m_text, measured, v1_direction
from pqorder.study import Spend, Study
from pqorder.tables import Table

EXHAUSTIVE_MAX = 4
STRATEGIES = ("auto", "exhaustive", "beam")
FORMAT = 2  # version of SearchResult.to_dict (1: values without their metric; read as well)


@dataclass
class SearchResult:
    orders: list[tuple[tuple[str, ...], Measurement]]  # step texts, best first; failed last
    advantages: dict[str, float]  # "a → b" in labels: mean M with a first minus with b first
    pih_order: tuple[str, ...] | None
    exhaustive: bool
    spend: Spend  # what this search cost (stored runs and cached prefixes reused)
    labels: dict[str, str]  # short label of every searched step, by its text
    naive_seconds: float  # compression seconds of every evaluated order from scratch

    @property
    def naive_steps(self) -> int:
        """Steps needed to compress every evaluated order from scratch."""
        return sum(len(order) for order, _run in self.orders)

    @property
    def best(self) -> tuple[str, ...]:
        return self.orders[0][0]

    @property
    def pih_was_best(self) -> bool | None:
        return None if self.pih_order is None else self.pih_order == self.best

    def order_label(self, order: tuple[str, ...]) -> str:
        """An order of searched steps in short labels."""
        return f" {STEP_SEPARATOR} ".join(self.labels[s] for s in order)

    def table(self) -> Table:
        """Every evaluated order, best first, with the protocol's value."""
        metric = self.orders[0][1].metric_name
        rows = tuple((self.order_label(o), r.value, r.status) for o, r in self.orders)
        return Table("orders (best first)", ("order", metric, "status"), rows)

    def advantage_table(self) -> Table:
        """Mean order advantage of each pair of steps, in M."""
        first = self.orders[0][1]
        column = f"A ({m_text(first.metric_name, first.direction)})"
        return Table("pairwise order advantages", ("pair", column), tuple(self.advantages.items()))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "orders": [{"order": list(o), "run": measured(r)} for o, r in self.orders],
            "advantages": self.advantages,
            "pih_order": list(self.pih_order) if self.pih_order else None,
            "exhaustive": self.exhaustive,
            "spend": asdict(self.spend),
            "labels": self.labels,
            "naive_seconds": self.naive_seconds,
        }

    @classmethod
    def from_dict(cls, raw: dict, metric_name: str | None = None) -> SearchResult:
        """Read ``to_dict``'s form, or format 1, which did not name its metric: pass the
        study's as ``metric_name`` (labels then come from the method registry)."""
        version = check_format("search result", raw.get("format", 1), (1, FORMAT))
        spend = Spend(**{f.name: raw["spend"][f.name] for f in fields(Spend)})
        pih = tuple(raw["pih_order"]) if raw["pih_order"] else None
        if version == FORMAT:
            orders = [(tuple(o["order"]), Measurement(**o["run"])) for o in raw["orders"]]
            labels, naive_seconds = raw["labels"], raw["naive_seconds"]
        elif metric_name is None:
            raise FormatError("a format-1 search result needs the study's metric name to be read")
        else:
            direction = v1_direction(metric_name)
            orders = [
                (tuple(o["order"]), Measurement(metric_name, o["value"], direction, o["status"]))
                for o in raw["orders"]
            ]
            labels = {s: label(s) for o in raw["orders"] for s in o["order"]}
            naive_seconds = raw["spend"]["naive_seconds"]
        return cls(orders, raw["advantages"], pih, raw["exhaustive"], spend, labels, naive_seconds)


def _rank_key(item: tuple[tuple[str, ...], Run]) -> float:
    return strength(item[1])


def _pairwise_advantages(
    results: dict[tuple[str, ...], Run], labels: dict[str, str]
) -> dict[str, float]:
    names = sorted({n for order in results for n in order})
    out = {}
    for a, b in itertools.permutations(names, 2):
        before = [r.metric for o, r in results.items() if r.ok and o.index(a) < o.index(b)]
        after = [r.metric for o, r in results.items() if r.ok and o.index(a) > o.index(b)]
        if before and after and a < b:
            out[f"{labels[a]} → {labels[b]}"] = statistics.mean(before) - statistics.mean(after)
    return out


def _beam(study: Study, steps: Sequence[Method], pih: Sequence[Method], width: int) -> dict:
    """Grow partial orders one method at a time, keeping the best ``width`` (and PIH's)."""
    beam: list[tuple[Method, ...]] = [()]
    for depth in range(1, len(steps) + 1):
        candidates = {(*partial, s) for partial in beam for s in steps if s not in partial}
        study.prefetch(candidates)
        scored = sorted(candidates, key=lambda c: _rank_key((c, study.evaluate(c))))
        keep = scored[:width]
        seed = tuple(pih[:depth])
        if seed in candidates and seed not in keep:
            keep.append(seed)
        beam = keep
    return {tuple(s.to_text() for s in o): study.evaluate(o) for o in beam}


def search_orders(
    study: Study,
    steps: Sequence[Method],
    pih_order: Sequence[str] | None = None,
    beam_width: int = 3,
    strategy: str = "auto",
) -> SearchResult:
    """Evaluate orders of ``steps``; ``pih_order`` (step texts) is the recommendation to check.

    ``strategy``: "exhaustive" (every order), "beam" (partial orders grown one method at a
    time, the best ``beam_width`` kept plus the recommendation's prefix, which seeds it), or
    "auto" (exhaustive up to ``EXHAUSTIVE_MAX`` methods).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown search strategy {strategy!r} (use {', '.join(STRATEGIES)})")
    if beam_width < 1:
        raise ConfigError(f"beam width must be at least 1, got {beam_width}")
    if len(steps) < 2:
        raise ConfigError("an order search needs at least two methods")
    texts = [s.to_text() for s in steps]
    if len(set(texts)) != len(texts):
        raise ConfigError("the same step is listed twice; an order needs distinct steps")
    by_text = dict(zip(texts, steps, strict=True))
    if pih_order is not None:
        pih_order = [parse_step(t).to_text() for t in pih_order]  # canonical text form
    if pih_order is not None and sorted(pih_order) != sorted(texts):
        raise ConfigError("the PIH order to check must be a permutation of the searched steps")
    pih = [by_text[t] for t in pih_order] if pih_order else list(steps)
    before = replace(study.spend)
    exhaustive = strategy == "exhaustive" or (strategy == "auto" and len(steps) <= EXHAUSTIVE_MAX)
    if exhaustive:
        orders = list(itertools.permutations(steps))
        study.prefetch(orders)
        bar = tqdm(orders, desc="orders", disable=not study.progress, leave=False)
        results = {tuple(s.to_text() for s in order): study.evaluate(order) for order in bar}
    else:
        results = _beam(study, steps, pih, beam_width)
    ranked = sorted(results.items(), key=_rank_key)
    labels = {t: s.label() for t, s in by_text.items()}
    return SearchResult(
        ranked,
        _pairwise_advantages(results, labels),
        tuple(pih_order) if pih_order else None,
        exhaustive,
        study.spend.since(before),
        labels,
        sum(step["seconds"] for run in results.values() for step in run.steps),
    )
