"""Order search: every permutation for n ≤ 4 methods, PIH-seeded beam search beyond.

Orders share prefixes through the Study (stored runs, cached prefixes), so the single-method
runs that intensity needs are the search's first level and no prefix is compressed twice.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from tqdm.auto import tqdm

from pqorder.analysis.recommend import strength
from pqorder.errors import ConfigError
from pqorder.methods.base import Method
from pqorder.pipeline import label, parse_step
from pqorder.store import Run
from pqorder.study import Spend, Study

EXHAUSTIVE_MAX = 4


@dataclass
class SearchResult:
    orders: list[tuple[tuple[str, ...], Run]]  # best first; failed runs last
    advantages: dict[str, float]  # "a → b": mean M with a before b minus with b before a
    pih_order: tuple[str, ...] | None
    exhaustive: bool
    spend: Spend  # what this search cost (stored runs and cached prefixes reused)

    @property
    def naive_steps(self) -> int:
        """Steps needed to compress every evaluated order from scratch."""
        return sum(len(order) for order, _run in self.orders)

    @property
    def naive_seconds(self) -> float:
        """Compression seconds of every evaluated order from scratch (from its step records)."""
        return sum(step["seconds"] for _order, run in self.orders for step in run.steps)

    @property
    def best(self) -> tuple[str, ...]:
        return self.orders[0][0]

    @property
    def pih_was_best(self) -> bool | None:
        return None if self.pih_order is None else self.pih_order == self.best

    def to_dict(self) -> dict:
        return {
            "orders": [
                {"order": list(o), "value": r.value, "status": r.status} for o, r in self.orders
            ],
            "advantages": self.advantages,
            "best": list(self.best),
            "pih_order": list(self.pih_order) if self.pih_order else None,
            "pih_was_best": self.pih_was_best,
            "exhaustive": self.exhaustive,
            "spend": {
                **asdict(self.spend),
                "naive_steps": self.naive_steps,
                "naive_seconds": self.naive_seconds,
            },
        }


def _rank_key(item: tuple[tuple[str, ...], Run]) -> float:
    return strength(item[1])


def _pairwise_advantages(results: dict[tuple[str, ...], Run]) -> dict[str, float]:
    names = sorted({n for order in results for n in order})
    out = {}
    for a, b in itertools.permutations(names, 2):
        before = [r.metric for o, r in results.items() if r.ok and o.index(a) < o.index(b)]
        after = [r.metric for o, r in results.items() if r.ok and o.index(a) > o.index(b)]
        if before and after and a < b:
            out[f"{label(a)} → {label(b)}"] = statistics.mean(before) - statistics.mean(after)
    return out


def _beam(study: Study, steps: Sequence[Method], pih: Sequence[Method], width: int) -> dict:
    """Grow partial orders one method at a time, keeping the best ``width`` (and PIH's)."""
    beam: list[tuple[Method, ...]] = [()]
    for depth in range(1, len(steps) + 1):
        candidates = {(*partial, s) for partial in beam for s in steps if s not in partial}
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
) -> SearchResult:
    """Evaluate orders of ``steps``; ``pih_order`` (step texts) is the recommendation to check."""
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
    exhaustive = len(steps) <= EXHAUSTIVE_MAX
    if exhaustive:
        orders = list(itertools.permutations(steps))
        bar = tqdm(orders, desc="orders", disable=not study.progress, leave=False)
        results = {tuple(s.to_text() for s in order): study.evaluate(order) for order in bar}
    else:
        results = _beam(study, steps, pih, beam_width)
    ranked = sorted(results.items(), key=_rank_key)
    return SearchResult(
        ranked,
        _pairwise_advantages(results),
        tuple(pih_order) if pih_order else None,
        exhaustive,
        study.spend.since(before),
    )
