"""The order-advantage predictor: local errors of both orders, the fit, its honest evaluation,
and `recommend` using it. Real SmolLM2 weights (first two blocks); 1,024 tokens of Emma."""

import json
import math

import pytest

from pqorder import api
from pqorder.analysis.intensity import CurveOptions
from pqorder.analysis.predictor import (
    PairEvidence,
    PredictorFit,
    calibration_table,
    fit,
    held_out_table,
    leave_one_family_out,
    magnitude_table,
    normal_cdf,
    predict,
)
from pqorder.analysis.recommend import place_recovery
from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError, PqorderError
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.local_errors import (
    LocalOrderErrors,
    local_order_errors,
    output_energy,
    sample_units,
)
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.pipeline import parse_step
from pqorder.store import RunStore
from pqorder.study import Study

PROTOCOL = PerplexityProtocol("austen:emma", seqlen=256, max_tokens=1024, batch_size=4)
CALIBRATION = CalibrationSpec("austen:pride", n_samples=8, seqlen=128, seed=0)
CURVE = CurveOptions(quantizer="rtn:group=64", bits=(3, 8))  # the smallest reference curve


@pytest.fixture
def study(tiny, tmp_path):
    s = Study(tiny, PROTOCOL, CALIBRATION, RunStore(tmp_path / "runs.sqlite"), None, name="p")
    yield s
    s.reset()


def test_local_errors_are_the_engines_weights_scored_on_dense_statistics(study):
    prune, quant = parse_step("magnitude:ratio=0.5"), parse_step("rtn:bits=3,group=64")
    samples = study.unit_samples(1)
    assert len(samples.units) == 14 and study.unit_samples(1) is samples  # one pass, kept
    local = local_order_errors(samples, prune, quant)
    # Neither method reads statistics, so the local errors are exactly the engine's orders.
    for order, expected in (
        ((prune, quant), local.prune_first),
        ((quant, prune), local.quant_first),
    ):
        study.materialize(order)
        units = compressible_units(study.lm.model)
        err = sum(
            output_energy(get_weight(units[u.name]) - u.weight, u.stats.hessian)
            for u in samples.units
        )
        base = sum(output_energy(u.weight, u.stats.hessian) for u in samples.units)
        assert err / base == pytest.approx(expected, rel=1e-6)
    assert local.prune_first != local.quant_first and local.units == 14
    assert math.isclose(local.log_ratio, math.log(local.prune_first / local.quant_first))
    study.materialize(())
    half = sample_units(study.lm, study.calibration_tokens(), every=2)
    assert [u.name.split(".")[2] for u in half.units] == ["0"] * 7  # block 0 only
    with pytest.raises(ConfigError, match="as a whole"):
        local_order_errors(samples, parse_step("sleb:blocks=1"), quant)


SHARE_SLOPE = -0.05  # the synthetic points' dependence on the quantizer's share


def _points(slope: float, family_count: int = 3, per: int = 8) -> list[PairEvidence]:
    """Synthetic evidence on a known plane r = slope · x + SHARE_SLOPE · q with alternating
    noise."""
    out = []
    for f in range(family_count):
        for i in range(per):
            x = (i - per / 2 + 0.5) / per + 0.03 * f
            q = (i * 3 % per) / per
            noise = 0.004 * (1 if i % 2 else -1)
            r = slope * x + SHARE_SLOPE * q + noise
            out.append(PairEvidence(f"fam{f}", x, 2.0, 2.0 * r, q))
    return out


def test_fit_predict_and_leave_one_family_out():
    points = _points(0.2)
    model = fit(points, "synthetic")
    assert model.slope == pytest.approx(0.2, abs=0.01)
    assert model.share_slope == pytest.approx(SHARE_SLOPE, abs=0.01)
    assert 0 < model.sigma < 0.01
    strong = LocalOrderErrors(0.02, 0.01, 14, 0, 0.1)  # x = log 2 > 0: quantize first
    pred = predict(strong, 3.0, 0.5, model)
    r = 0.2 * math.log(2) + SHARE_SLOPE * 0.5
    assert model.relative(math.log(2), 0.5) == pytest.approx(r, abs=0.01)
    assert pred.quant_first and pred.low < pred.advantage < pred.high
    assert pred.advantage == pytest.approx(3.0 * model.relative(math.log(2), 0.5))
    expected = normal_cdf(model.relative(math.log(2), 0.5) / model.sigma)
    assert pred.confidence == pytest.approx(expected)
    assert pred.confident
    # a quantizer doing all the damage pulls towards pruning first
    assert model.relative(0.0, 1.0) < 0 < model.relative(0.1, 0.0)
    unfitted = predict(strong, 3.0, 0.5, None)
    assert unfitted.quant_first and unfitted.confidence is None and "sign only" in unfitted.basis
    held = leave_one_family_out(points)
    assert [h.family for h in held] == ["fam0", "fam1", "fam2"]
    table = held_out_table(held)
    overall = table.rows[-1]
    assert overall[0] == "all (held out)" and overall[1] == 24 and overall[2] >= 0.9
    calibration = calibration_table(held)
    assert sum(row[1] for row in calibration.rows) == 24
    by_size = magnitude_table(held, (0.0, 0.01, math.inf))
    sizes = [abs(p.advantage) / p.scale for p in points]
    assert [row[1] for row in by_size.rows] == [
        sum(v < 0.01 for v in sizes),
        sum(v >= 0.01 for v in sizes),
    ]
    assert by_size.rows[-1][0] == "≥ 0.01" and by_size.rows[-1][2] == 1.0  # wrong only when tiny
    assert model.prune_first == sum(p.advantage < 0 for p in points) / len(points)
    with pytest.raises(ConfigError, match="at least 3"):
        fit(points[:2], "too few")


def test_fit_round_trips(tmp_path):
    model = fit(_points(0.1), "synthetic")
    assert PredictorFit.load(model.save(tmp_path / "prior.json")) == model
    assert PredictorFit.load(tmp_path / "prior.json", kind="vision") == model  # serves every kind
    assert PredictorFit.load(tmp_path / "missing.json") is None
    older = tmp_path / "older.json"  # written before the share and the base rate were kept
    older.write_text(json.dumps({"slope": 1.6, "sigma": 0.4, "points": 46, "source": "grid"}))
    read = PredictorFit.load(older)
    assert read.share_slope == 0.0 and read.prune_first is None
    assert read.relative(0.5, 0.9) == pytest.approx(0.8)  # the line of x alone, as fitted


def test_priors_are_kept_per_model_kind(tmp_path):
    lm, vision = fit(_points(0.1), "lm grid"), fit(_points(0.3), "vision grid")
    path = lm.save(tmp_path / "prior.json", kind="causal-lm")
    vision.save(path, kind="vision")  # added next to the LM fit, which stays
    assert PredictorFit.load(path, kind="causal-lm") == lm
    assert PredictorFit.load(path, kind="vision") == vision
    assert PredictorFit.load(path, kind="encoder") is None  # no fit: the sign only
    assert PredictorFit.load(path) is None
    refit = fit(_points(0.2), "lm grid, finished")
    refit.save(path, kind="causal-lm")
    assert PredictorFit.load(path, kind="causal-lm") == refit
    assert PredictorFit.load(path, kind="vision") == vision
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "format": 9}))
    with pytest.raises(PqorderError, match="predictor prior"):
        PredictorFit.load(path, kind="vision")


def test_recommend_follows_a_confident_prediction_and_names_the_cost_otherwise(study):
    steps = ["sparsegpt:ratio=0.5", "rtn:bits=3,group=64"]
    sure = PredictorFit(slope=1.0, sigma=1e-4, points=10, source="test")
    rec = api.recommend(study, steps, CURVE, prior=sure, every=1)
    (call,) = rec.calls
    x = call.prediction.local.log_ratio
    assert call.prediction.quant_first == (x > 0)
    first = "rtn" if x > 0 else "sparsegpt"
    assert rec.order[0].startswith(first) and rec.verdict == "confident: use this order"
    assert sorted(rec.rule_order) == sorted(rec.order)
    assert "predictor fit: 10 pairs of test" in rec.warnings  # without a base rate
    unsure = PredictorFit(slope=1.0, sigma=100.0, points=10, source="test", prune_first=0.7)
    rec = api.recommend(study, steps, CURVE, prior=unsure, every=1)
    assert rec.verdict == "uncertain: run `pqorder search` (costs 2 evaluations)"
    assert "pruning first was the better order at 70% of them" in " ".join(rec.warnings)
    three = ["sleb:blocks=1,keep_last=0", "magnitude:ratio=0.3", "rtn:bits=3,group=64"]
    rec = api.recommend(study, three, CURVE, prior=sure, every=1)
    assert any("no predictor for sleb" in w for w in rec.warnings)
    assert any("Harma's case" in w for w in rec.warnings)
    # The cut model's perplexity is in the millions and 3-bit RTN alone lowers it: the methods'
    # drops do not add up to a positive scale, so the prediction is a sign without confidence.
    (call,) = rec.calls
    assert call.prediction.confidence is None and "sign only" in call.prediction.basis
    assert rec.verdict == "uncertain: run `pqorder search` (costs 6 evaluations)"
    with pytest.raises(ConfigError, match="every must be at least 1"):
        api.recommend(study, steps, every=0)


def test_recovery_goes_before_the_first_quantizer_or_last():
    lora, wanda, rtn = (parse_step(t) for t in ("lora:rank=2", "wanda:ratio=0.3", "rtn:bits=4"))
    unmerged = parse_step("lora:rank=2,merge=false")
    assert place_recovery([lora, wanda, rtn]) == [wanda, lora, rtn]
    assert place_recovery([rtn, wanda, lora]) == [lora, rtn, wanda]
    assert place_recovery([lora, wanda]) == [wanda, lora]
    assert place_recovery([unmerged, wanda, rtn]) == [wanda, rtn, unmerged]


def test_recommend_places_recovery_by_its_policy_not_its_intensity(study):
    steps = ["lora:rank=2,steps=2,lr=0.01,seqlen=16,batch=2", "rtn:bits=3,group=64"]
    rec = api.recommend(study, steps, CURVE, every=1)
    lora = parse_step(steps[0]).to_text()
    assert rec.order[0] == rec.rule_order[0] == lora  # before the quantizer, whatever it measured
    assert rec.confidence.startswith("not applicable") and rec.cer_gaps == []
    assert any("is a recovery step" in w for w in rec.warnings)
    assert not any("outside the reference curve" in w for w in rec.warnings)
    with pytest.raises(ConfigError, match="add a compression method"):
        api.recommend(study, steps[:1] * 2, CURVE)


def test_recommend_says_weaker_first_places_a_step_it_cannot_predict(study):
    rec = api.recommend(study, ["share:ratio=0.1", "rtn:bits=3,group=64"], CURVE, every=1)
    assert rec.calls == []
    assert any(
        "no predictor for share" in w and "weaker first places it" in w for w in rec.warnings
    )
    assert rec.order == rec.rule_order
