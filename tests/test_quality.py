"""Calibrated methods on the full SmolLM2 must be far better than their data-free twins.

Protocol: calibration 16 × 256 tokens of Pride and Prejudice (seed 0); evaluation on the
first 2,048 tokens of Emma in 512-token windows (TEST_PROTOCOL).
"""

from pqorder.data.calibration import CalibrationSpec
from pqorder.eval.perplexity import evaluate_perplexity
from pqorder.pipeline import parse_pipeline, run_pipeline
from pqorder.snapshot import restore_snapshot
from tests.conftest import TEST_PROTOCOL

CALIBRATION = CalibrationSpec("austen:pride", n_samples=16, seqlen=256, seed=0)


def _ppl(lm, dense, text):
    restore_snapshot(lm, dense)
    run_pipeline(lm, parse_pipeline(text), CALIBRATION, progress=False)
    return evaluate_perplexity(lm.model, lm.tokenizer, TEST_PROTOCOL, progress=False).perplexity


def test_calibrated_pruning_beats_magnitude_at_half_sparsity(smol, dense_snapshot, dense_ppl):
    magnitude = _ppl(smol, dense_snapshot, "magnitude:ratio=0.5")
    wanda = _ppl(smol, dense_snapshot, "wanda:ratio=0.5")
    sparsegpt = _ppl(smol, dense_snapshot, "sparsegpt:ratio=0.5")
    assert magnitude > 5 * dense_ppl  # 50% magnitude destroys this model
    assert wanda < 0.3 * magnitude and sparsegpt < 0.3 * magnitude
    assert sparsegpt < 2.5 * dense_ppl


def test_gptq_beats_rtn_at_3_bits_per_channel(smol, dense_snapshot):
    rtn = _ppl(smol, dense_snapshot, "rtn:bits=3")
    gptq = _ppl(smol, dense_snapshot, "gptq:bits=3")
    assert gptq < 0.5 * rtn
