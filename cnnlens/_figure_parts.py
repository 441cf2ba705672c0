"""Figure pieces that do not depend on what is drawn: text that fits a figure, pictures shrunk for
it, PNG bytes, and the notebook strip of an :class:`~cnnlens.images.Images`.

Apart from :mod:`cnnlens.plot` so that :mod:`cnnlens.images` can show itself in a notebook without
depending on the plotting of explanations (which depends on it). matplotlib is imported only when a
figure is drawn.
"""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: Longest side, in pixels, of a picture drawn inside a figure (the saved overlays keep full size).
FIGURE_PICTURE_SIDE = 640
#: ``_repr_png_`` pictures draw at most this many images.
REPR_MAX = 8


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def shrink(img: np.ndarray, side: int | None) -> np.ndarray:
    """``img`` with its longer side at most ``side`` pixels (for figures; saved overlays keep full size)."""
    if side is None or max(img.shape[:2]) <= side:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    k = side / max(h, w)
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.LANCZOS))


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (never cut).

    Existing line breaks are kept; long lines break at spaces (and after `` · ``), and a word
    longer than a line is split, so nothing runs past the figure's edge.
    """
    chars = max(8, int(width_in * 72 / (fontsize * 0.62)))
    lines = []
    for line in str(text).split("\n"):
        lines.extend(textwrap.wrap(line, chars, break_long_words=True, break_on_hyphens=False) or [""])
    return "\n".join(lines)


def fit_note(src: Any, i: int) -> str:
    """What the model saw of picture ``i``, briefly: ``451x300 → 224x224, whole``."""
    if src is None or src.fits is None:
        return ""
    f = src.fits[i]
    return f"{f.original[1]}x{f.original[0]} → {f.input[1]}x{f.input[0]}, {f.mode}"


def images_png(images: Any, cell: float = 2.0, dpi: int = 80) -> bytes:
    """A one-row PNG of an :class:`~cnnlens.images.Images`' pictures with what the model saw of each."""
    from cnnlens._figure import Picture

    n = min(len(images), REPR_MAX)
    width = max(max(n, 1) * cell, 4.0)
    fig = Picture(figsize=(width, cell + 0.8), layout="constrained")
    axes = fig.subplots(1, max(n, 1), squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(shrink(images.original(i), FIGURE_PICTURE_SIDE))
        note = fit_note(images, i)
        ax.set_title(wrap(images.names[i] + (f"\n{note}" if note else ""), width / max(n, 1), 8), fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    more = f" (first {n} of {len(images)})" if len(images) > n else ""
    fig.suptitle(wrap(f"{len(images)} image(s), model input {tuple(images.tensor.shape[1:])}{more}", width, 9), fontsize=9)
    return figure_png(fig, dpi)
