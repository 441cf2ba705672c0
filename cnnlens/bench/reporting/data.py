"""Read a study file into the frames the report is built from (one read, no analysis)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Study:
    """Everything the report reads from one study file."""

    res: Any  # results: model, image, method, backend, metric, value
    cells: Any  # cell, kind, spec, status, error, seconds, finished
    images: Any  # model, image, position, source, target, label, box, png
    meta: dict[str, Any]
    maps: dict[tuple[str, str, str, str], bytes]  # (model, image, method, backend) -> stored map
    raw_shapes: dict[tuple[str, str], str]
    #: (model, image, method, backend) -> (status, error) of the explain cell that covered it.
    explained: dict[tuple[str, str, str, str], tuple[str, str]] = field(default_factory=dict)


def error_line(error: object) -> str:
    """A cell's error as one line ('' for none: SQLite's NULL reads back as None or NaN)."""
    return error.splitlines()[0] if isinstance(error, str) and error else ""


#: Meta key under which a slim copy keeps the raw attributions' shapes it dropped the arrays of.
RAW_SHAPES_KEY = "report:raw_shapes"


def raw_shapes_of(conn: Any, meta: dict[str, Any]) -> dict[tuple[str, str], str]:
    """Per (method, backend), the shape of its raw attribution ('3x224x224'), from the arrays or,
    in a slim copy, from the shapes it recorded."""
    from cnnlens.bench.store import _array_from

    if RAW_SHAPES_KEY in meta:
        return {tuple(k.split("|", 1)): v for k, v in meta[RAW_SHAPES_KEY].items()}  # type: ignore[misc]
    shapes = {}
    # The raw of each pair's first (model, image), read one row at a time.
    for method, backend, data, _first in conn.execute(
            "SELECT method, backend, data, MIN(model || '/' || image) FROM artifacts WHERE name = 'raw' "
            "GROUP BY method, backend"):
        shapes[(method, backend)] = "x".join(str(v) for v in _array_from(data).shape)
    return shapes


def load(db: Path) -> Study:
    """Read ``db`` (read-only; a corrupt, foreign or missing file raises StoreError)."""
    from cnnlens.bench.store import _query, open_existing, sqlite_error

    conn = open_existing(db)
    try:
        res = _query(db, conn, "SELECT model, image, method, backend, metric, value FROM results")
        cells = _query(db, conn, "SELECT cell, kind, spec, status, error, seconds, finished FROM cells")
        images = _query(db, conn, "SELECT model, image, position, source, target, label, box, png FROM images "
                        "ORDER BY model, position")
        try:
            return _rest(conn, res, cells, images)
        except sqlite3.Error as exc:
            raise sqlite_error(db, exc, writing=False) from None
    finally:
        conn.close()


def _rest(conn: Any, res: Any, cells: Any, images: Any) -> Study:

    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}
    maps = {}
    for model, image, method, backend, data in conn.execute(
            "SELECT model, image, method, backend, data FROM artifacts WHERE name = 'map'"):
        maps[(model, image, method, backend)] = data
    raw_shapes = raw_shapes_of(conn, meta)
    explained: dict[tuple[str, str, str, str], tuple[str, str]] = {}
    for r in cells[cells.kind == "explain"].itertuples(index=False):
        spec = json.loads(r.spec)
        for image in spec.get("images", []):
            explained[(spec.get("model", ""), image, spec.get("method", ""), spec.get("backend", ""))] = (
                r.status, error_line(r.error))
    return Study(res, cells, images, meta, maps, raw_shapes, explained)
