"""The run store: every run is a row in SQLite, written when it finishes.

Rows are keyed by a content hash of (model, calibration, protocol, pipeline, engine options),
so a rerun of a sweep or search finds what is already stored and skips it; a killed process
loses only the run in flight. A file that is not a pqorder store, or comes from a newer
schema, is refused with a clear error and never overwritten. Two processes may share a store
(WAL mode, a busy timeout); a run computed by both is stored once, the first one kept. Each run
records what produced it: the versions of pqorder, torch and transformers, the host and the
executor.

Schema v2 stores what a run measured without naming any metric specially: the protocol's
metric name, its value, which direction is better, and M (higher is better). A v1 store (a
``perplexity`` column beside M) is migrated in place when opened: the file is first copied
to ``<name>.v1.bak``, then every run is rewritten in one transaction, so a failure leaves
the v1 store as it was. Later schemas only add columns (v3 ``details``, v4 ``executor``), added
in place. Analyses keep their payloads; each payload names its own format.
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
import socket
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pqorder.atomic import atomic_output
from pqorder.errors import PqorderError, check_format
from pqorder.paths import cache_dir
from pqorder.tables import Table

SCHEMA_VERSION = 4  # 2: metric name/value/direction; 3: evaluation details; 4: executor
RUN_FORMAT = 4  # version of Run.to_dict (1: the perplexity-column form of schema v1)
BUSY_SECONDS = 60  # how long a writer waits for another process's transaction to finish
Direction = Literal["lower", "higher"]  # which values of a metric are better
_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    study TEXT NOT NULL,
    model TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    n_steps INTEGER NOT NULL,
    calibration TEXT,
    protocol TEXT NOT NULL,
    metric_name TEXT NOT NULL,
    value REAL,
    direction TEXT NOT NULL,
    metric REAL,
    status TEXT NOT NULL,
    error TEXT,
    steps TEXT NOT NULL,
    seconds REAL NOT NULL,
    peak_rss_mb REAL,
    versions TEXT NOT NULL,
    host TEXT NOT NULL,
    details TEXT,
    executor TEXT
)""",
    "CREATE INDEX IF NOT EXISTS runs_study ON runs (study)",
    """CREATE TABLE IF NOT EXISTS analyses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    study TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
)""",
)
COLUMNS = (
    "id",
    "key",
    "created",
    "study",
    "model",
    "pipeline",
    "n_steps",
    "calibration",
    "protocol",
    "metric_name",
    "value",
    "direction",
    "metric",
    "status",
    "error",
    "steps",
    "seconds",
    "peak_rss_mb",
    "versions",
    "host",
    "details",
    "executor",
)
# Columns later schemas added to the runs table, by the version that added them (rows from
# before hold NULL: no details, and the "local" executor, the only one there was).
ADDED_COLUMNS = {3: "details TEXT", 4: "executor TEXT"}
JSON_COLUMNS = ("calibration", "protocol", "steps", "versions", "details")


class StoreError(PqorderError):
    """The run store file cannot be used as it is."""


def m_text(metric_name: str, direction: Direction) -> str:
    """How M is written: the metric itself when higher is better, else its negation."""
    return metric_name if direction == "higher" else f"−{metric_name}"


def v1_direction(metric_name: str) -> Direction:
    """The direction schema v1 and format-1 results implied: only perplexity fell."""
    return "lower" if metric_name == "perplexity" else "higher"


def default_store_path() -> Path:
    """$PQORDER_CACHE/runs.sqlite (see ``pqorder.paths``)."""
    return cache_dir() / "runs.sqlite"


def versions() -> dict[str, str]:
    """The versions a run was made with (recorded in every run, for reproducing it)."""
    import torch
    import transformers

    from pqorder import __version__

    return {
        "pqorder": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


@dataclass
class Measurement:
    """What one evaluation measured: the protocol's metric, its value, which way is better.

    Results keep measurements (a ``Run`` is one, with its provenance), so a result read back
    from the store needs nothing but its own payload.
    """

    metric_name: str  # perplexity, top-1 accuracy, retrieval top-1, ...
    value: float | None  # the protocol's own number; None when the run failed
    direction: Direction
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def metric(self) -> float | None:
        """M, higher is better: the value, negated when lower values are better."""
        if self.value is None:
            return None
        return -self.value if self.direction == "lower" else self.value

    @property
    def perplexity(self) -> float | None:
        """The value when the metric is perplexity, else None (a shorthand for notebooks)."""
        return self.value if self.metric_name == "perplexity" else None


def measured(m: Measurement) -> dict:
    """The measurement part of a run (or a measurement) as JSON-able data."""
    return {f.name: getattr(m, f.name) for f in fields(Measurement)}


@dataclass(kw_only=True)
class Run(Measurement):
    """One stored run: an ordered pipeline evaluated under a protocol."""

    key: str
    study: str
    model: str
    pipeline: str
    n_steps: int
    calibration: dict | None
    protocol: dict
    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float | None = None
    details: dict = field(default_factory=dict)  # what the protocol reports beyond its value
    versions: dict = field(default_factory=versions)
    host: str = field(default_factory=socket.gethostname)
    executor: str = "local"  # what ran it: local (in the driver), process or ray
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    id: int | None = None

    def to_dict(self) -> dict:
        """Every field, with M spelled out for readers (``from_dict`` derives it again)."""
        return {"format": RUN_FORMAT, **asdict(self), "metric": self.metric}

    @classmethod
    def from_dict(cls, raw: dict) -> Run:
        """A run from ``to_dict``, or from a schema-v1 row or export (format 1)."""
        data = {k: v for k, v in raw.items() if k != "format"}
        if check_format("run", raw.get("format", 1), (1, 2, 3, RUN_FORMAT)) == 1:
            ppl = data.pop("perplexity")
            name = data["protocol"].get("task", "perplexity")
            value = ppl if ppl is not None else data["metric"]
            data.update(metric_name=name, value=value, direction=v1_direction(name))
        data.pop("metric", None)
        return cls(**data)


def runs_table(runs: Sequence[Run], metric_name: str | None = None) -> Table:
    """Runs of one study under its metric, or (no ``metric_name``) of any study and metric."""

    def outcome(r: Run) -> tuple[float | None, str, float]:
        return r.value, r.status, round(r.seconds, 1)

    if metric_name is not None:
        columns = ("id", "pipeline", metric_name, "status", "seconds")
        rows = [(r.id, r.pipeline, *outcome(r)) for r in runs]
    else:
        columns = ("id", "study", "model", "pipeline", "metric", "value", "status", "seconds")
        rows = [(r.id, r.study, r.model, r.pipeline, r.metric_name, *outcome(r)) for r in runs]
    return Table("runs", columns, tuple(rows))


class RunStore:
    """SQLite-backed store of runs (one file, one table of runs).

    Several processes may use one store at once: the file is in WAL mode (readers never wait
    for the writer), a writer waits up to ``BUSY_SECONDS`` for another's transaction, one
    opener at a time checks, migrates or creates the tables, and a run is stored once per key.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the run store {self.path}: {exc.strerror or exc}; pass a "
                "--store path in a writable directory"
            ) from None
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # no other process sets up meanwhile
                with self._conn:  # commits the set-up, or rolls all of it back
                    self._set_up()
                self._conn.execute("PRAGMA journal_mode=WAL")  # kept in the file from now on
            except BaseException:
                self._conn.close()
                raise
        except sqlite3.OperationalError as exc:
            hint = (
                f"another process held it for over {BUSY_SECONDS} s; try again"
                if "locked" in str(exc)
                else "pass a --store path in a writable directory"
            )
            raise StoreError(f"cannot write the run store {self.path} ({exc}); {hint}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable pqorder run store ({exc}); it was left untouched — "
                "move it away or pass another --store path"
            ) from exc

    def _set_up(self) -> None:
        """Check an existing store (refusing foreign and newer files) and bring an older one
        to this schema, or create the tables of a new one (inside the opening transaction)."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if tables:
            version = self._check_schema(tables)
            if version == 1:
                self._migrate_v1()
            for added, column in ADDED_COLUMNS.items():
                if 1 < version < added:
                    self._conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
        for statement in _TABLES:
            self._conn.execute(statement)
        self._conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    def _check_schema(self, tables: set[str]) -> int:
        """The schema version of an existing file, refusing foreign and newer files."""
        if "meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite file but not a pqorder run store; it was left "
                "untouched — pass another --store path"
            )
        version = self._version()
        if version is None or version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version or '?'}, newer than this "
                f"pqorder understands ({SCHEMA_VERSION}); upgrade pqorder or use another --store"
            )
        return version

    def _version(self) -> int | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _migrate_v1(self) -> None:
        """Rewrite a schema-v1 store in the current schema (inside the opening transaction, so
        a failure leaves it as it was), after a backup.

        Every run keeps its id, key and fields; v1's ``perplexity`` becomes the value of a
        perplexity run (M stays as it was). Analyses are not touched.
        """
        conn = self._conn
        self._backup(self.path.with_name(f"{self.path.name}.v1.bak"))
        cursor = conn.execute("SELECT * FROM runs ORDER BY id")
        names = [d[0] for d in cursor.description]
        runs = [Run.from_dict(_decoded(dict(zip(names, row, strict=True)))) for row in cursor]
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
        conn.execute("DROP TABLE runs")
        for statement in _TABLES:
            conn.execute(statement)
        for run in runs:
            self._insert(_row(run))
        if seq is not None:  # ids of deleted runs stay unused
            conn.execute("DELETE FROM sqlite_sequence WHERE name = 'runs'")
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", seq)

    def _backup(self, backup: Path) -> None:
        """Copy the store to ``backup``; an existing backup of other content is refused."""
        try:
            if backup.exists() and backup.read_bytes() != self.path.read_bytes():
                raise StoreError(
                    f"{self.path} needs migrating from schema v1, but {backup} exists and "
                    "differs from it; move that file away and open the store again"
                )
            shutil.copyfile(self.path, backup)
        except OSError as exc:
            raise StoreError(f"cannot back up {self.path} before migrating it: {exc}") from exc

    def _insert(self, values: dict[str, object]) -> int | None:
        """Insert one row unless a run of its key is stored: the new row's id, else None."""
        names = list(values)
        cur = self._conn.execute(
            f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
            "ON CONFLICT (key) DO NOTHING",
            [values[n] for n in names],
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    def close(self) -> None:
        self._conn.close()

    def get(self, key: str) -> Run | None:
        row = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM runs WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _to_run(row)

    def put(self, run: Run) -> Run:
        """Store a run in its own transaction, once per key: when a run of the same key is
        already stored (another process computed it meanwhile) that one stays and is returned,
        so every process sees the same run."""
        values = {k: v for k, v in _row(run).items() if k != "id"}
        with self._conn:
            new_id = self._insert(values)
        if new_id is None:
            return self.get(run.key)
        run.id = new_id
        return run

    def put_analysis(self, study: str, kind: str, payload: dict) -> None:
        """Store an analysis result (recommendation, search, sweep, interference) as JSON."""
        created = datetime.now(timezone.utc).isoformat()
        with self._conn:
            self._conn.execute(
                "INSERT INTO analyses (created, study, kind, payload) VALUES (?, ?, ?, ?)",
                (created, study, kind, json.dumps(payload)),
            )

    def analyses(self, study: str | None = None) -> list[dict]:
        """Stored analyses, oldest first: dicts with created, study, kind, payload."""
        sql = "SELECT created, study, kind, payload FROM analyses"
        rows = self._conn.execute(
            sql + (" WHERE study = ? ORDER BY id" if study else " ORDER BY id"),
            (study,) if study else (),
        ).fetchall()
        return [
            {"created": c, "study": st, "kind": k, "payload": json.loads(p)} for c, st, k, p in rows
        ]

    def query(
        self,
        study: str | None = None,
        model: str | None = None,
        status: str | None = None,
        contains: str | None = None,
    ) -> list[Run]:
        clauses, params = [], []
        for column, value in (("study", study), ("model", model), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if contains:
            clauses.append("pipeline LIKE ?")
            params.append(f"%{contains}%")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM runs {where} ORDER BY id", params
        ).fetchall()
        return [_to_run(r) for r in rows]

    def export(self, runs: list[Run], path: Path) -> None:
        """CSV or JSON by the file's suffix, written atomically (a failed write leaves no file
        and raises a one-line WriteError)."""
        if path.suffix not in (".json", ".csv"):
            raise PqorderError(f"export format of {path} unknown: use a .csv or .json file")
        with atomic_output(path, directory=False) as tmp:
            if path.suffix == ".json":
                tmp.write_text(json.dumps([r.to_dict() for r in runs], indent=2))
            else:
                with tmp.open("w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
                    writer.writeheader()
                    writer.writerows(_row(r) for r in runs)


def _row(run: Run) -> dict[str, object]:
    """The run as the values of its row (JSON columns encoded, M written out)."""
    values = {**asdict(run), "metric": run.metric}
    for name in JSON_COLUMNS:
        values[name] = json.dumps(values[name])
    return {name: values[name] for name in COLUMNS}


def _decoded(row: dict[str, object]) -> dict[str, object]:
    """A row's values with the JSON columns parsed."""
    return {k: json.loads(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}


def _to_run(row: tuple) -> Run:
    data = _decoded(dict(zip(COLUMNS, row, strict=True)))
    del data["metric"]  # derived from value and direction
    data["details"] = data["details"] or {}  # NULL in rows from before schema v3
    data["executor"] = data["executor"] or "local"  # NULL in rows from before schema v4
    return Run(**data)
