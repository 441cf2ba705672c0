"""Image loading: every format and mode, EXIF orientation, preprocessing, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens.errors import ImageLoadError
from cnnlens.images import DATA, DEMO, read_rgb

RGB = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)


def _write(folder: Path, name: str, **kw) -> Path:
    """Write RGB (40x60) in the format and mode the file name asks for."""
    path = folder / name
    stem = name.split(".")[0]
    im = Image.fromarray(RGB)
    if stem in ("L", "P", "RGBA", "LA", "1", "CMYK"):
        im = im.convert(stem)
    if stem == "Ptrans":
        im = im.convert("P")
        im.info["transparency"] = 0
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("name", ["a.jpg", "a.jpeg", "a.png", "a.bmp", "a.webp", "a.tif", "a.tiff"])
def test_every_format_loads(tmp_path, name):
    a = read_rgb(_write(tmp_path, name))
    assert a.shape == (40, 60, 3) and a.dtype == np.uint8
    if name.endswith(("png", "bmp", "tif", "tiff")):  # lossless
        assert np.array_equal(a, RGB)


@pytest.mark.parametrize("name", ["L.png", "P.png", "Ptrans.png", "RGBA.png", "LA.png", "1.png", "CMYK.jpg"])
def test_every_mode_becomes_rgb(tmp_path, name):
    a = read_rgb(_write(tmp_path, name))
    assert a.shape == (40, 60, 3) and a.dtype == np.uint8
    if name == "L.png":
        assert np.array_equal(a[..., 0], a[..., 2])  # gray repeated
    if name == "CMYK.jpg":  # colours survive the round trip (JPEG is lossy)
        assert np.abs(a.astype(int) - RGB.astype(int)).mean() < 40


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent except one pixel
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    a = read_rgb(tmp_path / "t.png")
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[1, 1]) == (255, 255, 255)


def test_16_bit_png_uses_its_full_range(tmp_path):
    bright = np.full((8, 8), 65535, np.uint16)
    dark = np.full((8, 8), 200, np.uint16)  # nearly black in 16 bits, not 200/255
    Image.fromarray(bright).save(tmp_path / "bright.png")
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode.startswith("I")
    assert read_rgb(tmp_path / "bright.png").min() == 255
    assert read_rgb(tmp_path / "dark.png").max() <= 1


def test_float_tiff(tmp_path):
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "f.tiff")
    a = read_rgb(tmp_path / "f.tiff")
    assert a.min() == 0 and a.max() == 255


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert read_rgb(tmp_path / "rot.jpg").shape == (60, 40, 3)


def test_truncated_jpeg(tmp_path):
    data = _write(tmp_path, "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        read_rgb(tmp_path / "cut.jpg")


@pytest.mark.parametrize("content", [b"hello, I am text", b""])
def test_not_an_image_named_png(tmp_path, content):
    (tmp_path / "fake.png").write_bytes(content)
    with pytest.raises(ImageLoadError, match="not a readable image"):
        cnnlens.load_images(tmp_path / "fake.png")


def test_gigantic_and_elongated_images_are_refused(tmp_path):
    Image.new("1", (9000, 8000)).save(tmp_path / "huge.png")  # 72 Mpx, a few KB on disk
    with pytest.raises(ImageLoadError, match="downscale"):
        read_rgb(tmp_path / "huge.png")
    Image.new("RGB", (2100, 100)).save(tmp_path / "strip.png")
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        cnnlens.load_images(tmp_path / "strip.png")


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        cnnlens.load_images(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="contains no images"):
        cnnlens.load_images(tmp_path)
    with pytest.raises(ImageLoadError, match="matches no image"):
        cnnlens.load_images(str(tmp_path / "*.jpg"))
    with pytest.raises(ImageLoadError, match="no images given"):
        cnnlens.load_images([])
    with pytest.raises(ImageLoadError, match="paths"):
        cnnlens.load_images(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ImageLoadError, match="size"):
        cnnlens.load_images(DATA / "chelsea.jpg", size=0)


def test_folders_globs_and_batches(tmp_path):
    for name in ("b.png", "a.jpg", "c.bmp"):
        _write(tmp_path, name)
    (tmp_path / "notes.txt").write_text("not an image")
    x = cnnlens.load_images(tmp_path, size=32)
    assert tuple(x.shape) == (3, 3, 32, 32) and x.names == ("a", "b", "c")
    assert x.images.dtype == torch.uint8 and tuple(x.images.shape) == (3, 32, 32, 3)
    assert cnnlens.load_images(str(tmp_path / "*.png")).names == ("b",)
    assert tuple(cnnlens.load_images([tmp_path / "a.jpg", tmp_path / "c.bmp"]).shape) == (2, 3, 224, 224)


def test_preprocessing_follows_the_model(tmp_path, embedded):
    path = tmp_path / "grey.png"
    Image.new("RGB", (300, 250), (128, 128, 128)).save(path)
    plain = cnnlens.load_images(path)  # ImageNet mean/std
    lite = cnnlens.load_images(path, embedded)  # EfficientNet-Lite: mean = std = 0.5
    assert tuple(lite.shape) == (1, 3, 224, 224)
    assert float(lite.tensor.mean()) == pytest.approx((128 / 255 - 0.5) / 0.5, abs=1e-3)
    assert float(plain.tensor[0, 0].mean()) == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-3)
    # the display copy is kept un-normalised
    assert int(lite.images[0, 100, 100, 0]) == 128
    back = cnnlens.images.denormalize(lite.tensor, embedded)[0].permute(1, 2, 0) * 255
    assert torch.allclose(back, lite.images[0].float(), atol=1.0)


def test_demo_photos_and_their_licence():
    assert set(DEMO) >= {"chelsea", "coffee"}
    licence = (DATA / "LICENSE.md").read_text()
    for name in DEMO:
        assert (DATA / f"{name}.jpg").is_file() and f"{name}.jpg" in licence
    x = cnnlens.demo_images(names=["chelsea"])
    assert x.names == ("chelsea",)
    with pytest.raises(ImageLoadError, match="available: chelsea"):
        cnnlens.demo_images(names=["dog"])


# ------------------------------------------------------------------------------------------------
# fit="whole" | "crop": what the model sees of a non-square photo, and the exact way back
# ------------------------------------------------------------------------------------------------


def _ramp_photo(folder: Path, w: int = 640, h: int = 300) -> Path:
    """A w x h photo whose red channel rises with x and green with y (linear, so any resize of it
    is the same ramp sampled elsewhere: the geometry can be read back from the pixels)."""
    xs = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    ys = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    rgb = np.stack([xs, ys, np.full((h, w), 128.0)], axis=-1)
    path = folder / "wide.png"
    Image.fromarray(np.round(rgb).astype(np.uint8)).save(path)
    return path


def test_whole_is_the_default_and_keeps_the_whole_photo(tmp_path):
    path = _ramp_photo(tmp_path)
    x = cnnlens.load_images(path, size=32)
    assert x.fits[0].mode == "whole" and x.fits[0].original == (300, 640) and x.fits[0].input == (32, 32)
    # the model sees the whole width: the red ramp spans (nearly) 0..255 in the input, not its middle
    red = x.images[0, 16, :, 0].float()
    assert float(red[0]) < 12 and float(red[-1]) > 243
    assert x.original(0).shape == (300, 640, 3)  # the original picture is kept at its own size
    assert "640x300 resized to 32x32 (whole image, not cropped)" in x.preprocessing(0)
    crop = cnnlens.load_images(path, size=32, fit="crop")
    red_c = crop.images[0, 16, :, 0].float()
    assert float(red_c[0]) > 60 and float(red_c[-1]) < 195  # the centre only (x from 189 to 451 of 640)
    assert crop.fits[0].mode == "crop" and "centre-cropped" in crop.preprocessing(0)
    assert cnnlens.demo_images(names=["chelsea"], size=32, fit="crop").fits[0].mode == "crop"
    with pytest.raises(ImageLoadError, match=r"fit='square'.*'whole'.*'crop'"):
        cnnlens.load_images(path, fit="square")


@pytest.mark.parametrize("fit", ["whole", "crop"])
def test_the_fit_box_is_where_torchvision_put_the_input(tmp_path, fit):
    """The box Fit records is read back from the pixels torchvision produced: each input pixel's
    red value is the ramp at the picture x the box says it came from."""
    path = _ramp_photo(tmp_path)
    x = cnnlens.load_images(path, size=32, fit=fit)
    top, left, bh, bw = x.fits[0].box
    j = np.arange(32)
    picture_x = left + (j + 0.5) * bw / 32 - 0.5  # the input pixel centre, in picture pixels
    expected = picture_x * 255 / 639
    got = x.images[0, 16, :, 0].numpy().astype(float)
    assert np.abs(got - expected)[2:-2].max() < 1.5  # (the antialiasing filter bends the two ends)
    i = np.arange(32)
    expected_y = (top + (i + 0.5) * bh / 32 - 0.5) * 255 / 299
    assert np.abs(x.images[0, :, 16, 1].numpy().astype(float) - expected_y)[2:-2].max() < 1.5


@pytest.mark.parametrize("fit", ["whole", "crop"])
def test_maps_go_back_onto_the_photo_exactly(tmp_path, fit):
    """A map that is linear in input coordinates comes back as the same line in picture
    coordinates: the inverse of the resize (and crop), not an approximation of it."""
    x = cnnlens.load_images(_ramp_photo(tmp_path), size=32, fit=fit)
    m = torch.arange(32, dtype=torch.float32)[None, :].repeat(32, 1)  # m = input column index
    values, inside = x.to_original(m, 0)
    assert values.shape == (300, 640) and inside.shape == (300, 640)
    top, left, bh, bw = x.fits[0].box
    cols = np.arange(640)
    u = (cols + 0.5 - left) * 32 / bw - 0.5  # picture column -> input column (half-pixel centres)
    ok = (u >= 0) & (u <= 31)
    np.testing.assert_allclose(values[150, ok], u[ok], atol=1e-4)
    rows, cols_in = np.nonzero(inside)
    if fit == "whole":
        assert inside.all()
    else:  # the crop: the middle columns, and the rows of the 32 of 37 resized rows it kept
        assert cols_in.min() == pytest.approx(left, abs=1) and cols_in.max() == pytest.approx(left + bw - 1, abs=1)
        assert rows.min() == pytest.approx(top, abs=1) and rows.max() == pytest.approx(top + bh - 1, abs=1)
        assert not inside[:, :100].any() and inside[150, 200:440].all()


def test_images_slices_and_joins_keep_originals_and_fits(tmp_path):
    a = _ramp_photo(tmp_path)
    sq = tmp_path / "sq.png"
    Image.fromarray(RGB).save(sq)
    x = cnnlens.load_images([a, sq], size=32)
    assert [f.original for f in x[1:].fits] == [(40, 60)] and x[1:].original(0).shape == (40, 60, 3)
    joined = cnnlens.images.Images.concat([x[:1], x[1:]])
    assert joined.names == x.names and [f.original for f in joined.fits] == [(300, 640), (40, 60)]
    assert len(repr(x)) < 200


def test_the_way_back_is_torchs_own_bilinear_resampling():
    """The separable matrices of map_to_original give what grid_sample (border padding) and, for a
    whole picture, F.interpolate compute, without their per-pixel grid."""
    import torch.nn.functional as F

    from cnnlens.images import Fit, map_to_original

    m = torch.rand(7, 9, generator=torch.Generator().manual_seed(0))
    whole = Fit("whole", (300, 640), (7, 9), (0.0, 0.0, 300.0, 640.0))
    values, inside = map_to_original(m, whole)
    ref = F.interpolate(m[None, None], size=(300, 640), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(values, ref.numpy(), atol=1e-6)
    assert inside.all()
    crop = Fit("crop", (300, 640), (7, 9), (16.2, 188.7, 259.5, 262.6))
    values, inside = map_to_original(m, crop)
    ys = (torch.arange(300, dtype=torch.float64) + 0.5 - 16.2) / 259.5 * 2 - 1
    xs = (torch.arange(640, dtype=torch.float64) + 0.5 - 188.7) / 262.6 * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    ref = F.grid_sample(m[None, None].double(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    np.testing.assert_allclose(values, ref[0, 0].numpy(), atol=1e-6)
    assert np.array_equal(inside, ((gx.abs() <= 1) & (gy.abs() <= 1)).numpy())
