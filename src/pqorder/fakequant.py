"""Fake quantization of activations: round to a b-bit grid per group of the last dimension.

Per token for unit inputs (the group is the whole feature vector), per token and head for keys
and values (the group is one head's vector). ``clip`` shrinks the range before rounding
(QuaRot clips activations to 0.9 of their maximum). Values come back in float, on the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fake_quant(x: Tensor, bits: int, clip: float = 1.0, sym: bool = True) -> Tensor:
    """``x`` rounded to ``2**bits`` levels per row of its last dimension."""
    xf = x.float()
    if sym:
        maxq = 2 ** (bits - 1) - 1
        scale = (xf.abs().amax(-1, keepdim=True) * clip / maxq).clamp(min=1e-8)
        q = torch.clamp(torch.round(xf / scale), -maxq - 1, maxq)
        return (q * scale).to(x.dtype)
    maxq = 2**bits - 1
    lo = xf.amin(-1, keepdim=True).clamp(max=0) * clip
    hi = xf.amax(-1, keepdim=True).clamp(min=0) * clip
    scale = ((hi - lo) / maxq).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(xf / scale) + zero, 0, maxq)
    return ((q - zero) * scale).to(x.dtype)
