"""--protocol paper: the papers' WikiText-2 / C4 setting, refused offline before any work."""

import os
import subprocess
import sys

import pytest

from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import AssetError, ConfigError
from pqorder.eval import select
from pqorder.eval.perplexity import PerplexityProtocol


@pytest.fixture
def online(monkeypatch):
    """Pretend the hub answers; nothing here downloads (datasets load only when scoring)."""
    monkeypatch.setattr(select, "hub_reachable", lambda: True)


def test_preset_is_exactly_the_papers_protocol_and_calibration(online):
    protocol = select.protocol_for("smollm2-135m", protocol="paper", batch_size=2)
    assert protocol == PerplexityProtocol("wikitext2", seqlen=2048, max_tokens=None, batch_size=2)
    # Calibration settings given with the preset give way to it: 128 x 2048 C4 tokens, seed 0.
    spec = select.calibration_for("smollm2-135m", "", 32, 512, 7, protocol="paper")
    assert spec == CalibrationSpec("c4", n_samples=128, seqlen=2048, seed=0)


def test_preset_refuses_other_data_and_other_kinds(online):
    with pytest.raises(ConfigError, match="evaluates on WikiText-2 test: drop --data"):
        select.protocol_for("smollm2-135m", "austen:emma", protocol="paper")
    with pytest.raises(ConfigError, match=r"calibrates on C4 .*: drop --calib"):
        select.calibration_for("smollm2-135m", "austen:pride", protocol="paper")
    with pytest.raises(ConfigError, match="scores causal LMs; minilm is a encoder model"):
        select.protocol_for("minilm", protocol="paper")
    with pytest.raises(ConfigError, match="--tasks and --limit apply to --protocol lm-eval"):
        select.protocol_for("smollm2-135m", protocol="paper", limit=5)


def test_offline_refusal_names_the_offline_protocol(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for make in (select.protocol_for, select.calibration_for):
        with pytest.raises(AssetError, match=r"unreachable here; offline, use the default "):
            make("smollm2-135m", protocol="paper")


def test_cli_fails_in_one_line_before_loading_the_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PQORDER_CACHE": str(tmp_path)}  # empty cache
    res = subprocess.run(
        [sys.executable, "-m", "pqorder", "eval", "--protocol", "paper"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: --protocol paper loads WikiText-2 and C4 from the Hugging Face hub, which is "
        "unreachable here; offline, use the default protocol (--protocol perplexity: Austen's "
        "Emma, calibration on Pride and Prejudice)"
    )
    assert not (tmp_path / "models").exists()  # refused before any model was prepared
