"""``backend="auto"``: pick, per method, the fastest backend whose output agrees with the reference.

The choice comes from a table shipped in ``cnnlens/data/auto_backend.json``, written by
``python -m cnnlens.auto_refresh --ship``. Users can refresh it for their own machine with
``cnnlens.auto_refresh.refresh()`` (it writes ``~/.cache/cnnlens/auto_backend.json``, which wins over
the shipped one). Without a table entry the static :data:`cnnlens.registry.PREFERENCE` order applies.
This module only reads and writes the table (the registry reads it); measuring is
:mod:`cnnlens.auto_refresh`, which runs the explainers.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from cnnlens.errors import CnnlensWarning

SHIPPED = Path(__file__).with_name("data") / "auto_backend.json"


def user_table_path() -> Path:
    root = os.environ.get("CNNLENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cnnlens")
    return Path(root) / "auto_backend.json"


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    for path in (user_table_path(), SHIPPED):
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            _ignored(path, f"it cannot be read as JSON ({type(exc).__name__}: {exc})")
            continue
        problem = _table_problem(data)
        if problem:
            _ignored(path, problem)
            continue
        return data  # type: ignore[no-any-return]
    return {"methods": {}}


def _table_problem(data: Any) -> str | None:
    """What makes ``data`` unusable as an auto table (None when it is a valid one).

    A valid table is ``{"methods": {method: {"order": [backend, ...], ...}, ...}, ...}``.
    """
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    methods = data.get("methods")
    if not isinstance(methods, dict):
        return f"its 'methods' is {type(methods).__name__ if 'methods' in data else 'missing'}, not an object"
    for method, row in methods.items():
        if not isinstance(row, dict):
            return f"its entry for '{method}' is a {type(row).__name__}, not an object"
        order = row.get("order", [])
        if not isinstance(order, list) or not all(isinstance(b, str) for b in order):
            return f"its 'order' for '{method}' is not a list of backend names"
    return None


def _ignored(path: Path, why: str) -> None:
    warnings.warn(
        f"ignoring the auto-backend table '{path}': {why}; backend='auto' uses the next table or the built-in "
        "preference. Delete the file or rewrite it with cnnlens.auto_refresh.refresh()",
        CnnlensWarning,
        stacklevel=4,
    )


def preferred_backends(method: str, have: list[str]) -> list[str]:
    """Backends for ``method``, best first: the measured order, then the static preference."""
    measured = [b for b in _table()["methods"].get(method, {}).get("order", []) if b in have]
    return measured + [b for b in have if b not in measured]


def table() -> dict[str, Any]:
    """The auto table in force (user's measured one if present, else the shipped one)."""
    return _table()


def write_table(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write an auto table (used by ``python -m cnnlens.auto --ship`` and :func:`refresh`)."""
    target = path or user_table_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(target)
    _table.cache_clear()
    return target
