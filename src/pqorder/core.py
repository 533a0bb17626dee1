"""The types every layer shares: a loaded model, its runtime, what a method needs, a step context.

This module sits at the bottom of the package: it imports only the pure-data modules below it
(``errors``, ``hardware``, ``quantgrid``, ``state``), so the engine, the methods, the models and
the studies can all name these types without importing each other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from pqorder.hardware import Placement
from pqorder.state import CompressionState

if TYPE_CHECKING:  # type names only: methods.base imports this module
    from pqorder.methods.base import UnitMethod

Kind = Literal["causal-lm", "encoder", "vision"]
JSON = dict[str, object]  # a JSON-able mapping (run records, step details)


class Need(enum.IntEnum):
    """What a method needs from calibration, in increasing cost (the engine reads it).

    NOTHING: weights only. INPUTS: the calibration samples themselves (the model-level
    ``apply`` or a unit method's ``finish`` runs them). STATISTICS: per-unit statistics from
    the layer-wise walk (input Hessian, activation norms), which also implies INPUTS.
    """

    NOTHING = 0
    INPUTS = 1
    STATISTICS = 2


@dataclass
class Runtime:
    """What ``transforms.sync`` needs to rebuild any structure, plus per-model memos.

    ``blocks`` holds every block by original index (None = removed before loading), so removed
    blocks can come back; ``memo`` holds results keyed by a weights fingerprint that belong to
    this model and die with it (SLEB's greedy rounds), instead of process-wide globals.
    """

    path: str
    blocks: list[nn.Module | None]
    tied: bool
    attention: str | None
    layer_types: list[str] | None
    handles: list[RemovableHandle] = field(default_factory=list)
    memo: dict[str, object] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A model, its tokenizer (None for vision), and the constraints already established."""

    name: str
    model: nn.Module
    tokenizer: Callable[..., object] | None
    state: CompressionState = field(default_factory=CompressionState)
    runtime: Runtime | None = field(default=None, repr=False)  # made on demand by transforms
    kind: Kind = "causal-lm"
    caveat: str | None = None  # a fact about the checkpoint users should know (shown in output)
    placement: Placement = field(default_factory=Placement)  # device, dtype (concrete), offload
    source: Path | None = None  # the local checkpoint directory the weights were loaded from

    @property
    def max_context(self) -> int | None:
        """The model's context length, when it has one (None for vision models)."""
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None)


@dataclass
class ModelOutcome:
    """What a step touched (unit names) and what it wants recorded."""

    touched: list[str]
    details: JSON = field(default_factory=dict)


class UnitRunner(Protocol):
    """Runs a unit method over the units (those named in ``only``, when given)."""

    def __call__(
        self, method: UnitMethod, label: str, only: Collection[str] | None = None
    ) -> ModelOutcome: ...


@dataclass
class StepContext:
    """Everything one step runs with: the model, its calibration, and how to run.

    ``compress_units`` runs a unit method over every unit through the one engine walk (a
    model-level step such as QuaRot uses it for its weight quantizer); ``only=names`` restricts
    it to those units (mixed precision quantizes one bit group per walk). Where the work runs and
    in what precision is ``lm.placement``.
    """

    lm: LoadedModel
    calibration: Tensor | None
    compress_units: UnitRunner
    progress: bool = True
    sequential: bool = False
