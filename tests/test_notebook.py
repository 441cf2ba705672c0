"""Notebooks: every object of the README's Python section shows itself as a picture, with a short repr.

What Jupyter does with a result is call its ``_repr_png_`` (and print ``repr`` beside it); these
tests do the same and decode the PNG with PIL. Texts of every figure lie inside the figure: a title
is wrapped, never cut at the edge.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens import plot

#: A repr longer than this is kilobytes of tensor numbers, not a line.
SHORT = 200


def _png(data: bytes) -> Image.Image:
    assert isinstance(data, bytes) and data[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.width > 100 and im.height > 100
    return im


def _texts_inside(fig) -> list[str]:
    """Every non-empty text of ``fig`` whose drawn extent leaves the figure (should be none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    w, h = fig.canvas.get_width_height()
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        if ax.axison:  # (an axis turned off draws no tick labels)
            texts += ax.get_xticklabels() + ax.get_yticklabels()
    out = []
    for t in texts:
        if not t.get_visible() or not t.get_text().strip():
            continue
        b = t.get_window_extent(renderer)
        if b.x0 < -1 or b.x1 > w + 1 or b.y0 < -1 or b.y1 > h + 1:
            out.append(f"{t.get_text()!r} at x {b.x0:.0f}..{b.x1:.0f} of {w}, y {b.y0:.0f}..{b.y1:.0f} of {h}")
    return out


@pytest.fixture(scope="module")
def readme(embedded):
    """The README's Python section, run as written (fewer ascent steps and a smaller size for filters)."""
    model = embedded
    x = cnnlens.demo_images(model)
    with cnnlens.Explainer(model, "gradcam", backend="pytorch-grad-cam") as ex:
        e = ex.explain(x[:2], target=None)
    k = cnnlens.kernels(model, "_conv_stem")
    with cnnlens.capture(model, ["_blocks.1", "_blocks.3"]) as fm:
        model(x.tensor[:2])
    imgs = cnnlens.filters(model, layer="_blocks.3", filters=[0, 5, 9], steps=2, size=64)
    return {"x": x, "e": e, "provenance": e.provenance, "kernels": k, "fm": fm, "filters": imgs}


#: The figures drawn from the README's objects, made when a test asks for one.
FIGURES = {
    "grid": lambda r: plot.comparison_grid([r["e"]]),
    "kernel grid": lambda r: r["kernels"].plot(),
    "feature grid": lambda r: r["fm"].plot(images=r["x"][:2]),
    "filter grid": lambda r: cnnlens.plot_filters(r["filters"]),
    "explanation figure": lambda r: r["e"].plot(sign="all"),
}


def _obj(readme, name):
    return FIGURES[name](readme) if name in FIGURES else readme[name]


PICTURES = ["x", "e", "kernels", "fm", "filters", "grid", "kernel grid", "feature grid", "filter grid",
            "explanation figure"]


@pytest.mark.parametrize("name", PICTURES)
def test_every_result_shows_itself_as_a_picture(readme, name):
    _png(_obj(readme, name)._repr_png_())


@pytest.mark.parametrize("name", PICTURES)
def test_every_repr_is_one_short_line(readme, name):
    text = repr(_obj(readme, name))
    assert "\n" not in text and len(text) < SHORT, text
    assert "tensor(" not in text


def test_provenance_repr_is_its_words_not_numbers(readme):
    text = repr(readme["provenance"])  # the notes are the point of it: printed whole, on one line
    assert "\n" not in text and "tensor(" not in text and text.startswith("Provenance(backend='pytorch-grad-cam'")


@pytest.mark.parametrize("name", ["grid", "kernel grid", "feature grid", "filter grid", "explanation figure"])
def test_no_text_runs_off_a_figure(readme, name):
    assert _texts_inside(_obj(readme, name)) == []


def test_a_one_image_title_is_wrapped_not_cut(embedded):
    """The title that ran off a one-image Grad-CAM++ picture ("...usplus · pytorch-grad-cam, layer...")."""
    x = cnnlens.demo_images(embedded, names=["chelsea"], size=64)
    e = cnnlens.explain(embedded, x, "gradcam_plusplus", "pytorch-grad-cam", layer="_blocks.15._project_conv")
    fig = plot.explanation_figure(e)
    assert _texts_inside(fig) == []
    title = fig.get_suptitle()
    assert "\n" in title and title.replace("\n", " ").startswith("gradcam_plusplus · pytorch-grad-cam, layer")
    _png(e._repr_png_())


def test_filter_images_hold_the_display_ready_picture(readme):
    imgs = readme["filters"]
    assert float(imgs.tensor.min()) >= 0.0 and float(imgs.tensor.max()) <= 1.0
    assert float(imgs.inputs.abs().max()) > 1.0  # the raw optimised inputs, under their own name
    assert torch.equal((imgs.tensor * 255).round().to(torch.uint8).permute(0, 2, 3, 1), imgs.images)


def test_an_empty_capture_falls_back_to_its_repr(embedded):
    with cnnlens.capture(embedded, ["_blocks.1"]) as fm:
        pass
    assert fm._repr_png_() is None and len(repr(fm)) < SHORT
