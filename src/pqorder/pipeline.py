"""Pipelines: an ordered list of steps, as text (``a:k=v > b:k=v``) or a YAML recipe.

Order is data: the pipeline is a tuple of (method, config) steps, parsed and validated up
front; ``run_pipeline`` applies them in that order through the one engine. A pruning budget
may be split into stages around other steps (``sparsegpt:ratio=0.2 > gptq:bits=4 >
sparsegpt:ratio=0.4``): a pruning ratio is the sparsity after its step, earlier zeros
included (``pqorder.methods.pruner``), and each step record holds the model's sparsity.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pqorder.core import LoadedModel, Need
from pqorder.data.calibration import CalibrationSpec
from pqorder.engine import StepRecord, apply_step, check_pipeline, needs
from pqorder.errors import ConfigError
from pqorder.eval.select import sample_for
from pqorder.methods import Method, make_step
from pqorder.methods.base import Setting

STEP_SEPARATOR = ">"


@dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of steps (each a method with its validated settings)."""

    steps: tuple[Method, ...]

    def to_text(self) -> str:
        return f" {STEP_SEPARATOR} ".join(step.to_text() for step in self.steps)

    def to_yaml(self) -> str:
        recipe = [{s.name: s.settings()} for s in self.steps]
        return yaml.safe_dump({"pipeline": recipe}, sort_keys=False)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.steps + other.steps)


def label(text: str) -> str:
    """The short label of a step known only by its text (step records, format-1 results):
    re-parsed through the registry; results made now carry their labels."""
    return parse_step(text).label()


def _coerce(value: str) -> Setting:
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


def parse_step(text: str, defaults: dict[str, Setting] | None = None) -> Method:
    """``name`` or ``name:key=value,key=value``.

    ``defaults`` fill settings the text leaves out: a template such as ``sparsegpt:damp=0.05``
    for a sweep over ``ratio`` parses with ``defaults={"ratio": 0.1}``, and its variants come
    from ``with_settings(ratio=...)`` with the damp kept.
    """
    text = text.strip()
    if not text:
        raise ConfigError("empty step in pipeline (two '>' in a row or a trailing '>')")
    name, _, body = text.partition(":")
    params: dict[str, Setting] = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"malformed setting '{item}' in step '{text}': use key=value")
        if key.strip() in params:
            raise ConfigError(f"setting '{key.strip()}' given twice in step '{text}'")
        params[key.strip()] = _coerce(value.strip())
    return make_step(name.strip(), {**(defaults or {}), **params})


def parse_pipeline(text: str) -> Pipeline:
    """Parse ``rtn:bits=4,group=128 > magnitude:ratio=0.3`` (validated before any work)."""
    if not text or not text.strip():
        raise ConfigError("empty pipeline: give steps like 'rtn:bits=4 > magnitude:ratio=0.3'")
    return Pipeline(tuple(parse_step(part) for part in text.split(STEP_SEPARATOR)))


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in a mapping (plain YAML keeps the last one)
    and reads ``2:4`` as text (YAML 1.1 reads it as the base-60 integer 124)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)  # merge keys (<<) first: they may be overridden
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # unhashable: the base class refuses it
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_INT = "tag:yaml.org,2002:int"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _INT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(  # YAML 1.1 integers without the base-60 form
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _yaml_problem(exc: Exception) -> str:
    """A YAML error as one short clause (PyYAML's own message spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return " ".join(str(exc).split()) or type(exc).__name__


def load_recipe(path: Path) -> Pipeline:
    """YAML recipe: ``pipeline: [{rtn: {bits: 4}}, {magnitude: {ratio: 0.3}}]``."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from None
    try:
        doc = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: plain data only
    except Exception as exc:  # PyYAML lets ValueError etc. out of bad tagged scalars too
        raise ConfigError(f"recipe {path} is not valid YAML: {_yaml_problem(exc)}") from None
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


def run_pipeline(
    lm: LoadedModel,
    pipeline: Pipeline,
    calibration: CalibrationSpec | None = None,
    progress: bool = True,
    sequential: bool = False,
) -> PipelineResult:
    """Apply every step in order to ``lm``, in place.

    Calibration samples are drawn once (``calibration``, or the model kind's default) when any
    step needs them, and every calibrated step sees the same samples.
    """
    check_pipeline(lm, pipeline.steps)
    tokens = None
    if needs(pipeline.steps) > Need.NOTHING:
        calibration, tokens = sample_for(lm, calibration)
    else:
        calibration = None
    result = PipelineResult(pipeline, calibration)
    start = time.perf_counter()
    for step in pipeline.steps:
        record = apply_step(lm, step, tokens, progress=progress, sequential=sequential)
        result.records.append(record)
    result.seconds = time.perf_counter() - start
    return result
