"""The shipped MiniLM encoder: LM methods on its Linear layers, WordNet retrieval top-1 and
embedding fidelity on real glosses, and the order study with retrieval as the metric."""

import pytest

from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.wordnet import definition_pairs
from pqorder.engine import apply_step
from pqorder.errors import ConfigError
from pqorder.eval.retrieval import RetrievalProtocol
from pqorder.models.adapter import compressible_units
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.store import RunStore
from pqorder.study import Study

# 200 candidates keep every evaluation to a few seconds (the CLI default is 1,000).
TOP1 = RetrievalProtocol("wordnet:noun", 200, 0)
CALIB = CalibrationSpec("austen:pride", 8, 64, 0)


def test_glosses_are_real_and_headwords_distinct():
    pairs = definition_pairs("noun", 300, 0)
    assert len({w for _d, w in pairs}) == 300
    assert all(d and w and ";" not in d for d, w in pairs)
    assert pairs == definition_pairs("noun", 300, 0)  # seeded


def test_methods_apply_to_every_linear_and_metrics_move(minilm):
    units = compressible_units(minilm.model)
    assert len(units) == 36 and all(n.startswith("encoder.layer.") for n in units)
    TOP1.prepare(minilm)
    dense_top1 = TOP1.score(minilm)
    assert 0.3 < dense_top1 < 0.9  # far above chance (1/200)
    fidelity = RetrievalProtocol("wordnet:noun", 200, 0, "fidelity")
    fidelity.prepare(minilm)
    assert fidelity.score(minilm) == pytest.approx(1.0, abs=1e-5)
    snap = take_snapshot(minilm)
    tokens = sample_calibration(CALIB, minilm.tokenizer)
    for text in ("rtn:bits=3", "wanda:ratio=0.5"):
        restore_snapshot(minilm, snap)
        assert apply_step(minilm, parse_step(text), tokens, progress=False).units == 36
        assert 0.5 < fidelity.score(minilm) < 0.999
    with pytest.raises(ConfigError, match="fidelity compares with the dense model"):
        RetrievalProtocol("wordnet:noun", 200, 0, "fidelity").prepare(minilm)
    restore_snapshot(minilm, snap)


def test_encoder_study_stores_retrieval_top1(minilm, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    study = Study(minilm, TOP1, CALIB, store, name="enc")
    dense = study.dense_run()
    assert dense.metric_name == "retrieval top-1" and dense.perplexity is None
    quant = study.evaluate((parse_step("rtn:bits=3"),))
    assert quant.ok and quant.metric < dense.metric
    study.reset()


def test_retrieval_refuses_other_models_and_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="retrieval task"):
        RetrievalProtocol(task="recall").validate()
    with pytest.raises(ConfigError, match="retrieval needs 2"):
        RetrievalProtocol(candidates=1).validate()
    digits = load_model("digits-cnn")
    with pytest.raises(ConfigError, match="needs a text encoder"):
        RetrievalProtocol().prepare(digits)
