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


# ------------------------------------------------------------------------------------------------
# Signed views (Captum's visualize_image_attr vocabulary), whole photos, saved files
# ------------------------------------------------------------------------------------------------


def _photo(folder: Path, name: str = "wide.png", w: int = 640, h: int = 300) -> Path:
    rgb = (np.random.default_rng(w + h).random((h, w, 3)) * 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / name)
    return folder / name


def _pixel_explanation(raw: torch.Tensor, reduce: str = "sum") -> cnnlens.Explanation:
    """An explanation of a known signed attribution, made by the same post-processing as any other."""
    from cnnlens import _post

    n, _, h, w = raw.shape
    return cnnlens.Explanation(
        maps=_post.to_maps(raw, "pixel", (h, w), reduce), raw=raw, targets=torch.zeros(n, dtype=torch.long),
        method="saliency", backend="captum", toolkit_name="Saliency", layer=None, seconds=0.0, versions={},
        options={}, kind="pixel", reduce=reduce,
        images=torch.full((n, h, w, 3), 128, dtype=torch.uint8),
    )


@pytest.mark.parametrize(("method", "backend"), [("saliency", "captum"), ("integrated_gradients", "captum"),
                                                 ("gradcam", "pytorch-grad-cam"), ("gradcam", "captum")])
def test_signed_maps_keep_zero_at_zero_and_the_sign_of_raw(batch, method, backend):
    from cnnlens import _post

    # target 1: the tiny model's CAMs for it have both signs
    e = cnnlens.explain(tiny_cnn(), batch, method, backend, target=1, **({"n_steps": 4} if "integrated" in method else {}))
    s = e.signed_maps
    assert s.shape == e.maps.shape and s.dtype == torch.float32
    assert float(s.min()) >= -1.0 and float(s.max()) <= 1.0
    assert torch.allclose(s.abs().amax(dim=(1, 2)), torch.ones(len(e)))  # scaled per image (to the outlier cut)
    if e.kind == "pixel":
        signed = e.raw.float().sum(dim=1)  # reduce="abs_max" discards the sign: the view sums channels, as Captum
        assert e.signed_reduce == "sum"
    else:
        assert e.signed_reduce is None
        cam = e.raw.float().reshape(len(e), 1, *e.raw.shape[-2:])
        signed = torch.nn.functional.interpolate(cam, size=tuple(e.maps.shape[1:]), mode="bilinear",
                                                 align_corners=False)[:, 0]  # the CAM before the ReLU
    assert torch.equal(torch.sign(s), torch.sign(signed))  # zero stays zero, each pixel keeps its sign
    assert bool((signed < 0).any()) and bool((s < 0).any())  # negative evidence is there, and kept
    # maps stays the [0, 1] contract
    assert float(e.maps.min()) >= 0.0 and float(e.maps.max()) <= 1.0
    assert torch.equal(e.maps, _post.to_maps(e.raw, e.kind, tuple(e.maps.shape[1:]), e.reduce))


@pytest.mark.parametrize("sign", ["all", "positive", "negative", "absolute_value"])
@pytest.mark.parametrize("outlier_perc", [0.5, 2, 10.5])
def test_signed_views_equal_captums_normalize_attr(sign, outlier_perc):
    from captum.attr._utils.visualization import _normalize_attr

    raw = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(3)) ** 3
    e = _pixel_explanation(raw)
    ours = e.signed(sign, outlier_perc)
    for i in range(2):
        ref = _normalize_attr(raw[i].sum(0).numpy().astype(np.float64), sign, outlier_perc)  # Captum, called directly
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-5, atol=1e-6)
    # outlier_perc=0, where Captum's own cumulative sum can fall short of 100%: scaled by the largest value
    top = e.signed("absolute", 0)
    assert torch.allclose(top, raw.sum(1).abs() / raw.sum(1).abs().amax(dim=(1, 2), keepdim=True))


def test_sign_all_draws_a_diverging_map_with_a_colour_bar():
    raw = torch.zeros(1, 3, 16, 16)
    raw[:, :, :, :8] = 1.0   # left half: positive evidence
    raw[:, :, :, 8:] = -1.0  # right half: negative
    e = _pixel_explanation(raw)
    picture = plot.draw(e, 0, sign="all")
    left, right = picture[8, 2].astype(int), picture[8, 13].astype(int)
    assert left[0] > left[2] + 60 and right[2] > right[0] + 60  # red where positive, blue where negative
    fig = plot.comparison_grid([e], sign="all")
    bars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    assert len(bars) == 1
    bar = bars[0]._colorbar
    assert bar.cmap.name == "bwr" and (bar.norm.vmin, bar.norm.vmax) == (-1.0, 1.0)
    assert "outlier_perc=2" in bar.ax.get_xlabel()
    # the same figure without a sign draws maps, with no colour bar; a "sum" reduce is drawn signed by default
    plain = _pixel_explanation(raw, reduce="abs_max")
    assert not [ax for ax in plot.comparison_grid([plain]).axes if getattr(ax, "_colorbar", None) is not None]
    assert plot.auto_sign(e, None) == "all" and plot.auto_sign(plain, None) is None
    fig = e.plot()
    assert [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    with pytest.raises(OptionError, match="unknown sign='both'"):
        plot.comparison_grid([e], sign="both")
    with pytest.raises(OptionError, match="outlier_perc"):
        e.save("never-written", outlier_perc=100)


def test_cam_signs_are_the_cam_before_its_relu(batch):
    e = cnnlens.explain(tiny_cnn(), batch, "gradcam", "pytorch-grad-cam", target=1)
    pos, neg = e.signed("positive"), e.signed("negative")
    s = e.signed_maps
    assert torch.equal(pos > 0, s > 0) and torch.equal(neg > 0, s < 0) and bool((neg > 0).any())
    # "positive" is the usual CAM picture: zero exactly where the contract's ReLU cut the CAM
    relu = torch.relu(torch.nn.functional.interpolate(e.raw.float()[:, None], size=(32, 32), mode="bilinear",
                                                      align_corners=False)[:, 0])
    assert torch.equal(pos == 0, relu == 0)


def test_saved_overlay_of_a_640x300_photo_is_640x300(tmp_path):
    path = _photo(tmp_path / "photos")
    model = tiny_cnn()
    for fit in ("whole", "crop"):
        x = cnnlens.load_images(path, model, size=32, fit=fit)
        e = cnnlens.explain(model, x, "gradcam", "pytorch-grad-cam")
        out = e.save(tmp_path / f"out-{fit}", sign="all")
        saved = _png(out / "wide.png")
        assert saved.size == (640, 300)
        manifest = json.loads((out / "manifest.json").read_text())
        entry = manifest["images"][0]
        assert entry["source"] == str(path) and entry["original_size"] == [640, 300] and entry["fit"] == fit
        assert "640x300" in entry["preprocessing"] and manifest["view"]["sign"] == "all"
        if fit == "crop":  # the parts the model never saw are dimmed, the centre is not
            original = x.original(0).astype(float)
            drawn = np.asarray(saved).astype(float)
            assert drawn[:, :150].mean() < 0.5 * original[:, :150].mean()
            assert drawn[:, 250:400].mean() > 0.6 * original[:, 250:400].mean()
    # figures draw the whole photo at its aspect ratio and say what the model saw
    fig = plot.comparison_grid([e])
    texts = " ".join(t.get_text() for ax in fig.axes for t in [ax.title]) + fig.get_supxlabel()
    assert "640x300 → 32x32, crop" in texts and "dimmed parts were not seen" in fig.get_supxlabel()


def test_saved_maps_are_plain_npy_arrays(expls, tmp_path):
    e = expls[0]
    out = e.save(tmp_path / "run")
    maps = np.load(out / "maps.npy", allow_pickle=False)
    assert maps.dtype == np.float32 and np.array_equal(maps, e.maps.numpy())
    assert np.array_equal(np.load(out / "signed_maps.npy", allow_pickle=False), e.signed_maps.numpy())
    assert np.array_equal(np.load(out / "raw.npy", allow_pickle=False), e.raw.numpy())
    assert np.load(out / "targets.npy", allow_pickle=False).tolist() == e.targets.tolist()
    assert not (out / "maps.pt").exists()


def test_saves_are_named_after_the_inputs_and_avoid_the_users_folder(tmp_path):
    a = _photo(tmp_path / "a", "cat photo.jpg", 48, 40)
    b = _photo(tmp_path / "b", "cat photo.png", 40, 48)
    c = _photo(tmp_path / "c", "maps.png", 40, 40)
    model = tiny_cnn()
    x = cnnlens.load_images([a, b, c], model, size=32)
    e = cnnlens.explain(model, x, "saliency", "captum")
    out = e.save(tmp_path / "out")
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files == ["cat_photo.png", "cat_photo-2.png", "maps-2.png"]  # sanitised, distinct, clear of maps.npy
    assert [i["source"] for i in json.loads((out / "manifest.json").read_text())["images"]] == [str(a), str(b), str(c)]
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    with pytest.raises(OutputExistsError, match="holds input images"):
        e.save(tmp_path / "a", overwrite=True)  # never into a folder of the user's images, even with overwrite
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before


def test_a_save_that_fails_leaves_no_partial_file(expls, tmp_path, monkeypatch):
    """The writes go through temporary names; a failure at the last array removes every file and
    temporary of the save, and the rerun succeeds without overwrite."""
    import errno
    import os

    e = expls[1]
    real = os.replace

    def fail_at_the_last_array(src, dst):
        if str(dst).endswith("targets.npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_at_the_last_array)
    with pytest.raises(cnnlens.errors.OutputError, match="disk is full"):
        e.save(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.rglob("*.tmp*"))
    monkeypatch.setattr(os, "replace", real)
    out = e.save(tmp_path / "run")
    assert np.load(out / "targets.npy", allow_pickle=False).shape == (3,)


def test_colours_are_the_colormaps_own():
    import matplotlib

    m = np.random.default_rng(0).random((30, 40))
    m[0, :3] = [0.0, 1.0, 0.5]
    for name in ("jet", "bwr", "viridis", "tab10"):
        cmap = matplotlib.colormaps[name]
        np.testing.assert_allclose(plot._colours(cmap, m), cmap(m)[..., :3] * 255.0, atol=1e-4)


def test_output_policy_functions(tmp_path):
    from cnnlens import outputs

    assert outputs.safe_name("../../etc/passwd") == "etc_passwd"  # no separators, no leading dots
    assert outputs.safe_name("Café noir.v2") == "Cafe_noir.v2"
    assert outputs.safe_name("...") == "image" and outputs.safe_name("con") == "con_"
    assert len(outputs.safe_name("x" * 500)) == outputs.MAX_STEM
    assert outputs.unique_names(["a", "A", "a", "b"]) == ["a", "A-2", "a-3", "b"]
    assert outputs.names_for(3, ["x", None, ""]) == ["x", "001", "002"]
    assert outputs.names_for(2, ["maps", "manifest"], taken=["maps", "manifest"]) == ["maps-2", "manifest-2"]
    photo = _photo(tmp_path / "photos", "p.png", 20, 20)
    with pytest.raises(OutputExistsError, match="holds input images"):
        outputs.check_out_dir(tmp_path, inputs=[photo], overwrite=True)
    with pytest.raises(OutputExistsError, match="holds input images"):
        outputs.check_out_dir(tmp_path / "photos" / ".." / "photos", inputs=[photo], overwrite=True)
    assert outputs.check_out_dir(tmp_path / "elsewhere", inputs=[photo]).is_dir()
    with pytest.raises(OutputExistsError, match="one of the input images"):
        outputs.check_out_file(photo, overwrite=True, inputs=[photo])
    assert outputs.check_out_file(tmp_path / "r" / "report.html", formats=(".html",)).parent.is_dir()
