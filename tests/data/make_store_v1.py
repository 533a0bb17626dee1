"""Write the v1 run-store fixture with pqorder as of 63dddcb (the last schema-v1 code).

tests/data/store_v1.sqlite holds two studies made by the real analyses of that code: "lm" on
SmolLM2 cut to two blocks (perplexity; recommendation, two searches, a sweep, interference, a
rotation study, failed infeasible orders) and "vision" on the digits CNN (top-1 accuracy;
recommendation and sweep). store_v1_<study>.md is the report that code rendered from it.
The models' training record is left out of the reports (it belongs to the local cache, not to
the store). Run it against the old source, from the repository root:

    git worktree add /tmp/old 63dddcb
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/data/make_store_v1.py
    git worktree remove /tmp/old
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pqorder
import pqorder.report as report
from pqorder import api
from pqorder.analysis.intensity import CurveOptions
from pqorder.data.calibration import CalibrationSpec
from pqorder.eval.accuracy import AccuracyProtocol
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step
from pqorder.store import SCHEMA_VERSION, RunStore
from pqorder.study import Study

HERE = Path(__file__).parent
PAIR = ["magnitude:ratio=0.3", "rtn:bits=4,group=128"]


def lm_study(store: RunStore) -> None:
    lm = load_model("smollm2-135m")
    del lm.model.model.layers[2:]
    lm.model.config.num_hidden_layers = 2
    protocol = PerplexityProtocol("austen:emma", seqlen=256, max_tokens=512, batch_size=4)
    study = Study(lm, protocol, CalibrationSpec("austen:pride", 4, 64, 0), store, name="lm")
    rec = api.recommend(study, PAIR, CurveOptions(bits=(3, 4, 8)))
    api.search(study, PAIR, rec.order)
    api.search(study, ["magnitude:ratio=0.2", "rotate"])  # one order is infeasible: failed
    api.sweep(study, ["magnitude"], [0.2, 0.3], "rtn:group=128", [3, 4])
    api.interference(study, [tuple(PAIR)])
    api.rotation_study(study, ["magnitude"], [0.3])
    study.evaluate([parse_step("wanda:ratio=0.3"), parse_step("rotate")])  # failed too


def vision_study(store: RunStore) -> None:
    lm = load_model("digits-cnn")
    calibration = CalibrationSpec("digits:train", 64, 512, 0)
    study = Study(lm, AccuracyProtocol("digits:test"), calibration, store, name="vision")
    api.recommend(
        study, ["magnitude:ratio=0.5", "rtn:bits=3,group=0"], CurveOptions("rtn", (2, 3, 4))
    )
    api.sweep(study, ["magnitude"], [0.3, 0.5], "rtn:group=0", [2, 3])


def main() -> None:
    assert SCHEMA_VERSION == 1, f"run this with the v1 code, not pqorder {pqorder.__version__}"
    path = HERE / "store_v1.sqlite"
    path.unlink(missing_ok=True)
    store = RunStore(path)
    lm_study(store)
    vision_study(store)
    report.trained_record = lambda alias: None
    for study in ("lm", "vision"):
        with tempfile.TemporaryDirectory() as folder:
            md, _html = report.write_report(store, study, Path(folder))
            (HERE / f"store_v1_{study}.md").write_text(md.read_text())
    store.close()


if __name__ == "__main__":
    main()
