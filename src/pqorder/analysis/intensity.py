"""Intensity: each method alone on the model, its gap to the others, and its CER.

M is −perplexity for language models, else accuracy or retrieval top-1 (higher is better).
G(f1, f2) = M(f1) − M(f2): positive when f2 is the stronger perturbation. The reference
curve is quantization alone at several bit-widths with a configurable quantizer;
a quantization step's own CER is its C_Q (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from pqorder.analysis.cer import CER, RatioMapping, ReferenceCurve, Space, quant_ratio
from pqorder.errors import ConfigError
from pqorder.methods.base import Method
from pqorder.pipeline import parse_step
from pqorder.store import Measurement, Run, measured
from pqorder.study import Study


@dataclass(frozen=True)
class CurveOptions:
    """How the CER reference curve is built and read."""

    quantizer: str = "rtn:group=128"  # bits are filled in per point
    bits: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    mapping: RatioMapping = "fraction"
    reference_bits: int = 16
    space: Space = "metric"


@dataclass(frozen=True)
class MethodIntensity:
    step: str  # canonical text
    label: str  # short label for tables
    family: str
    granularity: str
    run: Measurement  # the run of the method alone (a Run while the analysis is live)
    cer: CER

    @property
    def metric(self) -> float | None:
        return self.run.metric

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "label": self.label,
            "family": self.family,
            "granularity": self.granularity,
            "run": measured(self.run),
            "cer": asdict(self.cer),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> MethodIntensity:
        parts = (raw["step"], raw["label"], raw["family"], raw["granularity"])
        return cls(*parts, Measurement(**raw["run"]), CER(**raw["cer"]))


@dataclass
class IntensityReport:
    dense: Measurement
    methods: list[MethodIntensity]
    curve: ReferenceCurve
    non_monotone: list[int] = field(default_factory=list)

    def gap(self, a: int, b: int) -> float:
        """G(f_a, f_b) = M(f_a) − M(f_b)."""
        return self.methods[a].metric - self.methods[b].metric

    def to_dict(self) -> dict:
        return {
            "dense": measured(self.dense),
            "methods": [m.to_dict() for m in self.methods],
            "curve": asdict(self.curve),
            "non_monotone": self.non_monotone,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> IntensityReport:
        curve = raw["curve"]
        return cls(
            Measurement(**raw["dense"]),
            [MethodIntensity.from_dict(m) for m in raw["methods"]],
            ReferenceCurve(
                tuple(curve["bits"]),
                tuple(curve["metric"]),
                curve["mapping"],
                curve["reference_bits"],
                curve["space"],
            ),
            raw["non_monotone"],
        )


def collapsed(run: Measurement, dense: Measurement, factor: float) -> bool:
    """A collapse zone: the value ``factor`` times worse than dense — above ``factor`` × dense
    when lower is better (perplexity), below dense / ``factor`` when higher is (e.g. factor 3:
    top-1 under a third of the dense model's). Failed runs count."""
    if not run.ok:
        return True
    if run.direction == "lower":
        return run.value > factor * dense.value
    return run.value < dense.value / factor


def reference_curve(study: Study, options: CurveOptions) -> ReferenceCurve:
    """Evaluate the reference quantizer at every bit-width (runs are stored and reused)."""
    if options.space == "logppl" and study.protocol.name != "perplexity":
        raise ConfigError(
            f"--space logppl needs a perplexity protocol; this study measures "
            f"{study.protocol.name}: use --space metric"
        )
    metrics = []
    for bits, step in zip(options.bits, reference_steps(options), strict=True):
        run = study.evaluate((step,))
        if not run.ok:
            raise ConfigError(f"reference point {bits} bits failed: {run.error}")
        metrics.append(run.metric)
    return ReferenceCurve(
        tuple(options.bits),
        tuple(metrics),
        options.mapping,
        options.reference_bits,
        options.space,
    )


def reference_steps(options: CurveOptions) -> list[Method]:
    """The reference quantizer at each of the curve's bit-widths."""
    base = parse_step(options.quantizer, {"bits": options.bits[0]})
    if base.family != "quantize":
        raise ConfigError(f"the CER reference '{options.quantizer}' is not a quantization step")
    return [base.with_settings(bits=bits) for bits in options.bits]


def _own_cer(step: Method, run: Run, curve: ReferenceCurve) -> CER:
    if step.family == "quantize":
        bits = step.config.bits
        return CER(quant_ratio(bits, curve.mapping, curve.reference_bits), "ok", run.metric)
    if not run.ok:
        return CER(None, "stronger-than-curve", float("nan"))
    return curve.cer(run.metric)


def measure_intensity(
    study: Study, steps: Sequence[Method], options: CurveOptions | None = None
) -> IntensityReport:
    """Dense, every step alone, and the CER of each from the reference curve."""
    options = options or CurveOptions()
    study.prefetch([(), *((s,) for s in [*reference_steps(options), *steps])])
    dense = study.dense_run()
    curve = reference_curve(study, options)
    methods = []
    for step in steps:
        run = study.evaluate((step,))
        methods.append(
            MethodIntensity(
                step.to_text(),
                step.label(),
                step.family,
                step.granularity,
                run,
                _own_cer(step, run, curve),
            )
        )
    return IntensityReport(dense, methods, curve, curve.non_monotone())


def drop_scale(dense: Measurement, p: Measurement, q: Measurement) -> float | None:
    """s = (M_dense − M_P) + (M_dense − M_Q) from the runs of each method alone (None when one
    of them failed)."""
    if not (dense.ok and p.ok and q.ok):
        return None
    return 2 * dense.metric - p.metric - q.metric


def quant_share(dense: Measurement, q: Measurement, scale: float | None) -> float | None:
    """q = (M_dense − M_Q) / s: the quantizer's part of the two methods' damage (None without
    a scale)."""
    return (dense.metric - q.metric) / scale if scale else None
