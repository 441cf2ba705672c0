"""A study file small enough to commit next to its report, from which the same report is rebuilt.

A study keeps every map and raw attribution it computed (the agreement cells read them back). The
report reads only the maps of the images its grid shows and the shape of each pair's raw
attribution. :func:`slim_copy` keeps those maps (compressed, ``.npz``), records the raw shapes in
the study's metadata instead of the arrays, and keeps every other table whole, so ``cnnlens report``
on the copy writes the same report as on the original. The copy is for reports and reading; it
cannot resume the study (its raw attributions are gone).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from cnnlens.bench.reporting.data import RAW_SHAPES_KEY, raw_shapes_of
from cnnlens.bench.reporting.sections import GRID_IMAGES
from cnnlens.bench.store import _array_from


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
        studies = [r[0] for r in conn.execute("SELECT DISTINCT study FROM meta")]
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        shapes = {f"{m}|{b}": v for (m, b), v in raw_shapes_of(conn, meta).items()}
        for study in studies:
            conn.execute("INSERT OR REPLACE INTO meta (study, key, value) VALUES (?, ?, ?)",
                         (study, RAW_SHAPES_KEY, json.dumps(shapes)))
        conn.execute(
            "DELETE FROM artifacts WHERE name = 'map' AND NOT EXISTS (SELECT 1 FROM images i WHERE "
            "i.study = artifacts.study AND i.model = artifacts.model AND i.image = artifacts.image "
            "AND i.position < ?)", (grid_images,))
        conn.execute("DELETE FROM artifacts WHERE name != 'map'")
        rows = conn.execute("SELECT rowid, data FROM artifacts").fetchall()
        for rowid, data in rows:
            buf = io.BytesIO()
            np.savez_compressed(buf, _array_from(data))
            conn.execute("UPDATE artifacts SET data = ? WHERE rowid = ?", (buf.getvalue(), rowid))
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
