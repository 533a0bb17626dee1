"""Shared pruning settings and the mask-only pruner base (magnitude, Wanda).

A pruning ``ratio`` is cumulative: the sparsity each comparison group has *after* the step,
zeros from earlier steps included (the group is the layer for magnitude and SparseGPT, the
output row for Wanda). Earlier zeros always stay zero; a group already holding
``floor(ratio · size)`` zeros or more gains none, every other group gains exactly the
difference. A pruning budget split into stages around other steps therefore reads as the
sparsity reached so far: ``sparsegpt:ratio=0.2 > gptq:bits=4 > sparsegpt:ratio=0.4`` prunes
20% of every layer, quantizes, then prunes another 20% of all weights (a quarter of those
still alive) on the grid. A stage whose ratio is below the sparsity an earlier stage of the
same pipeline declared in the same groups (a ratio of the same kind, or any N:M pattern)
would add nothing, and the order is refused before any work.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from pydantic import field_validator, model_validator
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError, OrderError
from pqorder.methods.base import Fraction, Method, MethodConfig, UnitMethod
from pqorder.methods.masks import nm_mask, parse_nm, unstructured_mask
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats


class PruneConfig(MethodConfig):
    """Unstructured ``ratio`` (the sparsity of each layer, or row for Wanda, after the step,
    earlier zeros included) or an ``nm`` pattern like 2:4."""

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

    @property
    def sparsity(self) -> float:
        """The sparsity this step declares: its ratio, or (M−N)/M for an N:M pattern."""
        if self.config.nm:
            n, m = parse_nm(self.config.nm)
            return (m - n) / m
        return self.config.ratio

    def check_unit(self, name: str, shape: tuple[int, int]) -> None:
        if self.config.nm:
            n, m = parse_nm(self.config.nm)
            if shape[1] % m:
                raise ConfigError(
                    f"{self.name}: N:M {n}:{m} does not divide the width {shape[1]} of {name}"
                )

    def holds_in_my_groups(self, earlier: Pruner) -> bool:
        """Whether ``earlier``'s declared sparsity holds in every group this pruner compares
        in: an N:M pattern holds in every row and layer, a ratio in groups of its own kind."""
        return earlier.config.nm is not None or earlier.per_row == self.per_row

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:
        """Refuse a ratio below the sparsity an earlier stage declared in the same groups: the
        stage would add nothing. A rotation drops earlier masks, so only stages after the last
        one count. A row-wise ratio after a layer-wise one (or the reverse) may add zeros to
        the groups the earlier stage left below it, and an N:M pattern is a constraint of its
        own: both may follow any sparsity."""
        if self.config.ratio is None:
            return
        last_rotation = max((i for i, m in enumerate(earlier) if m.rotates), default=-1)
        stages = [
            m
            for m in earlier[last_rotation + 1 :]
            if isinstance(m, Pruner) and self.holds_in_my_groups(m)
        ]
        top = max(stages, key=lambda m: m.sparsity, default=None)
        if top is not None and top.sparsity > self.config.ratio:
            raise OrderError(
                f"{self.name}:ratio={self.config.ratio:g} after {top.label()}: a pruning ratio "
                f"is the total sparsity after the stage (earlier zeros stay zero), so this stage "
                f"would add nothing; give ratio >= {top.sparsity:g}"
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
