"""Pictures: heatmap overlays, method x backend comparison grids, kernel and feature-map grids.

Every function draws on a plain :class:`matplotlib.figure.Figure` rendered by Agg, never through
``pyplot``: no global backend is switched, no GUI is needed, and figures are freed when dropped.
matplotlib is imported only when a picture is drawn (``import cnnlens`` stays light). Figures are
saved without ``bbox_inches="tight"``, so a PNG is exactly ``figsize * dpi`` pixels.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from cnnlens import _files
from cnnlens.errors import InputError, OptionError, OutputError, OutputExistsError

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


# ------------------------------------------------------------------------------------------------
# Output paths: never clobber the user's files
# ------------------------------------------------------------------------------------------------


def prepare_out_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create ``path`` as an output folder, refusing to write into a non-empty one.

    Args:
        path: The folder; missing parents are created.
        overwrite: Allow writing into a folder that already holds files (same-named files are
            replaced, others are left alone).

    Raises:
        OutputExistsError: ``path`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"output folder '{p}' exists and is a file; choose a folder path")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output folder '{p}' exists and is not empty; choose another folder, or pass overwrite=True "
            "(CLI: --overwrite) to write into it"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder '{p}': {_files.why(exc)}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{p}' is not writable; choose a folder you can write to")
    return p


def prepare_out_file(path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Check that a picture may be written to ``path``, and create its parent folder.

    Args:
        path: The output file; its suffix picks the format (.png, .pdf, .svg, .jpg).
        overwrite: Allow replacing an existing file. An input image is never replaced.
        inputs: The files the command reads; writing to any of them is refused.

    Raises:
        OutputExistsError: The file exists (without ``overwrite``), is a folder, or is an input.
        OptionError: The suffix is not a format matplotlib writes.
    """
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise OptionError(f"output '{p}' has suffix '{p.suffix}'; use one of {', '.join(FORMATS)}")
    if p.is_dir():
        raise OutputExistsError(f"output '{p}' is a folder; give a file name such as '{p / 'grid.png'}'")
    target = p.resolve()
    for src in inputs:
        if Path(src).resolve() == target:
            raise OutputExistsError(f"output '{p}' is one of the input images; cnnlens never overwrites its inputs")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"output file '{p}' already exists; choose another name or pass --overwrite")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder '{p.parent}': {_files.why(exc)}") from None
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise OutputError(f"folder '{p.parent}' is not writable; choose a folder you can write to")
    return p


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


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


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


def as_map(m: Any) -> np.ndarray:
    """A heatmap as (H, W) float64 with NaN/Inf replaced by 0."""
    a = _numpy(m).astype(np.float64)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise InputError(f"a map must be (H, W); got shape {_numpy(m).shape}")
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if m.shape == size:
        return m
    t = torch.from_numpy(m)[None, None].float()
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].double().numpy()


def _cmap(name: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        hint = ", ".join(n for n in ("jet", "inferno", "viridis", "magma", "turbo", "gray") if n in matplotlib.colormaps)
        raise OptionError(f"unknown colormap '{name}'; e.g. {hint}") from None


def heatmap(m: Any, cmap: str = "jet") -> np.ndarray:
    """Colour an (H, W) map in [0, 1] with ``cmap``; returns (H, W, 3) uint8."""
    a = np.clip(as_map(m), 0.0, 1.0)
    return (_cmap(cmap)(a)[..., :3] * 255 + 0.5).astype(np.uint8)


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
    m = as_map(map)
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
    heat = colour(m)[..., :3] * 255.0
    a: Any = np.minimum(2.0 * alpha * m, 1.0)[..., None] if weighted else alpha
    out = (1.0 - a) * img.astype(np.float64) + a * heat
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


def draw(explanation: Explanation, i: int, image: Any = None, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Image ``i`` of an explanation as drawn in every cnnlens picture: over ``image`` (default: the
    explanation's own display image) or as a bare heatmap; pixel methods blend per pixel."""
    kind = explanation.kind
    m = display_map(explanation.maps[i], kind)
    if image is None and explanation.images is not None:
        image = explanation.images[i]
    if image is None:
        return heatmap(m, cmap)
    return overlay(image, m, cmap, alpha, weighted=kind == "pixel")


def _is_images(obj: Any) -> bool:
    """``obj`` is a :class:`cnnlens.images.Images` (checked without importing torchvision's transforms)."""
    from cnnlens.images import Images

    return isinstance(obj, Images)


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


def _label(e: Explanation, i: int) -> str:
    parts = []
    if e.labels:
        parts.append(str(e.labels[i]))
    else:
        parts.append(f"class {int(e.targets[i])}")
    if e.scores is not None:
        parts.append(f"{float(e.scores[i]):.2f}")
    return " ".join(parts)


def _ellipsize(s: str, n: int = 22) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def comparison_grid(
    explanations: Sequence[Explanation],
    images: Any = None,
    out: str | Path | None = None,
    *,
    names: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    cell: float = CELL,
    dpi: int = DPI,
    title: str | None = None,
) -> Figure:
    """Draw explanations side by side: rows are images, columns are (method, backend) pairs.

    The first column shows the input. Column headers carry the method, the backend and the wall
    time of the call; every cell carries the explained class label and its score.

    Args:
        explanations: Explanations of the same N images (e.g. one per method or backend).
        images: (N, H, W, 3) uint8 display images, or the :class:`~cnnlens.images.Images` that was
            explained (its names then label the rows); defaults to the explanations' own ``images``.
            Without images the heatmaps are drawn alone.
        out: Also write the figure here (format by suffix; the file is replaced if it exists).
        names: Row labels (image names).
        cmap: Heatmap colormap.
        alpha: Heatmap weight in the overlay.
        cell: Side of one cell in inches.
        dpi: Resolution used when saving ``out``.
        title: Figure title.

    Returns:
        The figure, ``(1 + len(explanations)) * cell`` inches wide when images are shown.
    """
    from matplotlib.figure import Figure

    exps = list(explanations)
    if not exps:
        raise InputError("comparison_grid needs at least one Explanation")
    n = len(exps[0])
    if any(len(e) != n for e in exps):
        sizes = ", ".join(f"{e.method}/{e.backend}: {len(e)}" for e in exps)
        raise InputError(f"explanations cover different numbers of images ({sizes}); explain the same batch")
    if names is None and _is_images(images):
        names = list(images.names)
    imgs = _images_of(exps, images)
    if imgs is not None and len(imgs) != n:
        raise InputError(f"got {len(imgs)} images for explanations of {n}; pass the batch that was explained")
    if names is not None and len(names) != n:
        raise InputError(f"got {len(names)} names for {n} images")
    first = 1 if imgs is not None else 0
    cols = first + len(exps)
    fig = Figure(figsize=(cols * cell, n * cell + HEADER + (0.35 if title else 0.0)), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    fs = 8 if cell >= 1.8 else 7
    for i in range(n):
        if imgs is not None:
            ax = axes[i, 0]
            ax.imshow(imgs[i])
            row = names[i] if names is not None else f"image {i}"
            ax.set_title(("input\n" if i == 0 else "") + _ellipsize(str(row)), fontsize=fs)
        for j, e in enumerate(exps):
            ax = axes[i, first + j]
            ax.imshow(draw(e, i, imgs[i] if imgs is not None else None, cmap, alpha))
            head = f"{e.method}\n{e.backend} · {e.seconds:.2f} s\n" if i == 0 else ""
            ax.set_title(head + _ellipsize(_label(e, i)), fontsize=fs)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=fs + 3)
    if out is not None:
        save_figure(fig, out, dpi)
    return fig


def save_overlay(explanation: Explanation, i: int, path: str | Path, cmap: str = "jet", alpha: float = 0.5) -> Path:
    """Write image ``i`` of an explanation as a PNG overlay at input resolution (the heatmap alone
    when the explanation carries no images)."""
    from PIL import Image

    if not 0 <= i < len(explanation):
        raise InputError(f"image index {i} is out of range for an explanation of {len(explanation)} images")
    picture = draw(explanation, i, None, cmap, alpha)
    return _files.write_atomic(Path(path), lambda tmp: Image.fromarray(picture).save(tmp))


#: ``Explanation._repr_png_`` draws at most this many images.
REPR_MAX = 8


def explanation_png(explanation: Explanation, cell: float = 2.0, dpi: int = 80) -> bytes:
    """A one-row PNG of an explanation's overlays, for Jupyter (``Explanation._repr_png_``)."""
    from matplotlib.figure import Figure

    e = explanation
    n = min(len(e), REPR_MAX)
    fig = Figure(figsize=(max(n, 1) * cell, cell + 0.5), layout="constrained")
    axes = fig.subplots(1, max(n, 1), squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(draw(e, i))
        ax.set_title(_ellipsize(_label(e, i)), fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    more = f" (first {n} of {len(e)})" if len(e) > n else ""
    layer = f", layer {e.layer}" if e.layer else ""
    fig.suptitle(f"{e.method} · {e.backend}{layer} · {e.seconds:.2f} s{more}", fontsize=9)
    return figure_png(fig, dpi)


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
    from matplotlib.figure import Figure

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
    fig = Figure(figsize=(cols * cell, rows * cell + (0.4 if title else 0.0)), layout="constrained")
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
            ax.set_title(str(titles[k]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
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
    from matplotlib.figure import Figure

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
    fig = Figure(figsize=(width, width * aspect + 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    kh, kw = tiles.shape[1:3]
    what = {"rgb": "RGB", "mean": "mean over input channels", "channel": f"input channel {kernels.channel}"}[kernels.mode]
    fig.suptitle(f"{kernels.layer}: {n} filters {kh}x{kw}, {what}, normalized per {kernels.normalize} "
                 f"({rows} rows of {cols})", fontsize=10)
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
    """
    from matplotlib.figure import Figure

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
    blocks = [(i, name) for i in range(n) for name in chosen]
    per_row = min(ncols, max(r[0].shape[1] for r in ranked.values()))
    block_rows = {name: math.ceil(ranked[name][0].shape[1] / per_row) for name in chosen}
    rows = sum(block_rows[name] for _, name in blocks)
    cols = per_row + 1
    fig = Figure(figsize=(cols * cell, rows * cell + 0.3), layout="constrained")
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
        ax.set_title(_ellipsize(str(img_name), 16), fontsize=7)
        ax.set_ylabel(f"{name}\n{tuple(act.shape)}", fontsize=7)
        for k in range(idx.shape[1]):
            r, c = divmod(k, per_row)
            ch = int(idx[i, k])
            a = act[ch].float().cpu().numpy()
            ax = fig.add_subplot(gs[r0 + r, 1 + c])
            ax.imshow(a, cmap=colour, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"#{ch} {float(means[i, k]):.2f}", fontsize=6)
        r0 += block_rows[name]
    fig.suptitle(f"top {top} channels by mean activation", fontsize=9)
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
