"""Intensity: each method alone on the model, its gap to the others, and its CER.

M is −perplexity for language models, else accuracy or retrieval top-1 (higher is better).
G(f1, f2) = M(f1) − M(f2): positive when f2 is the stronger perturbation. The reference
curve is quantization alone at several bit-widths with a configurable quantizer;
a quantization step's own CER is its C_Q (SPEC §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pqorder.analysis.cer import CER, RatioMapping, ReferenceCurve, Space, quant_ratio
from pqorder.errors import ConfigError
from pqorder.methods.base import Method
from pqorder.pipeline import parse_step
from pqorder.store import Run
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
    step: str
    family: str
    granularity: str
    run: Run
    cer: CER

    @property
    def metric(self) -> float | None:
        return self.run.metric


@dataclass
class IntensityReport:
    dense: Run
    methods: list[MethodIntensity]
    curve: ReferenceCurve
    non_monotone: list[int] = field(default_factory=list)

    def gap(self, a: int, b: int) -> float:
        """G(f_a, f_b) = M(f_a) − M(f_b)."""
        return self.methods[a].metric - self.methods[b].metric


def collapsed(run: Run, dense: Run, factor: float) -> bool:
    """A collapse zone: perplexity above ``factor`` × dense, or accuracy-like M below dense /
    ``factor`` (e.g. factor 3: top-1 under a third of the dense model's). Failed runs count."""
    if not run.ok:
        return True
    if run.perplexity is not None and dense.perplexity is not None:
        return run.perplexity > factor * dense.perplexity
    return run.metric < dense.metric / factor


def reference_curve(study: Study, options: CurveOptions) -> ReferenceCurve:
    """Evaluate the reference quantizer at every bit-width (runs are stored and reused)."""
    if options.space == "logppl" and study.protocol.name != "perplexity":
        raise ConfigError(
            f"--space logppl needs a perplexity protocol; this study measures "
            f"{study.protocol.name}: use --space metric"
        )
    base = parse_step(options.quantizer, {"bits": options.bits[0]})
    if base.family != "quantize":
        raise ConfigError(f"the CER reference '{options.quantizer}' is not a quantization step")
    metrics = []
    for bits in options.bits:
        run = study.evaluate((base.with_settings(bits=bits),))
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
    dense = study.dense_run()
    curve = reference_curve(study, options)
    methods = []
    for step in steps:
        run = study.evaluate((step,))
        methods.append(
            MethodIntensity(
                step.to_text(),
                step.family,
                step.granularity,
                run,
                _own_cer(step, run, curve),
            )
        )
    return IntensityReport(dense, methods, curve, curve.non_monotone())
