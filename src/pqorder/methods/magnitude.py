"""Magnitude pruning (Han et al., 2015): drop the smallest |W|, per layer or N:M."""

from __future__ import annotations

from torch import Tensor

from pqorder.methods.base import register
from pqorder.methods.pruner import ScorePruner
from pqorder.stats import UnitStats


@register
class Magnitude(ScorePruner):
    name = "magnitude"
    summary = "magnitude pruning: drop the smallest |W| per layer (unstructured) or per N:M group"
    example = "magnitude:ratio=0.5"

    def scores(self, w: Tensor, stats: UnitStats | None) -> Tensor:
        return w.abs()
