"""The run store: every run is a row in SQLite, written when it finishes.

Rows are keyed by a content hash of (model, calibration, protocol, pipeline, engine options),
so a rerun of a sweep or search finds what is already stored and skips it; a killed process
loses only the run in flight. A file that is not a pqorder store, or comes from a newer
schema, is refused with a clear error and never overwritten.
"""

from __future__ import annotations

import csv
import json
import platform
import socket
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pqorder.errors import PqorderError
from pqorder.paths import cache_dir

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    study TEXT NOT NULL,
    model TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    n_steps INTEGER NOT NULL,
    calibration TEXT,
    protocol TEXT NOT NULL,
    metric REAL,
    perplexity REAL,
    status TEXT NOT NULL,
    error TEXT,
    steps TEXT NOT NULL,
    seconds REAL NOT NULL,
    peak_rss_mb REAL,
    versions TEXT NOT NULL,
    host TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_study ON runs (study);
CREATE TABLE IF NOT EXISTS analyses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    study TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
"""
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
    "metric",
    "perplexity",
    "status",
    "error",
    "steps",
    "seconds",
    "peak_rss_mb",
    "versions",
    "host",
)
JSON_COLUMNS = ("calibration", "protocol", "steps", "versions")


class StoreError(PqorderError):
    """The run store file cannot be used as it is."""


def m_text(metric: str) -> str:
    """How M is written for a metric: −perplexity, or the (higher-is-better) metric itself."""
    return "−perplexity" if metric == "perplexity" else metric


def default_store_path() -> Path:
    """$PQORDER_CACHE/runs.sqlite (see ``pqorder.paths``)."""
    return cache_dir() / "runs.sqlite"


def versions() -> dict[str, str]:
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
class Run:
    """One stored run: an ordered pipeline evaluated under a protocol."""

    key: str
    study: str
    model: str
    pipeline: str
    n_steps: int
    calibration: dict | None
    protocol: dict
    metric: float | None
    perplexity: float | None
    status: str  # "ok" or "failed"
    error: str | None = None
    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float | None = None
    versions: dict = field(default_factory=versions)
    host: str = field(default_factory=socket.gethostname)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def value(self) -> float | None:
        """The protocol's own number: perplexity, else M itself (accuracy, top-1, ...)."""
        return self.perplexity if self.perplexity is not None else self.metric

    @property
    def metric_name(self) -> str:
        """What ``value`` is: the protocol's task, or perplexity for text protocols."""
        return self.protocol.get("task", "perplexity")


class RunStore:
    """SQLite-backed store of runs (one file, one table of runs)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self._conn = sqlite3.connect(self.path, timeout=30)
            if existed:
                self._check_schema()
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not a usable pqorder run store ({exc}); it was left untouched — "
                "move it away or pass another --store path"
            ) from exc

    def _check_schema(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite file but not a pqorder run store; it was left "
                "untouched — pass another --store path"
            )
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None or int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {row[0] if row else '?'}, newer than this "
                f"pqorder understands ({SCHEMA_VERSION}); upgrade pqorder or use another --store"
            )

    def close(self) -> None:
        self._conn.close()

    def get(self, key: str) -> Run | None:
        row = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM runs WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _to_run(row)

    def put(self, run: Run) -> Run:
        """Insert (or replace) one run in its own transaction."""
        values = {k: v for k, v in asdict(run).items() if k != "id"}
        for name in JSON_COLUMNS:
            values[name] = json.dumps(values[name])
        names = list(values)
        with self._conn:
            cur = self._conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(names)}) "
                f"VALUES ({', '.join('?' for _ in names)})",
                [values[n] for n in names],
            )
        run.id = cur.lastrowid
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
        """CSV or JSON by the file's suffix, written atomically."""
        tmp = path.with_name(f".{path.name}.tmp")
        records = [asdict(r) for r in runs]
        if path.suffix == ".json":
            tmp.write_text(json.dumps(records, indent=2))
        elif path.suffix == ".csv":
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
                writer.writeheader()
                for rec in records:
                    writer.writerow(
                        {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in rec.items()}
                    )
        else:
            raise PqorderError(f"export format of {path} unknown: use a .csv or .json file")
        tmp.replace(path)


def _to_run(row: tuple) -> Run:
    data = dict(zip(COLUMNS, row, strict=True))
    for name in JSON_COLUMNS:
        data[name] = json.loads(data[name]) if data[name] is not None else None
    return Run(**data)
