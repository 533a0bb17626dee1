"""The validation grid script (``benchmarks/pih_grid.py``) on a small real part: the digits
CNN, magnitude 50 % × per-channel RTN at 3/4/5 bits. Its contract: a finished sweep is saved in
the store and read back, never redone; ``--saved`` and ``--from-json`` score the same points;
the prior it writes names the setting the points were measured under."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pqorder.analysis.predictor import PredictorFit
from pqorder.store import RunStore

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "pih_grid.py"


@pytest.fixture
def grid(monkeypatch):
    spec = importlib.util.spec_from_file_location("pih_grid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = ("digits-cnn", ("magnitude",), (0.5,), ("rtn:group=0",), (3, 4, 5))
    monkeypatch.setitem(module.PARTS, "vision", tiny)

    def call(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["pih_grid.py", "--parts", "vision", "--quiet", *args])
        try:
            module.main()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0

    return call


def test_a_grid_part_is_saved_read_back_and_scored_the_same_three_ways(
    grid, tmp_path, monkeypatch, capsys
):
    call = grid
    store, prior = tmp_path / "grid.db", tmp_path / "prior.json"
    monkeypatch.setattr("pqorder.analysis.predictor.PRIOR", prior)
    out = [tmp_path / f"{name}.json" for name in ("run", "again", "saved", "joined")]
    plots = ["--plot", str(tmp_path / "grid.png")]

    assert call("--store", str(store), "--json", str(out[0]), *plots, "--write-prior") == 0
    first = json.loads(out[0].read_text())
    points = first["parts"]["vision"]
    assert [p["bits"] for p in points] == [3, 4, 5]
    assert all(p["local_log_ratio"] is not None for p in points)  # unit-wise pair: predicted
    (setting,) = first["settings"].values()
    assert "digits:train" in setting and "digits:test" in setting
    written = PredictorFit.load(prior, "vision")
    assert written is not None and setting in written.source
    runs = len(RunStore(store).query())

    # a rerun reads the saved sweep back: no run, no local-error solve, the same points
    assert call("--store", str(store), "--json", str(out[1]), *plots) == 0
    assert len(RunStore(store).query()) == runs
    assert json.loads(out[1].read_text())["parts"] == first["parts"]
    assert call("--store", str(store), "--saved", "--json", str(out[2]), *plots) == 0
    assert call("--from-json", str(out[0]), "--json", str(out[3]), *plots) == 0
    for path in out[2:]:
        again = json.loads(path.read_text())
        assert again["parts"] == first["parts"] and again["scores"] == first["scores"]
        assert again["settings"] == first["settings"]

    # a sweep saved under another setting is not this one's
    capsys.readouterr()
    assert call("--store", str(store), "--saved", "--every", "2", *plots) == 2
    assert "holds no finished sweep of part vision" in capsys.readouterr().err
