"""The one walk over a model's units: every step of every pipeline goes through here."""

from __future__ import annotations

import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pqorder.core import JSON, LoadedModel, ModelOutcome, Need, StepContext
from pqorder.errors import ConfigError, OrderError, PqorderError
from pqorder.hardware import CPU
from pqorder.layerwise import calibrated_units
from pqorder.methods.base import Method, ModelMethod, UnitMethod
from pqorder.models.adapter import compressible_units, get_weight, set_weight, unit_shape
from pqorder.models.architecture import architecture
from pqorder.stats import UnitStats


@dataclass
class StepRecord:
    """What one step did: its text form, cost, and the constraints the model now satisfies."""

    step: str
    family: str
    granularity: str
    seconds: float
    units: int
    # fraction of pruned weights over the touched units (from the masks); a pruner or a
    # quantizer touches every unit, so this is the model's sparsity after the step
    sparsity: float
    bits: int | None  # bit-width of the grid the touched units now lie on, if any
    notes: list[str] = field(default_factory=list)  # warnings raised while compressing
    details: JSON = field(default_factory=dict)  # model-level facts (removed blocks)
    label: str = ""  # the step's short label, kept so reports never re-parse the text

    def to_dict(self) -> JSON:
        return asdict(self)


def check_pipeline(lm: LoadedModel, steps: Sequence[Method]) -> None:
    """Every step can handle every unit and follow the steps before it: raised before work."""
    units = compressible_units(lm.model)
    arch = architecture(lm.model)
    for i, step in enumerate(steps):
        if lm.kind not in step.kinds:
            config = getattr(lm.model, "config", None)
            what = getattr(config, "model_type", None) or type(lm.model).__name__
            raise ConfigError(
                f"{step.name} works on {' and '.join(sorted(step.kinds))} models; "
                f"{lm.name} is a {lm.kind} model ({what})"
            )
        for capability in sorted(step.capabilities):
            arch.check(capability, step.name)
        check_factors(lm, step, steps[:i])
        step.check_composition(lm, list(steps[:i]))
        if lm.state.model.adapters is not None:
            raise OrderError(
                f"{step.name} cannot follow the model's unmerged LoRA adapters: merge them "
                "(lora:merge=true) or compress before the lora step"
            )
        for earlier in steps[:i]:
            if (reason := earlier.last_only()) is not None:
                raise OrderError(f"{step.name} cannot follow {earlier.label()}: {reason}")
        for name, module in units.items():
            step.check_unit(name, unit_shape(module))


def check_factors(lm: LoadedModel, step: Method, earlier: Sequence[Method]) -> None:
    """OrderError unless ``step`` can work on units an earlier step factored (share)."""
    factored = [s.name for s in earlier if s.factors]
    if lm.state.model.factoring is not None:
        factored.insert(0, "the loaded model's shared factors")
    if factored and not step.works_on_factors:
        raise OrderError(
            f"{step.name} cannot follow {', '.join(factored)}: the projections are now basis and "
            f"coefficient factors, which {step.name} does not handle; run it before sharing "
            "(pruning and quantization after sharing work on the factors)"
        )


def needs(steps: Sequence[Method]) -> Need:
    """The most any of ``steps`` needs from calibration."""
    return max((s.needs for s in steps), default=Need.NOTHING)


def _walk(
    ctx: StepContext, method: UnitMethod, label: str, only: Collection[str] | None = None
) -> Iterator[tuple[str, nn.Module, UnitStats | None]]:
    units = compressible_units(ctx.lm.model)
    if only is not None:
        units = {name: module for name, module in units.items() if name in only}
    if method.needs < Need.STATISTICS:
        bar = tqdm(units.items(), desc=label, disable=not ctx.progress, leave=False)
        return ((name, module, None) for name, module in bar)
    return calibrated_units(
        ctx.lm.model,
        units,
        ctx.calibration,
        sequential=ctx.sequential,
        progress=ctx.progress,
        label=label,
        placement=ctx.lm.placement,
    )


def _compress_units(
    ctx: StepContext, method: UnitMethod, label: str, only: Collection[str] | None = None
) -> ModelOutcome:
    """Run a unit method over every unit (or the units named in ``only``), each within its
    existing constraint.

    The method sees the weight in float32 on the placement's device (its constraint moved
    there too); the result is written back in the model's dtype and the constraint is kept in
    host memory.
    """
    lm = ctx.lm
    device = lm.placement.device
    touched = []
    for name, module, stats in _walk(ctx, method, label, only):
        w = get_weight(module).to(device)
        w_new, constraint = method.compress_unit(w, lm.state.get(name).to(device), stats)
        if not torch.isfinite(w_new).all():
            raise PqorderError(f"{label} produced NaN/Inf weights in {name}")
        set_weight(module, w_new)
        lm.state.set(name, constraint.to(CPU))
        touched.append(name)
    method.finish(ctx)
    return ModelOutcome(touched)


def step_context(
    lm: LoadedModel, calibration: Tensor | None, progress: bool = True, sequential: bool = False
) -> StepContext:
    """The context a step runs in, with the engine's unit walk plugged in."""

    def run_units(
        method: UnitMethod, label: str, only: Collection[str] | None = None
    ) -> ModelOutcome:
        return _compress_units(ctx, method, label, only)

    ctx = StepContext(lm, calibration, run_units, progress, sequential)
    return ctx


@torch.no_grad()
def apply_step(
    lm: LoadedModel,
    step: Method,
    calibration: Tensor | None = None,
    progress: bool = True,
    sequential: bool = False,
) -> StepRecord:
    """Apply ``step`` to ``lm`` in place, within the constraints earlier steps established.

    ``calibration`` holds the calibration samples ((n, seqlen) tokens or (n, C, H, W) images),
    required by steps that need inputs or statistics.
    """
    check_pipeline(lm, [step])  # a direct call is checked like a pipeline's first step
    if step.needs > Need.NOTHING and calibration is None:
        raise ConfigError(f"{step.name} needs calibration data (a CalibrationSpec)")
    ctx = step_context(lm, calibration, progress, sequential)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(step, ModelMethod):
            outcome = step.apply(ctx)
        else:
            outcome = ctx.compress_units(step, step.to_text())
    for warning in caught:
        warnings.warn(warning.message, stacklevel=2)
    units = compressible_units(lm.model)
    touched = [n for n in outcome.touched if n in units]
    total = sum(units[n].weight.numel() for n in touched)
    pruned = sum(int((~lm.state.get(n).kept(units[n].weight)).sum()) for n in touched)
    bits = {g.bits for n in touched if (g := lm.state.get(n).grid) is not None}
    return StepRecord(
        step=step.to_text(),
        family=step.family,
        granularity=step.granularity,
        seconds=time.perf_counter() - start,
        units=len(touched),
        sparsity=pruned / max(total, 1),
        bits=min(bits) if bits else None,
        notes=[str(w.message) for w in caught],
        details=outcome.details,
        label=step.label(),
    )
