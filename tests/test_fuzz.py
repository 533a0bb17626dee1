"""Fuzzed pipelines, recipes and step settings (Hypothesis): every input is either a valid
pipeline (that survives its text and YAML round trips, with finite, 64-bit settings) or refused
with a one-line ConfigError, never another exception. No model is loaded.

Inputs cover unknown names, wrong types, out-of-range values, duplicated keys, broken
separators, nested-config errors, huge numbers, empty and whitespace input and bad YAML, built
around the registry's own method names, setting names and example steps so that many inputs are
almost valid. ``PQORDER_FUZZ_EXAMPLES`` raises the number of examples per test (default 150).
"""

import math
import os
from collections.abc import Callable
from typing import Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pqorder.errors import ConfigError
from pqorder.methods import REGISTRY, make_step
from pqorder.pipeline import Pipeline, load_recipe, parse_pipeline, parse_step

FUZZ = settings(
    max_examples=int(os.environ.get("PQORDER_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _literals(annotation: object) -> set:
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    return set().union(set(), *(_literals(a) for a in get_args(annotation)))


NAMES = sorted(REGISTRY)
KEYS = sorted({k for m in REGISTRY.values() for k in m.Config.model_fields})
LITERALS = {
    str(v)
    for m in REGISTRY.values()
    for f in m.Config.model_fields.values()
    for v in _literals(f.annotation)
}
WORDS = sorted(LITERALS | set(NAMES) | {"2:4", "4:8", "1:2", "2:2", "0:4", "true", "nan", "inf"})
EXAMPLES = sorted({m.example for m in REGISTRY.values()} | set(NAMES))

names = st.one_of(
    st.sampled_from(NAMES), st.sampled_from(NAMES).map(str.upper), st.text(max_size=8)
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
numbers = st.one_of(
    st.integers(-3, 300),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, 10**400]),
    st.floats(),
    st.floats(0, 1),
)
values = st.one_of(numbers, st.booleans(), st.sampled_from(WORDS), st.text(max_size=6))


def _render(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@st.composite
def step_texts(draw) -> str:
    """A step as text: known or unknown names and keys, any values, broken separators."""
    if draw(st.booleans()):  # an example step, perhaps damaged
        text = draw(st.sampled_from(EXAMPLES))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 3))
            text = (
                text[:at]
                + draw(st.sampled_from(["", ",", "=", ":", ">", " ", "\n"]))
                + text[at + cut :]
            )
        if draw(st.booleans()):  # a setting added, duplicated or of another type
            key, value = draw(keys), _render(draw(values))
            text += f"{':' if ':' not in text else ','}{key}={value}"
        return text
    items = draw(st.lists(st.tuples(keys, values.map(_render)), max_size=4))
    kv = draw(st.sampled_from(["=", "=", "=", ":", "==", " = ", ""]))
    sep = draw(st.sampled_from([",", ",", ", ", ";", ",,", " "]))
    body = sep.join(f"{k}{kv}{v}" for k, v in items)
    colon = draw(st.sampled_from([":", ":", "::", " : ", ""]))
    return f"{draw(names)}{colon}{body}" if body else draw(names)


pipeline_texts = st.one_of(
    st.lists(step_texts(), min_size=1, max_size=4).flatmap(
        lambda steps: st.sampled_from([" > ", ">", " >> ", " | ", "\n", " > > ", "->"]).map(
            lambda sep: sep.join(steps)
        )
    ),
    st.sampled_from(["", " ", "\t\n", "\u3000", ">", " > ", "\x00", "\u2028"]),
    st.text(max_size=30),
)

# -- recipes ----------------------------------------------------------------------------------
leaf = st.one_of(values, st.none())
settings_maps = st.dictionaries(
    st.one_of(keys, st.integers(), st.none()),
    st.one_of(leaf, st.lists(leaf, max_size=2), st.dictionaries(keys, leaf, max_size=2)),
    max_size=4,
)
recipe_items = st.one_of(
    step_texts(),
    st.dictionaries(names, st.one_of(settings_maps, leaf), max_size=2),
    leaf,
    st.lists(leaf, max_size=2),
)
recipe_docs = st.one_of(
    st.fixed_dictionaries({"pipeline": st.lists(recipe_items, max_size=4)}),
    st.dictionaries(st.sampled_from(["pipeline", "steps", "Pipeline"]), st.lists(recipe_items)),
    st.lists(recipe_items, max_size=3),
    leaf,
)
BAD_YAML = [
    "",
    "   \n\t\n",
    "pipeline: [",
    "pipeline:\n\t- rtn\n",
    "pipeline:\n  - rtn: {bits: 4, bits: 3}\n",
    "pipeline:\n  - rtn: {bits: 4}\npipeline:\n  - rtn: {bits: 3}\n",
    "pipeline:\n  - rtn: {bits: !!int four}\n",
    "pipeline:\n  - rtn: {bits: !!float x}\n",
    "pipeline:\n  - rtn: {bits: !!timestamp never}\n",
    "pipeline:\n  - rtn: {bits: !!binary '*'}\n",
    "!!python/object/apply:os.system ['true']\n",
    "pipeline: &a [*a]\n",
    "pipeline:\n  - ? [rtn]\n    : {bits: 4}\n",
    "pipeline:\n  - <<: {rtn: {bits: 4}}\n",
    "pipeline: " + "[" * 300 + "]" * 300 + "\n",
    "pipeline:\n  - rtn: {bits: " + "9" * 5000 + "}\n",
    "pipeline:\n  - magnitude: {nm: 2:4}\n",
    "pipeline:\n  - rtn:bits=4 > magnitude:ratio=0.3\n",
    "pipeline:\n  - quarot: {weights: {bits: 4}}\n",
    "pipeline: rtn:bits=4\n",
    "---\npipeline: [rtn]\n---\npipeline: [rtn]\n",
]


@st.composite
def recipe_texts(draw) -> str:
    """A recipe: generated documents as YAML, damaged or not, and known troublemakers."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.sampled_from(BAD_YAML))
    text = yaml.safe_dump(draw(recipe_docs), allow_unicode=draw(st.booleans()))
    if choice == 2 and text:  # damage: a line repeated (duplicate keys), a cut, a stray mark
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["repeat", "cut", "insert"]))
        if how == "repeat":
            lines.insert(at, lines[at])
        elif how == "cut":
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
        else:
            mark = draw(st.sampled_from(["[", "{", ": ", "\t", "!!float ", "&a ", "*a", "- ", "%"]))
            lines[at] = mark + lines[at]
        text = "".join(lines)
    return text


# -- properties ------------------------------------------------------------------------------
def _refused_in_one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message.strip() and len(message.splitlines()) == 1, repr(message)


def _sound(pipe: Pipeline, folder) -> None:
    """An accepted pipeline: steps with finite, 64-bit settings that survive both round trips."""
    assert pipe.steps
    for step in pipe.steps:
        for value in step.settings().values():
            if isinstance(value, float):
                assert math.isfinite(value)
            elif isinstance(value, int):
                assert -(2**63) <= value < 2**63
        assert parse_step(step.to_text()) == step
    assert parse_pipeline(pipe.to_text()) == pipe
    path = folder / "again.yaml"
    path.write_text(pipe.to_yaml())
    assert load_recipe(path) == pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


def _valid_or_refused(parse: Callable[[], Pipeline], folder) -> None:
    """``parse`` either gives a sound pipeline or raises a one-line ConfigError, nothing else."""
    try:
        pipe = parse()
    except ConfigError as exc:
        _refused_in_one_line(exc)
    else:
        _sound(pipe, folder)


@FUZZ
@given(text=pipeline_texts)
def test_pipeline_text_is_valid_or_refused_in_one_line(text, folder):
    _valid_or_refused(lambda: parse_pipeline(text), folder)


@FUZZ
@given(name=names, params=settings_maps)
def test_step_settings_are_valid_or_refused_in_one_line(name, params, folder):
    _valid_or_refused(lambda: Pipeline((make_step(name, params),)), folder)


@FUZZ
@given(text=recipe_texts())
def test_recipe_is_valid_or_refused_in_one_line(text, folder):
    path = folder / "recipe.yaml"
    path.write_text(text)
    _valid_or_refused(lambda: load_recipe(path), folder)


@FUZZ
@given(data=st.binary(max_size=64))
def test_recipe_bytes_are_valid_or_refused_in_one_line(data, folder):
    path = folder / "bytes.yaml"
    path.write_bytes(data)
    _valid_or_refused(lambda: load_recipe(path), folder)


# -- what the fuzzer found, kept as plain cases -----------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pipeline:\n  - rtn: {bits: 4, bits: 3}\n", "key 'bits' given twice"),
        ("pipeline:\n  - rtn: {bits: 4}\npipeline: []\n", "key 'pipeline' given twice"),
        ("pipeline:\n  - rtn: {bits: !!float x}\n", "not valid YAML"),
        ("pipeline: [\n", "not valid YAML"),
    ],
)
def test_recipe_troublemakers_are_refused(text, message, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(path)
    _refused_in_one_line(info.value)


def test_n_m_patterns_read_as_text_in_recipes(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("pipeline:\n  - magnitude: {nm: 2:4}\n  - sparsegpt: {nm: 4:8}\n")
    assert load_recipe(path) == parse_pipeline("magnitude:nm=2:4 > sparsegpt:nm=4:8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("magnitude:ratio=nan", "finite"),
        ("rtn:group=inf", "group"),
        ("rotate:seed=18446744073709551616", "64-bit"),
        ("sleb:blocks=1,batch_size=0", "batch_size must be at least 1"),
        ("rt\nn:bits=4", r"unknown method 'rt\\nn'"),
    ],
)
def test_out_of_range_settings_are_refused_in_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_pipeline(text)
    _refused_in_one_line(info.value)
