"""L1-norm filter pruning (Li et al., 2017): remove whole output channels with the smallest ‖W_i‖₁.

Structured: a pruned filter's entire row of the (out, C·kh·kw) weight is zero, so the
channel it produces is gone (for a Linear unit, an output neuron). The ratio is per layer:
floor(ratio · out) filters, filters already fully pruned counting first. Only kept weights
enter the L1 norm. With ``bn=true`` the BatchNorm running statistics of the whole model are
re-estimated on the calibration images afterwards: a removed filter leaves the BatchNorm
after it normalizing a constant with stale statistics (see ``reestimate_batchnorm``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pqorder.core import Need, StepContext
from pqorder.methods.base import Fraction, MethodConfig, UnitMethod, register
from pqorder.methods.masks import prune_lowest
from pqorder.models.vision import reestimate_batchnorm
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


class FilterConfig(MethodConfig):
    """``ratio`` of output channels per layer; ``bn``: re-estimate BatchNorm statistics after."""

    ratio: Fraction = 0.1
    bn: bool = False
    always_show = ("ratio",)


def filter_mask(w: Tensor, kept: Tensor, ratio: float) -> Tensor:
    """Keep mask (out, in) with floor(ratio · out) whole rows pruned by smallest kept L1 norm."""
    scores = torch.where(kept, w.abs(), torch.zeros_like(w)).sum(dim=1)  # (out,)
    rows = prune_lowest(scores[None], kept.any(dim=1)[None], int(ratio * w.shape[0]))[0]
    return kept & rows[:, None]


@register
class Filters(UnitMethod):
    name = "filters"
    family = "prune"
    granularities = "output channel (filter)"
    summary = (
        "L1-norm filter pruning: zero whole output channels (structured), optional BN re-estimation"
    )
    Config = FilterConfig
    example = "filters:ratio=0.25"

    @property
    def granularity(self) -> str:
        return "output channel"

    @property
    def needs(self) -> Need:  # images for the BatchNorm re-estimation, no statistics
        return Need.INPUTS if self.config.bn else Need.NOTHING

    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        new = UnitConstraint(
            mask=filter_mask(w, constraint.kept(w), self.config.ratio), grid=constraint.grid
        )
        return new.project(w), new

    def finish(self, ctx: StepContext) -> None:
        if self.config.bn:
            reestimate_batchnorm(ctx.lm.model, ctx.calibration)
