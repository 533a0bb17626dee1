"""Optimal Brain Surgeon machinery shared by GPTQ (OPTQ) and SparseGPT.

Both sweep the columns of W (out, in) left to right: each column is replaced by a target
(its quantized and/or pruned value), and the error, scaled by the inverse Hessian, is pushed
into the columns not yet handled. Updates are applied lazily in blocks of ``blocksize``
columns (Frantar & Alistarh, 2022/2023). The inverse Hessian enters through the upper
Cholesky factor U of H⁻¹, dampened by a fraction of the mean diagonal of H.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch
from pydantic import field_validator
from torch import Tensor

from pqorder.errors import PqorderError
from pqorder.methods.base import MethodConfig, OpenFraction
from pqorder.stats import UnitStats

MAX_DAMP_RETRIES = 4


def inverse_hessian_factor(h: Tensor, percdamp: float, name: str) -> tuple[Tensor, Tensor]:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean(diag H), and the dead columns.

    Columns never activated (H_jj = 0) get H_jj = 1 so the factorization exists; callers zero
    their weights. A Hessian still singular after dampening is retried with 10× more
    dampening (with a warning) before giving up.
    """
    device = h.device
    if device.type == "mps":  # no float64 there: factor on the host
        h = h.cpu()
    h = h.double().clone()  # (in, in); float64 for a stable factorization
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    mean_diag = torch.diagonal(h).mean()
    for attempt in range(MAX_DAMP_RETRIES + 1):
        damp = percdamp * 10**attempt
        eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if info == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if info == 0:
                if attempt:
                    warnings.warn(
                        f"{name}: Hessian singular with dampening {percdamp}; used {damp:g}",
                        stacklevel=2,
                    )
                return upper.float().to(device), dead.to(device)
    raise PqorderError(
        f"{name}: Hessian singular even with dampening {damp:g}; use more calibration data"
    )


class ColumnRule(Protocol):
    """What a sweep does to each column: decide its target value."""

    def start_block(self, i1: int, w_block: Tensor, u_block: Tensor) -> None:
        """Called before columns i1.. (a block of the sweep) are handled."""

    def target(self, col: int, w_col: Tensor, ahead: Callable[[int], Tensor]) -> Tensor:
        """The value column ``col`` takes; ``ahead(k)`` gives the current next k columns."""


def _lookahead(in_block: Tensor, after_block: Tensor, k: int) -> Tensor:
    """The current values of the next ``k`` columns, crossing the block boundary if needed."""
    if k <= in_block.shape[1]:
        return in_block[:, :k]
    return torch.cat([in_block, after_block], dim=1)[:, :k]


def obs_sweep(w: Tensor, upper: Tensor, rule: ColumnRule, blocksize: int = 128) -> Tensor:
    """Replace every column by ``rule.target`` with OBS error feedback; returns the new W."""
    w = w.clone()  # (out, in)
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()  # (out, B)
        err1 = torch.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        rule.start_block(i1, w1, u1)
        for i in range(i2 - i1):
            col = w1[:, i]

            q = rule.target(i1 + i, col, partial(_lookahead, w1[:, i:], w[:, i2:]))
            err = (col - q) / u1[i, i]  # (out,)
            w1[:, i:] -= err.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    return w


def solve(
    w: Tensor,
    stats: UnitStats,
    settings: SolverSettings,
    make_rule: Callable[[Tensor, Tensor], ColumnRule],
    perm: Tensor | None = None,
) -> tuple[Tensor, ColumnRule]:
    """The OBS solve of one unit: factor H, zero dead inputs, sweep (optionally permuted).

    ``make_rule(w, upper)`` builds the method's column rule from the weights (dead inputs
    zeroed, original column order) and the inverse-Hessian factor (in sweep order).
    """
    h = stats.hessian if perm is None else stats.hessian[perm][:, perm]
    upper, dead = inverse_hessian_factor(h, settings.damp, stats.name)
    inverse = None if perm is None else torch.argsort(perm)
    if inverse is not None:
        dead = dead[inverse]
    w = torch.where(dead.unsqueeze(0), torch.zeros_like(w), w)
    rule = make_rule(w, upper)
    if perm is None:
        return obs_sweep(w, upper, rule, settings.blocksize), rule
    return obs_sweep(w[:, perm], upper, rule, settings.blocksize)[:, inverse], rule


class SolverSettings(MethodConfig):
    """Settings shared by the OBS-based methods (GPTQ, SparseGPT)."""

    damp: OpenFraction = 0.01  # fraction of mean(diag H) added to the diagonal
    blocksize: int = 128  # columns per lazy-update block

    @field_validator("blocksize")
    @classmethod
    def _block_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"blocksize must be positive, got {v}")
        return v
