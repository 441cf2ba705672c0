"""Plots: overlays, comparison grids, saving explanations, and the output-path rules."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens import plot
from cnnlens.errors import InputError, OptionError, OutputExistsError
from cnnlens.images import Images
from cnnlens.testing import tiny_cnn, tiny_input


@pytest.fixture(scope="module")
def batch():
    shown = (torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    return Images(tiny_input(3, 32), shown, ("a", "b", "c"), tuple(Path(f"{n}.png") for n in "abc"))


@pytest.fixture(scope="module")
def expls(batch):
    model = tiny_cnn()
    return [
        cnnlens.explain(model, batch, "gradcam", "captum"),
        cnnlens.explain(model, batch, "gradcam", "pytorch-grad-cam"),
        cnnlens.explain(model, batch, "saliency", "captum"),
    ]


def _png(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_overlay_blends_heat_over_the_image():
    img = np.full((20, 30, 3), 100, np.uint8)
    m = np.zeros((20, 30))
    m[5:10, 5:10] = 1.0
    out = plot.overlay(img, m, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[7, 7], img[7, 7])
    assert np.array_equal(plot.overlay(img, m, alpha=0.0), img)
    # a map at a lower resolution (a CAM) is resized to the image
    assert plot.overlay(img, torch.rand(4, 6)).shape == (20, 30, 3)
    # weighted: where the map is 0 the image shows through untouched
    weighted = plot.overlay(img, m, weighted=True)
    assert np.array_equal(weighted[0, 0], img[0, 0]) and not np.array_equal(weighted[7, 7], img[7, 7])


@pytest.mark.parametrize("fill", [0.0, 0.7, float("nan")])
def test_constant_map_draws_an_empty_overlay(fill):
    """Captum's visualizer raises on an all-zero map; cnnlens draws the image alone."""
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    out = plot.overlay(img, np.full((16, 16), fill))
    assert np.array_equal(out, img)


def test_overlay_rejects_bad_arguments():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(OptionError, match="alpha"):
        plot.overlay(img, np.zeros((8, 8)), alpha=1.5)
    with pytest.raises(OptionError, match="colormap"):
        plot.overlay(img, np.zeros((8, 8)), cmap="jett")
    with pytest.raises(InputError, match="map must be"):
        plot.overlay(img, np.zeros((2, 8, 8)))
    with pytest.raises(InputError, match="image must be"):
        plot.overlay(np.zeros((8, 8, 4)), np.zeros((8, 8)))


def test_as_uint8_image_accepts_common_layouts():
    chw = torch.rand(3, 10, 12)
    assert plot.as_uint8_image(chw).shape == (10, 12, 3)
    assert plot.as_uint8_image(np.zeros((10, 12))).shape == (10, 12, 3)
    assert plot.as_uint8_image(np.full((2, 2, 3), 1.0)).max() == 255


def test_comparison_grid_png_size_and_titles(expls, batch, tmp_path):
    out = tmp_path / "grid.png"
    fig = plot.comparison_grid(expls, out=out, names=["a", "b", "c"])
    im = _png(out.read_bytes())
    # 1 input column + 3 explanations, 3 rows, 2-inch cells at 100 dpi, plus the header
    assert im.size == (4 * 200, round((3 * 2.0 + plot.HEADER) * 100))
    titles = [ax.get_title() for ax in fig.axes]
    assert any("gradcam\ncaptum ·" in t and " s\n" in t for t in titles)  # method, backend, time
    assert any("class" in t and "0." in t for t in titles)  # class label and score
    assert "input\na" in titles


def test_comparison_grid_without_images_and_with_zero_maps(expls, tmp_path):
    zero = replace(expls[0], maps=torch.zeros_like(expls[0].maps), images=None)
    fig = plot.comparison_grid([zero, replace(expls[2], images=None)], out=tmp_path / "g.png", cell=1.0, dpi=50)
    assert len(fig.axes) == 3 * 2  # no input column without images
    assert _png(tmp_path / "g.png").size == (100, round((3 * 1.0 + plot.HEADER) * 50))


def test_comparison_grid_checks_its_inputs(expls):
    with pytest.raises(InputError, match="at least one"):
        plot.comparison_grid([])
    short = replace(expls[0], maps=expls[0].maps[:2], targets=expls[0].targets[:2])
    with pytest.raises(InputError, match="different numbers of images"):
        plot.comparison_grid([expls[1], short])
    with pytest.raises(InputError, match="2 images for explanations of 3"):
        plot.comparison_grid(expls, images=np.zeros((2, 32, 32, 3), np.uint8))


def test_explanation_repr_png_and_save(expls, tmp_path):
    e = expls[2]
    _png(e._repr_png_())
    out = e.save(tmp_path / "run")
    files = sorted(p.name for p in out.iterdir())
    # named after the input images; the maps as plain .npy arrays (no pickle), no maps.pt
    assert files == ["a.png", "b.png", "c.png", "manifest.json", "maps.npy", "raw.npy", "signed_maps.npy",
                     "targets.npy"]
    assert _png(out / "a.png").size == (32, 32)  # these pictures are 32x32 display copies, no originals
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "saliency" and manifest["backend"] == "captum" and "captum" in manifest["versions"]
    assert [i["source"] for i in manifest["images"]] == ["a.png", "b.png", "c.png"]
    assert [i["name"] for i in manifest["images"]] == ["a", "b", "c"]
    with pytest.raises(OutputExistsError, match="not empty"):
        e.save(out)
    assert e.save(out, overwrite=True) == out


def test_prepare_out_file_rules(tmp_path):
    src = tmp_path / "cat.png"
    src.write_bytes(b"input")
    with pytest.raises(OutputExistsError, match="one of the input images"):
        plot.prepare_out_file(src, overwrite=True, inputs=[src])
    with pytest.raises(OutputExistsError, match="already exists"):
        plot.prepare_out_file(src)
    assert plot.prepare_out_file(src, overwrite=True) == src
    with pytest.raises(OptionError, match="suffix"):
        plot.prepare_out_file(tmp_path / "grid.gif")
    with pytest.raises(OutputExistsError, match="is a folder"):
        plot.prepare_out_file(tmp_path / "dir.png" if (tmp_path / "dir.png").mkdir() is None else None)
    made = plot.prepare_out_file(tmp_path / "new" / "deep" / "g.png")
    assert made.parent.is_dir() and src.read_bytes() == b"input"


def test_prepare_out_dir_rules(tmp_path):
    assert plot.prepare_out_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "a" / "b" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        plot.prepare_out_dir(tmp_path / "a" / "b")
    plot.prepare_out_dir(tmp_path / "a" / "b", overwrite=True)
    assert (tmp_path / "a" / "b" / "keep.txt").read_text() == "mine"  # overwrite never deletes
    with pytest.raises(OutputExistsError, match="is a file"):
        plot.prepare_out_dir(tmp_path / "a" / "b" / "keep.txt", overwrite=True)


def test_image_grid_and_palette(tmp_path):
    imgs = [np.random.default_rng(i).random((20, 20)) for i in range(5)]
    fig = plot.image_grid(imgs, titles=[str(i) for i in range(5)], ncols=3, out=tmp_path / "g.png")
    assert _png(tmp_path / "g.png").size == (3 * 160, 2 * 160)
    plot.save_figure(fig, tmp_path / "small.png", palette=True)
    small = _png(tmp_path / "small.png")
    assert small.mode == "P" and small.size == (480, 320)
    with pytest.raises(InputError, match="titles"):
        plot.image_grid(imgs, titles=["x"])


def test_plotting_never_imports_pyplot():
    """Figures are drawn on Agg directly: no global backend switch, no GUI."""
    code = (
        "import sys, numpy as np, cnnlens; from cnnlens import plot; "
        "plot.image_grid([np.zeros((4, 4))]); "
        "print('matplotlib.pyplot' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_save_overwrite_removes_only_its_own_stale_files(tmp_path):
    import cnnlens
    from cnnlens.testing import tiny_cnn, tiny_input

    m = tiny_cnn()
    cnnlens.explain(m, tiny_input(n=3), "saliency", "captum").save(tmp_path)
    (tmp_path / "mine.txt").write_text("user file")
    cnnlens.explain(m, tiny_input(n=1), "saliency", "captum").save(tmp_path, overwrite=True)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["000.png"]  # a plain tensor has no names: files are named by index
    assert (tmp_path / "mine.txt").read_text() == "user file"
