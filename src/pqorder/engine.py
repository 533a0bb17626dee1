"""The one walk over a model's units: every step of every pipeline goes through here."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pqorder.errors import ConfigError, PqorderError
from pqorder.layerwise import calibrated_units
from pqorder.methods.base import ModelMethod, ModelOutcome, UnitMethod
from pqorder.models.adapter import compressible_units, get_weight, set_weight, unit_shape
from pqorder.stats import UnitStats


@dataclass
class StepRecord:
    """What one step did: its text form, cost, and the constraints the model now satisfies."""

    step: str
    family: str
    granularity: str
    seconds: float
    units: int
    sparsity: float  # fraction of pruned weights over the touched units (from the masks)
    bits: int | None  # bit-width of the grid the touched units now lie on, if any
    notes: list[str] = field(default_factory=list)  # warnings raised while compressing
    details: dict[str, Any] = field(default_factory=dict)  # model-level facts (removed blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pipeline(lm: Any, pipeline: Any) -> None:
    """Every step can handle every unit and follow the steps before it: raised before work."""
    units = compressible_units(lm.model)
    for i, step in enumerate(pipeline.steps):
        step.method.check_composition(lm, [s.method for s in pipeline.steps[:i]])
        for name, module in units.items():
            step.method.check_unit(name, unit_shape(module))


def _walk(
    lm: Any,
    method: UnitMethod,
    label: str,
    calibration: Tensor | None,
    progress: bool,
    sequential: bool,
) -> Iterator[tuple[str, nn.Module, UnitStats | None]]:
    units = compressible_units(lm.model)
    if not method.needs_calibration:
        bar = tqdm(units.items(), desc=label, disable=not progress, leave=False)
        return ((name, module, None) for name, module in bar)
    if calibration is None:
        raise ConfigError(f"{method.name} needs calibration data (a CalibrationSpec)")
    return calibrated_units(
        lm.model, units, calibration, sequential=sequential, progress=progress, label=label
    )


def compress_units(
    lm: Any,
    method: UnitMethod,
    label: str,
    calibration: Tensor | None,
    progress: bool,
    sequential: bool,
) -> ModelOutcome:
    """Run a unit method over every unit, each within its existing constraint."""
    touched = []
    for name, module, stats in _walk(lm, method, label, calibration, progress, sequential):
        w_new, constraint = method.compress_unit(get_weight(module), lm.state.get(name), stats)
        if not torch.isfinite(w_new).all():
            raise PqorderError(f"{label} produced NaN/Inf weights in {name}")
        set_weight(module, w_new)
        lm.state.set(name, constraint)
        touched.append(name)
    method.finish(lm, calibration)
    return ModelOutcome(touched)


@torch.no_grad()
def apply_step(
    lm: Any,
    step: Any,
    calibration: Tensor | None = None,
    progress: bool = True,
    sequential: bool = False,
) -> StepRecord:
    """Apply ``step`` to ``lm`` in place, within the constraints earlier steps established.

    ``calibration`` is a (n_samples, seqlen) token tensor, required by calibrated methods.
    """
    method = step.method
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(method, ModelMethod):
            outcome = method.apply(lm, calibration, progress, sequential)
        else:
            outcome = compress_units(lm, method, step.to_text(), calibration, progress, sequential)
    for warning in caught:
        warnings.warn(warning.message, stacklevel=2)
    units = compressible_units(lm.model)
    touched = [n for n in outcome.touched if n in units]
    total = sum(units[n].weight.numel() for n in touched)
    pruned = sum(int((~lm.state.get(n).kept(units[n].weight)).sum()) for n in touched)
    bits = {g.bits for n in touched if (g := lm.state.get(n).grid) is not None}
    return StepRecord(
        step=step.to_text(),
        family=method.family,
        granularity=method.granularity,
        seconds=time.perf_counter() - start,
        units=len(touched),
        sparsity=pruned / max(total, 1),
        bits=min(bits) if bits else None,
        notes=[str(w.message) for w in caught],
        details=outcome.details,
    )
