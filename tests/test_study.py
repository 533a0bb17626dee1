"""Studies on real SmolLM2 weights (first two blocks): prefix reuse, stored runs, search,
failed runs, interference, report. Evaluation: 1,024 tokens of Emma in 256-token windows."""

import itertools
import math

import pytest
import torch
import transformers

from pqorder import __version__, api
from pqorder.analysis.search import search_orders
from pqorder.analysis.validation import score_rules, usable
from pqorder.data.calibration import CalibrationSpec
from pqorder.engine import apply_step
from pqorder.errors import ConfigError
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.pipeline import parse_step
from pqorder.prefix_cache import PrefixCache
from pqorder.snapshot import restore_snapshot
from pqorder.store import RunStore
from pqorder.study import Study

PROTOCOL = PerplexityProtocol("austen:emma", seqlen=256, max_tokens=1024, batch_size=4)
CALIBRATION = CalibrationSpec("austen:pride", n_samples=8, seqlen=128, seed=0)


@pytest.fixture
def study(tiny, tmp_path):
    s = Study(
        tiny,
        PROTOCOL,
        CALIBRATION,
        RunStore(tmp_path / "runs.sqlite"),
        PrefixCache(tmp_path / "prefixes"),
        name="t",
    )
    yield s
    s.reset()


def _weights(lm):
    return {n: get_weight(m) for n, m in compressible_units(lm.model).items()}


def test_cached_prefix_plus_one_step_is_bit_identical(study, tiny, dense_tiny):
    p, q = parse_step("sparsegpt:ratio=0.3"), parse_step("gptq:bits=4,group=64")
    study.evaluate((p,))  # caches the prefix
    study.evaluate((q,))  # moves the model elsewhere
    study.evaluate((p, q))  # must load P from the cache, then apply Q
    assert study.spend.cache_hits == 1
    reused = _weights(tiny)
    restore_snapshot(tiny, dense_tiny)
    tokens = study.calibration_tokens()
    apply_step(tiny, p, tokens, progress=False)
    apply_step(tiny, q, tokens, progress=False)
    fresh = _weights(tiny)
    assert all(torch.equal(reused[n], fresh[n]) for n in fresh)


def test_stored_runs_are_not_recomputed(study, tmp_path):
    step = parse_step("magnitude:ratio=0.3")
    first = study.evaluate((step,))
    again = study.evaluate((step,))
    assert again.id == first.id and study.spend.stored_hits == 1
    other = Study(study.lm, PROTOCOL, CALIBRATION, RunStore(tmp_path / "runs.sqlite"), name="t")
    assert other.evaluate((step,)).id == first.id and other.spend.applied_steps == 0
    changed = PerplexityProtocol("austen:emma", seqlen=128, max_tokens=1024, batch_size=4)
    third = Study(study.lm, changed, CALIBRATION, RunStore(tmp_path / "runs.sqlite"), name="t")
    assert third.evaluate((step,)).id != first.id  # another protocol is another run


def test_search_finds_the_true_best_and_reuses_prefixes(study, tiny, dense_tiny):
    texts = ["magnitude:ratio=0.3", "rtn:bits=3,group=64", "wanda:ratio=0.2"]
    steps = [parse_step(t) for t in texts]
    result = search_orders(study, steps, pih_order=texts)
    assert result.exhaustive and len(result.orders) == 6
    # brute force without any reuse: every order from the dense model
    truth = {}
    tokens = study.calibration_tokens()
    for order in itertools.permutations(steps):
        restore_snapshot(tiny, dense_tiny)
        for s in order:
            apply_step(tiny, s, tokens, progress=False)
        ppl = evaluate_perplexity(tiny.model, tiny.tokenizer, PROTOCOL, progress=False)
        truth[tuple(s.to_text() for s in order)] = ppl.perplexity
    assert result.best == min(truth, key=truth.get)
    for order, run in result.orders:
        assert run.perplexity == pytest.approx(truth[order], rel=1e-6)
    assert result.spend.applied_steps == 3 + 6 + 6  # each distinct prefix once
    assert result.naive_steps == 18
    assert result.pih_was_best == (tuple(s.to_text() for s in steps) == result.best)
    # The seeded beam against the exhaustive answer, on the same stored runs: it keeps the seed
    # order, picks the best of what it evaluated, and misses the true best only when it dropped
    # that order's prefix (it ranks partial orders by their own metric).
    for width in (1, 3):
        seeded = search_orders(study, steps, pih_order=texts, beam_width=width, strategy="beam")
        evaluated = [order for order, _run in seeded.orders]
        assert not seeded.exhaustive and tuple(s.to_text() for s in steps) in evaluated
        assert len(evaluated) <= width + 1 and len(evaluated) < 6
        assert seeded.best == min(evaluated, key=truth.get)
        assert seeded.best == result.best or result.best[:2] not in {o[:2] for o in evaluated}
    with pytest.raises(ConfigError, match="unknown search strategy"):
        search_orders(study, steps, strategy="greedy")


def test_bad_order_questions(study):
    with pytest.raises(ConfigError, match="at least two"):
        search_orders(study, [parse_step("rtn:bits=4")])
    with pytest.raises(ConfigError, match="twice"):
        search_orders(study, [parse_step("rtn:bits=4"), parse_step("rtn:bits=4")])
    with pytest.raises(ConfigError, match="at least two"):
        api.recommend(study, ["rtn:bits=4"])
    with pytest.raises(ConfigError, match="none of the methods changes"):
        api.recommend(study, ["magnitude:ratio=0.0", "wanda:ratio=0.0"])


def test_nan_metric_is_recorded_as_failed_and_the_study_goes_on(study, monkeypatch):
    import pqorder.eval.perplexity as perplexity_module

    real = perplexity_module.evaluate_perplexity

    def flaky(model, tokenizer, protocol, progress=True):
        result = real(model, tokenizer, protocol, progress)
        if study.lm.state.units and study.lm.state.get(next(iter(study.lm.state.units))).grid:
            return type(result)(math.nan, math.nan, result.tokens, result.windows, protocol)
        return result

    monkeypatch.setattr(perplexity_module, "evaluate_perplexity", flaky)
    steps = [parse_step("magnitude:ratio=0.2"), parse_step("rtn:bits=4")]
    result = search_orders(study, steps)
    assert all(not run.ok for _order, run in result.orders)
    failed = study.store.query(status="failed")
    assert len(failed) == 2 and "nan" in failed[0].error
    assert study.evaluate((steps[0],)).ok


def test_recommend_interference_and_report(study, tmp_path):
    rec = api.recommend(study, ["magnitude:ratio=0.3", "rtn:bits=4,group=128"])
    assert sorted(rec.order) == sorted(["magnitude:ratio=0.3", "rtn:bits=4,group=128,sym=false"])
    assert any("interference expected" in w for w in rec.warnings)
    assert len(rec.cer_gaps) == 1
    (res,) = api.interference(study, [("magnitude:ratio=0.3", "rtn:bits=4,group=128")])
    assert res.measured is not None and res.kappa > 0
    assert res.interference == pytest.approx(res.measured - res.predicted)
    assert len(res.units) == 14 and res.order_dependent_units > 0
    sweep = api.sweep(study, ["magnitude"], [0.1, 0.3], "rtn:group=128", [3, 4])
    assert len(sweep.points) == 4 and "all" in sweep.rho
    *families, overall = score_rules(sweep.points)
    kept = [p for p in sweep.points if usable(p)]
    assert [f.family for f in families] == ["magnitude × rtn g128"] and overall.family == "all"
    assert overall.points == len(kept) and overall.points + overall.excluded == 4
    assert overall.hits[1] + overall.hits[2] == overall.points  # the constants are complements
    q_first_wins = sum(p.advantage_q_first > 0 for p in kept)
    assert overall.rate("quantize first") == (q_first_wins / len(kept) if kept else None)
    for p in sweep.points:  # P alone against Q alone, from the stored single runs
        single = {
            s: study.evaluate((parse_step(s),)).value
            for s in (p.quant, f"{p.prune}:ratio={p.ratio}")
        }
        assert p.prune_stronger == (single[f"{p.prune}:ratio={p.ratio}"] > single[p.quant])
    assert overall.hits[0] == sum((p.advantage_q_first > 0) == p.prune_stronger for p in kept)
    md = api.report(study, tmp_path / "report")
    text = md.read_text()
    for section in (
        "Protocol",
        "Intensity and recommendation",
        "Sweep",
        "| pair family | points | excluded | weaker first | prune first | quantize first |",
        "interference",
        "All runs",
    ):
        assert section in text
    assert (tmp_path / "report" / "sweep.png").stat().st_size > 1000
    assert (tmp_path / "report" / "report.html").exists()


def test_interference_of_structured_pruning_and_refusal_of_unit_changing_steps(study):
    pair = ("structured:target=channels,ratio=0.25", "rtn:bits=4,group=128")
    (res,) = api.interference(study, [pair])
    assert res.measured is not None and len(res.units) == 14
    by_name = {u.unit.split(".", 3)[-1]: u for u in res.units if ".0." in u.unit}
    assert by_name["self_attn.k_proj"].owner_changed == 0  # quantized only, in both orders
    assert by_name["self_attn.k_proj"].error_p_then_q == pytest.approx(
        by_name["self_attn.k_proj"].error_q_then_p
    )
    assert res.interference == pytest.approx(res.measured - res.predicted)
    runs = len(study.store.query(study="t"))
    for bad in ("sleb:blocks=1", "rotate"):
        with pytest.raises(ConfigError, match="rotates or removes units"):
            api.interference(study, [(bad, "rtn:bits=4")])
    assert len(study.store.query(study="t")) == runs  # refused before any work


def test_rotation_study_is_stored_and_reported(study, tmp_path):
    result = api.rotation_study(study, ["magnitude"], [0.3])
    (point,) = result.points
    assert result.rotated_ppl == pytest.approx(result.dense_ppl, rel=1e-3)  # same function
    assert point.ppl_rotated != point.ppl_plain  # magnitude pruned different (rotated) weights
    pipelines = {r.pipeline.split(":")[0] for r in study.store.query(study="t")}
    assert pipelines == {"dense", "magnitude", "rotate"}
    api.report(study, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Pruning after rotation" in md and (tmp_path / "report" / "rotation.png").exists()


def test_rotated_prefix_comes_back_from_the_cache(study, tiny):
    rotate, prune = parse_step("rotate"), parse_step("magnitude:ratio=0.3")
    first = study.evaluate((rotate, prune))
    study.reset()
    study.store.path.unlink()
    again = Study(tiny, PROTOCOL, CALIBRATION, RunStore(study.store.path), study.cache, name="t")
    assert again.evaluate((rotate, prune)).perplexity == first.perplexity
    assert again.spend.cache_hits == 1
    again.reset()


def test_infeasible_order_is_a_failed_run_not_a_crash(study):
    run = study.evaluate((parse_step("magnitude:ratio=0.3"), parse_step("rotate")))
    assert run.status == "failed" and "infeasible order" in run.error
    assert study.evaluate((parse_step("rotate"),)).ok


def test_a_rerun_study_is_bit_identical_and_records_what_made_it(tiny, tmp_path):
    """The same study made twice from nothing (its own store each time) gives the
    same weights bit for bit and the same metric on CPU; every run names the versions and
    the executor that made it."""
    steps = (parse_step("magnitude:ratio=0.3"), parse_step("rtn:bits=4,group=64"))
    protocol = PerplexityProtocol("austen:emma", seqlen=128, max_tokens=128, batch_size=1)
    made = []
    for i in range(2):
        store = RunStore(tmp_path / f"runs{i}.sqlite")
        s = Study(tiny, protocol, CALIBRATION, store, name="r")
        run = s.evaluate(steps)
        made.append((store.get(run.key), {n: w.clone() for n, w in _weights(tiny).items()}))
        s.reset()
    (first, w1), (second, w2) = made
    assert first.ok and first.value == second.value and first.key == second.key
    assert w1.keys() == w2.keys() and all(torch.equal(w1[n], w2[n]) for n in w1)
    expected = {"torch": torch.__version__, "transformers": transformers.__version__}
    assert first.versions == {**first.versions, **expected, "pqorder": __version__}
    assert first.executor == second.executor == "local"
