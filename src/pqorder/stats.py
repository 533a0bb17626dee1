"""Calibration statistics of one unit, accumulated from its inputs by a forward hook.

H = (2 / n) · Σ xᵀx over the n calibration tokens (the OBS/GPTQ Hessian of the layer-wise
reconstruction loss). Batches are multiplied in float32 (whatever the model's dtype) and
summed in float64 on the inputs' device, so the sum stays exact enough over many batches.
Per-input-feature activation norms (Wanda) are its diagonal: ‖X_j‖₂ = sqrt(H_jj · n / 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class UnitStats:
    """What a calibration-based method knows about one unit's inputs."""

    name: str
    hessian: Tensor  # (in, in) float32, 2/n · XᵀX
    n_tokens: int

    def input_norms(self) -> Tensor:
        """‖X_j‖₂ over all calibration tokens, per input feature: (in,)."""
        return torch.sqrt(torch.diagonal(self.hessian).clamp(min=0) * self.n_tokens / 2)


class HessianAccumulator:
    """Running Σ xᵀx of a unit's inputs; ``add_batch`` is called from a forward hook."""

    def __init__(self, in_features: int) -> None:
        self.in_features = in_features
        self.sum: Tensor | None = None  # made on the inputs' device at the first batch
        self.n_tokens = 0

    def add_batch(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in), whatever the model dtype
        if self.sum is None:
            # MPS has no float64: there the sum stays in float32.
            wide = torch.float32 if x.device.type == "mps" else torch.float64
            self.sum = torch.zeros(self.in_features, self.in_features, dtype=wide, device=x.device)
        self.sum += (x.t() @ x).to(self.sum.dtype)
        self.n_tokens += x.shape[0]

    def finish(self, name: str) -> UnitStats:
        if self.sum is None:
            return UnitStats(name, torch.zeros(self.in_features, self.in_features), 0)
        hessian = (2.0 / max(self.n_tokens, 1)) * self.sum
        return UnitStats(name, hessian.float(), self.n_tokens)
