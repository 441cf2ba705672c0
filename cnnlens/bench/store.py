"""The study store: one SQLite file per study.

Tables:

* ``meta`` (study, key, value): run metadata (package versions, device, git revision, suite, options).
* ``cells`` (study, cell, ...): one row per finished cell with its status (``done``, ``error``,
  ``skipped``), its spec as JSON and its wall time.
* ``results`` (study, model, image, method, backend, metric) -> value: the table. ``deterministic``
  is 0 for timing and memory rows, which change from run to run.
* ``artifacts``: maps (float16) and raw attributions (float32) that later cells (agreement) read.
* ``images``: each image's display copy (PNG), target and ground-truth box, for the report.

Every cell is written in one transaction together with its ``cells`` row, and every insert is
``INSERT OR IGNORE`` on a primary key, so a study killed at any moment resumes without losing or
duplicating a row, and two processes running the same cell cannot double it.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    study TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
    PRIMARY KEY (study, key));
CREATE TABLE IF NOT EXISTS cells (
    study TEXT NOT NULL, cell TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, seconds REAL, host TEXT, pid INTEGER, finished REAL,
    PRIMARY KEY (study, cell));
CREATE TABLE IF NOT EXISTS results (
    study TEXT NOT NULL, cell TEXT NOT NULL, model TEXT NOT NULL, image TEXT NOT NULL,
    method TEXT NOT NULL, backend TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    deterministic INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (study, model, image, method, backend, metric));
CREATE TABLE IF NOT EXISTS artifacts (
    study TEXT NOT NULL, cell TEXT NOT NULL, model TEXT NOT NULL, image TEXT NOT NULL,
    method TEXT NOT NULL, backend TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (study, model, image, method, backend, name));
CREATE TABLE IF NOT EXISTS images (
    study TEXT NOT NULL, model TEXT NOT NULL, image TEXT NOT NULL, position INTEGER NOT NULL,
    source TEXT, target INTEGER, label TEXT, box TEXT, png BLOB,
    PRIMARY KEY (study, model, image));
"""

Row = tuple[str, str, str, str, str, "float | None", int]  # model, image, method, backend, metric, value, det


def _array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _array_from(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


class Store:
    """A study's SQLite file. Safe to open from several processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path, study: str) -> None:
        self.path = Path(path)
        self.study = study
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # ---------------------------------------------------------------- metadata
    def set_meta(self, items: dict[str, Any], replace: bool = False) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self.transaction() as c:
            c.executemany(f"{verb} INTO meta VALUES (?, ?, ?)",
                          [(self.study, k, json.dumps(v, default=str)) for k, v in items.items()])

    def meta(self) -> dict[str, Any]:
        rows = self.conn.execute("SELECT key, value FROM meta WHERE study = ?", (self.study,)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    # ---------------------------------------------------------------- cells
    def finished(self) -> dict[str, str]:
        """cell key -> status, for every finished cell of the study."""
        rows = self.conn.execute("SELECT cell, status FROM cells WHERE study = ?", (self.study,)).fetchall()
        return dict(rows)

    def status(self, cell: str) -> str | None:
        row = self.conn.execute("SELECT status FROM cells WHERE study = ? AND cell = ?", (self.study, cell)).fetchone()
        return row[0] if row else None

    def write_cell(
        self,
        cell: str,
        kind: str,
        spec: dict[str, Any],
        status: str,
        rows: Iterable[Row] = (),
        artifacts: Iterable[tuple[str, str, str, str, str, np.ndarray]] = (),
        error: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """Write a cell's rows, artifacts and status in one transaction (all or nothing)."""
        import os
        import socket

        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.study, cell, m, i, me, b, k, None if v is None else float(v), int(d))
                 for m, i, me, b, k, v, d in rows],
            )
            c.executemany(
                "INSERT OR IGNORE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.study, cell, m, i, me, b, name, _array_bytes(a)) for m, i, me, b, name, a in artifacts],
            )
            c.execute(
                "INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.study, cell, kind, json.dumps(spec, sort_keys=True, default=str), status, error, seconds,
                 socket.gethostname(), os.getpid(), time.time()),
            )

    # ---------------------------------------------------------------- images and artifacts
    def put_images(self, model: str, items: list[tuple[str, int, str, int, str | None, Any, bytes]]) -> None:
        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.study, model, img, pos, src, tgt, label, json.dumps(box), png)
                 for img, pos, src, tgt, label, box, png in items],
            )

    def artifact(self, model: str, image: str, method: str, backend: str, name: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT data FROM artifacts WHERE study=? AND model=? AND image=? AND method=? AND backend=? AND name=?",
            (self.study, model, image, method, backend, name),
        ).fetchone()
        return _array_from(row[0]) if row else None


def open_existing(path: str | Path) -> sqlite3.Connection:
    """Open a study file read-only (for reports and exports); raises CnnlensError if it is not one."""
    from cnnlens.errors import CnnlensError

    p = Path(path)
    if not p.is_file():
        raise CnnlensError(f"study database '{p}' does not exist; run `cnnlens bench` first")
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=60.0)
    try:
        conn.execute("SELECT 1 FROM results LIMIT 1")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise CnnlensError(f"'{p}' is not a cnnlens study database ({exc})") from None
    return conn


def read_results(db: str | Path, study: str | None = None, deterministic_only: bool = False) -> Any:
    """The results table as a pandas DataFrame, sorted by its key.

    Args:
        db: The study's SQLite file.
        study: Keep one study (a file normally holds one).
        deterministic_only: Drop timing and memory rows.
    """
    import pandas as pd

    conn = open_existing(db)
    try:
        q = "SELECT study, model, image, method, backend, metric, value, deterministic, cell FROM results"
        args: tuple[Any, ...] = ()
        where = []
        if study is not None:
            where.append("study = ?")
            args += (study,)
        if deterministic_only:
            where.append("deterministic = 1")
        if where:
            q += " WHERE " + " AND ".join(where)
        df = pd.read_sql_query(q, conn, params=args)
    finally:
        conn.close()
    return df.sort_values(["study", "model", "image", "method", "backend", "metric"]).reset_index(drop=True)


def read_table(db: str | Path, table: str) -> Any:
    """Any table of the study file (``cells``, ``meta``, ``images``) as a DataFrame."""
    import pandas as pd

    if table not in ("cells", "meta", "images", "results"):
        from cnnlens.errors import CnnlensError

        raise CnnlensError(f"unknown table '{table}'; tables: cells, meta, images, results")
    conn = open_existing(db)
    try:
        return pd.read_sql_query(f"SELECT * FROM {table}", conn)
    finally:
        conn.close()


def export_csv(db: str | Path, path: str | Path | None = None) -> Path:
    """Write the results table to CSV (default: ``results.csv`` next to the database)."""
    out = Path(path) if path is not None else Path(db).with_name("results.csv")
    read_results(db).drop(columns=["cell"]).to_csv(out, index=False)
    return out


def summary(db: str | Path) -> Any:
    """Mean, standard deviation and count over images per (model, method, backend, metric).

    Curve points are kept (they are what the curve plots show); the per-image table stays in the
    study file and in :func:`export_csv`.
    """
    df = read_results(db)
    g = df.groupby(["model", "method", "backend", "metric"], sort=True)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    det = df.groupby(["model", "method", "backend", "metric"], sort=True)["deterministic"].first().reset_index()
    return out.merge(det, on=["model", "method", "backend", "metric"])
