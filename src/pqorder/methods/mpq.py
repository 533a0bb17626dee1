"""Mixed-precision quantization as an order problem: per-unit bit-widths at a fixed average.

Allocation. Every unit's sensitivity at each bit-width b of the set is its Hessian-weighted
round-to-nearest error on the calibration inputs, s(u, b) = ‖(W − Q_b(W)) Xᵀ‖² =
(n/2)·tr(E H Eᵀ) with E = Q_b(W) − W and H = (2/n)·XᵀX the statistics GPTQ uses (one
calibrated walk over the model as the step finds it, weights untouched; earlier zeros stay
zero in Q_b). A greedy knapsack then starts every unit at the lowest width and repeatedly
takes the upgrade (a unit to any higher width) with the largest error reduction per added
bit·weight that still fits the budget ``avg`` × (weights of all units); it stops when no
upgrade fits, so the average lands on ``avg`` or just below it (less than one upgrade of the
smallest unit). The scores are memoized in the model's runtime under a fingerprint of the
unit weights, masks, calibration samples and grid settings: the runs of a study share one
scoring walk (``details["score_seconds"]`` keeps its measured cost, ``score_reused`` says
whether this step paid it). Only the latest scores are kept; with ``errors`` they hold one
XᵀX per input group in host memory (about the size of the unit weights).

Order. The units of one bit-width form a group. ``progressive`` quantizes the groups one
walk each, highest width first; ``regressive`` lowest first; ``once`` quantizes every unit
in one walk. Each walk re-collects the calibration activations through the model as the
earlier walks left it, so with GPTQ a later group's Hessians see the earlier groups' errors
(with RTN the order changes nothing: no calibration enters its grids). ``part`` quantizes only
the units allocated at least ``avg`` bits (``high``) or fewer (``low``), leaving the others in
full precision: the intensity of each half, for the order studies.

Each unit's grid carries its own bits in the composition state (and so in saved states and
exports); the step record's details hold the allocation, the achieved average, the time of
each walk and, with ``errors``, each unit's reconstruction error on the dense statistics.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import ValidationError, field_validator, model_validator
from torch import Tensor

from pqorder.core import ModelOutcome, Need, StepContext
from pqorder.layerwise import calibrated_units
from pqorder.methods.base import GroupSize, ModelMethod, register
from pqorder.methods.gptq import GPTQ, GPTQConfig
from pqorder.methods.obs import SolverSettings
from pqorder.methods.rtn import RTN, QuantConfig
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats
from pqorder.transforms import runtime

Order = Literal["progressive", "regressive", "once"]
MEMO = "mpq:scores"


class MPQConfig(SolverSettings):
    """``set`` of bit-widths (``2/3/4/8``), average ``avg``, quantizer ``quant`` with its
    ``group`` and ``sym`` (GPTQ also ``damp``, ``blocksize``), ``order`` of the bit groups,
    ``part`` (all, or only the high / low half), ``errors`` (record per-unit errors)."""

    set: str = "2/3/4/8"
    avg: float = 4.0
    quant: Literal["rtn", "gptq"] = "gptq"
    group: GroupSize = 0
    sym: bool = False
    order: Order = "progressive"
    part: Literal["all", "low", "high"] = "all"
    errors: bool = False
    always_show = ("set", "avg", "quant", "order")

    @field_validator("set", mode="before")
    @classmethod
    def _set_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("set")
    @classmethod
    def _set_widths(cls, v: str) -> str:
        try:
            widths = sorted({int(b) for b in v.split("/")})
        except ValueError:
            raise ValueError(
                f"give bit-widths as integers joined by '/' (2/3/4/8), got '{v}'"
            ) from None
        if len(widths) < 2:
            raise ValueError(f"a bit set needs at least two widths (e.g. 2/4/8), got '{v}'")
        return "/".join(str(b) for b in widths)

    @model_validator(mode="after")
    def _budget(self) -> MPQConfig:
        widths = self.widths
        for b in widths:
            try:
                QuantConfig(bits=b)
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"set: {self.quant} cannot quantize to {b} bits ({msg})") from None
        if not widths[0] <= self.avg <= widths[-1]:
            raise ValueError(
                f"average {self.avg:g} bits lies outside the set's range [{widths[0]}, "
                f"{widths[-1]}]"
            )
        return self

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.set.split("/"))


def allocate(
    sizes: Mapping[str, int],
    errors: Mapping[str, Mapping[int, float]],
    widths: Sequence[int],
    avg: float,
) -> dict[str, int]:
    """Bits per unit at an average of at most ``avg`` bits per weight (weighted by size).

    Greedy: every unit starts at the lowest width; the upgrade with the largest error
    reduction per added bit·weight that fits the budget is taken until none fits.
    """
    levels = sorted(widths)
    total = sum(sizes.values())
    budget = avg * total + 1e-9 * total  # float slack only: never above avg
    bits = {name: levels[0] for name in sizes}
    used = levels[0] * total
    while True:
        best: tuple[float, str, int, int] | None = None
        for name in sorted(sizes):
            here = bits[name]
            for up in (b for b in levels if b > here):
                cost = sizes[name] * (up - here)
                if used + cost > budget:
                    break
                gain = (errors[name][here] - errors[name][up]) / cost
                if best is None or gain > best[0]:
                    best = (gain, name, up, cost)
        if best is None:
            return bits
        _gain, name, up, cost = best
        bits[name], used = up, used + cost


def average_bits(bits: Mapping[str, int], sizes: Mapping[str, int]) -> float:
    """Bits per weight over the units in ``bits``, weighted by their sizes."""
    total = sum(sizes[n] for n in bits)
    return sum(b * sizes[n] for n, b in bits.items()) / max(total, 1)


def _error(w_new: Tensor, w_old: Tensor, xtx: Tensor) -> float:
    """‖(W_new − W_old) Xᵀ‖² from XᵀX: the squared output error over the calibration inputs."""
    e = (w_new - w_old).float()
    return float(((e @ xtx.to(e.device)) * e).sum())


def _fingerprint(ctx: StepContext, cfg: MPQConfig) -> str:
    digest = hashlib.sha256(ctx.calibration.cpu().numpy().tobytes())
    digest.update(f"{cfg.set},{cfg.group},{cfg.sym}".encode())
    for name, module in compressible_units(ctx.lm.model).items():
        w, mask = get_weight(module).double(), ctx.lm.state.get(name).mask
        kept = -1 if mask is None else int(mask.sum())
        digest.update(f"{name}:{w.sum().item():.10e}:{w.abs().sum().item():.10e}:{kept}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Scores:
    """Per-unit errors at every width (and the dense XᵀX, kept when per-unit errors are asked
    for), with the measured cost of the walk that produced them."""

    errors: dict[str, dict[int, float]]
    xtx: dict[str, Tensor] | None
    seconds: float


@torch.no_grad()
def _score(ctx: StepContext, cfg: MPQConfig) -> _Scores:
    """One calibrated walk over the units as they stand: s(u, b) for every width b."""
    lm, start = ctx.lm, time.perf_counter()
    device = lm.placement.device
    rtn = {b: RTN(QuantConfig(bits=b, group=cfg.group, sym=cfg.sym)) for b in cfg.widths}
    errors: dict[str, dict[int, float]] = {}
    kept: dict[str, Tensor] = {}
    last: tuple[Tensor | None, ...] = (None, None, None)  # H, XᵀX, its host copy: previous unit
    walk = calibrated_units(
        lm.model,
        compressible_units(lm.model),
        ctx.calibration,
        progress=ctx.progress,
        label="mpq scores",
        placement=lm.placement,
    )
    for name, module, stats in walk:
        w = get_weight(module).to(device)
        constraint = lm.state.get(name).to(device)
        # units reading one input come one after another and share one H: one XᵀX is kept
        if stats.hessian is not last[0]:
            xtx = stats.hessian * (stats.n_tokens / 2)
            last = (stats.hessian, xtx, xtx.cpu() if cfg.errors else None)
        xtx = last[1]
        errors[name] = {
            b: _error(q.compress_unit(w, constraint, None)[0], w, xtx) for b, q in rtn.items()
        }
        if cfg.errors:
            kept[name] = last[2]
    return _Scores(errors, kept if cfg.errors else None, time.perf_counter() - start)


@register
class MixedPrecision(ModelMethod):
    name = "mpq"
    family = "quantize"
    granularities = "bit-width per unit; grid per output channel or group"
    summary = (
        "mixed precision: per-unit bits from a set at a fixed average, by Hessian-weighted "
        "error; RTN or GPTQ, bit groups quantized in order"
    )
    Config = MPQConfig
    example = "mpq:set=2/4/8,avg=3.5,quant=rtn,group=32"
    requires = Need.STATISTICS

    @property
    def granularity(self) -> str:
        grid = f"group of {self.config.group}" if self.config.group else "output channel"
        return f"unit (bit-width), {grid} (grid)"

    def quantizer(self, bits: int) -> RTN:
        """The existing quantizer at ``bits`` with this step's grid and solver settings."""
        cfg = self.config
        quant = QuantConfig(bits=bits, group=cfg.group, sym=cfg.sym)
        if cfg.quant == "rtn":
            return RTN(quant)
        return GPTQ(GPTQConfig(**quant.model_dump(), damp=cfg.damp, blocksize=cfg.blocksize))

    def _scores(self, ctx: StepContext) -> tuple[_Scores, bool]:
        """The memoized scores of the model as it stands (computed when missing)."""
        memo = runtime(ctx.lm).memo
        key = _fingerprint(ctx, self.config)
        held = memo.get(MEMO)
        if (
            held is not None
            and held[0] == key
            and (held[1].xtx is not None or not self.config.errors)
        ):
            return held[1], True
        scores = _score(ctx, self.config)
        memo[MEMO] = (key, scores)  # one entry: the study's runs all start from one model
        return scores, False

    def passes(self, bits: Mapping[str, int]) -> list[list[str]]:
        """The units of each walk, in the order they are quantized."""
        chosen = {n: b for n, b in bits.items() if self._in_part(b)}
        if self.config.order == "once":
            return [list(chosen)] if chosen else []
        widths = sorted(set(chosen.values()), reverse=self.config.order == "progressive")
        return [[n for n, b in chosen.items() if b == w] for w in widths]

    def _in_part(self, bits: int) -> bool:
        part = self.config.part
        return part == "all" or (bits >= self.config.avg) == (part == "high")

    @torch.no_grad()
    def apply(self, ctx: StepContext) -> ModelOutcome:
        cfg, lm = self.config, ctx.lm
        units = compressible_units(lm.model)
        sizes = {name: get_weight(m).numel() for name, m in units.items()}
        scores, reused = self._scores(ctx)
        bits = allocate(sizes, scores.errors, cfg.widths, cfg.avg)
        quantizers = {b: self.quantizer(b) for b in cfg.widths}
        walker = _Allocated(bits, quantizers) if cfg.quant == "gptq" else None
        walks, unit_error, touched = [], {}, []
        for names in self.passes(bits):
            before = {n: get_weight(units[n]).cpu().clone() for n in names} if cfg.errors else {}
            start = time.perf_counter()
            if walker is not None:
                label = f"mpq gptq {'/'.join(str(b) for b in sorted({bits[n] for n in names}))}"
                ctx.compress_units(walker, label, only=set(names))
            else:  # RTN: one uncalibrated walk per width inside this pass
                for width in sorted({bits[n] for n in names}, reverse=True):
                    subset = {n for n in names if bits[n] == width}
                    ctx.compress_units(quantizers[width], f"mpq rtn {width}", only=subset)
            walks.append(
                {
                    "bits": sorted({bits[n] for n in names}, reverse=True),
                    "units": len(names),
                    "weights": sum(sizes[n] for n in names),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
            for n in before:
                unit_error[n] = _error(get_weight(units[n]).cpu(), before[n], scores.xtx[n])
            touched += names
        details: dict[str, object] = {
            "allocation": bits,
            "average_bits": average_bits(bits, sizes),
            "quantized_bits": average_bits({n: bits[n] for n in touched}, sizes),
            "order": cfg.order,
            "part": cfg.part,
            "passes": walks,
            "score_seconds": round(scores.seconds, 3),
            "score_reused": reused,
        }
        if cfg.errors:
            details["unit_error"] = unit_error
        return ModelOutcome(touched, details)


class _Allocated(GPTQ):
    """GPTQ with each unit's own bit-width (the walk's statistics name the unit)."""

    def __init__(self, bits: Mapping[str, int], quantizers: Mapping[int, RTN]) -> None:
        super().__init__(next(iter(quantizers.values())).config)
        self.bits, self.quantizers = bits, quantizers

    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        return self.quantizers[self.bits[stats.name]].compress_unit(w, constraint, stats)
