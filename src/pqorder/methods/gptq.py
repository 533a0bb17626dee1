"""GPTQ / OPTQ (Frantar et al., 2023): quantize column by column with OBS error feedback.

Per-channel grids are fitted on the whole weight up front; per-group grids either when the
sweep reaches each group (on the error-updated weights, as in the reference) or all up front
with ``static_groups``. ``act_order`` sweeps columns by decreasing Hessian diagonal; because
pqorder stores groups in column order, it needs ``static_groups`` when groups are used.
After an earlier pruning step, pruned weights are held at exactly zero while their error is
still propagated into the surviving weights, and grids are fitted on surviving weights only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import model_validator
from torch import Tensor

from pqorder.core import Need
from pqorder.methods.base import register
from pqorder.methods.obs import SolverSettings, solve
from pqorder.methods.rtn import RTN, QuantConfig
from pqorder.quantgrid import QuantGrid, fit_grid
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


class GPTQConfig(SolverSettings, QuantConfig):
    act_order: bool = False
    static_groups: bool = False

    @model_validator(mode="after")
    def _act_order_groups(self) -> GPTQConfig:
        if self.act_order and self.group and not self.static_groups:
            raise ValueError("act_order with group>0 needs static_groups=true")
        return self


class _QuantizeColumns:
    """ColumnRule: round each column onto its grid, keep pruned weights at zero."""

    def __init__(
        self,
        grid: QuantGrid,
        pruned: Tensor,
        perm: Tensor | None,
        fit_groups: bool,
        sym: bool,
    ) -> None:
        self.grid, self.pruned, self.perm = grid, pruned, perm
        self.fit_groups, self.sym = fit_groups, sym

    def start_block(self, i1: int, w_block: Tensor, u_block: Tensor) -> None:
        pass

    def target(self, col: int, w_col: Tensor, ahead: Callable[[int], Tensor]) -> Tensor:
        orig = col if self.perm is None else int(self.perm[col])
        size = self.grid.group_size
        if self.fit_groups and orig % size == 0:
            window = ahead(size)
            kept = ~self.pruned[:, orig : orig + window.shape[1]]
            local = fit_grid(window, self.grid.bits, size, self.sym, mask=kept)
            g = orig // size
            self.grid.scale[:, g] = local.scale[:, 0]
            self.grid.zero[:, g] = local.zero[:, 0]
        q = self.grid.project_column(w_col, orig)
        return torch.where(self.pruned[:, orig], torch.zeros_like(q), q)


@register
class GPTQ(RTN):
    name = "gptq"
    summary = "GPTQ/OPTQ: column-wise quantization with Hessian error feedback, calibrated"
    Config = GPTQConfig
    example = "gptq:bits=3,sym=true"
    requires = Need.STATISTICS

    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        cfg = self.config
        pruned = ~constraint.kept(w)
        perm = None
        if cfg.act_order:
            perm = torch.argsort(torch.diagonal(stats.hessian), descending=True)
        dynamic = 0 < cfg.group < w.shape[1] and not cfg.static_groups

        def make_rule(w_live: Tensor, _upper: Tensor) -> _QuantizeColumns:
            grid = fit_grid(w_live, cfg.bits, cfg.group, cfg.sym, mask=~pruned)
            return _QuantizeColumns(grid, pruned, perm, dynamic, cfg.sym)

        w_new, rule = solve(w, stats, cfg, make_rule, perm)
        new = UnitConstraint(mask=constraint.mask, grid=rule.grid)
        return new.project(w_new), new
