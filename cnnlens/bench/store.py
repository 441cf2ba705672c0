"""The study store: one SQLite file per study.

Tables:

* ``meta`` (study, key, value): run metadata (package versions, device, git revision, suite, options).
* ``cells`` (study, cell, ...): one row per finished cell with its status (``done``, ``error``,
  ``skipped``), its spec as JSON, its wall time and (``compute``) the seconds of it spent inside
  ``explain()`` and the metric calls (studies written before that column get it added, empty).
* ``results`` (study, model, image, method, backend, metric) -> value: the table. ``deterministic``
  is 0 for timing and memory rows, which change from run to run.
* ``artifacts``: maps (float16) and raw attributions (float32) that later cells (agreement) read.
* ``images``: each image's display copy (PNG), target and ground-truth box, for the report; written
  shard by shard, by the cell that reads the shard (``kind = 'images'``).

Only the process that runs the study (the driver) writes the file, whatever the engine: workers
return their rows to it, so SQLite never sees two writers.

Every cell is written in one transaction together with its ``cells`` row, and every insert is
``INSERT OR IGNORE`` on a primary key, so a study killed at any moment resumes without losing or
duplicating a row, and two processes running the same cell cannot double it: the first write of a
cell stays, a second one (another worker, or a rerun that raced it) is a no-op instead of an error.

The store refuses a file that is not a cnnlens study (another program's SQLite database, a corrupt
file) with a :class:`~cnnlens.errors.StoreError` before writing anything to it, and reports open a
study on read-only media read-only.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens.errors import CnnlensError, OutputError, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    study TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
    PRIMARY KEY (study, key));
CREATE TABLE IF NOT EXISTS cells (
    study TEXT NOT NULL, cell TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, seconds REAL, host TEXT, pid INTEGER, finished REAL, compute REAL,
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

#: table -> its columns, as SCHEMA creates them (what a file must have to be read as a study).
COLUMNS = {
    "meta": ("study", "key", "value"),
    "cells": ("study", "cell", "kind", "spec", "status", "error", "seconds", "host", "pid", "finished"),
    "results": ("study", "cell", "model", "image", "method", "backend", "metric", "value", "deterministic"),
    "artifacts": ("study", "cell", "model", "image", "method", "backend", "name", "data"),
    "images": ("study", "model", "image", "position", "source", "target", "label", "box", "png"),
}

Row = tuple[str, str, str, str, str, "float | None", int]  # model, image, method, backend, metric, value, det


def _array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _array_from(b: bytes) -> np.ndarray:
    """An artifact's array: ``.npy`` bytes, or a one-array ``.npz`` (a study's slim copy compresses its maps)."""
    obj = np.load(io.BytesIO(b), allow_pickle=False)
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            return obj[obj.files[0]]
    return obj


def sqlite_error(path: Path, exc: sqlite3.Error, writing: bool) -> CnnlensError:
    """Translate an SQLite failure on a study file into one clear cnnlens error."""
    msg = str(exc)
    low = msg.lower()
    if "full" in low:
        return OutputError(f"could not write study database '{path}': the disk is full; free some space and "
                                "run the same command again, which resumes (finished cells are kept)")
    if "readonly" in low or "read-only" in low or (writing and "unable to open" in low):
        return OutputError(f"could not write study database '{path}': its folder is read-only or not writable "
                                f"({msg}); choose a writable output folder (--out)")
    if "locked" in low or "busy" in low:
        return StoreError(f"study database '{path}' is locked by another process ({msg}); wait for it, or use "
                          "another output folder")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreError(f"'{path}' is not a readable SQLite database ({msg}): the file is corrupt or is not a "
                          "study; move it away, or point to the .sqlite file `cnnlens bench` wrote")
    return StoreError(f"study database '{path}' could not be used ({type(exc).__name__}: {msg})")


def _tables(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({json.dumps(n)})")) for n in names}


def _check_schema(path: Path, tables: dict[str, tuple[str, ...]], allow_empty: bool) -> None:
    """Refuse a database that is not a cnnlens study (before anything is written to it).

    A study has every table of :data:`COLUMNS` with at least those columns; tables a user added
    for their own analysis are tolerated. An empty database is a study not yet started.
    """
    user = {n: c for n, c in tables.items() if not n.startswith("sqlite_")}
    if not user and allow_empty:
        return
    missing = sorted(set(COLUMNS) - set(user))
    wrong = sorted(n for n, cols in COLUMNS.items() if n in user and not set(cols) <= set(user[n]))
    if not missing and not wrong:
        return
    problems = [f"missing tables {', '.join(missing)}"] if missing else []
    problems += [f"table {n} lacks columns {', '.join(c for c in COLUMNS[n] if c not in user[n])}" for n in wrong]
    found = ", ".join(sorted(user)) or "none"
    raise StoreError(
        f"'{path}' is an SQLite database but not a cnnlens study ({'; '.join(problems)}; its tables: {found}); "
        "cnnlens leaves it untouched: move it away, or point to the .sqlite file `cnnlens bench` wrote")


class Store:
    """A study's SQLite file. Safe to open from several processes (WAL, busy timeout).

    Raises:
        StoreError: The file is corrupt or another program's SQLite database (it is not modified).
        OutputError: The folder cannot be written (read-only, full disk).
    """

    def __init__(self, path: str | Path, study: str) -> None:
        from cnnlens._files import ensure_folder

        self.path = Path(path)
        self.study = study
        ensure_folder(self.path.parent, "study folder", "--out")
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc, writing=True) from None
        try:
            # Read before writing anything: a foreign or corrupt file must come out unchanged.
            _check_schema(self.path, _tables(self.conn), allow_empty=True)
            self.conn.execute("PRAGMA busy_timeout=60000")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA)
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(cells)")}
            if "compute" not in cols:  # a study written before the column existed
                self.conn.execute("ALTER TABLE cells ADD COLUMN compute REAL")
        except sqlite3.Error as exc:
            self.conn.close()
            raise sqlite_error(self.path, exc, writing=True) from None
        except BaseException:
            self.conn.close()
            raise

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
            # SQLite rolls back by itself after some errors (SQLITE_FULL): a second ROLLBACK would
            # fail and hide the error that matters.
            if self.conn.in_transaction:
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
        images: Iterable[tuple[str, str, int, str, int, str | None, Any, bytes]] | None = None,
        meta: dict[str, Any] | None = None,
        compute: float | None = None,
        where: tuple[str, int] | None = None,
        replace: bool = False,
    ) -> None:
        """Write a cell's rows, artifacts, image rows, metadata and status in one transaction.

        All or nothing: a study killed at any moment has each cell either whole or absent. A cell
        stored as ``error`` or ``skipped`` is replaced (a retry); a ``done`` one only with ``replace``
        (a cell that compared what its failed inputs left, run again once they are retried).
        ``images`` rows are (model, image, position, source, target, label, box, png); ``where``
        is the (host, pid) that ran the cell (default: this process).
        """
        import socket

        with self.transaction() as c:
            old = c.execute("SELECT status FROM cells WHERE study = ? AND cell = ?", (self.study, cell)).fetchone()
            if old is not None and (replace or old[0] != "done"):
                for table in ("cells", "results", "artifacts"):
                    c.execute(f"DELETE FROM {table} WHERE study = ? AND cell = ?", (self.study, cell))
            if images:
                c.executemany(
                    "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(self.study, model, img, pos, src, tgt, label, json.dumps(box), png)
                     for model, img, pos, src, tgt, label, box, png in images],
                )
            if meta:
                c.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?, ?)",
                              [(self.study, k, json.dumps(v, default=str)) for k, v in meta.items()])
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
                "INSERT OR IGNORE INTO cells (study, cell, kind, spec, status, error, seconds, host, pid, finished, "
                "compute) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.study, cell, kind, json.dumps(spec, sort_keys=True, default=str), status, error, seconds,
                 *(where or (socket.gethostname(), os.getpid())), time.time(), compute),
            )

    # ---------------------------------------------------------------- images and artifacts
    def put_images(self, model: str, items: list[tuple[str, int, str, int, str | None, Any, bytes]]) -> None:
        with self.transaction() as c:
            c.executemany(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.study, model, img, pos, src, tgt, label, json.dumps(box), png)
                 for img, pos, src, tgt, label, box, png in items],
            )

    def invalidate(self, model: str, images: set[str]) -> int:
        """Delete every cell of ``model`` whose images include one of ``images`` (its rows and artifacts
        too) and the image rows of their shards, in one transaction; returns the number of cells.

        A resume then runs those cells again: an image whose file changed must not keep results
        computed from its old pixels, nor be compared with maps of the new ones.
        """
        keys: list[str] = []
        shard_images: set[str] = set()
        for cell, kind, spec in self.conn.execute("SELECT cell, kind, spec FROM cells WHERE study = ?", (self.study,)):
            d = json.loads(spec)
            ids = d.get("images") or []
            if d.get("model") == model and images.intersection(ids):
                keys.append(cell)
                if kind == "images":
                    shard_images.update(ids)
        with self.transaction() as c:
            for table in ("cells", "results", "artifacts"):
                c.executemany(f"DELETE FROM {table} WHERE study = ? AND cell = ?", [(self.study, k) for k in keys])
            c.executemany("DELETE FROM images WHERE study = ? AND model = ? AND image = ?",
                          [(self.study, model, i) for i in sorted(shard_images | images)])
        return len(keys)

    def positions(self, model: str) -> dict[str, int]:
        """image -> position, for the images of ``model`` already in the study."""
        rows = self.conn.execute("SELECT image, position FROM images WHERE study = ? AND model = ?",
                                 (self.study, model)).fetchall()
        return {i: int(p) for i, p in rows}

    def targets(self, model: str) -> dict[str, int]:
        """image -> target class, for the images of ``model`` already in the study."""
        rows = self.conn.execute("SELECT image, target FROM images WHERE study = ? AND model = ?",
                                 (self.study, model)).fetchall()
        return {i: int(t) for i, t in rows if t is not None}

    def artifact(self, model: str, image: str, method: str, backend: str, name: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT data FROM artifacts WHERE study=? AND model=? AND image=? AND method=? AND backend=? AND name=?",
            (self.study, model, image, method, backend, name),
        ).fetchone()
        return _array_from(row[0]) if row else None


def _read_only_uri(p: Path) -> str:
    """The URI that opens a study read-only, also where its folder cannot be written.

    ``mode=ro`` still needs the WAL index (``-shm``) to exist or be creatable next to the file. On
    read-only media, where it can be neither, a study that was closed cleanly (no ``-wal`` left) is
    opened ``immutable``: nothing can change it there, so SQLite may skip locking and the index.
    """
    from urllib.parse import quote

    uri = f"file:{quote(str(p.absolute()))}?mode=ro"
    wal, shm = p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")
    folder_writable = os.access(p.absolute().parent, os.W_OK | os.X_OK)
    if folder_writable or shm.exists():
        return uri
    journal = p.with_name(p.name + "-journal")
    for log, what in ((wal, "write-ahead log"), (journal, "rollback journal")):
        if log.exists() and log.stat().st_size > 0:
            raise StoreError(f"study database '{p}' is on read-only media with an unfinished {what} "
                             f"('{log.name}'), which SQLite cannot apply there; copy the folder to writable "
                             "storage and run the command there")
    return uri + "&immutable=1"


def open_existing(path: str | Path) -> sqlite3.Connection:
    """Open a study file read-only (for reports and exports), also on read-only media.

    Raises:
        StoreError: The file does not exist, is corrupt, or is not a cnnlens study.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"study database '{p}' does not exist; run `cnnlens bench` first, or point to the "
                         ".sqlite file it wrote")
    uri = _read_only_uri(p)
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60.0)
    except sqlite3.Error as exc:
        raise sqlite_error(p, exc, writing=False) from None
    try:
        _check_schema(p, _tables(conn), allow_empty=False)
    except sqlite3.Error as exc:
        conn.close()
        raise sqlite_error(p, exc, writing=False) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _query(db: Path, conn: sqlite3.Connection, q: str, args: tuple[Any, ...] = ()) -> Any:
    """pandas' read_sql_query, with SQLite failures (a page corrupt past the header) translated."""
    import pandas as pd

    try:
        return pd.read_sql_query(q, conn, params=args)
    except (sqlite3.Error, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, sqlite3.Error) else exc
        if isinstance(cause, sqlite3.Error):
            raise sqlite_error(db, cause, writing=False) from None
        raise StoreError(f"study database '{db}' could not be read ({exc})") from None


def read_results(db: str | Path, study: str | None = None, deterministic_only: bool = False) -> Any:
    """The results table as a pandas DataFrame, sorted by its key.

    Args:
        db: The study's SQLite file.
        study: Keep one study (a file normally holds one).
        deterministic_only: Drop timing and memory rows.
    """
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
        df = _query(Path(db), conn, q, args)
    finally:
        conn.close()
    return df.sort_values(["study", "model", "image", "method", "backend", "metric"]).reset_index(drop=True)


def read_table(db: str | Path, table: str) -> Any:
    """Any table of the study file (``cells``, ``meta``, ``images``) as a DataFrame."""
    if table not in ("cells", "meta", "images", "results"):
        raise StoreError(f"unknown table '{table}'; tables: cells, meta, images, results")
    conn = open_existing(db)
    try:
        return _query(Path(db), conn, f"SELECT * FROM {table}")
    finally:
        conn.close()


def load(db: str | Path) -> Any:
    """The study's results as a pandas DataFrame: one row per (model, image, method, backend, metric).

    Columns: study, model, image, method, backend, metric, value, deterministic (0 for timing
    and memory rows) and cell (the key of the cell that wrote the row).
    """
    return read_results(db)


EXPORT_FORMATS = ("csv", "parquet")


def export(db: str | Path, out: str | Path | None = None, format: str = "csv") -> Path:
    """Write the results table to CSV or Parquet (default: ``results.<format>`` next to the database).

    Raises:
        StoreError: ``db`` is not a readable study.
        OutputError: ``format`` is unknown, or the file could not be written.
    """
    from cnnlens._files import write_atomic

    if format not in EXPORT_FORMATS:
        raise OutputError(f"unknown export format '{format}'; use one of: {', '.join(EXPORT_FORMATS)}")
    target = Path(out) if out is not None else Path(db).with_name(f"results.{format}")
    df = read_results(db).drop(columns=["cell"])
    if format == "csv":
        return write_atomic(target, df.to_csv(index=False), "results CSV")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise OutputError("Parquet export needs pyarrow: pip install pyarrow (or export --format csv)") from None
    return write_atomic(target, lambda tmp: df.to_parquet(tmp, index=False), "results Parquet")


def export_csv(db: str | Path, path: str | Path | None = None) -> Path:
    """Write the results table to CSV (default: ``results.csv`` next to the database)."""
    from cnnlens._files import write_atomic

    out = Path(path) if path is not None else Path(db).with_name("results.csv")
    return write_atomic(out, read_results(db).drop(columns=["cell"]).to_csv(index=False), "results CSV")


def summary(db: str | Path) -> Any:
    """Mean, standard deviation, count and 95 % bootstrap interval of the mean (``ci_low``,
    ``ci_high``: :func:`cnnlens.bench.verdict.intervals`, percentile method, seed 0; NaN for fewer
    than 2 values) over images per (model, method, backend, metric).

    Curve points are kept (they are what the curve plots show); the per-image table stays in the
    study file and in :func:`export_csv`.
    """
    from cnnlens.bench.verdict import intervals

    df = read_results(db)
    keys = ["model", "method", "backend", "metric"]
    g = df.groupby(keys, sort=True)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    ci = intervals(df, metrics="all")[[*keys, "ci_low", "ci_high"]]
    out = out.merge(ci, on=keys, how="left")
    det = df.groupby(keys, sort=True)["deterministic"].first().reset_index()
    return out.merge(det, on=keys)
