"""The report's figures, drawn with matplotlib's object-oriented API (no pyplot, no global backend).

Each function takes tables from :mod:`cnnlens.bench.reporting.tables` and returns PNG bytes.
Legibility rules: no label below 7 pt at the size the figure is shown, annotation text coloured
by the luminance of the cell behind it, constrained layout so labels never overlap the panel
below, legends built from the drawn artists so their colours match, and one y axis per panel.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

DPI = 90


def png(fig: Any, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def jpeg(fig: Any, dpi: int = DPI) -> bytes:
    """For figures made of photographs (the image grids): a tenth of the PNG's size at the same look."""
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=dpi, bbox_inches="tight", pil_kwargs={"quality": 88})
    return buf.getvalue()


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _ink(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (WCAG relative luminance)."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def heatmap(vals: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, *, vmin: float, vmax: float,
            cmap: str = "viridis", fmt: str = "{:.2f}", annotate: bool = True) -> bytes:
    """A labelled matrix with readable numbers in its cells (NaN cells left blank and marked '-')."""
    import matplotlib
    from matplotlib.colors import Normalize

    cm = matplotlib.colormaps[cmap]
    norm = Normalize(vmin=vmin, vmax=vmax)
    fig = _figure(max(5.0, 0.9 * len(cols) + 0.12 * max(len(r) for r in rows) + 2), 0.38 * len(rows) + 1.6)
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cm, norm=norm, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    if annotate:
        for (i, j), v in np.ndenumerate(vals):
            if np.isnan(v):
                ax.text(j, i, "-", ha="center", va="center", fontsize=8, color="0.4")
            else:
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color=_ink(cm(norm(v))))
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    ax.set_title(title, fontsize=10)
    return png(fig)


def _styles(n: int) -> list[tuple[Any, str]]:
    """n distinguishable (colour, line style) pairs: tab10 colours, then the same with new dashes."""
    import matplotlib

    cm = matplotlib.colormaps["tab10"]
    dashes = ["-", "--", ":", "-."]
    return [(cm(k % 10), dashes[(k // 10) % len(dashes)]) for k in range(n)]


def curves(backend: str, means: dict[str, Any], n_img: Any, titles: dict[str, str]) -> bytes:
    """One backend's deletion/insertion curves, one panel per substrate, each with its own y axis."""
    import matplotlib.lines as mlines

    names = list(means)
    fig = _figure(5.0 * len(names) + 3.0, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    full = int(n_img.max()) if n_img is not None and len(n_img) else 0
    methods = sorted({m for mean in means.values() for (m, b) in mean.index if b == backend})
    style = dict(zip(methods, _styles(len(methods)), strict=True))
    handles: dict[str, Any] = {}
    for ax, name in zip(axes, names, strict=True):
        mean = means[name]
        n = mean.shape[1] - 1
        xs = np.arange(n + 1) / max(n, 1)
        for (m, b), row in mean.iterrows():
            if b == backend:
                k_img = int(n_img.get((m, backend), full)) if n_img is not None else full
                colour, ls = style[m]
                lab = m if k_img == full else f"{m} ({k_img} images)"
                (line,) = ax.plot(xs, row.values, color=colour, ls=ls, lw=1.4, label=lab)
                handles.setdefault(lab, line)
            elif b == "baseline":
                ls = {"random_pixel": ":", "random_smooth": "--"}.get(m, "-.")
                ax.plot(xs, row.values, color="black", ls=ls, lw=2)
                handles.setdefault(f"{m} (baseline)", mlines.Line2D([], [], color="black", ls=ls, lw=2))
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_xlabel("fraction of pixels " + ("inserted" if "insertion" in name else "deleted"), fontsize=9)
        ax.set_ylabel("target probability (mean)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    fig.suptitle(f"{backend}: deletion and insertion curves (baselines in black)", fontsize=11)
    return png(fig)


def bars(labels: Sequence[str], values: Sequence[float], colours: Sequence[str], xlabel: str, title: str) -> bytes:
    fig = _figure(10, 0.3 * len(labels) + 1.4)
    ax = fig.subplots()
    ax.barh(range(len(labels)), values, color=list(colours))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return png(fig)


def sanity(backend: str, mean: Any, steps: list[str] | None) -> bytes:
    """One backend's cascading-randomization curves: Spearman and SSIM panels side by side."""
    last = int(mean.columns.max())
    labels = ["trained"] + [(steps[i] if steps and i < len(steps) else str(i + 1)) for i in range(last)]
    fig = _figure(13, 4.8)
    axes = fig.subplots(1, 2)
    methods = sorted({m for (m, b, _ms) in mean.index if b == backend})
    style = dict(zip(methods, _styles(len(methods)), strict=True))
    handles: dict[str, Any] = {}
    for ax, meas in zip(axes, ("spearman", "ssim"), strict=True):
        for (m, b, ms), vals in mean.iterrows():
            if b != backend or ms != meas:
                continue
            ys = np.concatenate([[1.0], vals.values.astype(float)])
            colour, ls = style[m]
            (line,) = ax.plot(range(len(ys)), ys, marker="o", ms=3, color=colour, ls=ls, label=m)
            handles.setdefault(m, line)
        ax.set_xticks(range(last + 1), labels, rotation=35, ha="right", fontsize=8)
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_ylabel(f"{meas} with the trained model's map", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    fig.suptitle(f"{backend}: cascading randomization (layers re-initialised from the output back)", fontsize=11)
    return png(fig)


def speed(part: Any, bs: int) -> bytes:
    """Latency per image as bars, the measured compute limit as a black tick on each bar."""
    import matplotlib.lines as mlines
    import matplotlib.patches as mpatches

    from cnnlens.bench.reporting.tables import label

    fig = _figure(11, 0.3 * len(part) + 1.6)
    ax = fig.subplots()
    ys = np.arange(len(part))
    ax.barh(ys, part.latency_ms, color="tab:orange", height=0.7)
    ax.plot(part.limit_ms, ys, ls="none", marker="|", ms=12, mew=2.2, color="black")
    for i, (v, r) in enumerate(zip(part.latency_ms, part.ratio_to_limit, strict=True)):
        if v == v and r == r:
            ax.text(v, i, f" {r:.1f}x", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yticks(ys, [label(m, b) for m, b in zip(part.method, part.backend, strict=True)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per image (log scale); the number is latency / limit", fontsize=9)
    ax.legend([mpatches.Patch(color="tab:orange"),
               mlines.Line2D([], [], ls="none", marker="|", ms=12, mew=2.2, color="black")],
              ["latency per image", "compute limit"], loc="lower right", fontsize=8)
    ax.set_title(f"Latency and ratio to the compute limit, batch size {bs}", fontsize=10)
    ax.grid(axis="x", alpha=0.3, which="both")
    return png(fig)


def image_grid(display: np.ndarray, box: Sequence[int] | None, title: str,
               cells: Sequence[tuple[str, np.ndarray | None, str]], columns: int = 8) -> bytes:
    """One image and every stored map over it; a cell without a map says why (``reason``).

    Args:
        cells: (title, map or None, reason) per (method, backend), in display order.
    """
    import matplotlib.patches as mpatches

    n = len(cells) + 1
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = _figure(1.75 * cols, 1.95 * rows + 0.4)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    flat = list(axes.ravel())
    for ax in flat:
        ax.set_xticks([])
        ax.set_yticks([])
    flat[0].imshow(display)
    flat[0].set_title("input", fontsize=8)
    for ax, (name, sal, reason) in zip(flat[1:], cells, strict=False):
        ax.set_title(name, fontsize=7.5)
        if sal is None:
            ax.set_facecolor("0.93")
            ax.text(0.5, 0.5, reason, ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes,
                    color="0.25")
            continue
        ax.imshow(display)
        top = float(np.percentile(sal, 99))  # sparse pixel maps are invisible when scaled by their max
        ax.imshow(np.clip(sal / top, 0, 1) if top > 0 else sal, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if box:
            x0, y0, x1, y1 = box
            ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.8))
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return jpeg(fig)
