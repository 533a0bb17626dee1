"""Compression Equivalent Ratio (CER): a method's intensity on the quantization scale.

A reference curve holds the metric M (higher is better) of quantization alone at several
bit-widths. Each width b maps to a ratio C_Q(b) = 1 − b/B (``ratio="fraction"``, B = 16 by
default) or B/b (``ratio="factor"``). C*_f is read off the curve by piecewise-linear
interpolation at the level M(f), in M itself or in log-perplexity. Levels outside the curve
are reported as out of range, never clamped; non-monotone curves are flagged.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

from pqorder.errors import ConfigError

RatioMapping = Literal["fraction", "factor"]
Space = Literal["metric", "logppl"]


def quant_ratio(bits: float, mapping: RatioMapping = "fraction", reference: int = 16) -> float:
    """C_Q for a bit-width: 1 − b/reference, or reference/b."""
    if bits <= 0 or reference <= 0:
        raise ConfigError(f"bit-widths must be positive, got bits={bits}, reference={reference}")
    return 1.0 - bits / reference if mapping == "fraction" else reference / bits


@dataclass(frozen=True)
class CER:
    """A CER reading: ``value`` when in range, else None with ``status`` saying which side."""

    value: float | None
    status: Literal["ok", "weaker-than-curve", "stronger-than-curve"]
    level: float  # the metric level that was looked up

    @property
    def in_range(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        if self.value is not None:
            return f"{self.value:.3f}"
        return "< curve" if self.status == "weaker-than-curve" else "> curve"


@dataclass(frozen=True)
class ReferenceCurve:
    """M of quantization alone at each bit-width."""

    bits: tuple[int, ...]
    metric: tuple[float, ...]  # M = −perplexity (higher is better)
    mapping: RatioMapping = "fraction"
    reference_bits: int = 16
    space: Space = "metric"

    def __post_init__(self) -> None:
        if len(self.bits) < 2 or len(self.bits) != len(self.metric):
            raise ConfigError("a CER reference curve needs at least two (bits, metric) points")
        if any(not math.isfinite(m) for m in self.metric):
            raise ConfigError("the CER reference curve has a NaN/Inf point")

    def _y(self, metric: float) -> float:
        """Interpolation coordinate of a metric value (−log ppl when in log space)."""
        return -math.log(-metric) if self.space == "logppl" else metric

    def points(self) -> list[tuple[float, float]]:
        """(C_Q, y) sorted by increasing compression ratio."""
        pts = [
            (quant_ratio(b, self.mapping, self.reference_bits), self._y(m))
            for b, m in zip(self.bits, self.metric, strict=True)
        ]
        return sorted(pts)

    def non_monotone(self) -> list[int]:
        """Bit-widths where fewer bits *raised* the metric (the curve should only fall)."""
        ordered = sorted(
            zip(self.bits, self.metric, strict=True),
            key=lambda t: quant_ratio(t[0], self.mapping, self.reference_bits),
        )
        return [
            b1 for (_b0, m0), (b1, m1) in itertools.pairwise(ordered) if self._y(m1) > self._y(m0)
        ]

    def cer(self, metric: float) -> CER:
        """C* at level ``metric``: the first crossing along increasing compression."""
        y = self._y(metric)
        pts = self.points()
        top, bottom = max(p[1] for p in pts), min(p[1] for p in pts)
        if y > top:
            return CER(None, "weaker-than-curve", metric)
        if y < bottom:
            return CER(None, "stronger-than-curve", metric)
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            if min(y0, y1) <= y <= max(y0, y1):
                if y0 == y1:
                    return CER(x0, "ok", metric)
                return CER(x0 + (y0 - y) * (x1 - x0) / (y0 - y1), "ok", metric)
        raise AssertionError("unreachable: level inside the curve's range")
