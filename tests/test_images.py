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
