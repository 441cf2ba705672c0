"""Re-measure the ``backend="auto"`` table on this machine: every backend of each method that two or
more installed toolkits provide, timed and compared (``python -m cnnlens.auto_refresh [--ship]``).

Kept apart from :mod:`cnnlens.auto`, which the registry reads: measuring runs the explainers, and the
registry must not depend on them.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cnnlens
from cnnlens import registry
from cnnlens.auto import SHIPPED, user_table_path, write_table
from cnnlens.explainer import versions


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

    if model is None:
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
    data = {
        "source": "cnnlens.auto_refresh.refresh",
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
    """``python -m cnnlens.auto_refresh [--ship] [--repeats N]``: re-measure and write the table."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cnnlens.auto_refresh", description=(
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
