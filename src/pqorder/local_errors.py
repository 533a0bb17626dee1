"""Both orders of a pair applied unit by unit: the order's cost without running the model.

For a pruning step P and a quantization step Q that compress each unit on its own, every unit
W (with the Hessian H = 2/n · XᵀX of its dense calibration inputs) is compressed twice — P then
Q, and Q then P — through the methods' own ``compress_unit`` and the composition state's
constraints, exactly as the engine would, but without the layer-wise propagation (each unit
sees the dense model's inputs) and without evaluating the model. The relative
reconstruction error of an order is

    e = Σ_units tr(ΔW H ΔWᵀ) / Σ_units tr(W H Wᵀ),   ΔW = W − W_order,

the layer-wise loss both calibrated methods minimise. log(e_P→Q / e_Q→P) > 0 says quantizing
first leaves the smaller error: the predictor's main feature (``pqorder.analysis.predictor``).

Statistics are collected once per model and calibration set (one forward pass over the blocks
kept by ``every``), and shared by all the pairs asked about, so a grid of pairs costs one pass
plus the unit solves. Model-level methods (rotation, block removal, coupled heads/channels)
have no unit form: asking for them is refused, and the predictor falls back to weaker first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from pqorder.core import LoadedModel, Need
from pqorder.errors import ConfigError
from pqorder.layerwise import calibrated_units
from pqorder.methods.base import Method, UnitMethod
from pqorder.models.adapter import compressible_units, decoder_blocks, get_weight
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


@dataclass(frozen=True)
class UnitSample:
    """One unit's dense weight and calibration statistics."""

    name: str
    weight: Tensor  # (out, in) float32
    stats: UnitStats


@dataclass(frozen=True)
class UnitSamples:
    """The units the local errors are computed on, with what collecting them cost."""

    units: tuple[UnitSample, ...]
    seconds: float


@dataclass(frozen=True)
class LocalOrderErrors:
    """Relative reconstruction error of each order of one pair, over the sampled units."""

    prune_first: float
    quant_first: float
    units: int
    disagreeing: int  # units whose own better order is not the one the total picks
    seconds: float  # the unit solves (statistics not included)

    @property
    def log_ratio(self) -> float:
        """log(e_P→Q / e_Q→P): > 0 when quantizing first leaves the smaller error."""
        return math.log(max(self.prune_first, 1e-30) / max(self.quant_first, 1e-30))


def is_local(step: Method) -> bool:
    """Whether ``step`` has a unit form the local errors can apply."""
    return isinstance(step, UnitMethod)


@torch.no_grad()
def sample_units(
    lm: LoadedModel, tokens: Tensor, every: int = 1, progress: bool = False
) -> UnitSamples:
    """Dense weights and Hessians of the units of every ``every``-th block (one forward pass).

    ``lm`` must hold the dense model (a study's ``materialize(())``).
    """
    if every < 1:
        raise ConfigError(f"every must be at least 1, got {every}")
    start = time.perf_counter()
    path, blocks = decoder_blocks(lm.model)
    kept = {f"{path}.{i}." for i in range(0, len(blocks), every)}
    units = {
        n: m for n, m in compressible_units(lm.model).items() if any(n.startswith(k) for k in kept)
    }
    samples = [
        UnitSample(name, get_weight(module).float().cpu().clone(), stats)
        for name, module, stats in calibrated_units(
            lm.model,
            units,
            tokens,
            progress=progress,
            label="unit statistics",
            placement=lm.placement,
        )
    ]
    return UnitSamples(tuple(samples), time.perf_counter() - start)


def output_energy(delta: Tensor, hessian: Tensor) -> float:
    """tr(Δ H Δᵀ) in float64: n/2 times the squared output error ‖Δ Xᵀ‖² of a weight change."""
    d = delta.double()
    return float(((d @ hessian.double()) * d).sum())


def _apply(steps: tuple[UnitMethod, ...], sample: UnitSample) -> Tensor:
    w, constraint = sample.weight, UnitConstraint()
    for step in steps:
        stats = sample.stats if step.needs >= Need.STATISTICS else None
        w, constraint = step.compress_unit(w.clone(), constraint, stats)
    return w


@torch.no_grad()
def local_order_errors(samples: UnitSamples, prune: Method, quant: Method) -> LocalOrderErrors:
    """e_P→Q and e_Q→P over ``samples`` (see the module docstring)."""
    for step in (prune, quant):
        if not is_local(step):
            raise ConfigError(
                f"{step.label()} changes the model as a whole: it has no unit-by-unit form"
            )
    assert isinstance(prune, UnitMethod) and isinstance(quant, UnitMethod)
    start = time.perf_counter()
    base = pq = qp = 0.0
    per_unit = []
    for sample in samples.units:
        h = sample.stats.hessian
        e_pq = output_energy(sample.weight - _apply((prune, quant), sample), h)
        e_qp = output_energy(sample.weight - _apply((quant, prune), sample), h)
        base += output_energy(sample.weight, h)
        pq, qp = pq + e_pq, qp + e_qp
        per_unit.append(e_pq > e_qp)
    overall = pq > qp
    disagreeing = sum(u != overall for u in per_unit)
    base = max(base, 1e-30)
    return LocalOrderErrors(
        pq / base, qp / base, len(per_unit), disagreeing, time.perf_counter() - start
    )
