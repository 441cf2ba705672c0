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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens.errors import ImageLoadError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DATA = Path(__file__).with_name("data")
DEMO = ("chelsea", "coffee", "rocket", "astronaut")
#: Files above this many pixels are refused before decoding (decompression-bomb guard).
MAX_FILE_PIXELS = 8192 * 8192
#: Images more elongated than this are refused: the centre crop would keep a sliver of them.
MAX_ASPECT = 20


@dataclass(frozen=True, eq=False)
class Images:
    """A preprocessed image batch with what it was made from.

    :meth:`cnnlens.Explainer.explain` accepts it in place of a tensor and then carries the display
    copies into the :class:`~cnnlens.Explanation`, for plotting. Call the model on ``tensor``.

    Attributes:
        tensor: (N, 3, H, W) float batch, normalised as the model expects, on the chosen device.
        images: (N, H, W, 3) uint8 display copies after the same resize and crop (CPU).
        names: One name per image (the file stem).
        paths: The source file of each image.
    """

    tensor: Tensor
    images: Tensor
    names: tuple[str, ...]
    paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        n = self.tensor.shape[0]
        if self.images.shape[0] != n or len(self.names) != n or len(self.paths) != n:
            raise ImageLoadError(
                f"Images needs one display image, name and path per image: got {n} inputs, "
                f"{self.images.shape[0]} display images, {len(self.names)} names, {len(self.paths)} paths"
            )

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __repr__(self) -> str:
        t = self.tensor
        return f"Images({len(self)} x {tuple(t.shape[1:])}, {t.dtype}, {t.device}, names={self.names!r})"

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
            return Images(self.tensor[index], self.images[index], tuple(self.names[index]), tuple(self.paths[index]))
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            index = index.nonzero().flatten()
        rows = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
        pick = torch.tensor(rows, dtype=torch.long)
        return Images(self.tensor[pick.to(self.tensor.device)], self.images[pick],
                      tuple(self.names[i] for i in rows), tuple(self.paths[i] for i in rows))

    @property
    def shape(self) -> torch.Size:
        """The shape of ``tensor``, (N, 3, H, W)."""
        return self.tensor.shape

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args: Any, **kwargs: Any) -> Images:
        """Move or convert ``tensor`` as :meth:`torch.Tensor.to` does; the display copies stay on the CPU."""
        return Images(self.tensor.to(*args, **kwargs), self.images, self.names, self.paths)


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


def preprocess(arrays: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], resize: int, crop: int) -> tuple[Tensor, Tensor]:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, normalise; keep uint8 copies."""
    import torchvision.transforms.v2.functional as TF

    xs, shows = [], []
    for arr in arrays:
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        t = TF.resize(t, [resize], antialias=True)
        t = TF.center_crop(t, [crop, crop])
        shows.append(t.permute(1, 2, 0).contiguous())
        xs.append(TF.normalize(t.float() / 255.0, list(mean), list(std)))
    return torch.stack(xs), torch.stack(shows)


def load_images(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    model: nn.Module | None = None,
    size: int | None = None,
    device: str | torch.device | None = None,
) -> Images:
    """Load images as a preprocessed (N, 3, H, W) batch for ``model``.

    Args:
        sources: Files, folders or glob patterns (JPEG, PNG, BMP, WebP, TIFF).
        model: Uses the model's own weight transforms when cnnlens knows them, ImageNet's otherwise.
        size: Override the crop size (the resize keeps the model's resize/crop ratio).
        device: Defaults to the model's device.

    Returns:
        An :class:`Images`: the batch as ``tensor``, its uint8 display copies, names and paths.
    """
    from cnnlens.models import meta_of

    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
        raise ImageLoadError(f"size must be an integer >= 8 (the crop side in pixels), got {size!r}")
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
    x, shows = preprocess(arrays, mean, std, resize, crop)
    if target_device is None and model is not None:
        for prm in model.parameters():
            target_device = prm.device
            break
    if target_device is not None:
        x = x.to(target_device)
    return Images(x, shows, tuple(p.stem for p in paths), tuple(paths))


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
                device: str | torch.device | None = None) -> Images:
    """The bundled demo photos (cat, coffee, rocket, astronaut) preprocessed for ``model``."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in DEMO]
    if unknown:
        raise ImageLoadError(f"unknown demo image(s) {', '.join(unknown)}; available: {', '.join(DEMO)}")
    return load_images(demo_paths(names), model, size=size, device=device)


def denormalize(x: Tensor, model: nn.Module | None = None) -> Tensor:
    """Undo the model's normalisation: (N, 3, H, W) in [0, 1], detached (works on grad tensors)."""
    from cnnlens.models import meta_of

    meta = meta_of(model) if model is not None else None
    mean = torch.tensor(meta.mean if meta else (0.485, 0.456, 0.406), device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(meta.std if meta else (0.229, 0.224, 0.225), device=x.device).view(1, -1, 1, 1)
    return (x.detach() * std + mean).clamp(0, 1)
