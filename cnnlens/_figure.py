"""The figure class of every cnnlens picture: a matplotlib ``Figure`` that shows itself in Jupyter.

IPython draws a bare ``Figure`` only once matplotlib's inline backend has registered its
formatter (after ``import matplotlib.pyplot``, which cnnlens never does); this subclass's
``_repr_png_`` draws it in any notebook. Imported only when a picture is drawn.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

#: Resolution of the notebook picture (the saved files use their own ``dpi``).
REPR_DPI = 80


class Picture(Figure):
    """A :class:`matplotlib.figure.Figure` with a PNG representation for notebooks."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=REPR_DPI)
        return buf.getvalue()

    def __repr__(self) -> str:
        w, h = self.get_size_inches()
        return f"<cnnlens figure {w:.1f}x{h:.1f} in, {len(self.axes)} axes>"
