"""Wanda (Sun et al., 2024): prune by |W_ij| · ‖X_j‖₂, compared within each output row."""

from __future__ import annotations

from torch import Tensor

from pqorder.core import Need
from pqorder.methods.base import register
from pqorder.methods.pruner import ScorePruner
from pqorder.stats import UnitStats


@register
class Wanda(ScorePruner):
    name = "wanda"
    summary = "Wanda: |W|·‖X‖ scores per output row (unstructured) or N:M, no weight update"
    example = "wanda:ratio=0.5"
    requires = Need.STATISTICS
    per_row = True

    def scores(self, w: Tensor, stats: UnitStats | None) -> Tensor:
        return w.abs() * stats.input_norms().unsqueeze(0)  # (out, in)
