"""``backend="auto"``: pick, per method, the fastest backend whose output agrees with the reference.

The choice comes from a table shipped in ``cnnlens/data/auto_backend.json``, written by
``benchmarks/perf.py --write-auto``. Users can refresh it for their own machine with
``cnnlens.auto.refresh()`` (it writes ``~/.cache/cnnlens/auto_backend.json``, which wins over the
shipped one). Without a table entry the static :data:`cnnlens.registry.PREFERENCE` order applies.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).with_name("data") / "auto_backend.json"


def user_table_path() -> Path:
    root = os.environ.get("CNNLENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cnnlens")
    return Path(root) / "auto_backend.json"


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    for path in (user_table_path(), SHIPPED):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("methods"), dict):
            return data
    return {"methods": {}}


def preferred_backends(method: str, have: list[str]) -> list[str]:
    """Backends for ``method``, best first: the measured order, then the static preference."""
    measured = [b for b in _table()["methods"].get(method, {}).get("order", []) if b in have]
    return measured + [b for b in have if b not in measured]


def table() -> dict[str, Any]:
    """The auto table in force (user's measured one if present, else the shipped one)."""
    return _table()


def write_table(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write an auto table (used by ``benchmarks/perf.py --write-auto`` and :func:`refresh`)."""
    target = path or user_table_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(target)
    _table.cache_clear()
    return target
