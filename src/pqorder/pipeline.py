"""Pipelines: an ordered list of steps, as text (``a:k=v > b:k=v``) or a YAML recipe.

Order is data: the pipeline is a tuple of (method, config) steps, parsed and validated up
front; ``run_pipeline`` applies them in that order through the one engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.engine import StepRecord, apply_step, check_pipeline
from pqorder.errors import ConfigError
from pqorder.methods import get_method
from pqorder.methods.base import Method, build_config

STEP_SEPARATOR = ">"


@dataclass(frozen=True)
class Step:
    """One method with its validated settings."""

    method: Method

    @property
    def name(self) -> str:
        return self.method.name

    def to_text(self) -> str:
        """Canonical text: every setting spelled out (the key of stored runs and caches)."""
        return _text(self.name, self.method.config.model_dump(exclude_none=True))

    def label(self) -> str:
        """Short text for tables: settings that differ from the defaults, plus key ones."""
        config = self.method.config
        shown = config.model_dump(exclude_defaults=True)
        for key in config.always_show:
            shown.setdefault(key, getattr(config, key))
        return _text(self.name, {k: shown[k] for k in config.model_dump() if k in shown})


@dataclass(frozen=True)
class Pipeline:
    steps: tuple[Step, ...]

    def to_text(self) -> str:
        return f" {STEP_SEPARATOR} ".join(step.to_text() for step in self.steps)

    def to_yaml(self) -> str:
        recipe = [{s.name: s.method.config.model_dump(exclude_none=True)} for s in self.steps]
        return yaml.safe_dump({"pipeline": recipe}, sort_keys=False)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.steps + other.steps)


def _text(name: str, params: dict[str, Any]) -> str:
    body = ",".join(f"{k}={_format(v)}" for k, v in params.items())
    return f"{name}:{body}" if body else name


def label(text: str) -> str:
    """The short label of a step given in any text form."""
    return parse_step(text).label()


def order_label(texts: Sequence[str]) -> str:
    """Short labels of an order's steps, joined by the pipeline separator."""
    return f" {STEP_SEPARATOR} ".join(label(t) for t in texts)


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _coerce(value: str) -> Any:
    """Text value → bool, int, float or string (N:M patterns stay strings)."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def make_step(name: str, params: dict[str, Any]) -> Step:
    method_cls = get_method(name)
    return Step(method_cls(build_config(method_cls, params)))


def parse_step(text: str) -> Step:
    """``name`` or ``name:key=value,key=value``."""
    text = text.strip()
    if not text:
        raise ConfigError("empty step in pipeline (two '>' in a row or a trailing '>')")
    name, _, body = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"malformed setting '{item}' in step '{text}': use key=value")
        if key.strip() in params:
            raise ConfigError(f"setting '{key.strip()}' given twice in step '{text}'")
        params[key.strip()] = _coerce(value.strip())
    return make_step(name.strip(), params)


def parse_pipeline(text: str) -> Pipeline:
    """Parse ``rtn:bits=4,group=128 > magnitude:ratio=0.3`` (validated before any work)."""
    if not text or not text.strip():
        raise ConfigError("empty pipeline: give steps like 'rtn:bits=4 > magnitude:ratio=0.3'")
    return Pipeline(tuple(parse_step(part) for part in text.split(STEP_SEPARATOR)))


def load_recipe(path: Path) -> Pipeline:
    """YAML recipe: ``pipeline: [{rtn: {bits: 4}}, {magnitude: {ratio: 0.3}}]``."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from exc
    items = doc.get("pipeline") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"recipe {path} needs a non-empty list under 'pipeline:'")
    steps = []
    for item in items:
        if isinstance(item, str):
            steps.append(parse_step(item))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, params),) = item.items()
            if params is not None and not isinstance(params, dict):
                raise ConfigError(f"recipe step '{name}' needs a mapping of settings")
            steps.append(make_step(str(name), dict(params or {})))
        else:
            raise ConfigError(f"recipe step {item!r} must be 'name: {{key: value}}' or text")
    return Pipeline(tuple(steps))


def resolve_pipeline(text_or_path: str) -> Pipeline:
    """A pipeline given as text, or as a path to a .yaml/.yml recipe."""
    if text_or_path.endswith((".yaml", ".yml")):
        return load_recipe(Path(text_or_path))
    return parse_pipeline(text_or_path)


@dataclass
class PipelineResult:
    """The compressed model (in place) and what each step did."""

    pipeline: Pipeline
    calibration: CalibrationSpec | None = None
    records: list[StepRecord] = field(default_factory=list)
    seconds: float = 0.0


def needs_calibration(pipeline: Pipeline) -> bool:
    return any(step.method.needs_calibration for step in pipeline.steps)


def run_pipeline(
    lm: Any,
    pipeline: Pipeline,
    calibration: CalibrationSpec | None = None,
    progress: bool = True,
    sequential: bool = False,
) -> PipelineResult:
    """Apply every step in order to ``lm`` (a LoadedModel), in place.

    Calibration tokens are sampled once (``calibration`` or the default spec) when any step
    needs them, and every calibrated step sees the same samples.
    """
    check_pipeline(lm, pipeline)
    tokens = None
    if needs_calibration(pipeline):
        calibration = calibration or CalibrationSpec()
        config = getattr(lm.model, "config", None)
        calibration.validate(getattr(config, "max_position_embeddings", None))
        tokens = sample_calibration(calibration, lm.tokenizer)
    else:
        calibration = None
    result = PipelineResult(pipeline, calibration)
    start = time.perf_counter()
    for step in pipeline.steps:
        record = apply_step(lm, step, tokens, progress=progress, sequential=sequential)
        result.records.append(record)
    result.seconds = time.perf_counter() - start
    return result
