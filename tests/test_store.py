"""The SQLite run store: round trips, queries, exports, and refusing bad files."""

import json
import sqlite3

import pytest

from pqorder.errors import PqorderError
from pqorder.store import SCHEMA_VERSION, Run, RunStore, StoreError


def _run(key, pipeline="rtn:bits=4", ppl=40.0, status="ok"):
    return Run(
        key=key,
        study="s",
        model="m",
        pipeline=pipeline,
        n_steps=1,
        calibration=None,
        protocol={"dataset": "austen:emma", "seqlen": 512},
        metric=-ppl if ppl else None,
        perplexity=ppl,
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
