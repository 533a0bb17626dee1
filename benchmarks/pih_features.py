"""What the order predictor misses: leave-one-family-out over the validation grid's points with
feature sets around the shipped one (x and q below, no intercept).

Features, all available before running both orders: x (``pqorder.local_errors``); the
quantizer's share of the damage q = (M_dense − M_Q) / s, from the runs of each method alone
that intensity already needs (the shipped predictor reads x and q); a constant (an intercept).
Each set is fitted by least squares of r = A(Q→P) / s on every pair family but one and scored
on the held-out family (sign right, Spearman ρ of predicted and measured A), as
``pqorder.analysis.predictor`` scores the shipped one. Then each rule's hit rate where the two
orders differ by at least a margin, what following each rule cost, and the measured order by
bit-width, ratio and quantizer share: where the order follows the methods' strengths and where
it does not.

Run: python benchmarks/pih_features.py --json pih-grid.json [--parts lm] (the points
``benchmarks/pih_grid.py`` wrote, with their quantizer shares).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pqorder.analysis.predictor import predictable
from pqorder.analysis.sweep import SweepPoint, spearman
from pqorder.analysis.validation import RULES, family_of, predicts_quantize_first
from pqorder.tables import Table

FEATURES: dict[str, Callable[[SweepPoint], float]] = {
    "x": lambda p: p.local_log_ratio,
    "q": lambda p: p.quant_share,
    "1": lambda p: 1.0,
}
SETS = (("x",), ("x", "1"), ("x", "q"), ("x", "q", "1"), ("q", "1"))


def held_out(points: Sequence[SweepPoint], names: Sequence[str]) -> tuple:
    """Sign accuracy and ρ of the feature set ``names``, leaving one family out at a time."""
    x = np.array([[FEATURES[n](p) for n in names] for p in points])
    r = np.array([p.advantage_q_first / p.scale for p in points])
    families = [family_of(p) for p in points]
    predicted = np.zeros(len(points))
    for family in set(families):
        test = np.array([f == family for f in families])
        weights, *_ = np.linalg.lstsq(x[~test], r[~test], rcond=None)
        predicted[test] = x[test] @ weights
    measured = [p.advantage_q_first for p in points]
    a_hat = predicted * np.array([p.scale for p in points])
    right = float(np.mean((predicted > 0) == (r > 0)))
    return right, spearman(list(a_hat), measured)


def by(points: Sequence[SweepPoint], keys: Sequence[object], title: str, column: str) -> Table:
    """How often each order won, per value of ``keys``."""
    rows = []
    for key in sorted(set(keys)):
        mine = [p for p, k in zip(points, keys, strict=True) if k == key]
        first = sum(p.advantage_q_first < 0 for p in mine) / len(mine)
        rows.append((key, len(mine), first, 1 - first))
    return Table(title, (column, "points", "prune first won", "quantize first won"), tuple(rows))


def by_margin(points: Sequence[SweepPoint], margins: Sequence[float]) -> Table:
    """Each rule's hit rate over the points where the two orders differ by at least a margin
    (|A| over the better order's value): does a rule fail where the order matters?"""
    rows = []
    for margin in margins:
        mine = [
            p
            for p in points
            if abs(p.advantage_q_first)
            >= margin * min(abs(p.value_prune_then_quant), abs(p.value_quant_then_prune))
        ]
        hits = [
            sum(predicts_quantize_first(rule, p) == (p.advantage_q_first > 0) for p in mine)
            for rule in RULES
        ]
        rows.append(
            (f"≥ {margin:.1%}", len(mine), *(h / len(mine) if mine else None for h in hits))
        )
    return Table(
        "Hit rates where the orders differ by at least a margin",
        ("margin", "points", *RULES),
        tuple(rows),
    )


def lost(points: Sequence[SweepPoint]) -> Table:
    """Each rule's share of Σ|A| at the points where it picked the worse order ("A lost")."""
    total = sum(abs(p.advantage_q_first) for p in points)
    rows = tuple(
        (
            rule,
            sum(
                abs(p.advantage_q_first)
                for p in points
                if predicts_quantize_first(rule, p) != (p.advantage_q_first > 0)
            )
            / total,
        )
        for rule in RULES
    )
    return Table("What following each rule cost", ("rule", "A lost"), rows)


def band(share: float, width: float = 0.2) -> str:
    """The band of ``width`` a quantizer share falls in (shares above 1 in the last one)."""
    if share < 0:
        return "< 0 (quantizer helped)"
    low = width * min(int(share // width), int(1 / width) - 1)
    return f"{low:.1f}–{low + width:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--parts", default="lm")
    args = parser.parse_args()
    if not args.json.is_file():
        parser.error(f"no such file: {args.json}")
    raw = json.loads(args.json.read_text())["parts"]
    points: list[SweepPoint] = []
    for part in args.parts.split(","):
        if part not in raw:
            parser.error(f"{args.json} has no part {part}; it has {', '.join(raw)}")
        points += [p for p in (SweepPoint(**d) for d in raw[part]) if predictable(p)]
    if len({family_of(p) for p in points}) < 2:
        parser.error(f"leaving one family out needs two families; {args.parts} has fewer")
    rows = tuple((" + ".join(names), len(points), *held_out(points, names)) for names in SETS)
    tables = (
        Table(
            f"Leave one family out, {args.parts} ({len({family_of(p) for p in points})} families)",
            ("features", "points", "sign right", "ρ(pred A, A)"),
            rows,
        ),
        by_margin(points, (0.0, 0.005, 0.01, 0.02, 0.05)),
        lost(points),
        by(points, [p.bits for p in points], "Measured order by bit-width", "bits"),
        by(points, [p.ratio for p in points], "Measured order by pruning ratio", "ratio"),
        by(
            points,
            [band(p.quant_share) for p in points],
            "Measured order by the quantizer's share",
            "q",
        ),
    )
    for table in tables:
        print(f"\n{table.title}\n")
        print("\n".join(table.markdown()))


if __name__ == "__main__":
    main()
