"""Pictures: heatmap overlays, method x backend comparison grids, kernel and feature-map grids.

Every function draws on a plain :class:`matplotlib.figure.Figure` rendered by Agg, never through
``pyplot``: no global backend is switched, no GUI is needed, and figures are freed when dropped.
matplotlib is imported only when a picture is drawn (``import cnnlens`` stays light). Figures are
saved without ``bbox_inches="tight"``, so a PNG is exactly ``figsize * dpi`` pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from cnnlens import _files, _post
from cnnlens._figure_parts import FIGURE_PICTURE_SIDE, REPR_MAX, figure_png, fit_note, shrink, wrap
from cnnlens.errors import InputError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from cnnlens.conv_kernels import Kernels
    from cnnlens.explanation import Explanation
    from cnnlens.featuremaps import FeatureMaps

#: Side of one grid cell in inches; with ``DPI`` this makes 200-pixel tiles.
CELL = 2.0
DPI = 100
#: Extra height (inches) above a comparison grid for the column headers.
HEADER = 0.45
#: Formats matplotlib can write, by file suffix.
FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
#: Colormap of every view but ``sign="all"``, as before signs existed.
CMAP = "jet"
#: Diverging colormap of ``sign="all"``: white at zero, red positive, blue negative.
DIVERGING_CMAP = "bwr"
#: How much of the picture's brightness is left where a ``fit="crop"`` input did not reach.
DIM = 0.35



# ------------------------------------------------------------------------------------------------
# Output paths: never clobber the user's files
# ------------------------------------------------------------------------------------------------


def prepare_out_dir(path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = (),
                    option: str = "") -> Path:
    """Create ``path`` as an output folder under :func:`cnnlens.outputs.check_out_dir`'s policy:
    never a non-empty folder without ``overwrite``, never a folder that holds one of ``inputs``."""
    from cnnlens import outputs

    return outputs.check_out_dir(path, overwrite=overwrite, inputs=inputs, option=option)


def prepare_out_file(path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = (),
                     option: str = "") -> Path:
    """Check that a picture may be written to ``path`` (:func:`cnnlens.outputs.check_out_file`):
    a figure suffix, no existing file without ``overwrite``, never one of ``inputs``."""
    from cnnlens import outputs

    return outputs.check_out_file(path, overwrite=overwrite, inputs=inputs, formats=FORMATS, option=option)


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI, palette: bool = False) -> Path:
    """Write ``fig`` to ``path`` (format by suffix) at ``dpi``; the size is ``figsize * dpi``.

    Args:
        fig: The figure.
        path: Output file.
        dpi: Resolution.
        palette: For PNG, quantize to 256 dithered colours (about a third of the bytes; for READMEs).
    """
    p = Path(path)

    def write(tmp: Path) -> None:
        if palette and p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(io.BytesIO(figure_png(fig, dpi))) as im:
                rgb = im.convert("RGB")
                # Dithering against an octree palette keeps photos free of banding.
                palette_img = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
                rgb.quantize(palette=palette_img, dither=Image.Dither.FLOYDSTEINBERG).save(tmp, format="PNG", optimize=True)
        else:
            fig.savefig(str(tmp), dpi=dpi, format=p.suffix.lstrip(".").lower() or None)

    # A temporary name, then a rename: a full disk leaves no truncated picture behind.
    return _files.write_atomic(p, write)


# ------------------------------------------------------------------------------------------------
# Arrays
# ------------------------------------------------------------------------------------------------


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def as_uint8_image(image: Any) -> np.ndarray:
    """One display image as (H, W, 3) uint8.

    Accepts (H, W, 3) or (H, W) uint8, or floats in [0, 1] as (H, W, 3), (3, H, W) or (H, W),
    from NumPy or torch.
    """
    a = _numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(f"an image must be (H, W, 3), (3, H, W) or (H, W); got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    if f.max(initial=0.0) > 1.0 + 1e-6:  # already 0..255
        return np.clip(f + 0.5, 0, 255).astype(np.uint8)
    return np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _two_d(a: np.ndarray) -> np.ndarray:
    """``a`` without its extra axes of length 1, as (H, W): leading ones first, so that the map of a
    1x1 picture stays (1, 1) rather than squeezed to a scalar."""
    if a.ndim > 2 and all(d == 1 for d in a.shape[:-2]):
        return a.reshape(a.shape[-2:])
    return a if a.ndim == 2 else np.squeeze(a)


def as_map(m: Any) -> np.ndarray:
    """A heatmap as (H, W) float64 with NaN/Inf replaced by 0."""
    a = _numpy(m).astype(np.float64)
    a = _two_d(a)
    if a.ndim != 2:
        raise InputError(f"a map must be (H, W); got shape {_numpy(m).shape}")
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _map32(m: Any) -> np.ndarray:
    """:func:`as_map` in float32, for full-size pictures (a 12-megapixel map in float64 is 100 MB
    per temporary)."""
    a = _two_d(_numpy(m))
    if a.ndim != 2:
        raise InputError(f"a map must be (H, W); got shape {_numpy(m).shape}")
    a = a.astype(np.float32, copy=False)
    return a if np.isfinite(a).all() else np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if m.shape == size:
        return m
    t = torch.from_numpy(np.ascontiguousarray(m))[None, None].float()
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _cmap(name: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        hint = ", ".join(n for n in ("jet", "inferno", "viridis", "magma", "turbo", "gray") if n in matplotlib.colormaps)
        raise OptionError(f"unknown colormap '{name}'; e.g. {hint}") from None


def _colours(colour: Any, m: np.ndarray) -> np.ndarray:
    """``colour(m)[..., :3] * 255`` as float32, through the colormap's own table.

    The same colours as calling the colormap (which looks values up in its ``N`` entries by
    ``floor(m * N)``), without its (H, W, 4) float64 array: a 12-megapixel photo's overlay then
    needs float32 RGB, not gigabytes.
    """
    n = int(colour.N)
    lut = (colour(np.arange(n))[:, :3] * 255.0).astype(np.float32)
    idx = np.minimum((np.clip(m, 0.0, 1.0) * n).astype(np.int64), n - 1)
    return lut[idx]


def heatmap(m: Any, cmap: str = "jet") -> np.ndarray:
    """Colour an (H, W) map in [0, 1] with ``cmap``; returns (H, W, 3) uint8."""
    a = np.clip(as_map(m), 0.0, 1.0)
    return (_colours(_cmap(cmap), a) + 0.5).astype(np.uint8)


def overlay(image: Any, map: Any, cmap: str = "jet", alpha: float = 0.5, weighted: bool = False) -> np.ndarray:
    """Blend a heatmap over an image.

    Args:
        image: (H, W, 3) uint8 (or anything :func:`as_uint8_image` accepts).
        map: (h, w) map, normally in [0, 1]; resized bilinearly to the image, and min-max scaled if
            it leaves [0, 1]. A constant map (including all zeros) carries no information and is
            drawn as an empty overlay: the image itself. (Captum's visualizer raises here.)
        cmap: A matplotlib colormap name.
        alpha: Weight of the heatmap, in [0, 1].
        weighted: Scale the heatmap's weight per pixel by the map's value (``2 * alpha * map``,
            at most 1), so low-attribution pixels show the image: suits sparse pixel attributions.

    Returns:
        (H, W, 3) uint8.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise OptionError(f"alpha must be a number in [0, 1], got {alpha!r}")
    img = as_uint8_image(image)
    m = _map32(map)
    colour = _cmap(cmap)  # validate the name even when the map turns out empty
    if m.size == 0:
        return img.copy()
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= 1e-12:
        return img.copy()
    if lo < 0.0 or hi > 1.0:
        m = (m - lo) / (hi - lo)
    m = _resize_map(m, img.shape[:2])
    m = np.clip(m, 0.0, 1.0)
    heat = _colours(colour, m)
    a: Any = np.minimum(2.0 * alpha * m, 1.0).astype(np.float32)[..., None] if weighted else np.float32(alpha)
    out = (1.0 - a) * img.astype(np.float32) + a * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


#: Pixel attributions are sparse: their display range ends at this percentile, so the few largest
#: values do not leave every other pixel invisible (Captum's visualizer clips 2% for the same reason).
PIXEL_PERCENTILE = 99.0


def display_map(m: Any, kind: str = "cam") -> np.ndarray:
    """The map as drawn: CAMs as they are, pixel attributions scaled to their 99th percentile."""
    a = np.clip(as_map(m), 0.0, None)
    if kind == "pixel" and a.size:
        top = float(np.percentile(a, PIXEL_PERCENTILE))
        if top > 0:
            a = np.clip(a / top, 0.0, 1.0)
    return a


def default_cmap(sign: str | None) -> str:
    """The colormap a view gets when none is asked for: diverging for ``sign="all"``."""
    return DIVERGING_CMAP if sign is not None and _post.check_sign(sign) == "all" else CMAP


def check_style(cmap: str | None = None, alpha: float = 0.5) -> None:
    """Validate ``cmap`` (None: the view's default) and ``alpha`` before anything is drawn or written."""
    if cmap is not None:
        _cmap(cmap)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise OptionError(f"alpha must be a number in [0, 1], got {alpha!r}")


def auto_sign(explanation: Explanation, sign: str | None) -> str | None:
    """The view ``sign=None`` stands for: ``maps`` (None), except for pixel attributions reduced
    with a sign-keeping ``reduce`` (``"sum"``, ``"max"``), whose min-max scaled ``maps`` would put
    zero mid-scale and tint the whole picture, and which are drawn as ``"all"``."""
    if sign is not None:
        return _post.check_sign(sign)
    if explanation.kind == "pixel" and explanation.reduce in _post.SIGNED_REDUCTIONS:
        return "all"
    return None


def view(explanation: Explanation, i: int, sign: str | None = None,
         outlier_perc: float = _post.DEFAULT_OUTLIER_PERC) -> np.ndarray:
    """The (H, W) values drawn for image ``i`` at input resolution.

    ``sign=None`` draws ``maps``, the contract every comparison uses (CAMs after their ReLU,
    pixel attributions by ``reduce``, scaled to their 99th percentile), except that a
    sign-keeping ``reduce`` is drawn as ``"all"`` (:func:`auto_sign`). A sign draws the signed
    attribution as Captum's ``visualize_image_attr`` does (:meth:`Explanation.signed`):

    * ``"all"``: in [-1, 1], zero at zero, on a diverging colormap.
    * ``"positive"`` / ``"negative"``: one side, in [0, 1].
    * ``"absolute"``: ``|attribution|``, in [0, 1].

    For CAM methods (``signed=False`` in the registry: the toolkits show their CAMs after a ReLU),
    the signed attribution is the CAM *before* that ReLU, so ``"positive"`` is the usual CAM
    picture, ``"negative"`` shows where the layer's features speak against the target (the
    counterfactual view of the Grad-CAM paper), ``"absolute"`` both as one magnitude and
    ``"all"`` both with their signs.
    """
    sign = auto_sign(explanation, sign)
    if sign is None:
        return display_map(explanation.maps[i], explanation.kind)
    return as_map(explanation.signed(sign, outlier_perc)[i])


def overlay_signed(image: Any, map: Any, cmap: str = DIVERGING_CMAP, alpha: float = 0.5) -> np.ndarray:
    """Blend a signed map in [-1, 1] over an image on a colormap centred at zero.

    As Captum's blended heat map, the picture underneath is grey, so that its own reds and blues
    are not read as attribution. The heatmap's weight grows with ``|value|`` (``2 * alpha *
    sqrt(|value|)``, at most 1): where the attribution is zero the picture shows, not the
    colormap's middle, and the small values of sparse pixel attributions stay visible.
    """
    check_style(cmap, alpha)
    img = as_uint8_image(image).astype(np.float32)
    m = np.clip(_map32(map), -1.0, 1.0)
    if m.shape != img.shape[:2]:
        m = _resize_map(m, img.shape[:2])
    grey = img.mean(axis=2, keepdims=True)
    heat = _colours(_cmap(cmap), (m + 1.0) / 2.0)
    a = np.minimum(2.0 * alpha * np.sqrt(np.abs(m)), 1.0).astype(np.float32)[..., None]
    out = (1.0 - a) * grey + a * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def draw(explanation: Explanation, i: int, image: Any = None, cmap: str | None = None, alpha: float = 0.5, *,
         sign: str | None = None, outlier_perc: float = _post.DEFAULT_OUTLIER_PERC,
         max_side: int | None = None) -> np.ndarray:
    """Image ``i`` of an explanation as drawn in every cnnlens picture.

    Over ``image`` when one is given (resized to it); else over the original picture at its own
    size and aspect ratio when the explanation was made from an :class:`~cnnlens.images.Images`
    (the map placed back by the inverse of the preprocessing; for ``fit="crop"`` the parts the
    model did not see are dimmed); else as a bare heatmap at input resolution. Pixel methods blend
    per pixel.

    Args:
        explanation: The explanation.
        i: Image index.
        image: A picture to draw on instead of the explanation's own.
        cmap: Colormap; None is ``"jet"``, or ``"bwr"`` (diverging) for ``sign="all"``.
        alpha: Heatmap weight.
        sign: None (``maps``), or ``"absolute"``, ``"positive"``, ``"negative"``, ``"all"``: see
            :func:`view`.
        outlier_perc: With a sign, the percent of the total attribution above the colour scale
            (Captum's ``outlier_perc``).
        max_side: Shrink the original picture to at most this many pixels first (figures).
    """
    sign = auto_sign(explanation, sign)
    cmap = cmap or default_cmap(sign)
    m = view(explanation, i, sign, outlier_perc)
    inside = None
    if image is None:
        src = explanation.source
        if src is not None and src.fits is not None:
            image = shrink(src.original(i), max_side)
            m, inside = _placed(src, m, i, image.shape[:2])
        elif explanation.images is not None:
            image = explanation.images[i]
    if image is None:
        if sign == "all":
            return (_colours(_cmap(cmap), (np.clip(m, -1, 1) + 1.0) / 2.0) + 0.5).astype(np.uint8)
        return heatmap(m, cmap)
    if sign == "all":
        out = overlay_signed(image, m, cmap, alpha)
    else:
        out = overlay(image, m, cmap, alpha, weighted=explanation.kind == "pixel")
    if inside is not None and not inside.all():
        out = np.where(inside[..., None], out, (out.astype(np.float32) * DIM + 0.5).astype(np.uint8))
    return out


def _placed(src: Any, m: np.ndarray, i: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The input-resolution map ``m`` on picture ``i`` of ``src``, at ``shape`` (the picture's own
    size, or a shrunk copy of it: the same geometry, scaled)."""
    from dataclasses import replace as _replace

    from cnnlens.images import map_to_original

    fit = src.fits[i]
    h0, w0 = fit.original
    if shape != (h0, w0):
        ky, kx = shape[0] / h0, shape[1] / w0
        top, left, bh, bw = fit.box
        fit = _replace(fit, original=shape, box=(top * ky, left * kx, bh * ky, bw * kx))
    values, inside = map_to_original(torch.from_numpy(np.ascontiguousarray(m)).float(), fit)
    return values, inside


def _is_images(obj: Any) -> bool:
    """``obj`` is a :class:`cnnlens.images.Images` (checked without importing torchvision's transforms)."""
    from cnnlens.images import Images

    return isinstance(obj, Images)


def _sources_of(explanations: Sequence[Explanation], images: Any) -> Any:
    """The :class:`~cnnlens.images.Images` whose original pictures a figure draws on, if any."""
    if _is_images(images):
        return images if images.fits is not None else None
    if images is not None:
        return None
    return next((e.source for e in explanations if e.source is not None and e.source.fits is not None), None)


def _images_of(explanations: Sequence[Explanation], images: Any) -> np.ndarray | None:
    src = images.images if _is_images(images) else images
    if src is None:
        for e in explanations:
            if e.images is not None:
                src = e.images
                break
    if src is None:
        return None
    a = _numpy(src)
    if a.ndim == 3:
        a = a[None]
    return np.stack([as_uint8_image(i) for i in a])


# ------------------------------------------------------------------------------------------------
# Explanations
# ------------------------------------------------------------------------------------------------


def _is_constant(e: Explanation, i: int) -> bool:
    """Whether image ``i``'s map is constant (min-max normalised maps are then all zeros)."""
    return not float(e.maps[i].max()) > 0.0


def _label(e: Explanation, i: int) -> str:
    parts = []
    if e.labels:
        parts.append(str(e.labels[i]))
    else:
        parts.append(f"class {int(e.targets[i])}")
    if e.scores is not None:
        parts.append(f"{float(e.scores[i]):.2f}")
    return " ".join(parts)



def _preprocessing_caption(src: Any) -> str:
    """One sentence on the preprocessing a figure's pictures went through."""
    if src is None or src.fits is None:
        return ""
    modes = {f.mode for f in src.fits}
    h, w = src.fits[0].input
    if modes == {"whole"}:
        what = f"model input: each whole picture resized to {w}x{h} (aspect ratio not kept, nothing cropped)"
    elif modes == {"crop"}:
        what = f"model input: the centre of each picture, cropped and resized to {w}x{h}; dimmed parts were not seen"
    else:
        what = f"model input: {w}x{h}"
    return what + "; overlays drawn on the original pictures"


def _sign_label(sign: str, outlier_perc: float) -> str:
    what = {"all": "signed attribution", "positive": "positive attribution",
            "negative": "negative attribution (magnitude)", "absolute": "|attribution|"}[sign]
    return f"{what}, scaled (outlier_perc={outlier_perc:g})"


def add_colorbar(fig: Figure, axes: Any, sign: str, cmap: str, outlier_perc: float, fontsize: float = 7) -> Any:
    """A horizontal colour bar under ``axes`` for a signed view: -1..1 for ``"all"``, else 0..1.

    1 is Captum's outlier threshold: the value below which ``100 - outlier_perc`` percent of the
    image's total absolute attribution lies; larger values are drawn as 1.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sign = _post.check_sign(sign)
    lo = -1.0 if sign == "all" else 0.0
    mappable = ScalarMappable(norm=Normalize(vmin=lo, vmax=1.0), cmap=_cmap(cmap))
    bar = fig.colorbar(mappable, ax=axes, location="bottom", shrink=0.8, aspect=40, pad=0.02)
    bar.set_label(_sign_label(sign, outlier_perc), fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize)
    return bar


def comparison_grid(
    explanations: Sequence[Explanation],
    images: Any = None,
    out: str | Path | None = None,
    *,
    names: Sequence[str] | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    cell: float = CELL,
    dpi: int = DPI,
    title: str | None = None,
    sign: str | None = None,
    outlier_perc: float = _post.DEFAULT_OUTLIER_PERC,
) -> Figure:
    """Draw explanations side by side: rows are images, columns are (method, backend) pairs.

    The first column shows the input: the original picture at its own aspect ratio, titled with its
    name and what the model saw of it (``451x300 → 224x224, whole``); a caption states the
    preprocessing. Column headers carry the method, the backend and the wall time of the call;
    every cell carries the explained class label and its score. Long titles wrap, never cut.

    Args:
        explanations: Explanations of the same N images (e.g. one per method or backend).
        images: The :class:`~cnnlens.images.Images` that was explained (its names then label the
            rows; overlays on its original pictures), or (N, H, W, 3) uint8 pictures to draw on;
            defaults to the explanations' own. Without images the heatmaps are drawn alone.
        out: Also write the figure here (format by suffix; the file is replaced if it exists).
        names: Row labels (image names).
        cmap: Heatmap colormap (None: ``"jet"``, or ``"bwr"`` for ``sign="all"``).
        alpha: Heatmap weight in the overlay.
        cell: Side of one cell in inches.
        dpi: Resolution used when saving ``out``.
        title: Figure title.
        sign: None draws ``maps``; ``"absolute"``, ``"positive"``, ``"negative"`` or ``"all"`` draw
            the signed attribution (:func:`view`) with a colour bar.
        outlier_perc: With a sign, Captum's ``outlier_perc``.

    Returns:
        The figure, ``(1 + len(explanations)) * cell`` inches wide when images are shown.
    """
    from cnnlens._figure import Picture

    if sign is not None:
        sign = _post.check_sign(sign)
    outlier_perc = _post.check_outlier_perc(outlier_perc)
    check_style(cmap, alpha)
    exps = list(explanations)
    if not exps:
        raise InputError("comparison_grid needs at least one Explanation")
    # One colour bar per signed view drawn (an explicit sign, or pixel maps reduced with their sign).
    bars = list(dict.fromkeys(v for v in (auto_sign(e, sign) for e in exps) if v is not None))
    n = len(exps[0])
    if any(len(e) != n for e in exps):
        sizes = ", ".join(f"{e.method}/{e.backend}: {len(e)}" for e in exps)
        raise InputError(f"explanations cover different numbers of images ({sizes}); explain the same batch")
    src = _sources_of(exps, images)
    if src is not None and len(src) != n:
        raise InputError(f"got {len(src)} images for explanations of {n}; pass the batch that was explained")
    if names is None and _is_images(images):
        names = list(images.names)
    if names is None and src is not None:
        names = list(src.names)
    imgs = None if src is not None else _images_of(exps, images)
    if imgs is not None and len(imgs) != n:
        raise InputError(f"got {len(imgs)} images for explanations of {n}; pass the batch that was explained")
    if names is not None and len(names) != n:
        raise InputError(f"got {len(names)} names for {n} images")
    shown = src is not None or imgs is not None
    first = 1 if shown else 0
    cols = first + len(exps)
    caption = _preprocessing_caption(src)
    # The caption takes room from the cells, so that the figure keeps its documented size.
    extra = (0.35 if title else 0.0) + 0.55 * len(bars)
    fig = Picture(figsize=(cols * cell, n * cell + HEADER + extra), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    fs = 8 if cell >= 1.8 else 7
    for i in range(n):
        picture = None
        if src is not None:
            picture = shrink(src.original(i), FIGURE_PICTURE_SIDE)
        elif imgs is not None:
            picture = imgs[i]
        if picture is not None:
            ax = axes[i, 0]
            ax.imshow(picture)
            row = names[i] if names is not None else f"image {i}"
            note = fit_note(src, i)
            ax.set_title(wrap(("input\n" if i == 0 else "") + str(row) + (f"\n{note}" if note else ""), cell, fs),
                         fontsize=fs)
        for j, e in enumerate(exps):
            ax = axes[i, first + j]
            if src is not None:
                drawn = _draw_on(e, src, i, picture, cmap, alpha, sign, outlier_perc)
            else:
                drawn = draw(e, i, picture, cmap, alpha, sign=sign, outlier_perc=outlier_perc)
            ax.imshow(drawn)
            head = f"{e.method}\n{e.backend} · {e.seconds:.2f} s\n" if i == 0 else ""
            flat = "\nconstant map" if _is_constant(e, i) else ""  # drawn as the bare picture: say why
            ax.set_title(wrap(head + _label(e, i) + flat, cell, fs), fontsize=fs)
    for ax in axes.flat:
        ax.set_axis_off()
    for view_sign in bars:
        add_colorbar(fig, axes.ravel().tolist(), view_sign, cmap or default_cmap(view_sign), outlier_perc, fs)
    if title:
        fig.suptitle(wrap(title, cols * cell, fs + 3), fontsize=fs + 3)
    if caption:
        fig.supxlabel(wrap(caption, cols * cell, fs), fontsize=fs)
    if out is not None:
        save_figure(fig, out, dpi)
    return fig


def _draw_on(e: Explanation, src: Any, i: int, picture: np.ndarray, cmap: str | None, alpha: float, sign: str | None,
             outlier_perc: float) -> np.ndarray:
    """Explanation ``e``'s image ``i`` over ``picture``, a (possibly shrunk) copy of ``src``'s original."""
    from dataclasses import replace as _replace

    own = e.source if e.source is not None and e.source.fits is not None else src
    return draw(_replace(e, source=own), i, None, cmap, alpha, sign=sign, outlier_perc=outlier_perc,
                max_side=max(picture.shape[:2]))


def save_overlay(explanation: Explanation, i: int, path: str | Path, cmap: str | None = None, alpha: float = 0.5,
                 *, sign: str | None = None, outlier_perc: float = _post.DEFAULT_OUTLIER_PERC) -> Path:
    """Write image ``i`` of an explanation as a PNG overlay (see :func:`draw`): on the original
    picture at its own size when the explanation was made from an :class:`~cnnlens.images.Images`,
    else at input resolution (the heatmap alone when it carries no pictures). Written atomically."""
    from PIL import Image

    if not 0 <= i < len(explanation):
        raise InputError(f"image index {i} is out of range for an explanation of {len(explanation)} images")
    picture = draw(explanation, i, None, cmap, alpha, sign=sign, outlier_perc=outlier_perc)
    return _files.write_atomic(Path(path), lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))


def explanation_figure(explanation: Explanation, *, sign: str | None = None,
                       outlier_perc: float = _post.DEFAULT_OUTLIER_PERC, cmap: str | None = None,
                       alpha: float = 0.5, cell: float = 2.0, max_images: int = REPR_MAX) -> Figure:
    """One row of an explanation's overlays on the original pictures, titled with the method, the
    backend, the layer and each image's class; a colour bar for a signed view. What
    ``Explanation.plot`` and ``_repr_png_`` draw."""
    from cnnlens._figure import Picture

    sign = auto_sign(explanation, sign)
    outlier_perc = _post.check_outlier_perc(outlier_perc)
    check_style(cmap, alpha)
    cmap = cmap or default_cmap(sign)
    e = explanation
    n = min(len(e), max_images)
    width = max(max(n, 1) * cell, 4.0)  # room for the title even over one image
    more = f" (first {n} of {len(e)})" if len(e) > n else ""
    layer = f", layer {e.layer}" if e.layer else ""
    title = wrap(f"{e.method} · {e.backend}{layer} · {e.seconds:.2f} s{more}", width, 9)
    caption = _preprocessing_caption(e.source)
    lines = title.count("\n") + 1
    fig = Picture(figsize=(width, cell + 0.5 + 0.18 * lines + (0.3 if caption else 0) + (0.55 if sign else 0)),
                 layout="constrained")
    axes = fig.subplots(1, max(n, 1), squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(draw(e, i, None, cmap, alpha, sign=sign, outlier_perc=outlier_perc, max_side=FIGURE_PICTURE_SIDE))
        name = f"{e.names[i]}: " if e.names else ""
        ax.set_title(wrap(name + _label(e, i), width / max(n, 1), 8), fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    if sign is not None:
        add_colorbar(fig, axes.ravel().tolist(), sign, cmap, outlier_perc)
    fig.suptitle(title, fontsize=9)
    if caption:
        fig.supxlabel(wrap(caption, width, 7), fontsize=7)
    return fig


def explanation_png(explanation: Explanation, cell: float = 2.0, dpi: int = 80, **kwargs: Any) -> bytes:
    """A one-row PNG of an explanation's overlays, for Jupyter (``Explanation._repr_png_``)."""
    return figure_png(explanation_figure(explanation, cell=cell, **kwargs), dpi)


# ------------------------------------------------------------------------------------------------
# Generic grids, kernels, feature maps
# ------------------------------------------------------------------------------------------------


def image_grid(
    images: Any,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    out: str | Path | None = None,
    *,
    cmap: str = "viridis",
    cell: float = 1.6,
    dpi: int = DPI,
    title: str | None = None,
) -> Figure:
    """Draw images in a grid.

    Args:
        images: A sequence or array of (H, W) maps (drawn with ``cmap``, each scaled to its own
            range) or (H, W, 3) RGB images (uint8, or floats in [0, 1]).
        titles: One title per image.
        ncols: Images per row (default: a near-square layout).
        out: Also write the figure here.
        cmap: Colormap for single-channel images.
        cell: Side of one cell in inches.
        dpi: Resolution used when saving ``out``.
        title: Figure title.
    """
    from cnnlens._figure import Picture

    items = [_numpy(i) for i in images]
    if not items:
        raise InputError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(items):
        raise InputError(f"got {len(titles)} titles for {len(items)} images")
    n = len(items)
    cols = ncols or math.ceil(math.sqrt(n))
    if cols < 1:
        raise OptionError(f"ncols must be >= 1, got {ncols}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Picture(figsize=(cols * cell, rows * cell + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    colour = _cmap(cmap)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        a = np.squeeze(items[k])
        if a.ndim == 2:
            ax.imshow(np.nan_to_num(a.astype(np.float64)), cmap=colour, interpolation="nearest")
        else:
            ax.imshow(as_uint8_image(a), interpolation="nearest")
        if titles is not None:
            ax.set_title(wrap(str(titles[k]), cell, 7), fontsize=7)
    if title:
        fig.suptitle(wrap(title, cols * cell, 10), fontsize=10)
    if out is not None:
        save_figure(fig, out, dpi)
    return fig


def mosaic(tiles: np.ndarray, ncols: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tile (F, h, w[, 3]) arrays in [0, 1] into one (rows*(h+pad)-pad, cols*(w+pad)-pad[, 3]) array."""
    t = np.asarray(tiles, dtype=np.float64)
    n, h, w = t.shape[:3]
    cols = ncols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    shape = (rows * (h + pad) - pad, cols * (w + pad) - pad, *t.shape[3:])
    out = np.full(shape, fill, dtype=np.float64)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = t[k]
    return out


def kernel_grid(kernels: Kernels, out: str | Path | None = None, ncols: int | None = None, *,
                cmap: str = "viridis", dpi: int = DPI, width: float = 8.0) -> Figure:
    """Draw a :class:`~cnnlens.conv_kernels.Kernels` result as one mosaic, one tile per filter.

    Single-channel tiles use ``cmap`` (viridis has no white, so the white gaps between tiles stay
    visible); RGB tiles are drawn as colour.
    """
    from cnnlens._figure import Picture

    tiles = kernels.tiles.numpy()
    n = tiles.shape[0]
    cols = ncols or math.ceil(math.sqrt(n))
    if cols < 1:
        raise OptionError(f"ncols must be >= 1, got {ncols}")
    rows = math.ceil(n / cols)
    if tiles.ndim == 3:
        tiles = _cmap(cmap)(np.clip(tiles, 0.0, 1.0))[..., :3]
    grid = mosaic(tiles, cols, pad=1, fill=1.0)
    aspect = grid.shape[0] / grid.shape[1]
    fig = Picture(figsize=(width, width * aspect + 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    kh, kw = tiles.shape[1:3]
    what = {"rgb": "RGB", "mean": "mean over input channels", "channel": f"input channel {kernels.channel}"}[kernels.mode]
    fig.suptitle(wrap(f"{kernels.layer}: {n} filters {kh}x{kw}, {what}, normalized per {kernels.normalize} "
                      f"({rows} rows of {cols})", width, 10), fontsize=10)
    if out is not None:
        save_figure(fig, out, dpi)
    return fig


def feature_grid(
    maps: FeatureMaps,
    layers: Sequence[str] | None = None,
    top: int = 16,
    images: Any = None,
    out: str | Path | None = None,
    *,
    ncols: int = 8,
    call: int = -1,
    names: Sequence[str] | None = None,
    cmap: str = "viridis",
    cell: float = 1.25,
    dpi: int = DPI,
    max_images: int | None = None,
) -> Figure:
    """Draw the top-``top`` channels (by mean activation) of each layer, for each image.

    One block of rows per (image, layer); the first column shows the input image and names the
    layer, then the channels follow in decreasing mean activation, each titled ``#channel`` and its
    mean.

    Args:
        maps: What :func:`cnnlens.capture` recorded.
        layers: Layers to draw (default: all captured).
        top: Channels per layer and image.
        images: (N, H, W, 3) display images for the first column, or the
            :class:`~cnnlens.images.Images` that was captured (its names then label the images).
        out: Also write the figure here.
        ncols: Channels per row.
        call: Which forward pass to draw (default: the last).
        names: Image names.
        cmap: Colormap for the channels.
        cell: Side of one cell in inches.
        dpi: Resolution used when saving ``out``.
        max_images: Draw only the first this many images (None: all).
    """
    from cnnlens._figure import Picture

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise OptionError(f"top must be a positive integer, got {top!r}")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise OptionError(f"ncols must be a positive integer, got {ncols!r}")
    chosen = list(layers) if layers is not None else list(maps.layers)
    ranked = {name: maps.top_channels(name, top, call=call) for name in chosen}
    n = next(iter(ranked.values()))[0].shape[0] if ranked else 0
    imgs = None
    if _is_images(images):
        names = list(images.names) if names is None else names
        images = images.images
    if images is not None:
        imgs = np.stack([as_uint8_image(i) for i in _numpy(images)])
        if len(imgs) != n:
            raise InputError(f"got {len(imgs)} images for feature maps of {n}")
    shown = n if max_images is None else min(n, max_images)
    blocks = [(i, name) for i in range(shown) for name in chosen]
    per_row = min(ncols, max(r[0].shape[1] for r in ranked.values()))
    block_rows = {name: math.ceil(ranked[name][0].shape[1] / per_row) for name in chosen}
    rows = sum(block_rows[name] for _, name in blocks)
    cols = per_row + 1
    fig = Picture(figsize=(cols * cell, rows * cell + 0.3), layout="constrained")
    gs = fig.add_gridspec(rows, cols)
    colour = _cmap(cmap)
    r0 = 0
    for i, name in blocks:
        idx, means = ranked[name]
        act = maps.output(name, call)[i]
        ax = fig.add_subplot(gs[r0, 0])
        if imgs is not None:
            ax.imshow(imgs[i])
        ax.set_xticks([])
        ax.set_yticks([])
        img_name = names[i] if names is not None else f"image {i}"
        ax.set_title(wrap(str(img_name), cell, 7), fontsize=7)
        ax.set_ylabel(wrap(f"{name}\n{tuple(act.shape)}", cell, 7), fontsize=7)
        for k in range(idx.shape[1]):
            r, c = divmod(k, per_row)
            ch = int(idx[i, k])
            a = act[ch].float().cpu().numpy()
            ax = fig.add_subplot(gs[r0 + r, 1 + c])
            ax.imshow(a, cmap=colour, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"#{ch} {float(means[i, k]):.2f}", fontsize=6)
        r0 += block_rows[name]
    more = f", first {shown} of {n} images" if shown < n else ""
    fig.suptitle(wrap(f"top {top} channels by mean activation{more}", cols * cell, 9), fontsize=9)
    if out is not None:
        save_figure(fig, out, dpi)
    return fig


__all__ = [
    "as_map",
    "as_uint8_image",
    "comparison_grid",
    "display_map",
    "draw",
    "explanation_png",
    "feature_grid",
    "heatmap",
    "image_grid",
    "kernel_grid",
    "mosaic",
    "overlay",
    "prepare_out_dir",
    "prepare_out_file",
    "save_figure",
    "save_overlay",
]
