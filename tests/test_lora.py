"""LoRA recovery as a step: trained on the two-block SmolLM2, merged within masks and grids,
deterministic under a seed, unmerged adapters kept last, training text kept off the evaluation
text, bad input refused before work, and `study lora` stored and reported."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from pqorder import api
from pqorder.adapters import adapter_layers
from pqorder.cli import app
from pqorder.data.calibration import CalibrationSpec
from pqorder.data.sources import overlaps
from pqorder.engine import apply_step, check_pipeline
from pqorder.errors import ConfigError, OrderError
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.methods.base import make_step
from pqorder.methods.lora import check_held_out
from pqorder.models.adapter import compressible_units, get_weight, run_model
from pqorder.pipeline import parse_step
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.state import CompressionState
from pqorder.store import RunStore
from pqorder.study import Study

LORA = "lora:rank=4,steps=4,lr=0.01,seqlen=16,batch=2"
EMMA = PerplexityProtocol("austen:emma", seqlen=64, max_tokens=64, batch_size=1)


def _weights(lm) -> dict[str, torch.Tensor]:
    return {n: get_weight(m) for n, m in compressible_units(lm.model).items()}


def test_recovery_trains_and_merges_within_masks_and_grids(tiny, tiny_calibration):
    """Pruned (no grid): the whole masked update lands; then on a 4-bit grid: zeros stay zero,
    every weight stays on the unchanged grid, most of the update rounds away (measured)."""
    apply_step(tiny, parse_step("magnitude:ratio=0.5"), progress=False)
    pruned = _weights(tiny)
    record = apply_step(tiny, parse_step(LORA), tiny_calibration, progress=False)
    d = record.details
    assert record.family == "recover" and record.units == 14 and d["merged"]
    assert d["probe_loss_trained"] < d["probe_loss_before"] - 1.0  # it learned
    assert sum(d["loss_curve"][-2:]) < sum(d["loss_curve"][:2])
    assert d["update_kept"] == 1.0  # no grid: the masked update is merged exactly
    for name, w in _weights(tiny).items():
        mask = tiny.state.get(name).mask
        assert (w[~mask] == 0).all(), name
        assert not torch.equal(w[mask], pruned[name][mask]), name
    assert record.sparsity == pytest.approx(0.5, abs=1e-3)

    apply_step(tiny, parse_step("rtn:bits=4,group=64"), progress=False)
    grids = {n: tiny.state.get(n).grid for n in pruned}
    before = _weights(tiny)
    record = apply_step(tiny, parse_step(LORA), tiny_calibration, progress=False)
    d = record.details
    assert 0 < d["update_kept"] < 1 and 0 < d["moved_weights"] < 0.1
    assert d["probe_loss_masked"] < d["probe_loss_before"]  # the re-projection's cost is recorded
    assert record.bits == 4
    for name, w in _weights(tiny).items():
        c = tiny.state.get(name)
        assert c.grid is grids[name] and c.grid.contains(w), name
        assert (w[~c.mask] == 0).all(), name
    assert any(not torch.equal(w, before[n]) for n, w in _weights(tiny).items())


def test_same_seed_same_weights_bit_for_bit(tiny, tiny_calibration, dense_tiny):
    step = parse_step("lora:rank=2,steps=2,lr=0.01,seqlen=16,batch=2,seed=3")
    first = apply_step(tiny, step, tiny_calibration, progress=False)
    weights = _weights(tiny)
    restore_snapshot(tiny, dense_tiny)
    second = apply_step(tiny, step, tiny_calibration, progress=False)
    assert first.details["loss_curve"] == second.details["loss_curve"]
    assert all(torch.equal(w, weights[n]) for n, w in _weights(tiny).items())
    restore_snapshot(tiny, dense_tiny)
    other = apply_step(tiny, step.with_settings(seed=4), tiny_calibration, progress=False)
    assert other.details["loss_curve"] != first.details["loss_curve"]


def test_unmerged_adapters_stay_last_and_restore(tiny, tiny_calibration, dense_tiny, tmp_path):
    ids = tiny_calibration[:1, :32]
    dense_out = run_model(tiny.model, ids).logits
    apply_step(tiny, parse_step("rtn:bits=4,group=64"), progress=False)
    on_grid = _weights(tiny)
    unmerged = parse_step("lora:rank=2,steps=2,lr=0.01,seqlen=16,batch=2,merge=false")
    record = apply_step(tiny, unmerged, tiny_calibration, progress=False)
    assert "probe_loss_projected" not in record.details
    assert len(adapter_layers(tiny.model)) == 14 and tiny.state.model.adapters.rank == 2
    assert list(compressible_units(tiny.model)) == list(on_grid)  # units keep their names
    assert all(torch.equal(w, on_grid[n]) for n, w in _weights(tiny).items())  # base untouched
    adapted = run_model(tiny.model, ids).logits
    tiny.state.save(tmp_path / "state.safetensors")  # the adapters are part of the saved state
    assert CompressionState.load(tmp_path / "state.safetensors").model == tiny.state.model
    with pytest.raises(OrderError, match="unmerged LoRA adapters"):
        apply_step(tiny, parse_step("magnitude:ratio=0.3"), progress=False)
    snap = take_snapshot(tiny)
    restore_snapshot(tiny, dense_tiny)  # the adapters go with the state
    assert not adapter_layers(tiny.model)
    torch.testing.assert_close(run_model(tiny.model, ids).logits, dense_out)
    restore_snapshot(tiny, snap)
    assert torch.equal(run_model(tiny.model, ids).logits, adapted)
    restore_snapshot(tiny, dense_tiny)
    with pytest.raises(OrderError, match="must be the last step"):
        check_pipeline(tiny, [unmerged, parse_step("rtn:bits=4")])


def test_training_text_stays_off_the_evaluation_text(tiny):
    assert overlaps("austen:emma", "austen:emma[0.5:1]")
    assert overlaps("austen:emma[0:0.6]", "austen:emma[0.5:1]")
    assert not overlaps("austen:emma[0:0.5]", "austen:emma[0.5:1]")
    assert not overlaps("austen:pride", "austen:emma")
    own = [parse_step("lora:data=austen:emma[0:0.7]")]
    with pytest.raises(ConfigError, match=r"overlaps the evaluation text austen:emma\[0.5:1\]"):
        check_held_out(own, PerplexityProtocol("austen:emma[0.5:1]"), "austen:pride")
    calib = [parse_step("lora")]  # no data: it trains on the calibration text
    with pytest.raises(ConfigError, match="calibration text"):
        check_held_out(calib, EMMA, "austen:emma[0:0.6]")
    check_held_out(calib, EMMA, "austen:pride")
    check_held_out(own, PerplexityProtocol("austen:emma[0.7:1]"), "austen:pride")
    study = Study(tiny, EMMA, CalibrationSpec("austen:pride", 2, 32, 0))
    with pytest.raises(ConfigError, match="held-out text must stay unseen"):
        study.check([parse_step("rtn:bits=4"), parse_step("lora:data=austen:emma")])


def test_bad_settings_are_refused_before_work(tiny, monkeypatch):
    for text, pattern in [
        ("lora:steps=0", "steps: must be at least 1"),
        ("lora:rank=0", "rank: must be at least 1"),
        ("lora:lr=-1", "lr: must be positive"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            parse_step(text)
    with pytest.raises(ConfigError, match="no training data"):
        make_step("lora", {"data": " "})
    with pytest.raises(ConfigError, match="unknown text source 'pride'"):
        check_pipeline(tiny, [parse_step("lora:data=pride")])
    with pytest.raises(ConfigError, match=r"rank 192 is not below the width 192 of .*k_proj"):
        check_pipeline(tiny, [parse_step("lora:rank=192")])
    check_pipeline(tiny, [parse_step("lora:rank=192,targets=q_proj+o_proj")])  # 576 wide
    with pytest.raises(ConfigError, match="targets 'qproj' match no unit"):
        check_pipeline(tiny, [parse_step("lora:targets=qproj")])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"PEFT .*pip install 'pqorder\[lora\]'"):
        check_pipeline(tiny, [parse_step("lora")])


def test_study_lora_is_stored_and_reported(tiny, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    study = Study(
        tiny,
        EMMA,
        CalibrationSpec("austen:pride", 4, 32, 0),
        store,
        name="lora",
    )
    recover = "lora:rank=2,steps=2,lr=0.01,seqlen=16,batch=2"
    result = api.lora_study(
        study, "magnitude", [0.5], "rtn:bits=4,group=64", recover, tmp_path / "l.png"
    )
    orders = [p.order for p in result.points]
    assert orders == ["P→Q", "Q→P", "P→Q→L", "Q→P→L", "P→L→Q", "Q→L→P"]
    assert all(p.value is not None for p in result.points)
    by_order = {p.order: p for p in result.points}
    assert by_order["P→L→Q"].update_kept == 1.0  # pruned only: the masked update lands whole
    assert by_order["Q→L→P"].update_kept < 1.0  # on the grid: part of it rounds away
    assert len(by_order["P→Q→L"].probe_losses) == 4
    assert result.gap(0.5) is not None and result.advantage(0.5, "recovery last") is not None
    assert len(store.query(study="lora")) == 9  # dense, Q, P and the six orders
    assert (tmp_path / "l.png").stat().st_size > 0
    again = type(result).from_dict(store.analyses("lora")[-1]["payload"])
    assert again == result
    applied = study.spend.applied_steps
    assert api.lora_study(study, "magnitude", [0.5], "rtn:bits=4,group=64", recover) == result
    assert study.spend.applied_steps == applied  # every run read back from the store
    report = api.report(study, tmp_path / "report").read_text()
    assert "## LoRA recovery in the order" in report and "Q→L→P" in report


def test_cli_refuses_training_on_the_evaluation_text():
    out = CliRunner().invoke(app, ["study", "lora", "--recover", "lora:data=austen:emma"])
    assert isinstance(out.exception, ConfigError)
    assert "overlaps the evaluation text austen:emma" in str(out.exception)


def test_compress_refuses_unmerged_adapters_and_training_on_the_evaluation_text(tmp_path):
    out = tmp_path / "out"
    for pipeline, message in [
        ("rtn:bits=4 > lora:merge=false", "keeps unmerged LoRA adapters"),
        ("lora:data=austen:emma[0:0.9]", "overlaps the evaluation text"),
    ]:
        result = CliRunner().invoke(app, ["compress", "-p", pipeline, "-o", str(out)])
        assert isinstance(result.exception, ConfigError) and message in str(result.exception)
        assert not out.exists()
