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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pipeline(lm: Any, pipeline: Any) -> None:
    """Every step can handle every unit: raised before any weight changes."""
    units = compressible_units(lm.model)
    for step in pipeline.steps:
        for name, module in units.items():
            step.method.check_unit(name, unit_shape(module))


def _walk(
    lm: Any, step: Any, calibration: Tensor | None, progress: bool, sequential: bool
) -> Iterator[tuple[str, nn.Module, UnitStats | None]]:
    units = compressible_units(lm.model)
    if not step.method.needs_calibration:
        bar = tqdm(units.items(), desc=step.to_text(), disable=not progress, leave=False)
        return ((name, module, None) for name, module in bar)
    if calibration is None:
        raise ConfigError(f"{step.name} needs calibration data (a CalibrationSpec)")
    return calibrated_units(
        lm.model,
        units,
        calibration,
        sequential=sequential,
        progress=progress,
        label=step.to_text(),
    )


@torch.no_grad()
def apply_step(
    lm: Any,
    step: Any,
    calibration: Tensor | None = None,
    progress: bool = True,
    sequential: bool = False,
) -> StepRecord:
    """Compress every unit of ``lm`` with ``step`` within the unit's existing constraints.

    ``calibration`` is a (n_samples, seqlen) token tensor, required by calibrated methods.
    """
    method = step.method
    start = time.perf_counter()
    pruned = total = count = 0
    bits: set[int] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, module, stats in _walk(lm, step, calibration, progress, sequential):
            w = get_weight(module)
            w_new, constraint = method.compress_unit(w, lm.state.get(name), stats)
            if not torch.isfinite(w_new).all():
                raise PqorderError(f"{step.to_text()} produced NaN/Inf weights in {name}")
            set_weight(module, w_new)
            lm.state.set(name, constraint)
            count += 1
            total += w.numel()
            pruned += 0 if constraint.mask is None else int((~constraint.mask).sum())
            if constraint.grid is not None:
                bits.add(constraint.grid.bits)
        method.finish(lm, calibration)
    for warning in caught:
        warnings.warn(warning.message, stacklevel=2)
    return StepRecord(
        step=step.to_text(),
        family=method.family,
        granularity=method.granularity,
        seconds=time.perf_counter() - start,
        units=count,
        sparsity=pruned / max(total, 1),
        bits=min(bits) if bits else None,
        notes=[str(w.message) for w in caught],
    )
