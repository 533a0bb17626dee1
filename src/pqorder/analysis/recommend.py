"""The recommendation: which order to use, how sure that is, and what it rests on.

Two signals, both shown. **Weaker first** (the Progressive Intensity Hypothesis) orders the
methods by measured intensity (M alone, higher = weaker = earlier), with a confidence from the
smallest CER gap between consecutive methods. **The predictor** (``pqorder.analysis.predictor``)
predicts A(Q→P) of every pruning × quantization pair from both orders applied unit by unit
on calibration statistics, with a 90 % interval and the probability its order is the better
one. The recommended order follows the predictor where it has features (each method's count of
pairs it is predicted to precede, ties and other pairs by weaker first) and weaker first
elsewhere, saying so. The verdict is "confident" only when every predicted pair is; otherwise
it names the cost of measuring instead (``pqorder search``). Cost: the n methods alone and the
dense model (n + 1 evaluations) plus one calibration pass and the unit solves. Known regimes
are named: collapse zones, Harma's case (magnitude × min-max RTN), rotation before pruning.
Recovery steps (LoRA) are not compressions, so neither signal ranks them: ``place_recovery``
puts them where their update survives (see there), in both orders shown.
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
from pqorder.analysis.predictor import Prediction, PredictorFit, predict_pair
from pqorder.errors import ConfigError, check_format
from pqorder.local_errors import is_local
from pqorder.methods.base import Method
from pqorder.pipeline import STEP_SEPARATOR, label
from pqorder.store import Measurement, m_text, v1_direction
from pqorder.study import Study
from pqorder.tables import Table, cell

HIGH_GAP, MEDIUM_GAP = 0.05, 0.015  # CER gaps (fraction mapping) for high / medium confidence
FORMAT = 3  # version of Recommendation.to_dict (2: no predictor; 1: no labels; read as well)


@dataclass(frozen=True)
class PairCall:
    """The predictor's answer for one pruning × quantization pair of the question."""

    prune: str  # step texts
    quant: str
    prediction: Prediction

    def to_dict(self) -> dict:
        return {"prune": self.prune, "quant": self.quant, "prediction": self.prediction.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict) -> PairCall:
        return cls(raw["prune"], raw["quant"], Prediction.from_dict(raw["prediction"]))


@dataclass
class Recommendation:
    order: list[str]  # step texts, the recommended order
    intensity: IntensityReport
    cer_gaps: list[float | None]  # between consecutive compressions of the weaker-first order
    confidence: str  # weaker first's, from the CER gaps
    warnings: list[str] = field(default_factory=list)
    rule_order: list[str] = field(default_factory=list)  # weaker first
    calls: list[PairCall] = field(default_factory=list)
    verdict: str = ""

    def labels(self, steps: Sequence[str]) -> str:
        """Step texts as short labels joined by the separator."""
        labels = {m.step: m.label for m in self.intensity.methods}
        return f" {STEP_SEPARATOR} ".join(labels[s] for s in steps)

    @property
    def order_label(self) -> str:
        """The recommended order in short labels."""
        return self.labels(self.order)

    def prediction_table(self) -> Table:
        """Per pair: the predicted A(Q→P) with its interval, the probability, the evidence."""
        m = m_text(self.intensity.dense.metric_name, self.intensity.dense.direction)
        rows = []
        for call in self.calls:
            pred, local = call.prediction, call.prediction.local
            first = "quantize" if pred.quant_first else "prune"
            interval = "-" if pred.low is None else f"[{cell(pred.low)}, {cell(pred.high)}]"
            rows.append(
                (
                    f"{self.labels([call.prune])} × {self.labels([call.quant])}",
                    first,
                    pred.advantage,
                    interval,
                    pred.confidence,
                    None if local is None else local.log_ratio,
                    "-" if local is None else f"{local.disagreeing}/{local.units}",
                    pred.basis,
                )
            )
        columns = (
            "pair",
            "first",
            f"predicted A(Q→P) [{m}]",
            "90% interval",
            "P(right)",
            "log e_PQ/e_QP",
            "order-dependent units",
            "basis",
        )
        return Table("predicted order advantage", columns, tuple(rows))

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
            "rule_order": self.rule_order,
            "calls": [c.to_dict() for c in self.calls],
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> Recommendation:
        """Read ``to_dict``'s form, or formats 1–2 (weaker first only; format 1's labels come
        from the method registry)."""
        version = check_format("recommendation", raw.get("format", 1), (1, 2, FORMAT))
        if version == 1:
            intensity = _intensity_v1(raw)
        else:
            intensity = IntensityReport.from_dict(raw["intensity"])
        return cls(
            raw["order"],
            intensity,
            raw["cer_gaps"],
            raw["confidence"],
            raw["warnings"],
            raw.get("rule_order", raw["order"]),
            [PairCall.from_dict(c) for c in raw.get("calls", [])],
            raw.get("verdict", ""),
        )


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
    if not gaps:
        return "not applicable (one compression method)"
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
        if not m.cer.in_range and m.family not in ("quantize", "recover"):
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
    for p in prunes:
        for q in quants:
            if p.name == "magnitude" and q.name == "rtn":
                out.append(
                    f"Harma's case: {p.label()} × {q.label()} is magnitude pruning with a "
                    f"min-max quantizer, where pruning first is provably at least as good "
                    f"(Harma et al., 2025)"
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


def place_recovery(order: Sequence[Method]) -> list[Method]:
    """``order`` with its recovery steps (family ``recover``) moved to where they help: right
    before the first quantizer, where a merged update survives (after a quantizer the merge
    re-projects the update onto that grid, and at 4 bits none of it was kept; measured in
    notes/issue13-lora.md), or last when no quantizer follows. A step that must be last
    (``last_only``, e.g. adapters kept unmerged) goes last."""
    last = [s for s in order if s.last_only() is not None]
    recover = [s for s in order if s.family == "recover" and s not in last]
    rest = [s for s in order if s not in last and s not in recover]
    first_quant = next((i for i, s in enumerate(rest) if s.family == "quantize"), len(rest))
    return rest[:first_quant] + recover + rest[first_quant:] + last


def weaker_first(study: Study, steps: Sequence[Method]) -> list[Method]:
    """The PIH order from each method alone (no reference curve needed); recovery steps are
    placed by ``place_recovery``, not by their (negative) intensity."""
    return place_recovery(sorted(steps, key=lambda s: strength(study.evaluate((s,)))))


def _pair_calls(
    study: Study, steps: Sequence[Method], prior: PredictorFit | None, every: int
) -> tuple[list[PairCall], list[str]]:
    """The predictor on every pruning × quantization pair (notes for pairs it cannot read)."""
    calls, notes = [], []
    for p in (s for s in steps if s.family == "prune"):
        for q in (s for s in steps if s.family == "quantize"):
            if not (is_local(p) and is_local(q)):
                whole = p if not is_local(p) else q
                notes.append(
                    f"no predictor for {p.label()} × {q.label()}: {whole.label()} changes the "
                    f"model as a whole (no unit-by-unit form); weaker first decides that pair"
                )
                continue
            prediction = predict_pair(study, study.unit_samples(every), p, q, prior)
            calls.append(PairCall(p.to_text(), q.to_text(), prediction))
    if calls and prior is None:
        notes.append("the predictor has no fit (no prior): it gives the order but no confidence")
    elif calls:
        base = (
            ""
            if prior.prune_first is None
            else f"; pruning first was the better order at {prior.prune_first:.0%} of them"
        )
        notes.append(f"predictor fit: {prior.points} pairs of {prior.source}{base}")
    notes += [
        f"no predictor for {s.label()} (family {s.family}: it predicts pruning × quantization "
        f"pairs only); weaker first places it"
        for s in steps
        if s.family in ("share", "rotate")
    ]
    return calls, notes


def _predicted_order(rule: list[Method], calls: Sequence[PairCall]) -> list[Method]:
    """Each method's count of pairs it is predicted to go first in; ties by weaker first."""
    wins = dict.fromkeys((s.to_text() for s in rule), 0)
    decided = set()
    for call in calls:
        first = call.quant if call.prediction.quant_first else call.prune
        wins[first] += 1
        decided.add(frozenset((call.prune, call.quant)))
    for a, b in itertools.combinations([s.to_text() for s in rule], 2):
        if frozenset((a, b)) not in decided:
            wins[a] += 1  # weaker first: ``rule`` lists the weaker one first
    return sorted(rule, key=lambda s: (-wins[s.to_text()], rule.index(s)))


def _verdict(study: Study, steps: Sequence[Method], calls: Sequence[PairCall]) -> str:
    """ "confident" when every predicted pair is; else the cost of measuring every order."""
    if calls and all(c.prediction.confident for c in calls):
        return "confident: use this order"
    missing = [
        order
        for order in itertools.permutations(steps)
        if study.store is None or study.store.get(study.run_key(order)) is None
    ]
    return (
        f"uncertain: run `pqorder search` (costs {len(missing)} evaluation"
        f"{'s' if len(missing) != 1 else ''})"
    )


def recommend(
    study: Study,
    steps: Sequence[Method],
    options: CurveOptions | None = None,
    collapse_factor: float = 3.0,
    prior: PredictorFit | None = None,
    every: int = 5,
) -> Recommendation:
    """Measure each method alone, predict every pruning × quantization pair, recommend.

    ``prior`` is the predictor's fit (default: the one shipped, fitted on the validation grid);
    ``every`` samples the units of every k-th block for the local errors.
    """
    if len(steps) < 2:
        raise ConfigError("an order question needs at least two methods")
    if collapse_factor <= 1:
        raise ConfigError(f"collapse factor must exceed 1, got {collapse_factor}")
    if every < 1:
        raise ConfigError(f"every must be at least 1, got {every}")
    report = measure_intensity(study, steps, options)
    if all(m.run.ok and m.run.value == report.dense.value for m in report.methods):
        raise ConfigError("none of the methods changes the model: there is no order to choose")
    compressions = [i for i, s in enumerate(steps) if s.family != "recover"]
    if not compressions:
        raise ConfigError("recovery steps alone have no order to choose: add a compression method")
    ranked = sorted(compressions, key=lambda i: strength(report.methods[i].run))
    rule = [steps[i] for i in ranked]
    gaps = []
    for a, b in itertools.pairwise(ranked):
        ca, cb = report.methods[a].cer, report.methods[b].cer
        gaps.append(cb.value - ca.value if ca.in_range and cb.in_range else None)
    warnings = _warnings(report, steps, collapse_factor)
    prior = prior or PredictorFit.load(kind=study.lm.kind)
    calls, notes = _pair_calls(study, steps, prior, every)
    order = place_recovery(_predicted_order(rule, calls) + [s for s in steps if s not in rule])
    notes += [
        f"{s.label()} is a recovery step, not a compression: placed "
        + (
            "last (it must be)"
            if s.last_only()
            else "right before the first quantizer, where its "
            "merged update survives the grid (or last without one)"
        )
        for s in steps
        if s.family == "recover"
    ]
    return Recommendation(
        [s.to_text() for s in order],
        report,
        gaps,
        _confidence(gaps),
        warnings + notes,
        [s.to_text() for s in place_recovery(rule + [s for s in steps if s not in rule])],
        calls,
        _verdict(study, steps, calls),
    )
