"""Round-to-nearest weight quantization: min-max grid per channel or per group."""

from __future__ import annotations

from pydantic import field_validator
from torch import Tensor

from pqorder.methods.base import GroupSize, MethodConfig, UnitMethod, register
from pqorder.quantgrid import fit_grid
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


class QuantConfig(MethodConfig):
    """``bits`` 2..8; ``group`` input features per scale (0 = per output channel); ``sym``."""

    bits: int = 4
    group: GroupSize = 0
    sym: bool = False
    always_show = ("bits",)

    @field_validator("bits")
    @classmethod
    def _bits_range(cls, v: int) -> int:
        if not 2 <= v <= 8:
            raise ValueError(f"unsupported bit-width {v}; use 2 to 8")
        return v


@register
class RTN(UnitMethod):
    name = "rtn"
    family = "quantize"
    granularities = "output channel or group"
    summary = "round-to-nearest weight quantization (min-max, asymmetric or symmetric)"
    Config = QuantConfig
    example = "rtn:bits=3,group=32,sym=true"

    @property
    def granularity(self) -> str:
        return f"group of {self.config.group}" if self.config.group else "output channel"

    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        cfg = self.config
        grid = fit_grid(w, cfg.bits, cfg.group, cfg.sym, mask=constraint.mask)
        new = UnitConstraint(mask=constraint.mask, grid=grid)
        return new.project(w), new
