"""``backend="auto"``: pick, per method, the fastest backend whose output agrees with the reference.

The choice comes from a table shipped in ``cnnlens/data/auto_backend.json``, written by
``python -m cnnlens.auto --ship``. Users can refresh it for their own machine with
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
    import warnings

    from cnnlens.explainer import CnnlensWarning

    warnings.warn(
        f"ignoring the auto-backend table '{path}': {why}; backend='auto' uses the next table or the built-in "
        "preference. Delete the file or rewrite it with cnnlens.auto.refresh()",
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


def refresh(
    model: Any = None,
    inputs: Any = None,
    repeats: int = 5,
    min_pearson: float = 0.95,
    path: Path | None = None,
) -> dict[str, Any]:
    """Measure every method that two or more installed backends provide, and write the auto table.

    For each method the reference is the first backend of :data:`cnnlens.registry.PREFERENCE` that
    has it. A backend qualifies when its maps agree with the reference's (Pearson >= ``min_pearson``
    on every image); qualifying backends are ordered by median wall time, the others follow.

    Args:
        model: Defaults to torchvision's resnet18 with seeded random weights (offline). It has
            ``nn.ReLU`` modules, so guided variants that differ (FlashTorch's) are told apart; on the
            embedded ReLU6 model every guided backprop equals the plain gradient and would "agree".
        inputs: Defaults to two demo images preprocessed for ``model``.
        repeats: Timed calls per backend (after one warm-up), interleaved across backends.
        min_pearson: Agreement threshold.
        path: Where to write; defaults to the user cache (``~/.cache/cnnlens/auto_backend.json``).
    """
    import statistics
    import time
    import warnings

    import numpy as np

    import cnnlens
    from cnnlens import registry

    if model is None:
        import torch

        torch.manual_seed(0)
        model = cnnlens.load_model("resnet18", weights=None)
    if inputs is None:
        inputs = cnnlens.demo_images(model, names=["chelsea", "coffee"]).tensor
    inputs = getattr(inputs, "tensor", inputs)  # an Images batch: its tensor (display copies are not needed)
    methods: dict[str, Any] = {}
    for method in registry.METHODS:
        have = [b for b in registry.backends_for(method) if registry.BACKENDS[b].installed]
        if len(have) < 2:
            continue
        ref_maps = None
        stats: dict[str, dict[str, Any]] = {}
        explainers, targets = {}, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for backend in have:  # one call each: the maps to compare, and a warm-up
                explainers[backend] = ex = cnnlens.Explainer(model, method, backend)
                first = ex.explain(inputs, target=targets)
                targets = first.targets  # every backend explains the reference's predicted classes
                maps = first.maps.flatten(1).double().cpu().numpy()
                if ref_maps is None:
                    ref_maps, r = maps, 1.0
                else:
                    rs = [np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else 0.0
                          for a, b in zip(ref_maps, maps, strict=True)]
                    r = float(min(rs))
                stats[backend] = {"pearson_to_reference": r}
            # Timed calls interleaved across backends, the order rotating every round, so that a
            # machine whose speed drifts (shared CPUs, a warming GPU) favours none of them.
            times: dict[str, list[float]] = {b: [] for b in have}
            for i in range(repeats):
                for backend in have[i % len(have):] + have[: i % len(have)]:
                    t0 = time.perf_counter()
                    explainers[backend].explain(inputs, target=targets)
                    times[backend].append(time.perf_counter() - t0)
        for backend in have:
            stats[backend]["seconds"] = statistics.median(times[backend])
        agree = sorted((b for b in have if stats[b]["pearson_to_reference"] >= min_pearson), key=lambda b: stats[b]["seconds"])
        rest = [b for b in have if b not in agree]
        methods[method] = {"order": agree + rest, "reference": have[0], "backends": stats}
    from cnnlens.explainer import versions

    data = {
        "source": "cnnlens.auto.refresh",
        "model": getattr(getattr(model, "cnnlens_meta", None), "name", type(model).__name__),
        "input_shape": list(inputs.shape),
        "device": str(inputs.device),
        "repeats": repeats,
        "min_pearson": min_pearson,
        "versions": {b: v for backend in registry.BACKENDS if registry.BACKENDS[backend].installed
                     for b, v in versions(backend).items()},
        "methods": methods,
    }
    write_table(data, path)
    return data


def main(argv: list[str] | None = None) -> None:
    """``python -m cnnlens.auto [--ship] [--repeats N]``: re-measure and write the table."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cnnlens.auto", description=(
        "Time every backend of each multi-backend method on this machine and write the auto table "
        f"(default: {user_table_path()}, which then wins over the shipped one)."))
    ap.add_argument("--ship", action="store_true", help=f"write the shipped table instead ({SHIPPED})")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per backend, interleaved (default 5)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    result = refresh(path=SHIPPED if args.ship else None, repeats=args.repeats)
    for name, row in result["methods"].items():
        print(name, "->", row["order"], {b: round(s["seconds"], 4) for b, s in row["backends"].items()})


if __name__ == "__main__":
    main()
