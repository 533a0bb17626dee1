"""Pipeline grammar, YAML recipes and up-front validation."""

import pytest

from pqorder.errors import ConfigError
from pqorder.pipeline import load_recipe, parse_pipeline, resolve_pipeline


def test_text_form_round_trips():
    text = "rtn:bits=4,group=128 > magnitude:ratio=0.3 > magnitude:nm=2:4 > rtn:bits=8,sym=true"
    pipe = parse_pipeline(text)
    assert [s.name for s in pipe.steps] == ["rtn", "magnitude", "magnitude", "rtn"]
    assert pipe.steps[0].config.group == 128
    assert pipe.steps[3].config.sym is True
    assert parse_pipeline(pipe.to_text()).to_text() == pipe.to_text()
    # the text form is canonical: every setting spelled out, unset options left out
    assert pipe.to_text() == (
        "rtn:bits=4,group=128,sym=false > magnitude:ratio=0.3 > magnitude:nm=2:4"
        " > rtn:bits=8,group=0,sym=true"
    )


def test_yaml_recipe_equals_text(tmp_path):
    pipe = parse_pipeline("rtn:bits=3,group=64 > magnitude:ratio=0.25")
    path = tmp_path / "recipe.yaml"
    path.write_text(pipe.to_yaml())
    assert load_recipe(path).to_text() == pipe.to_text()
    path.write_text("pipeline:\n  - rtn: {bits: 3, group: 64}\n  - magnitude:ratio=0.25\n")
    assert resolve_pipeline(str(path)).to_text() == pipe.to_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo:bits=4", "unknown method 'foo'"),
        ("rtn:bit=4", "unknown parameter 'bit'"),
        ("rtn:bits=9", "unsupported bit-width 9"),
        ("rtn:bits=1", "unsupported bit-width 1"),
        ("rtn:group=-1", "group size"),
        ("magnitude:ratio=1.0", "[0, 1)"),
        ("magnitude:ratio=-0.1", "[0, 1)"),
        ("magnitude:nm=4:4", "0 < N < M"),
        ("magnitude:nm=2:4,ratio=0.5", "exactly one"),
        ("magnitude", "exactly one"),
        ("rtn:bits=4 > > magnitude:ratio=0.1", "empty step"),
        ("rtn:bits", "malformed setting"),
        ("rtn:bits=4,bits=3", "given twice"),
        ("", "empty pipeline"),
        ("rtn:bits=four", "bits"),
    ],
)
def test_bad_pipelines_fail_with_specific_errors(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        parse_pipeline(text)


def test_bad_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("steps: []\n")
    with pytest.raises(ConfigError, match="under 'pipeline:'"):
        load_recipe(path)
    path.write_text("pipeline:\n  - rtn: 4\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(path)
