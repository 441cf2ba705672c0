"""What the web app does, without the web: one model, its photos, the grid of explanations.

Every numeric result comes from the library (:class:`cnnlens.Explainer`, :mod:`cnnlens.bench.metrics`,
:func:`cnnlens.predict.top_classes`); this module only orders the calls, serialises them per model
and packs the results for display and export.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from cnnlens.errors import CnnlensError, InputError, TargetError, close_matches

#: Upload size limit of the web app (the server refuses larger bodies before they reach Python).
MAX_UPLOAD = "20mb"
#: Steps of the quick faithfulness check (the study's default is 16 and more).
QUICK_STEPS = 8
#: At most this many (method, backend) cells per grid: a guard against a request that runs for hours.
MAX_CELLS = 24
#: Seconds one Explain request may run (every call and the faithfulness check together) by default.
TIME_BUDGET = 60.0

#: The app's bounds on the options that set how much work a call does, as ``(lowest, highest)`` for
#: each integer (or each side of a window): the library accepts any positive value, a page shared by
#: several people does not. Counts of samples, steps and scales cap the forward passes; batch sizes
#: cap memory; superpixel and occlusion strides have a floor because the work grows with the square
#: of the number of patches.
LIMITS: dict[str, tuple[int, int]] = {
    "n_steps": (1, 64),
    "nt_samples": (1, 32),
    "n_samples": (1, 256),
    "num_samples": (1, 64),
    "n_baselines": (1, 16),
    "num_scales": (1, 16),
    "num_references": (1, 10),
    "internal_batch_size": (1, 64),
    "nt_samples_batch_size": (1, 64),
    "batch_size": (1, 64),
    "perturbations_per_eval": (1, 64),
    "feature_grid": (8, 224),
    "sliding_window": (1, 224),
    "strides": (4, 224),
}


def limits_text() -> str:
    """The bounds as one line for the page."""
    return "; ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in LIMITS.items())


def check_limits(method: str, options: Mapping[str, Any]) -> None:
    """Refuse an option outside :data:`LIMITS` with one message naming it and its range (a value
    below 1, or not a number, is left to the library, whose message says what the option takes)."""
    from cnnlens.errors import OptionError

    for key, value in options.items():
        if key not in LIMITS or value is None:
            continue
        lo, hi = LIMITS[key]
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 and not lo <= v <= hi:
                raise OptionError(f"{method} option {key}={value!r} is outside what this app runs: "
                                  f"use {lo}..{hi} (the library itself takes larger values)")


class RunStopped(CnnlensError):
    """An Explain request stopped by its time budget or by Cancel (raised inside the model's forward
    pass, so a long toolkit call ends at its next forward pass; the model guard restores the model)."""


class Stop:
    """When a request must stop: a deadline and a cancel flag, checked before each forward pass."""

    def __init__(self, budget: float | None) -> None:
        self.budget = budget
        self.deadline = None if budget is None else time.monotonic() + budget
        self.cancelled = threading.Event()

    @property
    def reason(self) -> str | None:
        if self.cancelled.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return f"stopped: the request passed its time budget of {self.budget:g} s"
        return None

    def check(self) -> None:
        why = self.reason
        if why:
            raise RunStopped(why)


@dataclass(frozen=True)
class Photo:
    """One preprocessed image: the model's input and the display copy it was made from."""

    name: str
    x: Tensor
    display: np.ndarray  # (H, W, 3) uint8, after resize and crop: what the maps are drawn on
    source: str = ""  # the file it was read from (to read it again with another fit)
    fit: str = "whole"  # how it became the model's input (:func:`cnnlens.load_images`)


@dataclass
class Cell:
    """One (method, backend) of a grid: its explanation, or the one-line error it raised."""

    method: str
    backend: str
    explanation: Any = None
    error: str | None = None
    faithfulness: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.explanation is not None


@dataclass
class Grid:
    """The result of one run: every cell, for one photo, target, layer and sign."""

    photo: Photo
    target: int
    target_label: str
    layer: str | None
    sign: str
    cells: list[Cell] = field(default_factory=list)


def _first_tensor(batch: Any) -> Tensor:
    """The tensor of what :func:`cnnlens.load_images` returns (a tensor, or a small typed result)."""
    if isinstance(batch, Tensor):
        return batch
    for name in ("x", "tensor", "inputs", "batch", "data"):
        t = getattr(batch, name, None)
        if isinstance(t, Tensor):
            return t
    raise CnnlensError(f"cnnlens.load_images returned {type(batch).__name__}, which holds no tensor the app knows")


def _stop_hook(model: nn.Module, stop: Stop) -> Any:
    """A forward pre-hook that raises :class:`RunStopped` when ``stop`` says so (None for a model that
    takes no hooks, such as TorchScript: it is then stopped between calls only)."""
    try:
        return model.register_forward_pre_hook(lambda *_: stop.check())
    except Exception:
        return None


class Workbench:
    """One model served to every session of the app.

    Args:
        model: The classifier (from :func:`cnnlens.load_model`).
        name: How the page names it.

    Calls that run the model hold :attr:`lock`, so two sessions (or a double click) never run on
    the model at the same time; the guard in the core restores the model after each call. Top-5
    predictions (light, asked for on every upload) run on a private copy of the model under their own
    lock, so they never wait for an explanation that is running; a model that cannot be copied falls
    back to the shared lock.
    """

    def __init__(self, model: nn.Module, name: str, time_budget: float | None = TIME_BUDGET) -> None:
        self.model = model
        self.name = name
        self.time_budget = time_budget
        self.lock = threading.Lock()
        self.categories: list[str] | None = getattr(model, "cnnlens_categories", None)
        self._layers: tuple[list[Any], str | None] | None = None
        try:
            self._light: nn.Module = copy.deepcopy(model)
            self._light_lock = threading.Lock()
        except Exception:  # a model holding something deepcopy cannot copy: share the model and its lock
            self._light, self._light_lock = model, self.lock

    # ---------------------------------------------------------------- model facts
    def layers(self) -> tuple[list[Any], str | None]:
        """Modules in execution order and the automatic CAM layer (computed once)."""
        if self._layers is None:
            from cnnlens.layer_list import list_layers

            with self.lock:
                self._layers = list_layers(self.model)
        return self._layers

    def cam_layers(self) -> list[str]:
        rows, _ = self.layers()
        return [r.name for r in rows if r.spatial and r.calls == 1]

    def pairs(self) -> dict[str, list[str]]:
        """Method -> installed backends that implement it, in registry order."""
        import cnnlens

        out: dict[str, list[str]] = {}
        for info in cnnlens.methods(installed_only=True):
            out.setdefault(info.method, []).append(info.backend)
        return out

    def info(self, method: str, backend: str) -> Any:
        """The registry row of a pair (:func:`cnnlens.methods`), or None if there is none."""
        import cnnlens

        for row in cnnlens.methods(method, backend=backend):
            if row.method == method:
                return row
        return None

    def option_defaults(self, method: str, backend: str) -> dict[str, Any]:
        row = self.info(method, backend)
        return dict(row.options) if row is not None else {}

    # ---------------------------------------------------------------- inputs
    def load(self, path: str | Path, name: str | None = None, fit: str = "whole") -> Photo:
        """Decode and preprocess one image file (bounded decode: the library refuses huge images
        before decoding them); ``fit`` as in :func:`cnnlens.load_images`."""
        import cnnlens
        from cnnlens.images import denormalize

        batch = cnnlens.load_images(str(path), self.model, fit=fit)
        x = _first_tensor(batch)[:1]
        shown = (denormalize(x, self.model)[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        return Photo(name or Path(path).stem, x, shown, str(path), fit)

    def demo(self, name: str, fit: str = "whole") -> Photo:
        from cnnlens.images import DEMO, demo_paths

        if name not in DEMO:
            raise InputError(f"unknown demo photo '{name}'; available: {', '.join(DEMO)}")
        return self.load(demo_paths([name])[0], name, fit)

    def top5(self, photo: Photo) -> list[Any]:
        from cnnlens.predict import top_classes

        with self._light_lock:
            return top_classes(self._light, photo.x, 5, self.categories)[0]

    def search_classes(self, text: str, limit: int = 20) -> list[tuple[int, str]]:
        """Classes whose name contains ``text`` (case-insensitive); an unknown name raises
        :class:`~cnnlens.errors.TargetError` with close matches."""
        text = (text or "").strip()
        if not text:
            return []
        if text.isdigit():
            return [(int(text), self.label(int(text)))]
        if not self.categories:
            raise TargetError(f"the model has no class names to search for '{text}'; give a class index instead")
        hits = [(i, c) for i, c in enumerate(self.categories) if text.lower() in c.lower()]
        if not hits:
            hint = close_matches(text, self.categories)
            extra = f"; close matches: {hint}" if hint else ""
            raise TargetError(f"no class name contains '{text}'{extra}")
        return hits[:limit]

    def label(self, index: int) -> str:
        if self.categories is not None and 0 <= index < len(self.categories):
            return self.categories[index]
        return f"class {index}"

    # ---------------------------------------------------------------- the grid
    def run(
        self,
        photo: Photo,
        target: int,
        pairs: Sequence[tuple[str, str]],
        layer: str | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        sign: str = "positive",
        faithfulness: bool = False,
        stop: Stop | None = None,
    ) -> Iterator[tuple[int, int, Grid]]:
        """Explain ``photo`` for ``target`` with every pair, one call at a time.

        Yields ``(done, total, grid)`` after each call, so a caller can show progress. The request
        stops (:class:`RunStopped`) when ``stop`` says so: at its deadline (default: a new
        :class:`Stop` with :attr:`time_budget`) or when cancelled; a call that is running then ends at
        its next forward pass of the model, and the model guard restores the model.

        Args:
            options: Per method, the options given to its Explainer (the same for each backend,
                restricted to those the backend accepts), within :data:`LIMITS`.
            faithfulness: Also compute the deletion and insertion AUC of each map (few steps).
        """
        import cnnlens

        if not pairs:
            raise InputError("choose at least one method and one backend that implements it")
        if len(pairs) > MAX_CELLS:
            raise InputError(f"{len(pairs)} method x backend cells asked for; at most {MAX_CELLS} per run")
        opts = options or {}
        stop = stop if stop is not None else Stop(self.time_budget)
        grid = Grid(photo, int(target), self.label(int(target)), None, sign)
        for k, (method, backend) in enumerate(pairs):
            stop.check()
            cell = Cell(method, backend)
            try:
                row = self.info(method, backend)
                accepted = dict(row.options) if row is not None else {}
                given = {o: v for o, v in opts.get(method, {}).items() if o in accepted}
                check_limits(method, given)
                use_layer = layer if row is not None and row.needs_layer and method != "fullgrad" else None
                with self.lock:
                    stop.check()
                    hook = _stop_hook(self.model, stop)
                    try:
                        ex = cnnlens.Explainer(self.model, method, backend=backend, layer=use_layer, **given)
                        cell.explanation = ex.explain(photo.x, target=int(target))
                        if faithfulness:
                            cell.faithfulness = self._faithfulness(photo, cell.explanation, int(target))
                    finally:
                        if hook is not None:
                            hook.remove()
                if cell.explanation.layer and grid.layer is None:
                    grid.layer = cell.explanation.layer
            except Exception as exc:
                if stop.reason:  # raised by the stop hook, whatever the toolkit or the core made of it
                    raise RunStopped(stop.reason) from None
                cell.error = str(exc) if isinstance(exc, CnnlensError) else f"{type(exc).__name__}: {exc}"
            grid.cells.append(cell)
            yield k + 1, len(pairs), grid

    def _faithfulness(self, photo: Photo, e: Any, target: int) -> dict[str, float]:
        from cnnlens.bench import metrics as M

        x = photo.x[0]
        sal = e.maps[0].float().cpu().numpy()
        blurred = M.gaussian_blur(x[None])[0]
        dele = M.perturbation_curve(self.model, x, sal, target, blurred, "deletion", QUICK_STEPS)
        ins = M.perturbation_curve(self.model, x, sal, target, blurred, "insertion", QUICK_STEPS)
        return {"deletion_auc": M.auc(dele), "insertion_auc": M.auc(ins)}


# -------------------------------------------------------------------- views of a grid


def agreement(grid: Grid) -> list[dict[str, Any]]:
    """For every method that ran on two or more backends: Pearson r and top-5 % IoU of each pair
    of maps (:func:`cnnlens.bench.metrics.agreement`, as in a study)."""
    from cnnlens.bench import metrics as M

    by_method: dict[str, list[Cell]] = {}
    for c in grid.cells:
        if c.ok:
            by_method.setdefault(c.method, []).append(c)
    rows = []
    for method, cells in by_method.items():
        for i in range(len(cells)):
            for j in range(i + 1, len(cells)):
                a = cells[i].explanation.maps[0].float().cpu().numpy()
                b = cells[j].explanation.maps[0].float().cpu().numpy()
                res = M.agreement(a, b, topk=(5.0,))
                pearson, iou = res["pearson"], res["iou_top5"]
                rows.append({"method": method, "backends": f"{cells[i].backend} | {cells[j].backend}",
                             "pearson": None if pearson is None else round(pearson, 4),
                             "iou_top5": None if iou is None else round(iou, 4)})
    return rows


def _display(m: np.ndarray, kind: str, sign: str) -> np.ndarray:
    """A signed view as drawn: pixel attributions end their scale at the 99th percentile of the
    magnitude, as every cnnlens picture does (:func:`cnnlens.plot.display_map`), CAMs at their maximum."""
    from cnnlens import plot

    if kind != "pixel":
        return m
    if sign != "all":
        return plot.display_map(m, "pixel")
    top = float(np.percentile(np.abs(m), plot.PIXEL_PERCENTILE)) if m.size else 0.0
    return np.clip(m / top, -1.0, 1.0) if top > 0 else m


def overlays(grid: Grid, cmap: str = "jet") -> list[tuple[np.ndarray, str]]:
    """One (picture, caption) per cell: the signed map over the photo, or the photo greyed out with
    the error for a failed cell."""
    from cnnlens import plot
    from cnnlens.signs import signed_maps

    out = []
    for c in grid.cells:
        if not c.ok:
            grey = (grid.photo.display.astype(np.float32) * 0.3 + 160).clip(0, 255).astype(np.uint8)
            out.append((grey, f"{c.method} · {c.backend} · failed"))
            continue
        e = c.explanation
        m = _display(signed_maps(e, grid.sign)[0], e.kind, grid.sign)
        if grid.sign == "all":
            pic = plot.overlay(grid.photo.display, (m + 1.0) / 2.0, DIVERGING, 0.6)
        else:
            pic = plot.overlay(grid.photo.display, m, cmap, 0.5, weighted=e.kind == "pixel")
        out.append((pic, f"{c.method} · {c.backend} · {e.seconds:.3f} s"))
    return out


#: Colormap of the signed view ``all`` (negative blue, zero white, positive red).
DIVERGING = "bwr"


def colour_stops(sign: str, cmap: str = "jet", n: int = 11) -> list[tuple[int, int, int]]:
    """The one colour scale every cell shares, as ``n`` RGB stops from 0 (or -1 for ``all``) to 1."""
    from cnnlens import plot

    ramp = np.tile(np.linspace(0.0, 1.0, n, dtype=np.float32), (2, 1))  # heatmap wants a 2-D map
    rgb = plot.heatmap(ramp, DIVERGING if sign == "all" else cmap)[0]
    return [(int(r), int(g), int(b)) for r, g, b in rgb]


def timings(grid: Grid) -> list[dict[str, Any]]:
    rows = []
    for c in grid.cells:
        row: dict[str, Any] = {"method": c.method, "backend": c.backend,
                               "seconds": round(c.explanation.seconds, 4) if c.ok else None,
                               "result": "ok" if c.ok else c.error}
        if c.faithfulness:
            row.update({k: round(v, 4) for k, v in c.faithfulness.items()})
        rows.append(row)
    return rows


def export_zip(grid: Grid, out_dir: str | Path) -> Path:
    """Write one zip: an overlay PNG and the map (and raw attribution) as ``.npy`` per cell, and a
    manifest; written under a temporary name, then renamed."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"cnnlens-{grid.photo.name}-{stamp}-{threading.get_ident() % 10000:04d}.zip"
    tmp = path.with_suffix(".zip.part")
    pictures = overlays(grid)
    manifest: dict[str, Any] = {
        "schema": 1, "image": grid.photo.name, "target": grid.target, "target_label": grid.target_label,
        "sign": grid.sign, "agreement": agreement(grid), "cells": [],
    }

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        return buf.getvalue()

    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        buf = io.BytesIO()
        Image.fromarray(grid.photo.display).save(buf, format="PNG")
        z.writestr("input.png", buf.getvalue())
        for k, (c, (pic, _)) in enumerate(zip(grid.cells, pictures, strict=True)):
            stem = f"{k:02d}_{c.method}_{c.backend}"
            entry: dict[str, Any] = {"method": c.method, "backend": c.backend, "error": c.error}
            if c.ok:
                from cnnlens.signs import signed_maps

                buf = io.BytesIO()
                Image.fromarray(pic).save(buf, format="PNG")
                z.writestr(f"{stem}.png", buf.getvalue())
                z.writestr(f"{stem}_map.npy", npy(c.explanation.maps[0].float().cpu().numpy()))
                z.writestr(f"{stem}_{grid.sign}.npy", npy(signed_maps(c.explanation, grid.sign)[0]))
                z.writestr(f"{stem}_raw.npy", npy(c.explanation.raw[0].float().cpu().numpy()))
                entry.update(c.explanation.manifest())
                entry["files"] = [f"{stem}.png", f"{stem}_map.npy", f"{stem}_{grid.sign}.npy", f"{stem}_raw.npy"]
                if c.faithfulness:
                    entry["faithfulness_quick"] = {**c.faithfulness, "steps": QUICK_STEPS}
            manifest["cells"].append(entry)
        z.writestr("manifest.json", json.dumps(manifest, indent=2, default=str))
    tmp.replace(path)
    return path
