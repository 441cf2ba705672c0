"""Read a study file for browsing: its images, stored maps, agreement, curves and speed.

The store's readers (:func:`cnnlens.bench.read_results`, :func:`~cnnlens.bench.read_table`) give
the tables; this module adds what an interactive viewer needs on top of them: the stored maps as
arrays (``np.load(allow_pickle=False)``) and the tables reshaped per view. Everything opens the file
read-only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlens.bench import store


@dataclass(frozen=True)
class StudyImage:
    """One image of a study as the store keeps it."""

    model: str
    image: str
    label: str | None
    png: bytes


class StudyView:
    """A study file opened read-only, its results loaded once.

    Args:
        db: The SQLite file written by :func:`cnnlens.bench.run`.
    """

    def __init__(self, db: str | Path) -> None:
        import pandas as pd

        self.db = Path(db)
        self.results: pd.DataFrame = store.read_results(self.db)
        self.meta = store.read_table(self.db, "meta")
        imgs = store.read_table(self.db, "images")
        self.images = [StudyImage(r.model, r.image, r.label, bytes(r.png) if r.png is not None else b"")
                       for r in imgs.sort_values(["model", "position"]).itertuples()]

    # ---------------------------------------------------------------- choices
    def models(self) -> list[str]:
        return sorted(self.results["model"].unique().tolist())

    def pairs(self) -> list[tuple[str, str]]:
        """(method, backend) pairs that have stored explanations (agreement and cross rows left out)."""
        r = self.results
        r = r[~r["method"].str.contains("|", regex=False) & ~r["backend"].str.contains("|", regex=False)]
        return sorted({(m, b) for m, b in zip(r["method"], r["backend"], strict=True)})

    def metrics(self) -> list[str]:
        """Metric families without the per-point curve and per-batch-size suffixes."""
        names = {m.split("@")[0] for m in self.results["metric"].unique().tolist() if ".curve@" not in m}
        return sorted(names)

    def filtered(self, models: list[str] | None = None, methods: list[str] | None = None,
                 backends: list[str] | None = None, metric: str | None = None) -> Any:
        r = self.results
        if models:
            r = r[r["model"].isin(models)]
        if methods:
            r = r[r["method"].apply(lambda m: any(p in methods for p in m.split("|")))]
        if backends:
            r = r[r["backend"].apply(lambda b: any(p in backends for p in b.split("|")))]
        if metric:
            r = r[r["metric"].str.startswith(metric)]
        return r

    # ---------------------------------------------------------------- views
    def summary(self, **filters: Any) -> Any:
        """Mean, std and count over images per (model, method, backend, metric), curves left out."""
        r = self.filtered(**filters)
        r = r[~r["metric"].str.contains(".curve@", regex=False)]
        out = r.groupby(["model", "method", "backend", "metric"], sort=True)["value"].agg(["mean", "std", "count"])
        return out.reset_index()

    def agreement(self, **filters: Any) -> Any:
        """Mean agreement between backends of one method: one row per (model, method, backend pair)."""
        r = self.filtered(**filters)
        r = r[r["metric"].str.startswith("agree.")]
        t = r.pivot_table(index=["model", "method", "backend"], columns="metric", values="value", aggfunc="mean")
        t.columns = [c.removeprefix("agree.") for c in t.columns]
        return t.reset_index()

    def speed(self, **filters: Any) -> Any:
        r = self.filtered(**filters)
        r = r[r["metric"].str.startswith("speed.")]
        t = r.pivot_table(index=["model", "method", "backend"], columns="metric", values="value", aggfunc="median")
        t.columns = [c.removeprefix("speed.") for c in t.columns]
        return t.reset_index()

    def curves(self, family: str, **filters: Any) -> dict[tuple[str, str, str], np.ndarray]:
        """Mean curve over images per (model, method, backend) for a family such as
        ``"deletion_blur"``, ``"insertion_blur"`` or ``"sanity.spearman"``."""
        r = self.filtered(**filters)
        if family.startswith("sanity."):
            r = r[r["metric"].str.startswith(family + "@")]
        else:
            r = r[r["metric"].str.startswith(family + ".curve@")]
        out: dict[tuple[str, str, str], np.ndarray] = {}
        for key, g in r.groupby(["model", "method", "backend"], sort=True):
            mean = g.groupby("metric")["value"].mean().sort_index()
            out[(str(key[0]), str(key[1]), str(key[2]))] = mean.to_numpy(np.float64)
        return out

    def map(self, model: str, image: str, method: str, backend: str, name: str = "map") -> np.ndarray | None:
        """A stored map (float16, in [0, 1]) or raw attribution, or None when the study has none."""
        conn = store.open_existing(self.db)
        try:
            row = conn.execute(
                "SELECT data FROM artifacts WHERE model=? AND image=? AND method=? AND backend=? AND name=?",
                (model, image, method, backend, name),
            ).fetchone()
        finally:
            conn.close()
        return np.load(io.BytesIO(row[0]), allow_pickle=False) if row else None
