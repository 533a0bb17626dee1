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
from collections.abc import Callable, Sequence
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator
from torch import Tensor

from pqorder.core import Kind, LoadedModel, ModelOutcome, Need, StepContext
from pqorder.errors import ConfigError
from pqorder.models.architecture import Capability
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats

Family = Literal["prune", "quantize", "rotate", "recover", "share"]
Setting = bool | int | float | str  # what a step's text form can hold
T = TypeVar("T")


def _fraction(v: float) -> float:
    if not 0.0 <= v < 1.0:
        raise ValueError(f"ratio must lie in [0, 1), got {v}")
    return v


Fraction = Annotated[float, AfterValidator(_fraction)]  # a share of weights/filters/channels


def _open_fraction(v: float) -> float:
    if not 0.0 < v < 1.0:
        raise ValueError(f"must lie in (0, 1), got {v}")
    return v


OpenFraction = Annotated[float, AfterValidator(_open_fraction)]  # a ratio or damp that cannot be 0


def _group_size(v: int) -> int:
    if v < 0:
        raise ValueError(f"group size must be 0 (per-channel) or positive, got {v}")
    return v


GroupSize = Annotated[int, AfterValidator(_group_size)]  # input features per scale; 0 = channel


class MethodConfig(BaseModel):
    """Frozen, strictly validated method settings (unknown keys, infinite or NaN floats and
    integers beyond 64 bits are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    always_show: ClassVar[tuple[str, ...]] = ()  # settings short labels show even at default

    @field_validator("*")
    @classmethod
    def _fits_64_bits(cls, v: object) -> object:
        """Integer settings reach torch as int64 (seeds, sizes): a larger one is refused now."""
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            raise ValueError("out of range: integer settings are signed 64-bit (|n| < 2**63)")
        return v


def step_text(name: str, params: dict[str, Setting]) -> str:
    """``name:key=value,...`` (booleans lower-case, as the parser reads them)."""
    body = ",".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()
    )
    return f"{name}:{body}" if body else name


class Method(ABC):
    """One compression method with its validated settings: a step of a pipeline.

    Concrete classes register with ``@register``. An instance is a step: it has a canonical
    text form (the key of stored runs and caches), a short label for tables, and derives
    variants through ``with_settings`` (every other setting kept).
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    summary: ClassVar[str]
    granularities: ClassVar[str]  # the units it can act on, for `pqorder methods`
    Config: ClassVar[type[MethodConfig]]
    example: ClassVar[str]  # a small, fast setting for the contract tests and the docs
    constrains_weights: ClassVar[bool] = True  # leaves sparsity masks or grids on its units
    rotates: ClassVar[bool] = False  # rotates the weights (destroys earlier masks and grids)
    keeps_units: ClassVar[bool] = True  # every unit keeps its name, shape and basis
    factors: ClassVar[bool] = False  # replaces units with basis/coefficient factors (share)
    works_on_factors: ClassVar[bool] = True  # can follow a step that factored units
    requires: ClassVar[Need] = Need.NOTHING  # what it needs at its default settings
    kinds: ClassVar[frozenset[Kind]] = frozenset({"causal-lm", "encoder", "vision"})

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What the model's family must support (``Architecture``), checked before work."""
        return frozenset()

    @property
    def needs(self) -> Need:
        """What this step needs from calibration (methods whose need depends on a setting
        override this)."""
        return self.requires

    @property
    @abstractmethod
    def granularity(self) -> str:
        """The smallest structural unit the method acts on (element, N:M group, q-group, ...)."""

    def check_unit(self, name: str, shape: tuple[int, int]) -> None:  # noqa: B027
        """Raise ConfigError if the method cannot handle this unit (called before any work)."""

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:  # noqa: B027
        """Raise ConfigError if this step cannot follow ``earlier`` steps on ``lm`` (before work).

        ``lm.state`` is the state before the pipeline's first step.
        """

    def last_only(self) -> str | None:
        """Why no step may follow this one (None: any may); read by ``check_pipeline``."""
        return None

    # -- the step value -------------------------------------------------------------------
    def settings(self) -> dict[str, Setting]:
        """Every setting, defaults included (None values left out)."""
        return self.config.model_dump(exclude_none=True)

    def to_text(self) -> str:
        """Canonical text: every setting spelled out (the key of stored runs and caches)."""
        return step_text(self.name, self.settings())

    def label(self) -> str:
        """Short text for tables: settings that differ from the defaults, plus key ones."""
        config = self.config
        shown = config.model_dump(exclude_defaults=True)
        for key in config.always_show:
            shown.setdefault(key, getattr(config, key))
        return step_text(self.name, {k: shown[k] for k in config.model_dump() if k in shown})

    def with_settings(self, **overrides: Setting) -> Method:
        """The same step with some settings replaced (validated; every other setting kept)."""
        return make_step(self.name, {**self.settings(), **overrides})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Method) and other.to_text() == self.to_text()

    def __hash__(self) -> int:
        return hash(self.to_text())

    def __repr__(self) -> str:
        return f"<step {self.to_text()}>"


class UnitMethod(Method):
    """A method that compresses each unit on its own (the engine walks the units)."""

    def finish(self, ctx: StepContext) -> None:
        """Model-level work once every unit is compressed (default: none)."""

    @abstractmethod
    def compress_unit(
        self, w: Tensor, constraint: UnitConstraint, stats: UnitStats | None
    ) -> tuple[Tensor, UnitConstraint]:
        """Compress one (out, in) weight within ``constraint``; return weight and new constraint.

        ``stats`` holds the unit's calibration statistics when ``needs`` is STATISTICS.
        """


class ModelMethod(Method):
    """A method that transforms the whole model at once (by default it edits named
    projections, so it cannot follow a step that factored them: ``works_on_factors``)."""

    works_on_factors: ClassVar[bool] = False

    @abstractmethod
    def apply(self, ctx: StepContext) -> ModelOutcome:
        """Change ``ctx.lm`` in place, keeping ``lm.state`` true."""


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


def validated(owner: str, build: Callable[[], T]) -> T:
    """Run ``build`` (a pydantic construction, nested ones included), turning a validation
    error into a one-line ConfigError that names the setting."""
    try:
        return build()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{owner}: {where}: {msg}") from None


def build_config(method: type[Method], params: dict[str, object]) -> MethodConfig:
    """Validate raw parameters into the method's config with one-line, specific errors."""
    known = list(method.Config.model_fields)
    for key in params:
        if key not in known:
            raise ConfigError(
                f"{method.name}: unknown parameter '{key}' (known: {', '.join(known)})"
            )
    return validated(method.name, lambda: method.Config(**params))


def make_step(name: str, params: dict[str, object]) -> Method:
    """The registered method ``name`` with validated settings (nested configs included)."""
    method_cls = get_method(name)
    config = build_config(method_cls, params)
    return validated(name, lambda: method_cls(config))
