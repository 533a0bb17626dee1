"""The one walk over a model's units: every step of every pipeline goes through here."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from pqorder.errors import PqorderError
from pqorder.models.adapter import compressible_units, get_weight, set_weight


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pipeline(lm: Any, pipeline: Any) -> None:
    """Every step can handle every unit: raised before any weight changes."""
    units = compressible_units(lm.model)
    for step in pipeline.steps:
        for name, module in units.items():
            step.method.check_unit(name, tuple(get_weight(module).shape))


@torch.no_grad()
def apply_step(lm: Any, step: Any, progress: bool = True) -> StepRecord:
    """Compress every unit of ``lm`` with ``step`` within the unit's existing constraints."""
    method = step.method
    start = time.perf_counter()
    units = compressible_units(lm.model)
    pruned = total = 0
    bits: set[int] = set()
    for name, module in tqdm(units.items(), desc=step.to_text(), disable=not progress, leave=False):
        w = get_weight(module)
        w_new, constraint = method.compress_unit(w, lm.state.get(name))
        if not torch.isfinite(w_new).all():
            raise PqorderError(f"{step.to_text()} produced NaN/Inf weights in {name}")
        set_weight(module, w_new)
        lm.state.set(name, constraint)
        total += w.numel()
        pruned += 0 if constraint.mask is None else int((~constraint.mask).sum())
        if constraint.grid is not None:
            bits.add(constraint.grid.bits)
    return StepRecord(
        step=step.to_text(),
        family=method.family,
        granularity=method.granularity,
        seconds=time.perf_counter() - start,
        units=len(units),
        sparsity=pruned / max(total, 1),
        bits=min(bits) if bits else None,
    )
