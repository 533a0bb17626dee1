"""Shared fixtures: the real SmolLM2 loaded once, restored to dense before each use."""

from __future__ import annotations

import subprocess
import sys

import huggingface_hub
import pytest

from pqorder.cli import main
from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.models.loading import load_model
from pqorder.snapshot import restore_snapshot, take_snapshot

# Small protocol for tests: 4 windows of 512 tokens of Emma (never used for calibration).
TEST_PROTOCOL = PerplexityProtocol("austen:emma", seqlen=512, max_tokens=2048, batch_size=4)


@pytest.fixture(scope="session")
def _smol_session():
    lm = load_model("smollm2-135m")
    return lm, take_snapshot(lm)


@pytest.fixture
def smol(_smol_session) -> LoadedModel:
    """The dense SmolLM2 (weights and constraints reset for every test)."""
    lm, dense = _smol_session
    restore_snapshot(lm, dense)
    return lm


@pytest.fixture(scope="session")
def dense_ppl(_smol_session) -> float:
    lm, dense = _smol_session
    restore_snapshot(lm, dense)
    return evaluate_perplexity(lm.model, lm.tokenizer, TEST_PROTOCOL, progress=False).perplexity


@pytest.fixture
def dense_snapshot(_smol_session):
    return _smol_session[1]


@pytest.fixture(scope="session")
def _tiny_session():
    """SmolLM2 cut to its first two decoder blocks: real weights, 14 units, fast."""
    lm = load_model("smollm2-135m")
    del lm.model.model.layers[2:]
    lm.model.config.num_hidden_layers = 2
    return lm, take_snapshot(lm)


@pytest.fixture
def tiny(_tiny_session) -> LoadedModel:
    lm, dense = _tiny_session
    restore_snapshot(lm, dense)
    return lm


@pytest.fixture
def dense_tiny(_tiny_session):
    return _tiny_session[1]


@pytest.fixture(scope="session")
def tiny_calibration(_tiny_session):
    """8 samples × 128 tokens of Pride and Prejudice, seed 0."""
    return sample_calibration(
        CalibrationSpec("austen:pride", 8, 128, 0), _tiny_session[0].tokenizer
    )


@pytest.fixture(scope="session")
def tiny_dir(_tiny_session, tmp_path_factory):
    """The two-block SmolLM2 saved as a checkpoint directory (for CLI subprocesses)."""
    lm, dense = _tiny_session
    restore_snapshot(lm, dense)
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def minilm():
    """The MiniLM encoder, put back to dense after each module that uses it."""
    lm = load_model("minilm")
    dense = take_snapshot(lm)
    yield lm
    restore_snapshot(lm, dense)


@pytest.fixture
def inline(monkeypatch, capsys):
    """The console script's own entry point run in this process (no interpreter start-up),
    offline; returns what ``run`` returns."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["pqorder", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return call
