"""Image loading: files, folders and globs, preprocessed for a model, with display copies kept.

:func:`load_images` and :func:`demo_images` return an :class:`Images`: the preprocessed batch
(``tensor``) together with its display copies, names and source files. Slicing it keeps them
together (``x[:2]`` has the pictures of the first two images), which attributes stuck onto a tensor
could not do.
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens._figure_parts import images_png
from cnnlens.errors import ImageLoadError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DATA = Path(__file__).with_name("data")
DEMO = ("chelsea", "coffee", "rocket", "astronaut")
#: Files above this many pixels are refused before decoding (decompression-bomb guard).
MAX_FILE_PIXELS = 8192 * 8192
#: Images more elongated than this are refused: the centre crop would keep a sliver of them.
MAX_ASPECT = 20


#: How a picture becomes the model's input: the whole picture resized, or resized and centre-cropped.
FITS = ("whole", "crop")


@dataclass(frozen=True)
class Fit:
    """How one picture became the model's input, and so where the input's pixels lie in the picture.

    Attributes:
        mode: ``"whole"`` (the whole picture resized to the input size, the aspect ratio not kept)
            or ``"crop"`` (the shorter side resized, then the centre cropped).
        original: (height, width) of the picture as decoded.
        input: (height, width) of the model's input.
        box: (top, left, height, width), in the picture's pixels, of the region the input shows:
            the whole picture for ``"whole"``, the crop for ``"crop"``.
    """

    mode: str
    original: tuple[int, int]
    input: tuple[int, int]
    box: tuple[float, float, float, float]

    def describe(self) -> str:
        """The preprocessing in words, e.g. ``"640x300 resized to 224x224 (whole image, not cropped)"``."""
        h0, w0 = self.original
        h, w = self.input
        if self.mode == "whole":
            return f"{w0}x{h0} resized to {w}x{h} (whole image, not cropped)"
        top, left, bh, bw = self.box
        return (f"{w0}x{h0} centre-cropped to its middle {round(bw)}x{round(bh)} at ({round(left)}, {round(top)}) "
                f"and resized to {w}x{h}")

    def as_dict(self) -> dict[str, Any]:
        return {"fit": self.mode, "original_size": [self.original[1], self.original[0]],
                "input_size": [self.input[1], self.input[0]], "box_top_left_height_width": [float(b) for b in self.box],
                "preprocessing": self.describe()}


@dataclass(frozen=True, eq=False)
class Images:
    """A preprocessed image batch with what it was made from.

    :meth:`cnnlens.Explainer.explain` accepts it in place of a tensor and then carries it into the
    :class:`~cnnlens.Explanation`, whose overlays are then drawn on the original pictures at their
    own size. Call the model on ``tensor``.

    Attributes:
        tensor: (N, 3, H, W) float batch, normalised as the model expects, on the chosen device.
        images: (N, H, W, 3) uint8 display copies of what the model saw, after the same resize
            (and crop) (CPU).
        names: One name per image (the file stem).
        paths: The source file of each image.
        originals: Each picture as decoded, (H0, W0, 3) uint8 on the CPU, at its own size; None
            when the batch was built from display copies only (then ``images`` stand in for them).
        fits: How each picture became the input (:class:`Fit`); None with ``originals``.
        mean: The normalisation mean applied to ``tensor``, when known.
        std: The normalisation std, when known.
    """

    tensor: Tensor
    images: Tensor
    names: tuple[str, ...]
    paths: tuple[Path, ...]
    originals: tuple[Tensor, ...] | None = field(default=None, repr=False)
    fits: tuple[Fit, ...] | None = field(default=None, repr=False)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        n = self.tensor.shape[0]
        if self.images.shape[0] != n or len(self.names) != n or len(self.paths) != n:
            raise ImageLoadError(
                f"Images needs one display image, name and path per image: got {n} inputs, "
                f"{self.images.shape[0]} display images, {len(self.names)} names, {len(self.paths)} paths"
            )
        if (self.originals is None) != (self.fits is None) or (
                self.originals is not None and (len(self.originals) != n or len(self.fits or ()) != n)):
            raise ImageLoadError(f"Images needs one original picture and one Fit per image, or neither (got {n} inputs)")

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __repr__(self) -> str:
        t = self.tensor
        names = self.names if len(self.names) <= 6 else (*self.names[:5], f"... {len(self.names) - 5} more")
        fit = f", fit={self.fits[0].mode!r}" if self.fits else ""
        return f"Images({len(self)} x {tuple(t.shape[1:])}, {t.dtype}, {t.device}{fit}, names={names!r})"

    def _repr_png_(self) -> bytes:
        return images_png(self)

    def _pick(self, rows: list[int]) -> Images:
        pick = torch.tensor(rows, dtype=torch.long)
        return Images(
            self.tensor[pick.to(self.tensor.device)], self.images[pick],
            tuple(self.names[i] for i in rows), tuple(self.paths[i] for i in rows),
            tuple(self.originals[i] for i in rows) if self.originals is not None else None,
            tuple(self.fits[i] for i in rows) if self.fits is not None else None,
            self.mean, self.std,
        )

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Images:
        """A sub-batch: a slice, a list or tensor of indices, or an int (a batch of one image)."""
        if isinstance(index, bool):
            raise IndexError("Images cannot be indexed by a bool; use an int, a slice or a list of ints")
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= int(index) < n:
                raise IndexError(f"image index {int(index)} is out of range for {n} images")
            index = slice(int(index) % n, int(index) % n + 1)
        if isinstance(index, slice):
            return self._pick(list(range(len(self)))[index])
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return self._pick([int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)])

    @classmethod
    def concat(cls, parts: Sequence[Images]) -> Images:
        """Join batches (e.g. the chunks of one batch); originals are kept when every part has them."""
        parts = list(parts)
        if not parts:
            raise ImageLoadError("Images.concat needs at least one Images")
        whole = all(p.originals is not None for p in parts)
        return Images(
            torch.cat([p.tensor.to(parts[0].tensor.device) for p in parts]), torch.cat([p.images for p in parts]),
            tuple(n for p in parts for n in p.names), tuple(q for p in parts for q in p.paths),
            tuple(o for p in parts for o in (p.originals or ())) if whole else None,
            tuple(f for p in parts for f in (p.fits or ())) if whole else None,
            parts[0].mean, parts[0].std,
        )

    @property
    def shape(self) -> torch.Size:
        """The shape of ``tensor``, (N, 3, H, W)."""
        return self.tensor.shape

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args: Any, **kwargs: Any) -> Images:
        """Move or convert ``tensor`` as :meth:`torch.Tensor.to` does; the display copies stay on the CPU."""
        return replace(self, tensor=self.tensor.to(*args, **kwargs))

    def original(self, i: int) -> np.ndarray:
        """Picture ``i`` at its own size, (H0, W0, 3) uint8 (the display copy when no original is kept)."""
        src = self.originals[i] if self.originals is not None else self.images[i]
        return src.numpy() if isinstance(src, Tensor) else np.asarray(src)

    def preprocessing(self, i: int) -> str:
        """What the model saw of picture ``i``, in words (resize, crop, normalisation)."""
        h, w = self.images.shape[1:3]
        what = self.fits[i].describe() if self.fits is not None else f"{w}x{h} as given"
        if self.mean is not None and self.std is not None:
            what += f", normalised with mean {_fmt(self.mean)} and std {_fmt(self.std)}"
        return what

    def to_original(self, m: Tensor | np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Map an (H, W) map over the model's input back onto picture ``i`` at its own size.

        The exact inverse of the preprocessing: each picture pixel centre is placed in the input
        by the same half-pixel geometry the resize (and crop) used, and the map is sampled there
        bilinearly. Pixels outside the input (the parts a ``"crop"`` cut off) get the nearest edge
        value and ``False`` in the mask.

        Returns:
            ``(values, inside)``: (H0, W0) float32 and (H0, W0) bool.
        """
        a = torch.as_tensor(np.asarray(m) if not isinstance(m, Tensor) else m.detach().cpu()).float()
        if self.fits is None:
            return a.numpy(), np.ones(a.shape, dtype=bool)
        return map_to_original(a, self.fits[i])


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def map_to_original(m: Tensor, fit: Fit) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Images.to_original` for one map and its :class:`Fit`.

    Bilinear sampling at each picture pixel's centre, placed in the input by the half-pixel
    geometry of the resize (``align_corners=False``), coordinates clamped at the input's edge: what
    ``grid_sample(..., padding_mode="border")`` computes, done as two 1-D interpolation matrices
    (``rows @ m @ cols.T``), so a 12-megapixel photo needs no per-pixel sampling grid.
    """
    h0, w0 = fit.original
    h, w = int(m.shape[-2]), int(m.shape[-1])
    top, left, bh, bw = fit.box
    rows, rows_in = _interpolation_matrix(h0, h, top, bh)
    cols, cols_in = _interpolation_matrix(w0, w, left, bw)
    values = rows @ m.double().cpu().numpy() @ cols.T
    return values.astype(np.float32), rows_in[:, None] & cols_in[None, :]


def _interpolation_matrix(n_out: int, n_in: int, start: float, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """(n_out, n_in) weights of 1-D linear interpolation from the input's ``n_in`` pixels to the
    picture's ``n_out``, where the input covers ``[start, start + extent)`` of the picture; and
    which picture pixels' centres fall inside it."""
    centre = np.arange(n_out, dtype=np.float64) + 0.5
    u = (centre - start) / extent * n_in - 0.5  # the input coordinate of each picture pixel centre
    inside = (centre >= start) & (centre <= start + extent)
    u = np.clip(u, 0.0, n_in - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = u - i0
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(mat, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(mat, (np.arange(n_out), i1), frac)
    return mat, inside


def demo_paths(names: Sequence[str] = DEMO) -> list[Path]:
    """Paths of the bundled demo photos (scikit-image samples, CC0 / public domain, see data/LICENSE.md)."""
    return [DATA / f"{n}.jpg" for n in names]


def expand(sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders (non-recursive) and glob patterns to a sorted list of image files."""
    if isinstance(sources, (bytes, bytearray)) or not isinstance(sources, (str, os.PathLike, Iterable)):
        raise ImageLoadError(
            f"images must be given as paths, a folder or a glob pattern, got {type(sources).__name__}"
        )
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise ImageLoadError("no images given; pass files, a folder, or a glob such as 'photos/*.jpg'")
    out: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise ImageLoadError(f"image paths must be strings or paths, got {type(item).__name__}: {item!r}")
        s = os.path.expanduser(str(item))
        p = Path(s)
        if any(ch in s for ch in "*?[") and not p.exists():
            hits = sorted(Path(h) for h in _glob.glob(s, recursive=True)
                          if Path(h).suffix.lower() in EXTENSIONS and Path(h).is_file())
            if not hits:
                raise ImageLoadError(f"the pattern '{s}' matches no image files ({', '.join(EXTENSIONS)})")
            out.extend(hits)
        elif p.is_dir():
            hits = sorted(c for c in p.iterdir() if c.suffix.lower() in EXTENSIONS and c.is_file())
            if not hits:
                raise ImageLoadError(f"the folder '{p}' contains no images with extensions {', '.join(EXTENSIONS)}")
            out.extend(hits)
        elif p.is_file():
            out.append(p)
        else:
            raise ImageLoadError(f"image file '{p}' does not exist")
    return out


def read_rgb(path: Path) -> np.ndarray:
    """Decode one image to (H, W, 3) uint8 RGB, honouring EXIF orientation.

    Grayscale, palette, CMYK and 16-bit images are converted; alpha is composited on white.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_FILE_PIXELS:
                raise ImageLoadError(
                    f"'{path}' is {im.width}x{im.height} pixels, above the limit of {MAX_FILE_PIXELS}; downscale it first"
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                arr = np.asarray(im, dtype=np.float64)
                # A 16-bit file spans 0..65535 whatever its values; a 32-bit "I" image has no declared
                # range, so values above 255 are read as 16-bit.
                top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            if im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                span = float(arr.max() - arr.min()) or 1.0
                gray = ((arr - arr.min()) / span * 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            rgb = im.convert("RGB")
            if rgb.getbands() != ("R", "G", "B"):
                raise ImageLoadError(f"'{path}' could not be converted to RGB (mode {im.mode})")
            arr = np.asarray(rgb)
            if arr.dtype != np.uint8:
                arr = arr.astype(np.uint8)
            return arr.copy()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError:
        raise ImageLoadError(
            f"'{path}' declares more pixels than Pillow allows ({Image.MAX_IMAGE_PIXELS} x 2), a decompression-bomb "
            f"guard; cnnlens reads images up to {MAX_FILE_PIXELS} pixels: downscale it first"
        ) from None
    except IsADirectoryError:
        raise ImageLoadError(f"'{path}' is a folder, not an image file; pass the folder to load_images instead") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"'{path}' is not a readable image (supported: JPEG, PNG, BMP, WebP, TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"'{path}' could not be decoded ({exc}); the file may be truncated or corrupt") from None


def fit_of(shape: tuple[int, int], fit: str, resize: int, crop: int) -> Fit:
    """Where the model's input lies in a picture of ``shape`` (height, width), for ``fit``.

    ``"crop"`` follows torchvision's ``resize([resize])`` (the shorter side to ``resize``, the longer
    one to ``int(resize * long / short)``) and ``center_crop`` (offset ``round((side - crop) / 2)``).
    """
    h0, w0 = shape
    if fit == "whole":
        return Fit("whole", (h0, w0), (crop, crop), (0.0, 0.0, float(h0), float(w0)))
    short, long = (h0, w0) if h0 <= w0 else (w0, h0)
    new_long = int(resize * long / short)
    hr, wr = (resize, new_long) if h0 <= w0 else (new_long, resize)
    top, left = round((hr - crop) / 2.0), round((wr - crop) / 2.0)  # torchvision center_crop
    sy, sx = h0 / hr, w0 / wr
    return Fit("crop", (h0, w0), (crop, crop), (top * sy, left * sx, crop * sy, crop * sx))


def preprocess(arrays: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], resize: int, crop: int,
               fit: str = "crop") -> tuple[Tensor, Tensor]:
    """Make the model's input of each picture; keep uint8 copies of what it saw.

    ``fit="crop"`` resizes the shorter side to ``resize`` and centre-crops ``crop`` (torchvision's
    classification preset); ``fit="whole"`` resizes the whole picture to ``crop`` x ``crop``
    (pytorch-grad-cam's examples' ``cv2.resize(img, (224, 224))``), so nothing is cut off.
    """
    import torchvision.transforms.v2.functional as TF

    check_fit(fit)
    xs, shows = [], []
    for arr in arrays:
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if fit == "whole":
            t = TF.resize(t, [crop, crop], antialias=True)
        else:
            t = TF.resize(t, [resize], antialias=True)
            t = TF.center_crop(t, [crop, crop])
        shows.append(t.permute(1, 2, 0).contiguous())
        xs.append(TF.normalize(t.float() / 255.0, list(mean), list(std)))
    return torch.stack(xs), torch.stack(shows)


def check_fit(fit: str) -> str:
    if fit not in FITS:
        raise ImageLoadError(f"unknown fit={fit!r}; use 'whole' (resize the whole picture, the default) or 'crop' "
                             "(resize the shorter side, then centre-crop, as torchvision's presets do)")
    return fit


def load_images(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    model: nn.Module | None = None,
    size: int | None = None,
    device: str | torch.device | None = None,
    fit: str = "whole",
) -> Images:
    """Load images as a preprocessed (N, 3, H, W) batch for ``model``.

    Args:
        sources: Files, folders or glob patterns (JPEG, PNG, BMP, WebP, TIFF).
        model: Uses the model's own normalisation and input size when cnnlens knows them,
            ImageNet's otherwise.
        size: Override the input side (for ``fit="crop"`` the resize keeps the model's
            resize/crop ratio).
        device: Defaults to the model's device.
        fit: ``"whole"`` (default): the whole picture is resized to the model's square input
            (``size`` x ``size``, 224 for ImageNet models), so nothing is cut off and the model sees
            it squeezed or stretched, as pytorch-grad-cam's examples feed it (``cv2.resize``).
            ``"crop"``: torchvision's preset, the shorter side resized to the model's resize size
            and the centre cropped; the sides of a non-square photo are then not seen. Either way
            overlays are drawn on the picture at its own size, the map placed back by the exact
            inverse of this step (for ``"crop"``, the parts the model did not see are dimmed).

    Returns:
        An :class:`Images`: the batch as ``tensor``, the uint8 copies of what the model saw, the
        original pictures, names, paths, and how each was fitted (``fits``, ``preprocessing(i)``).
    """
    from cnnlens.models import meta_of

    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ImageLoadError(f"size must be an integer >= 8 (the crop side in pixels), got {size!r}")
    check_fit(fit)
    target_device = _device(device) if device is not None else None  # before decoding anything
    paths = expand(sources)
    meta = meta_of(model) if model is not None else None
    mean = meta.mean if meta else (0.485, 0.456, 0.406)
    std = meta.std if meta else (0.229, 0.224, 0.225)
    resize, crop = (meta.resize, meta.crop) if meta else (256, 224)
    if size is not None:
        resize, crop = round(size * resize / crop), size
    arrays = [read_rgb(p) for p in paths]
    for p, a in zip(paths, arrays, strict=True):
        h, w = a.shape[:2]
        if max(h, w) > MAX_ASPECT * min(h, w):
            # Resizing the short side to `resize` would blow the long side up (1 x 10000 -> 256 x 2.5M).
            raise ImageLoadError(
                f"'{p}' is {w}x{h} pixels, an aspect ratio above {MAX_ASPECT}:1; crop it to the region of interest first"
            )
    x, shows = preprocess(arrays, mean, std, resize, crop, fit)
    fits = tuple(fit_of(a.shape[:2], fit, resize, crop) for a in arrays)
    if target_device is None and model is not None:
        for prm in model.parameters():
            target_device = prm.device
            break
    if target_device is not None:
        x = x.to(target_device)
    return Images(x, shows, tuple(p.stem for p in paths), tuple(paths), tuple(torch.from_numpy(a) for a in arrays),
                  fits, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _device(device: str | torch.device) -> torch.device:
    """Parse ``device=`` and check that it exists here, with an error naming what would work."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ImageLoadError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:N' (or None for the model's)") from None
    if dev.type == "meta":
        raise ImageLoadError("device 'meta' holds no values; use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ImageLoadError(f"device '{dev}' was asked for but no CUDA GPU is available; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ImageLoadError(
                f"device '{dev}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


def demo_images(model: nn.Module | None = None, names: Sequence[str] = DEMO, size: int | None = None,
                device: str | torch.device | None = None, fit: str = "whole") -> Images:
    """The bundled demo photos (cat, coffee, rocket, astronaut) preprocessed for ``model``
    (``fit`` as in :func:`load_images`)."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in DEMO]
    if unknown:
        raise ImageLoadError(f"unknown demo image(s) {', '.join(unknown)}; available: {', '.join(DEMO)}")
    return load_images(demo_paths(names), model, size=size, device=device, fit=fit)


def denormalize(x: Tensor, model: nn.Module | None = None) -> Tensor:
    """Undo the model's normalisation: (N, 3, H, W) in [0, 1], detached (works on grad tensors)."""
    from cnnlens.models import meta_of

    meta = meta_of(model) if model is not None else None
    mean = torch.tensor(meta.mean if meta else (0.485, 0.456, 0.406), device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(meta.std if meta else (0.229, 0.224, 0.225), device=x.device).view(1, -1, 1, 1)
    return (x.detach() * std + mean).clamp(0, 1)
