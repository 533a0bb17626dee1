"""Predicting the order advantage of a pruning/quantization pair without running both orders.

The evidence a user has paid for anyway is each method alone (intensity needs it) and one
calibration pass. From the latter, ``pqorder.local_errors`` applies both orders unit
by unit and gives x = log(e_P→Q / e_Q→P); from the former comes the quantizer's share of the
damage q = (M_dense − M_Q) / s. The predictor reads the relative advantage

    r = A(Q→P) / s,   s = (M_dense − M_P) + (M_dense − M_Q)   (the drops of the methods alone)

as r ≈ a · x + b · q, with Gaussian residuals of spread σ fitted on measured pairs (the
validation grid, ``benchmarks/pih_grid.py``). No intercept: equal local errors and a harmless
quantizer favour neither order (an intercept fitted on some families is a constant rule in
disguise). The share is the intensity signal weaker first reads, learnt instead of assumed:
on SmolLM2's grid b < 0 (the more of the damage the quantizer does, the better pruning first),
and adding it raised the held-out ρ from 0.32 to 0.52 (``benchmarks/pih_features.py``). So
A(Q→P) ≈ s · r, with the interval s · (r ± z σ), and P(Q→P is better) = Φ(r / σ). Dividing
by s puts pairs of different strength and models with different metrics on one scale.

Without a fit the sign of x still predicts the order, but no confidence can be given. A pair
with a model-level method (rotation, block removal, coupled heads/channels) has no local
errors: the prediction falls back to weaker first and says so.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pqorder.analysis.intensity import drop_scale, quant_share
from pqorder.analysis.sweep import SweepPoint, spearman
from pqorder.analysis.validation import family_of, usable
from pqorder.atomic import atomic_output
from pqorder.errors import ConfigError, check_format
from pqorder.local_errors import LocalOrderErrors, UnitSamples, local_order_errors
from pqorder.methods.base import Method
from pqorder.plotting import figure
from pqorder.study import Study
from pqorder.tables import Table

PRIOR = Path(__file__).with_name("predictor_prior.json")  # fitted on the validation grid
PRIOR_FORMAT = 2  # {"format", "fits": {model kind: fit}}; a file of one bare fit is read too
Z90 = 1.6449  # two-sided 90 % normal interval
CONFIDENT = 0.9  # a sign probability at or above this is "confident"


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class PairEvidence:
    """What the predictor reads about one pair (and, on the grid, what was measured)."""

    family: str  # pair family (``validation.family_of``)
    log_ratio: float  # x = log(e_P→Q / e_Q→P)
    scale: float  # s = drop of P alone + drop of Q alone, in M units (> 0)
    advantage: float | None = None  # measured A(Q→P), when known
    quant_share: float = 0.0  # q = drop of Q alone / s

    @property
    def relative(self) -> float | None:
        return None if self.advantage is None else self.advantage / self.scale


def predictable(p: SweepPoint) -> bool:
    """Whether a sweep point is evidence: usable, with local errors, a positive scale and its
    quantizer's share."""
    return (
        usable(p)
        and p.local_log_ratio is not None
        and (p.scale or 0.0) > 0
        and p.quant_share is not None
    )


def sweep_evidence(points: Sequence[SweepPoint]) -> list[PairEvidence]:
    """The evidence of every predictable sweep point."""
    return [
        PairEvidence(family_of(p), p.local_log_ratio, p.scale, p.advantage_q_first, p.quant_share)
        for p in points
        if predictable(p)
    ]


@dataclass(frozen=True)
class PredictorFit:
    """r ≈ slope · x + share_slope · q with residual spread σ, fitted on ``points`` measured
    pairs; with the base rate of the constant rule "prune first" on them, which a prediction
    has to beat. (Fits saved before the share was a feature read with share_slope 0.)"""

    slope: float
    sigma: float
    points: int
    source: str  # what it was fitted on (grid, protocol)
    prune_first: float | None = None  # share of those pairs where pruning first was better
    share_slope: float = 0.0

    def relative(self, log_ratio: float, quant_share: float) -> float:
        return self.slope * log_ratio + self.share_slope * quant_share

    def save(self, path: Path, kind: str | None = None) -> Path:
        """Write the fit to ``path``: alone (it then serves every model kind), or as the fit of
        one model ``kind`` next to the other kinds' fits already in the file."""
        if kind is None:
            payload: dict = asdict(self)
        else:
            fits = _read(path).get("fits", {}) if path.is_file() else {}
            payload = {"format": PRIOR_FORMAT, "fits": {**fits, kind: asdict(self)}}
        with atomic_output(path, directory=False) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path = PRIOR, kind: str | None = None) -> PredictorFit | None:
        """The fit at ``path`` (the shipped prior by default) for models of ``kind``; None
        when there is none (a file of one fit serves every kind)."""
        if not path.is_file():
            return None
        raw = _read(path)
        if "fits" not in raw:
            return cls(**raw)
        check_format("predictor prior", raw.get("format"), (PRIOR_FORMAT,))
        found = raw["fits"].get(kind) if kind is not None else None
        return cls(**found) if found is not None else None


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def fit(points: Sequence[PairEvidence], source: str) -> PredictorFit:
    """Least squares of r on (x, q) without intercept over measured pairs (at least three)."""
    kept = [p for p in points if p.relative is not None and p.scale > 0]
    if len(kept) < 3:
        raise ConfigError(f"a predictor needs at least 3 measured pairs to fit, got {len(kept)}")
    features = np.array([(p.log_ratio, p.quant_share) for p in kept])
    r = np.array([p.relative for p in kept])
    (slope, share_slope), *_ = np.linalg.lstsq(features, r, rcond=None)
    residual = r - features @ (slope, share_slope)
    sigma = math.sqrt(float(residual @ residual) / (len(kept) - 2)) or 1e-12
    base = float(np.mean(r < 0))
    return PredictorFit(float(slope), sigma, len(kept), source, base, float(share_slope))


@dataclass(frozen=True)
class Prediction:
    """The predicted A(Q→P) of one pair, its 90 % interval and the sign's probability."""

    advantage: float | None  # None without a fit (sign only)
    low: float | None
    high: float | None
    p_quant_first: float | None  # P(Q→P is better); None without a fit
    quant_first: bool  # the predicted better order
    basis: str  # "local errors and quantizer share (fit …)", "local errors (no fit: sign only)"
    local: LocalOrderErrors | None = None

    @property
    def confidence(self) -> float | None:
        """The probability the predicted order is the better one."""
        p = self.p_quant_first
        return None if p is None else max(p, 1.0 - p)

    @property
    def confident(self) -> bool:
        return self.confidence is not None and self.confidence >= CONFIDENT

    def to_dict(self) -> dict:
        raw = asdict(self)
        raw["local"] = None if self.local is None else asdict(self.local)
        return raw

    @classmethod
    def from_dict(cls, raw: dict) -> Prediction:
        local = raw.get("local")
        return cls(**{**raw, "local": None if local is None else LocalOrderErrors(**local)})


def predict(
    local: LocalOrderErrors, scale: float, quant_share: float, prior: PredictorFit | None
) -> Prediction:
    """A(Q→P) from the local errors, the drops of the methods alone (``scale``) and the
    quantizer's share of them."""
    x = local.log_ratio
    if prior is None or scale <= 0:
        why = "no fit" if prior is None else "the methods alone do not worsen the metric"
        return Prediction(None, None, None, None, x > 0, f"local errors ({why}: sign only)", local)
    r = prior.relative(x, quant_share)
    half = Z90 * prior.sigma
    p = normal_cdf(r / prior.sigma)
    basis = f"local errors and quantizer share (fit on {prior.points} pairs)"
    return Prediction(scale * r, scale * (r - half), scale * (r + half), p, r > 0, basis, local)


def predict_pair(
    study: Study, samples: UnitSamples, prune: Method, quant: Method, prior: PredictorFit | None
) -> Prediction:
    """The predicted A(Q→P) of one pair on ``study``'s model (both methods unit-wise)."""
    dense, alone_p, alone_q = study.dense_run(), study.evaluate((prune,)), study.evaluate((quant,))
    scale = drop_scale(dense, alone_p, alone_q) or 0.0
    share = quant_share(dense, alone_q, scale) or 0.0  # unread when the scale is not positive
    return predict(local_order_errors(samples, prune, quant), scale, share, prior)


# -- honest evaluation --------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    """One family's points predicted by a fit on every other family."""

    family: str
    predicted: tuple[float, ...]  # predicted A(Q→P) per point
    measured: tuple[float, ...]  # measured A(Q→P)
    stated: tuple[float, ...]  # the confidence stated for the predicted order
    scales: tuple[float, ...]  # s per point (the methods' drops alone, summed)

    @property
    def right(self) -> tuple[bool, ...]:
        """Whether the predicted order was the measured-better one, per point."""
        return tuple((p > 0) == (m > 0) for p, m in zip(self.predicted, self.measured, strict=True))


def leave_one_family_out(points: Sequence[PairEvidence]) -> list[HeldOut]:
    """Fit on all families but one, predict that one; for every family with measured points."""
    out = []
    for family in sorted({p.family for p in points}):
        train = [p for p in points if p.family != family]
        test = [p for p in points if p.family == family and p.advantage is not None]
        if len(train) < 3 or not test:
            continue
        model = fit(train, f"all families but {family}")
        r_hat = [model.relative(p.log_ratio, p.quant_share) for p in test]
        out.append(
            HeldOut(
                family,
                tuple(r * p.scale for r, p in zip(r_hat, test, strict=True)),
                tuple(p.advantage for p in test),
                tuple(max(q, 1 - q) for q in (normal_cdf(r / model.sigma) for r in r_hat)),
                tuple(p.scale for p in test),
            )
        )
    return out


def held_out_table(results: Sequence[HeldOut]) -> Table:
    """Per held-out family and over all of them: sign accuracy, ρ(predicted A, A) and the
    share of Σ|A| at the points where the predicted order was the worse one ("A lost": what
    following it would have cost, against the best order everywhere)."""
    rows = []
    for name, group in [(h.family, [h]) for h in results] + [("all (held out)", list(results))]:
        predicted = [a for h in group for a in h.predicted]
        measured = [a for h in group for a in h.measured]
        right = [r for h in group for r in h.right]
        lost = sum(abs(m) for m, r in zip(measured, right, strict=True) if not r)
        total = sum(abs(m) for m in measured)
        if right:
            rows.append(
                (
                    name,
                    len(right),
                    sum(right) / len(right),
                    spearman(predicted, measured),
                    lost / total if total else None,
                )
            )
    return Table(
        "predictor, leave one family out",
        ("held-out family", "points", "sign right", "ρ(pred A, A)", "A lost"),
        tuple(rows),
    )


def calibration_table(
    results: Sequence[HeldOut], bins: Sequence[float] = (0.5, 0.7, 0.9, 1.0)
) -> Table:
    """Stated confidence against how often the held-out predictions were right."""
    pairs = [(s, r) for h in results for s, r in zip(h.stated, h.right, strict=True)]
    rows = []
    for low, high in itertools.pairwise(bins):
        inside = [(s, r) for s, r in pairs if low <= s < high or s == high == bins[-1]]
        n = len(inside)
        rows.append(
            (
                f"{low:.1f}–{high:.1f}",
                n,
                sum(s for s, _ in inside) / n if n else None,
                sum(r for _, r in inside) / n if n else None,
            )
        )
    return Table(
        "predictor calibration (held-out points)",
        ("stated confidence", "points", "mean stated", "right"),
        tuple(rows),
    )


def magnitude_table(
    results: Sequence[HeldOut], edges: Sequence[float] = (0.0, 0.05, 0.2, 0.5, math.inf)
) -> Table:
    """Held-out sign accuracy by how much the order mattered, |A| / s: a wrong sign where
    the two orders differ by a few per cent of the methods' own drops costs little, and
    such small differences are also the ones the evaluation resolves worst."""
    pairs = [
        (abs(m) / s, r)
        for h in results
        for m, s, r in zip(h.measured, h.scales, h.right, strict=True)
    ]
    rows = []
    for low, high in itertools.pairwise(edges):
        inside = [r for size, r in pairs if low <= size < high]
        label = f"≥ {low:g}" if math.isinf(high) else f"{low:g}–{high:g}"
        rows.append((label, len(inside), sum(inside) / len(inside) if inside else None))
    return Table(
        "predictor by how much the order mattered (held-out points)",
        ("|A| / s", "points", "sign right"),
        tuple(rows),
    )


def plot_predicted(points: Sequence[PairEvidence], prior: PredictorFit, path: Path) -> Path:
    """Predicted against measured A(Q→P), one colour per pair family, with the 90 % band."""
    with figure(path, (6.5, 5)) as ax:
        for family in sorted({p.family for p in points}):
            kept = [p for p in points if p.family == family and p.advantage is not None]
            predicted = [p.scale * prior.relative(p.log_ratio, p.quant_share) for p in kept]
            ax.errorbar(
                predicted,
                [p.advantage for p in kept],
                xerr=[Z90 * prior.sigma * p.scale for p in kept],
                fmt="o",
                ms=4,
                lw=0.6,
                label=family,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("predicted A(Q→P)  (90 % interval)")
        ax.set_ylabel("measured A(Q→P)")
        ax.set_title("predicted order right: top-right and bottom-left quadrants", fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return path
