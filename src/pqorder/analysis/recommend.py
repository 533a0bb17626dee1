"""The Progressive Intensity Hypothesis as a recommender: weaker perturbation first.

Methods are ordered by measured intensity (M alone, higher = weaker = earlier). Confidence
comes from the smallest CER gap between consecutive methods: the paper finds the order
advantage grows with that gap, so a small gap means the order matters little or is
uncertain. Warnings flag the cases where the hypothesis is known to break or interference
is expected.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from pqorder.analysis.intensity import (
    CurveOptions,
    IntensityReport,
    collapsed,
    measure_intensity,
)
from pqorder.errors import ConfigError
from pqorder.methods.base import Method
from pqorder.pipeline import label
from pqorder.store import Run
from pqorder.study import Study

HIGH_GAP, MEDIUM_GAP = 0.05, 0.015  # CER gaps (fraction mapping) for high / medium confidence


@dataclass
class Recommendation:
    order: list[str]
    intensity: IntensityReport
    cer_gaps: list[float | None]  # between consecutive methods of the recommended order
    confidence: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        rows = [
            {
                "step": m.step,
                "family": m.family,
                "granularity": m.granularity,
                "value": m.run.value,
                "metric": m.metric,
                "cer": m.cer.value,
                "cer_status": m.cer.status,
            }
            for m in self.intensity.methods
        ]
        return {
            "order": self.order,
            "confidence": self.confidence,
            "cer_gaps": self.cer_gaps,
            "warnings": self.warnings,
            "metric_name": self.intensity.dense.metric_name,
            "dense_value": self.intensity.dense.value,
            "methods": rows,
            "curve": {"bits": self.intensity.curve.bits, "metric": self.intensity.curve.metric},
        }


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
        name = label(m.step)
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


def strength(run: Run) -> float:
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
