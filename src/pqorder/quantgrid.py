"""Uniform quantization grids: the pure tensor math shared by every quantizer.

A grid maps a weight matrix W (out, in) onto values ``scale * (q - zero)`` with integer
``q`` in ``[0, maxq]``, one (scale, zero) pair per output row and input group. Zero is always
exactly representable (``q == zero``), so pruned weights survive any later quantization.

Range statistics come from the *kept* weights only (``mask``); pruned zeros do not enter a
later quantizer's statistics, and 0 is always forced into the range. This is the explicit
interference choice of pqorder (SparseGPT's reference code takes the scale from unpruned
weights instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class QuantGrid:
    """Per-(row, group) affine grid; ``group_size == in_features`` means per-channel."""

    bits: int
    group_size: int
    scale: Tensor  # (out, n_groups)
    zero: Tensor  # (out, n_groups), integer-valued

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def to(self, device: torch.device) -> QuantGrid:
        """The same grid with its scales and zeros on ``device``."""
        return QuantGrid(self.bits, self.group_size, self.scale.to(device), self.zero.to(device))

    def expand(self, t: Tensor, in_features: int) -> Tensor:
        """Broadcast a (out, n_groups) tensor to (out, in_features)."""
        return t.repeat_interleave(self.group_size, dim=1)[:, :in_features]

    def project(self, w: Tensor) -> Tensor:
        """Nearest grid value of every weight (round to nearest, clamp to the grid)."""
        scale = self.expand(self.scale, w.shape[1])
        zero = self.expand(self.zero, w.shape[1])
        return _snap(w, scale, zero, self.maxq)

    def project_column(self, w: Tensor, col: int) -> Tensor:
        """Nearest grid value of column ``col`` of the weight, given as (out,)."""
        g = col // self.group_size
        return _snap(w, self.scale[:, g], self.zero[:, g], self.maxq)

    def codes(self, w: Tensor) -> Tensor:
        """Integer codes of weights that already lie on the grid."""
        scale = self.expand(self.scale, w.shape[1])
        zero = self.expand(self.zero, w.shape[1])
        return torch.clamp(torch.round(w / scale) + zero, 0, self.maxq).to(torch.int32)

    def contains(self, w: Tensor, rtol: float = 1e-5, dtype: torch.dtype | None = None) -> bool:
        """Whether every weight lies on the grid (up to float rounding of scale * code).

        ``dtype`` is the precision the weights are stored in. In half precision a grid value
        scale * code is rounded to the nearest representable number, and that number is the
        grid point: a weight is on the grid when projecting it again and casting it back gives
        it exactly (projection then cast is idempotent, so a value on the grid stays there).
        """
        if dtype in (torch.bfloat16, torch.float16):
            return torch.equal(self.project(w.float()).to(dtype), w.to(dtype))
        tol = rtol * self.expand(self.scale, w.shape[1]).abs() + 1e-12
        return bool(((w - self.project(w)).abs() <= tol).all())

    def to_tensors(self, prefix: str) -> dict[str, Tensor]:
        meta = torch.tensor([self.bits, self.group_size], dtype=torch.int64)
        return {f"{prefix}.scale": self.scale, f"{prefix}.zero": self.zero, f"{prefix}.meta": meta}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str) -> QuantGrid:
        bits, group = (int(v) for v in tensors[f"{prefix}.meta"])
        return cls(bits, group, tensors[f"{prefix}.scale"], tensors[f"{prefix}.zero"])


def _snap(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    return scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)


def _grouped(w: Tensor, group_size: int, fill: float) -> Tensor:
    """Reshape (out, in) to (out, n_groups, group_size), padding the last group with ``fill``."""
    out, inp = w.shape
    n_groups = -(-inp // group_size)
    pad = n_groups * group_size - inp
    if pad:
        w = torch.nn.functional.pad(w, (0, pad), value=fill)
    return w.reshape(out, n_groups, group_size)


def fit_grid(
    w: Tensor, bits: int, group_size: int, sym: bool, mask: Tensor | None = None
) -> QuantGrid:
    """Min-max grid for ``w`` (out, in) from its kept weights; ``group_size <= 0`` is per-channel.

    Asymmetric: the range [min(w, 0), max(w, 0)] over the group's kept weights, integer zero.
    Symmetric (GPTQ convention): range ±max|w|, zero fixed at (maxq + 1) / 2.
    """
    w = w.float()
    if group_size <= 0 or group_size > w.shape[1]:
        group_size = w.shape[1]
    maxq = 2**bits - 1
    kept = w if mask is None else torch.where(mask, w, torch.zeros_like(w))
    # Pruned weights are replaced by 0, which is inside every range anyway: they cannot widen it.
    xmin = _grouped(kept, group_size, 0.0).amin(dim=2).clamp(max=0)  # (out, n_groups)
    xmax = _grouped(kept, group_size, 0.0).amax(dim=2).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    degenerate = (xmax - xmin) == 0
    xmin = torch.where(degenerate, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(degenerate, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return QuantGrid(bits, group_size, scale, zero)
