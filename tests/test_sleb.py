"""SLEB block removal on SmolLM2 cut to six blocks (real weights, real text)."""

import math

import pytest
import torch

from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.engine import check_pipeline
from pqorder.errors import ConfigError
from pqorder.methods import sleb
from pqorder.models.adapter import compressible_units
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline, run_pipeline
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.transforms import runtime

IDS = torch.arange(300, 364).view(1, 64)


@pytest.fixture(scope="module")
def six():
    lm = load_model("smollm2-135m")
    del lm.model.model.layers[6:]
    lm.model.config.num_hidden_layers = 6
    tokens = sample_calibration(CalibrationSpec("austen:pride", 4, 64, 0), lm.tokenizer)
    return lm, take_snapshot(lm), tokens


@pytest.fixture
def model6(six):
    lm, dense, tokens = six
    restore_snapshot(lm, dense)
    runtime(lm).memo.clear()
    return lm, tokens


def _calibration_nll(lm, tokens) -> float:
    with torch.no_grad():
        logits = lm.model(input_ids=tokens, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    ).item()


def _apply(lm, tokens, text):
    from pqorder.engine import apply_step

    return [apply_step(lm, s, tokens, progress=False) for s in parse_pipeline(text).steps]


def test_removes_the_requested_blocks_and_still_runs(model6):
    lm, tokens = model6
    (record,) = _apply(lm, tokens, "sleb:blocks=2")
    removed = record.details["removed_blocks"]
    assert len(removed) == 2 and not {0, 5} & set(removed)  # first/last barriers
    assert len(lm.model.model.layers) == 4 and lm.model.config.num_hidden_layers == 4
    assert lm.state.model.removed_blocks == sorted(removed)
    assert [b.self_attn.layer_idx for b in lm.model.model.layers] == [0, 1, 2, 3]
    assert len(compressible_units(lm.model)) == 28
    assert math.isfinite(_calibration_nll(lm, tokens))
    # The reported calibration perplexity is the model's, measured independently.
    assert record.details["calibration_ppl"][-1] == pytest.approx(
        math.exp(_calibration_nll(lm, tokens)), rel=1e-3
    )


def test_first_choice_matches_brute_force_removal(model6, six):
    lm, tokens = model6
    _, dense, _ = six
    brute = {}
    for j in range(1, 5):
        restore_snapshot(lm, dense)
        block = lm.model.model.layers[j]
        del lm.model.model.layers[j]
        brute[j] = _calibration_nll(lm, tokens)
        lm.model.model.layers.insert(j, block)
    restore_snapshot(lm, dense)
    (record,) = _apply(lm, tokens, "sleb:blocks=1")
    assert record.details["removed_blocks"] == [min(brute, key=brute.get)]


def test_later_steps_see_the_shorter_model_and_dense_comes_back(model6, six):
    lm, tokens = model6
    before = lm.model(input_ids=IDS).logits
    records = _apply(lm, tokens, "sleb:blocks=1 > magnitude:ratio=0.5 > sleb:blocks=1")
    assert records[1].units == 35
    assert len(lm.model.model.layers) == 4
    assert len(lm.state.units) == 28  # constraints followed the renamed units
    for name, module in compressible_units(lm.model).items():
        assert (module.weight[~lm.state.get(name).mask] == 0).all()
    first, second = records[0].details["removed_blocks"], records[2].details["removed_blocks"]
    assert lm.state.model.removed_blocks == sorted(first + second)
    restore_snapshot(lm, six[1])
    assert len(lm.model.model.layers) == 6
    assert torch.equal(lm.model(input_ids=IDS).logits, before)


def test_shorter_request_reuses_the_greedy_order(model6, six, monkeypatch):
    lm, tokens = model6
    (three,) = _apply(lm, tokens, "sleb:blocks=3")
    restore_snapshot(lm, six[1])
    monkeypatch.setattr(sleb, "_Scorer", None)  # answered from the stored greedy order
    (two,) = _apply(lm, tokens, "sleb:blocks=2")
    assert two.details["removed_blocks"] == three.details["removed_blocks"][:2]
    assert two.details["calibration_ppl"] == three.details["calibration_ppl"][:2]


def test_too_many_blocks_fail_before_work(model6):
    lm, _ = model6
    with pytest.raises(ConfigError, match="cannot remove 5 blocks"):
        check_pipeline(lm, parse_pipeline("sleb:blocks=5").steps)
    with pytest.raises(ConfigError, match="cannot remove 6 blocks"):
        check_pipeline(lm, parse_pipeline("sleb:blocks=6,keep_first=0,keep_last=0").steps)
    with pytest.raises(ConfigError, match="cannot remove 3 blocks"):
        check_pipeline(lm, parse_pipeline("sleb:blocks=2 > sleb:blocks=3").steps)
    with pytest.raises(ConfigError, match="is 0 blocks"):
        check_pipeline(lm, parse_pipeline("sleb:ratio=0.01").steps)
    with pytest.raises(ConfigError, match="exactly one of ratio or blocks"):
        parse_pipeline("sleb:ratio=0.2,blocks=1")


def test_pipeline_run_records_removed_blocks(model6):
    lm, _ = model6
    spec = CalibrationSpec("austen:pride", 2, 64, 0)
    result = run_pipeline(lm, parse_pipeline("sleb:ratio=0.34"), spec, progress=False)
    assert len(result.records[0].details["removed_blocks"]) == 2
