"""Shared pruning settings and the mask-only pruner base (magnitude, Wanda)."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from pydantic import field_validator, model_validator
from torch import Tensor

from pqorder.errors import ConfigError
from pqorder.methods.base import Fraction, MethodConfig, UnitMethod
from pqorder.methods.masks import nm_mask, parse_nm, unstructured_mask
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


class PruneConfig(MethodConfig):
    """Unstructured ``ratio`` (final sparsity of each layer) or an ``nm`` pattern like 2:4."""

    ratio: Fraction | None = None
    nm: str | None = None

    @field_validator("nm", mode="before")
    @classmethod
    def _nm_pattern(cls, v: object) -> str | None:
        if v is None:
            return None
        parse_nm(str(v))
        return str(v)

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        if (self.ratio is None) == (self.nm is None):
            raise ValueError("give exactly one of ratio=<0..1) or nm=N:M")
        return self


class Pruner(UnitMethod):
    """Shared settings, granularity and unit checks of every unstructured/N:M pruner."""

    family = "prune"
    granularities = "element or N:M group"
    Config = PruneConfig
    per_row: ClassVar[bool] = False

    @property
    def granularity(self) -> str:
        return f"{self.config.nm} group" if self.config.nm else "element"

    def check_unit(self, name: str, shape: tuple[int, int]) -> None:
        if self.config.nm:
            n, m = parse_nm(self.config.nm)
            if shape[1] % m:
                raise ConfigError(
                    f"{self.name}: N:M {n}:{m} does not divide the width {shape[1]} of {name}"
                )

    def keep_mask(self, scores: Tensor, kept: Tensor) -> Tensor:
        if self.config.nm:
            return nm_mask(scores, kept, *parse_nm(self.config.nm))
        return unstructured_mask(scores, kept, self.config.ratio, self.per_row)


class ScorePruner(Pruner):
    """A pruner that only chooses a mask from per-weight scores (no weight updates)."""

    @abstractmethod
    def scores(self, w: Tensor, stats: UnitStats | None) -> Tensor:
        """Importance of every weight (higher = keep), shape (out, in)."""

    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        mask = self.keep_mask(self.scores(w, stats), constraint.kept(w))
        new = UnitConstraint(mask=mask, grid=constraint.grid)
        return new.project(w), new
