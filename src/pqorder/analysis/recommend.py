"""The Progressive Intensity Hypothesis as a recommender: weaker perturbation first.

Methods are ordered by measured intensity (M alone, higher = weaker = earlier). Confidence
comes from the smallest CER gap between consecutive methods: the paper finds the order
advantage grows with that gap, so a small gap means the order matters little or is
uncertain. Warnings flag the cases where the hypothesis is known to break or interference
is expected.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pqorder.analysis.cer import CER, ReferenceCurve
from pqorder.analysis.intensity import (
    CurveOptions,
    IntensityReport,
    MethodIntensity,
    collapsed,
    measure_intensity,
)
from pqorder.errors import ConfigError, check_format
from pqorder.methods.base import Method
from pqorder.pipeline import STEP_SEPARATOR, label
from pqorder.store import Measurement, v1_direction
from pqorder.study import Study
from pqorder.tables import Table, cell

HIGH_GAP, MEDIUM_GAP = 0.05, 0.015  # CER gaps (fraction mapping) for high / medium confidence
FORMAT = 2  # version of Recommendation.to_dict (1: rows of numbers, no labels; read as well)


@dataclass
class Recommendation:
    order: list[str]  # step texts, weaker first
    intensity: IntensityReport
    cer_gaps: list[float | None]  # between consecutive methods of the recommended order
    confidence: str
    warnings: list[str] = field(default_factory=list)

    @property
    def order_label(self) -> str:
        """The recommended order in short labels."""
        labels = {m.step: m.label for m in self.intensity.methods}
        return f" {STEP_SEPARATOR} ".join(labels[s] for s in self.order)

    def table(self) -> Table:
        """Each method alone: its family, granularity, value and CER."""
        dense = self.intensity.dense
        rows = []
        for m in self.intensity.methods:
            cer = m.cer.status if m.cer.value is None else m.cer.value
            rows.append((m.label, m.family, m.granularity, m.run.value, cer))
        columns = ("method", "family", "granularity", f"{dense.metric_name} alone", "CER C*")
        title = f"intensity (dense {dense.metric_name} {cell(dense.value)})"
        return Table(title, columns, tuple(rows))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "order": self.order,
            "confidence": self.confidence,
            "cer_gaps": self.cer_gaps,
            "warnings": self.warnings,
            "intensity": self.intensity.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> Recommendation:
        """Read ``to_dict``'s form, or format 1 (labels then come from the method registry)."""
        if check_format("recommendation", raw.get("format", 1), (1, FORMAT)) == 1:
            intensity = _intensity_v1(raw)
        else:
            intensity = IntensityReport.from_dict(raw["intensity"])
        return cls(raw["order"], intensity, raw["cer_gaps"], raw["confidence"], raw["warnings"])


def _intensity_v1(raw: dict) -> IntensityReport:
    """The intensity a format-1 payload kept: values, CERs and the curve's points."""
    name = raw["metric_name"]
    direction = v1_direction(name)

    def measurement(value: float | None) -> Measurement:
        return Measurement(name, value, direction, "ok" if value is not None else "failed")

    methods = [
        MethodIntensity(
            m["step"],
            label(m["step"]),
            m["family"],
            m["granularity"],
            measurement(m["value"]),
            CER(m["cer"], m["cer_status"], m["metric"] if m["metric"] is not None else math.nan),
        )
        for m in raw["methods"]
    ]
    curve = ReferenceCurve(tuple(raw["curve"]["bits"]), tuple(raw["curve"]["metric"]))
    return IntensityReport(measurement(raw["dense_value"]), methods, curve, curve.non_monotone())


def _confidence(gaps: list[float | None]) -> str:
    if any(g is None for g in gaps):
        return "unknown (a method lies outside the reference curve)"
    smallest = min(gaps)
    if smallest >= HIGH_GAP:
        return "high"
    return "medium" if smallest >= MEDIUM_GAP else "low"


def _warnings(report: IntensityReport, steps: Sequence[Method], collapse: float) -> list[str]:
    out = []
    dense = report.dense
    for m in report.methods:
        name = m.label
        if not m.run.ok:
            out.append(f"{name} failed alone: {m.run.error}")
        elif collapsed(m.run, dense, collapse):
            out.append(
                f"collapse zone: {name} alone gives {dense.metric_name} {m.run.value:.3g} "
                f"(dense {dense.value:.3g}, collapse factor {collapse:g}); "
                "the hypothesis may not hold there"
            )
        if not m.cer.in_range and m.family != "quantize":
            out.append(f"{name} lies outside the reference curve ({m.cer.status})")
        if m.run.ok and m.run.value == dense.value:
            out.append(f"{name} does not change the metric at all")
    if report.non_monotone:
        out.append(f"the reference curve is not monotone at bits {report.non_monotone}")
    prunes = [s for s in steps if s.family == "prune"]
    quants = [s for s in steps if s.family == "quantize"]
    for p in prunes:
        for q in quants:
            fine = p.granularity == "element" or p.granularity.endswith(" group")
            if fine:
                out.append(
                    f"interference expected: {p.label()} prunes at {p.granularity} "
                    f"granularity inside {q.label()}'s {q.granularity} scales"
                )
    rotations = [s for s in steps if s.rotates]
    if rotations and prunes:
        out.append(
            f"{rotations[0].label()} rotates the weights: pruning after it is much worse (the "
            f"paper: 40% SparseGPT on LLaMA-3-8B goes from 8.48 to 98.2 perplexity) and pruning "
            f"before it is refused (the rotation would make the zeros dense). Measure it with "
            f"`pqorder study rotation`; block removal (sleb) is barely affected"
        )
    return out


def strength(run: Measurement) -> float:
    """Sort key: weaker (higher M) first; failed runs count as strongest."""
    return -run.metric if run.ok else float("inf")


def weaker_first(study: Study, steps: Sequence[Method]) -> list[Method]:
    """The PIH order from each method alone (no reference curve needed)."""
    return sorted(steps, key=lambda s: strength(study.evaluate((s,))))


def recommend(
    study: Study,
    steps: Sequence[Method],
    options: CurveOptions | None = None,
    collapse_factor: float = 3.0,
) -> Recommendation:
    """Measure each method alone and propose the weaker-first order."""
    if len(steps) < 2:
        raise ConfigError("an order question needs at least two methods")
    if collapse_factor <= 1:
        raise ConfigError(f"collapse factor must exceed 1, got {collapse_factor}")
    report = measure_intensity(study, steps, options)
    if all(m.run.ok and m.run.value == report.dense.value for m in report.methods):
        raise ConfigError("none of the methods changes the model: there is no order to choose")
    ranked = sorted(range(len(steps)), key=lambda i: strength(report.methods[i].run))
    order = [report.methods[i].step for i in ranked]
    gaps = []
    for a, b in itertools.pairwise(ranked):
        ca, cb = report.methods[a].cer, report.methods[b].cer
        gaps.append(cb.value - ca.value if ca.in_range and cb.in_range else None)
    warnings = _warnings(report, steps, collapse_factor)
    return Recommendation(order, report, gaps, _confidence(gaps), warnings)
