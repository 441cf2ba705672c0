"""A study file small enough to commit next to its report, from which the same report is rebuilt.

A study keeps every map and raw attribution it computed (the agreement cells read them back). The
report reads only the maps of the images its grid shows and one raw attribution per (method,
backend), for its shape. :func:`slim_copy` keeps those and every other table whole, so
``cnnlens report`` on the copy writes the same report as on the original.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cnnlens.bench.reporting.sections import GRID_IMAGES


def slim_copy(db: Path | str, out: Path | str, grid_images: int = GRID_IMAGES) -> Path:
    """Write a copy of ``db`` without the artifacts the report does not read; return its path.

    Raises:
        StoreError: ``db`` is missing, corrupt or not a cnnlens study.
        OutputError: ``out`` cannot be written.
    """
    from cnnlens._files import output_error
    from cnnlens.bench.store import open_existing, sqlite_error

    db, out = Path(db), Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    src = open_existing(db)
    try:
        tmp.unlink(missing_ok=True)
        src.execute("VACUUM INTO ?", (str(tmp),))
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise sqlite_error(db, exc, writing=False) from None
    finally:
        src.close()
    conn = sqlite3.connect(tmp)
    try:
        conn.execute(
            "DELETE FROM artifacts WHERE name = 'map' AND NOT EXISTS (SELECT 1 FROM images i WHERE "
            "i.study = artifacts.study AND i.model = artifacts.model AND i.image = artifacts.image "
            "AND i.position < ?)", (grid_images,))
        conn.execute(
            "DELETE FROM artifacts WHERE name = 'raw' AND model || '/' || image != (SELECT MIN(a.model || '/' || "
            "a.image) FROM artifacts a WHERE a.name = 'raw' AND a.study = artifacts.study AND a.method = "
            "artifacts.method AND a.backend = artifacts.backend)")
        conn.execute("DELETE FROM artifacts WHERE name NOT IN ('map', 'raw')")
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()
    try:
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(out, exc, "study copy", "--out") from None
    return out
