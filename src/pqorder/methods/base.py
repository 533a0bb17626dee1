"""What every compression method is: a typed config, a family, a granularity, an apply.

Most methods are ``UnitMethod``s: they see one unit (a Linear weight as (out, in)) plus that
unit's constraint from the composition state and return the new weight and the tighter
constraint; the walk over units lives once, in ``pqorder.engine``. ``ModelMethod``s change the
model as a whole (rotation, block removal, coupled head/channel pruning): they still write every
unit they touch through the composition state, and record model-level changes in
``state.model`` so later steps and snapshots honour them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict
from torch import Tensor

from pqorder.errors import ConfigError
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats

Family = Literal["prune", "quantize", "rotate"]


def _fraction(v: float) -> float:
    if not 0.0 <= v < 1.0:
        raise ValueError(f"ratio must lie in [0, 1), got {v}")
    return v


Fraction = Annotated[float, AfterValidator(_fraction)]  # a share of weights/filters/channels


class MethodConfig(BaseModel):
    """Frozen, strictly validated method settings (unknown keys are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    always_show: ClassVar[tuple[str, ...]] = ()  # settings short labels show even at default


class Method(ABC):
    """One compression method; concrete classes register with ``@register``."""

    name: ClassVar[str]
    family: ClassVar[Family]
    summary: ClassVar[str]
    granularities: ClassVar[str]  # the units it can act on, for `pqorder methods`
    Config: ClassVar[type[MethodConfig]]
    needs_calibration: ClassVar[bool] = False  # the engine passes UnitStats when True
    constrains_weights: ClassVar[bool] = True  # leaves sparsity masks or grids on its units
    rotates: ClassVar[bool] = False  # rotates the weights (destroys earlier masks and grids)
    keeps_units: ClassVar[bool] = True  # every unit keeps its name, shape and basis

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def granularity(self) -> str:
        """The smallest structural unit the method acts on (element, N:M group, q-group, ...)."""

    def check_unit(self, name: str, shape: tuple[int, int]) -> None:  # noqa: B027
        """Raise ConfigError if the method cannot handle this unit (called before any work)."""

    def check_composition(self, lm: Any, earlier: Sequence[Method]) -> None:  # noqa: B027
        """Raise ConfigError if this step cannot follow ``earlier`` steps on ``lm`` (before work).

        ``lm.state`` is the state before the pipeline's first step.
        """


class UnitMethod(Method):
    """A method that compresses each unit on its own (the engine walks the units)."""

    def finish(self, lm: Any, calibration: Tensor | None) -> None:
        """Model-level work once every unit is compressed (default: none)."""

    @abstractmethod
    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        """Compress one (out, in) weight within ``constraint``; return weight and new constraint.

        ``stats`` holds the unit's calibration statistics when ``needs_calibration``, else None.
        """


@dataclass
class ModelOutcome:
    """What a model-level step touched (unit names) and what it wants recorded."""

    touched: list[str]
    details: dict[str, Any] = field(default_factory=dict)


class ModelMethod(Method):
    """A method that transforms the whole model at once."""

    @abstractmethod
    def apply(
        self, lm: Any, calibration: Tensor | None, progress: bool, sequential: bool
    ) -> ModelOutcome:
        """Change ``lm`` in place, keeping ``lm.state`` true; ``calibration`` as for units."""


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry; duplicate names fail loudly."""
    if cls.name in REGISTRY:
        raise RuntimeError(f"method '{cls.name}' registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown method '{name}' (known: {', '.join(sorted(REGISTRY))}); see `pqorder methods`"
        )
    return REGISTRY[name]


def build_config(method: type[Method], params: dict[str, Any]) -> MethodConfig:
    """Validate raw parameters into the method's config with one-line, specific errors."""
    from pydantic import ValidationError

    known = list(method.Config.model_fields)
    for key in params:
        if key not in known:
            raise ConfigError(
                f"{method.name}: unknown parameter '{key}' (known: {', '.join(known)})"
            )
    try:
        return method.Config(**params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{method.name}: {where}: {msg}") from None
