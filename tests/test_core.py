"""Core v2 behaviours on the real digits CNN: one step value whose settings survive templating,
methods that declare what they need (the Hessian walk runs only for statistics), the model
kind's calibration default on every path, nested settings validated as one line."""

from __future__ import annotations

import pytest
import torch

from pqorder import api
from pqorder.core import Need
from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError
from pqorder.eval.accuracy import AccuracyProtocol
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline, parse_step, run_pipeline
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.store import RunStore
from pqorder.study import Study

DIGITS = AccuracyProtocol("digits:test")
CALIB = CalibrationSpec("digits:train", 32, 512, 0)


@pytest.fixture(scope="module")
def digits_session():
    lm = load_model("digits-cnn")
    return lm, take_snapshot(lm)


@pytest.fixture
def digits(digits_session):
    lm, dense = digits_session
    restore_snapshot(lm, dense)
    return lm


def test_with_settings_keeps_every_other_setting_and_validates():
    step = parse_step("sparsegpt:ratio=0.3,damp=0.05,blocksize=64")
    other = step.with_settings(ratio=0.5)
    assert other.config.damp == 0.05 and other.config.blocksize == 64 and other.config.ratio == 0.5
    assert other == parse_step(other.to_text()) and step != other
    with pytest.raises(ConfigError, match="ratio"):
        step.with_settings(ratio=1.5)
    template = parse_step("sparsegpt:damp=0.05", {"ratio": 0.1})  # a sweep template
    assert template.config.ratio == 0.1 and template.config.damp == 0.05


def test_sweep_keeps_a_pruner_setting_in_every_stored_run(digits, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    study = Study(digits, DIGITS, CALIB, store, name="damp")
    api.sweep(study, ["sparsegpt:damp=0.05"], [0.2, 0.4], "rtn", [4])
    pruned = [r for r in store.query(study="damp") if "sparsegpt" in r.pipeline]
    assert len(pruned) == 6  # per ratio: P alone, P→Q, Q→P
    for run in pruned:
        (text,) = [s for s in run.pipeline.split(" > ") if s.startswith("sparsegpt")]
        assert parse_step(text).config.damp == 0.05, run.pipeline


def test_two_settings_of_one_pruner_are_two_pruners_of_a_sweep(digits, tmp_path):
    study = Study(digits, DIGITS, CALIB, RunStore(tmp_path / "runs.sqlite"), name="two")
    pruners = ["sparsegpt", "sparsegpt:damp=0.05"]
    result = api.sweep(study, pruners, [0.3], "rtn", [4])
    assert [p.prune for p in result.points] == pruners  # neither setting overwrote the other
    for point in result.points:
        p = parse_step(point.prune, {"ratio": point.ratio})
        ran = study.evaluate((p, parse_step(point.quant)))
        assert point.value_prune_then_quant == ran.value  # the point is its own pruner's


def test_nested_settings_fail_as_one_line():
    with pytest.raises(ConfigError) as err:
        parse_step("quarot:group=-1")
    assert "\n" not in str(err.value) and "group" in str(err.value)


def test_declared_needs_drive_the_engine(digits, monkeypatch):
    assert parse_step("filters:ratio=0.25,bn=true").needs == Need.INPUTS
    assert parse_step("filters:ratio=0.25").needs == Need.NOTHING
    assert parse_step("gptq:bits=4").needs == Need.STATISTICS
    assert parse_step("quarot:weights=rtn,preset=W4A16").needs == Need.NOTHING
    assert parse_step("quarot:weights=gptq").needs == Need.STATISTICS

    def no_walk(*args, **kwargs):
        raise AssertionError("the Hessian walk ran for a step that needs no statistics")

    monkeypatch.setattr("pqorder.engine.calibrated_units", no_walk)
    bn = digits.model.blocks[0].bn1
    before = bn.running_var.clone()
    result = run_pipeline(digits, parse_pipeline("filters:ratio=0.25,bn=true"), CALIB)
    assert result.calibration == CALIB and not torch.equal(bn.running_var, before)


def test_calibration_defaults_to_the_model_kinds_data(digits):
    """A vision model calibrated without a spec gets its own training images, not text."""
    result = run_pipeline(digits, parse_pipeline("sparsegpt:ratio=0.3"), progress=False)
    assert result.calibration.source == "digits:train"
    sparsity = result.records[0].sparsity
    assert sparsity == pytest.approx(0.3, abs=0.01)
