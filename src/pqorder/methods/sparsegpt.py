"""SparseGPT (Frantar & Alistarh, 2023): one-shot OBS pruning with lazy batch updates.

The mask is chosen adaptively: for unstructured sparsity per block of ``blocksize`` columns
over all rows by w² / [H⁻¹]_jj², for N:M at every M-th column over the next M columns. The
pruned weights' error is pushed into the remaining columns. After an earlier quantization
step each surviving column is projected onto that grid inside the sweep, so the error
feedback accounts for the rounding and every weight stays on the grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pqorder.core import Need
from pqorder.methods.base import register
from pqorder.methods.masks import parse_nm, prune_lowest
from pqorder.methods.obs import SolverSettings, solve
from pqorder.methods.pruner import PruneConfig, Pruner
from pqorder.quantgrid import QuantGrid
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


class SparseGPTConfig(SolverSettings, PruneConfig):
    """Target sparsity (``ratio`` or ``nm``) plus the solver's ``damp`` and ``blocksize``."""


class _PruneColumns:
    """ColumnRule: choose masks adaptively, zero pruned weights, keep an earlier grid."""

    def __init__(
        self,
        pruned: Tensor,
        udiag: Tensor,
        ratio: float | None,
        nm: tuple[int, int] | None,
        grid: QuantGrid | None,
    ) -> None:
        self.pruned = pruned.clone()  # (out, in), True = pruned; grows during the sweep
        self.udiag = udiag
        self.ratio, self.nm, self.grid = ratio, nm, grid
        # The ratio is the layer's total sparsity, earlier zeros included: the zeros still to
        # add are spread over the blocks in proportion to their alive weights, which any
        # earlier mask leaves room for (each block's share never exceeds its alive count).
        self.alive_upto = (~pruned).sum(dim=0).cumsum(0)  # alive weights in columns 0..c
        target = 0 if ratio is None else int(ratio * pruned.numel())
        self.new = max(target - int(pruned.sum()), 0)  # zeros this step adds to the layer
        self.added = 0  # of those, added in the blocks already swept

    def start_block(self, i1: int, w_block: Tensor, u_block: Tensor) -> None:
        if self.ratio is None:
            return
        width = w_block.shape[1]
        block = self.pruned[:, i1 : i1 + width]
        alive_total = max(int(self.alive_upto[-1]), 1)
        due = self.new * int(self.alive_upto[i1 + width - 1]) // alive_total - self.added
        scores = w_block.pow(2) / self.udiag[i1 : i1 + width].pow(2)
        # the block's earlier zeros rank first, so exactly ``due`` alive weights are added
        keep = prune_lowest(scores.reshape(1, -1), ~block.reshape(1, -1), int(block.sum()) + due)
        self.pruned[:, i1 : i1 + width] = ~keep.view_as(block)
        self.added += due

    def target(self, col: int, w_col: Tensor, ahead: Callable[[int], Tensor]) -> Tensor:
        if self.nm is not None and col % self.nm[1] == 0:
            n, m = self.nm
            group = self.pruned[:, col : col + m]
            scores = ahead(m).pow(2) / self.udiag[col : col + m].pow(2)
            newly = ~prune_lowest(scores, ~group, m - n) & ~group
            self.pruned[:, col : col + m] |= newly
        q = w_col if self.grid is None else self.grid.project_column(w_col, col)
        return torch.where(self.pruned[:, col], torch.zeros_like(q), q)


@register
class SparseGPT(Pruner):
    name = "sparsegpt"
    summary = "SparseGPT: OBS pruning with weight updates (unstructured or N:M), calibrated"
    Config = SparseGPTConfig
    example = "sparsegpt:ratio=0.5"
    requires = Need.STATISTICS

    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        cfg = self.config
        nm = parse_nm(cfg.nm) if cfg.nm else None

        def make_rule(w_live: Tensor, upper: Tensor) -> _PruneColumns:
            pruned = ~constraint.kept(w_live)
            return _PruneColumns(pruned, torch.diagonal(upper), cfg.ratio, nm, constraint.grid)

        w_new, rule = solve(w, stats, cfg, make_rule)
        new = UnitConstraint(mask=~rule.pruned, grid=constraint.grid)
        return new.project(w_new), new
