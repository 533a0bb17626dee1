"""The SQLite run store: round trips, queries, exports, refusing bad files, and opening a
schema-v1 store made by pqorder 63dddcb (tests/data/make_store_v1.py): it migrates in place
after a backup, loses nothing, and reports exactly as that code did."""

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import pqorder.report as report
import pqorder.store as store_module
from pqorder.analysis.intensity import collapsed
from pqorder.analysis.pairs import PairGrid, PairResult
from pqorder.analysis.recommend import Recommendation
from pqorder.analysis.rotation_study import RotationStudy
from pqorder.analysis.search import SearchResult
from pqorder.analysis.sweep import SweepResult
from pqorder.analysis.units import InterferenceResult
from pqorder.errors import FormatError, PqorderError
from pqorder.store import SCHEMA_VERSION, Measurement, Run, RunStore, StoreError

DATA = Path(__file__).parent / "data"
V1 = DATA / "store_v1.sqlite"
RESULTS = {
    "recommend": Recommendation,
    "search": SearchResult,
    "sweep": SweepResult,
    "interference": InterferenceResult,
    "rotation": RotationStudy,
    "grid": PairGrid,
}


def _run(key, pipeline="rtn:bits=4", ppl=40.0, status="ok"):
    return Run(
        key=key,
        study="s",
        model="m",
        pipeline=pipeline,
        n_steps=1,
        calibration=None,
        protocol={"dataset": "austen:emma", "seqlen": 512},
        metric_name="perplexity",
        value=ppl,
        direction="lower",
        status=status,
        steps=[{"step": pipeline, "seconds": 1.0}],
        seconds=2.0,
    )


def test_round_trip_query_and_export(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    store.put(_run("a"))
    store.put(_run("b", "magnitude:ratio=0.3", 50.0))
    store.put(_run("c", "gptq:bits=3", None, status="failed"))
    got = store.get("b")
    assert got.perplexity == 50.0 and got.protocol["seqlen"] == 512 and got.steps[0]["seconds"] == 1
    assert store.get("zzz") is None
    assert [r.key for r in store.query(status="failed")] == ["c"]
    assert [r.key for r in store.query(contains="magnitude")] == ["b"]
    store.put_analysis("s", "sweep", {"rho": {"all": 0.5}})
    assert store.analyses("s")[0]["payload"]["rho"]["all"] == 0.5
    store.export(store.query(), tmp_path / "runs.json")
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 3
    store.export(store.query(), tmp_path / "runs.csv")
    assert (tmp_path / "runs.csv").read_text().count("\n") == 4
    with pytest.raises(PqorderError, match=r"\.csv or \.json"):
        store.export(store.query(), tmp_path / "runs.xlsx")
    store.close()
    assert RunStore(tmp_path / "runs.sqlite").get("a").pipeline == "rtn:bits=4"


def test_corrupt_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a usable pqorder run store"):
        RunStore(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a pqorder run store"):
        RunStore(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(StoreError, match="newer"):
        RunStore(path)


def test_report_of_an_unknown_study_is_an_error(tmp_path):
    from pqorder.report import write_report

    with pytest.raises(PqorderError, match="no runs stored for study 'nope'"):
        write_report(RunStore(tmp_path / "runs.sqlite"), "nope", tmp_path / "rep")


def test_m_and_collapse_follow_the_direction():
    ppl, dense_ppl = (
        Measurement("perplexity", 40.0, "lower"),
        Measurement("perplexity", 10.0, "lower"),
    )
    top1, dense_top1 = Measurement("top-1", 0.2, "higher"), Measurement("top-1", 0.9, "higher")
    assert ppl.metric == -40.0 and ppl.perplexity == 40.0 and top1.metric == 0.2
    assert top1.perplexity is None and Measurement("top-1", None, "higher", "failed").metric is None
    assert collapsed(ppl, dense_ppl, 3.0) and not collapsed(ppl, dense_ppl, 5.0)
    assert collapsed(top1, dense_top1, 3.0) and not collapsed(top1, dense_top1, 5.0)


def _v1_contents(path: Path) -> tuple[list[dict], list[tuple]]:
    """Runs (as dicts of the v1 columns) and analyses, read with plain SQL."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == "1"
        runs = [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]
        analyses = [tuple(r) for r in conn.execute("SELECT * FROM analyses ORDER BY id")]
    return runs, analyses


@pytest.fixture
def v1_copy(tmp_path) -> Path:
    path = tmp_path / "runs.sqlite"
    shutil.copyfile(V1, path)
    return path


def test_v1_store_migrates_in_place_after_a_backup_and_loses_nothing(v1_copy):
    old_runs, old_analyses = _v1_contents(v1_copy)
    assert {r["status"] for r in old_runs} == {"ok", "failed"}
    assert {json.loads(r["protocol"]).get("task") for r in old_runs} == {None, "top-1 accuracy"}
    store = RunStore(v1_copy)
    backup = v1_copy.with_name("runs.sqlite.v1.bak")
    assert backup.read_bytes() == V1.read_bytes()
    for old in old_runs:
        new = store.get(old["key"])
        for name in ("id", "created", "study", "model", "pipeline", "n_steps", "status", "error"):
            assert getattr(new, name) == old[name]
        for name in ("seconds", "peak_rss_mb", "host"):
            assert getattr(new, name) == old[name]
        for name in store_module.JSON_COLUMNS:
            assert getattr(new, name) == ({} if name == "details" else json.loads(old[name]))
        assert new.metric == old["metric"] and new.perplexity == old["perplexity"]
        ppl = old["perplexity"]
        assert new.value == (ppl if ppl is not None else old["metric"])
        assert new.metric_name == json.loads(old["protocol"]).get("task", "perplexity")
        assert new.direction == ("lower" if new.metric_name == "perplexity" else "higher")
    assert len(store.query()) == len(old_runs)
    stored = [(a["created"], a["study"], a["kind"], a["payload"]) for a in store.analyses()]
    assert stored == [(c, s, k, json.loads(p)) for _id, c, s, k, p in old_analyses]
    store.put(_run("new"))  # ids go on after the migrated ones
    assert store.get("new").id == max(r["id"] for r in old_runs) + 1
    store.close()
    with sqlite3.connect(v1_copy) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
        columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    assert "perplexity" not in columns and {"metric_name", "value", "direction"} <= set(columns)
    RunStore(v1_copy).close()  # a migrated store opens as it is
    assert backup.read_bytes() == V1.read_bytes()


@pytest.mark.parametrize("version", [2, 3])
def test_older_stores_gain_their_new_columns_in_place(tmp_path, version):
    """A schema-v2 file (no ``details``, no ``executor``) or v3 file (no ``executor``) opens as
    the current schema with its runs as they were: no details, made by the local executor."""
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    store.put(_run("old"))
    store.close()
    with sqlite3.connect(path) as conn:
        for added, column in store_module.ADDED_COLUMNS.items():
            if added > version:
                conn.execute(f"ALTER TABLE runs DROP COLUMN {column.split()[0]}")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    store = RunStore(path)
    old = store.get("old")
    assert old.details == {} and old.executor == "local" and old.pipeline == _run("old").pipeline
    store.put(dataclasses.replace(_run("new"), details={"tasks": {"a": 0.5}}, executor="ray"))
    assert store.get("new").details == {"tasks": {"a": 0.5}} and store.get("new").executor == "ray"
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)


def test_a_run_is_stored_once_and_the_first_one_stays(tmp_path):
    """Two processes that computed the same run both put it: one row, the first run's."""
    path = tmp_path / "runs.sqlite"
    first, second = RunStore(path), RunStore(path)
    kept = first.put(_run("a", ppl=40.0))
    again = second.put(_run("a", ppl=41.0))
    assert (again.id, again.value) == (kept.id, 40.0)
    assert [(r.key, r.value) for r in RunStore(path).query()] == [("a", 40.0)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("study", ["lm", "vision"])
def test_v1_store_reports_exactly_as_the_v1_code_did(v1_copy, tmp_path, monkeypatch, study):
    monkeypatch.setattr(report, "trained_record", lambda alias: None)  # the local cache's
    md, _html = report.write_report(RunStore(v1_copy), study, tmp_path / "report")
    # Since v1 the sweep section also scores the ordering rules (a table derived from the
    # sweep's points); everything else is the v1 code's report, byte for byte.
    text = md.read_text()
    start = text.index("| pair family | points | excluded | weaker first |")
    end = text.index("\n\n", start) + 2
    assert "| all |" in text[start:end]
    assert text[:start] + text[end:] == (DATA / f"store_v1_{study}.md").read_text()


def test_failed_migration_leaves_the_v1_store_as_it_was(v1_copy, monkeypatch):
    real, calls = store_module._row, []

    def flaky(run):
        calls.append(run)
        if len(calls) == 5:
            raise RuntimeError("disk gone")
        return real(run)

    monkeypatch.setattr(store_module, "_row", flaky)
    with pytest.raises(RuntimeError, match="disk gone"):
        RunStore(v1_copy)
    assert v1_copy.read_bytes() == V1.read_bytes()
    monkeypatch.setattr(store_module, "_row", real)
    assert len(RunStore(v1_copy).query()) == len(_v1_contents(V1)[0])


def test_a_different_backup_is_never_overwritten(v1_copy):
    backup = v1_copy.with_name("runs.sqlite.v1.bak")
    backup.write_bytes(b"someone else's file")
    with pytest.raises(StoreError, match="differs from it"):
        RunStore(v1_copy)
    assert backup.read_bytes() == b"someone else's file"
    assert v1_copy.read_bytes() == V1.read_bytes()


def _read(kind: str, payload: dict):
    if kind == "search":
        return SearchResult.from_dict(payload, metric_name="perplexity")
    return RESULTS[kind].from_dict(payload)


def test_results_round_trip_through_their_versioned_dicts(v1_copy):
    store = RunStore(v1_copy)
    kinds = set()
    for a in store.analyses(study="lm"):
        result = _read(a["kind"], a["payload"])
        again = result.to_dict()
        assert again["format"] >= 2 and "format" not in a["payload"]
        assert RESULTS[a["kind"]].from_dict(json.loads(json.dumps(again))) == result
        kinds.add(a["kind"])
    assert kinds == set(RESULTS) - {"grid"}
    grid = PairGrid(
        "top-1", 0.9, [PairResult("magnitude", "rtn", 0.8, 0.7, 0.5, 0.6, 0.1)], "higher"
    )
    assert PairGrid.from_dict(grid.to_dict()) == grid
    for run in store.query():
        assert Run.from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_results_carry_their_labels(v1_copy):
    store = RunStore(v1_copy)
    payloads = {a["kind"]: a["payload"] for a in store.analyses(study="lm")}
    rec = Recommendation.from_dict(payloads["recommend"]).to_dict()
    assert [m["label"] for m in rec["intensity"]["methods"]] == [
        "magnitude:ratio=0.3",
        "rtn:bits=4,group=128",
    ]
    search = _read("search", payloads["search"]).to_dict()
    assert search["labels"]["rotate:rotation=hadamard,seed=0,online=true,force=false"] == "rotate"
    assert _read("rotation", payloads["rotation"]).to_dict()["rotation_label"] == "rotate"


@pytest.mark.parametrize("kind", [*RESULTS, "run"])
def test_an_unknown_result_format_is_refused_in_one_line(kind):
    cls = Run if kind == "run" else RESULTS[kind]
    with pytest.raises(FormatError, match="format 99, but this pqorder reads format") as info:
        cls.from_dict({"format": 99})
    assert "\n" not in str(info.value)
