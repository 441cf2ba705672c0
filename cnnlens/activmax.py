"""Filter visualization: the image each convolution filter responds to most (activation maximization).

(The module is named after FlashTorch's ``flashtorch.activmax``; it is not ``cnnlens/filters.py``
because importing a submodule called ``filters`` would shadow the lazy ``cnnlens.filters`` function.)

This is not a heatmap over an input, so it has its own entry point rather than an
:class:`~cnnlens.Explainer` method::

    imgs = cnnlens.filters(model, layer="features.3", filters=[0, 5, 9], steps=30)  # a FilterImages
    imgs.tensor        # (3, 3, H, W) in [0, 1], ready to show; imgs.inputs: what the model was fed
    cnnlens.plot_filters(imgs, "filters.png")   # or just `imgs` in a notebook

The only toolkit of the three that does this is FlashTorch (``GradientAscent``); cnnlens runs it
through :class:`cnnlens.adapters.flashtorch.CnnlensGradientAscent`, which fixes its index check,
accepts any layer by name, never moves the model, and is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens import _resolve, registry
from cnnlens._guard import ModelGuard
from cnnlens.errors import CnnlensError, LayerError, ModelError, OptionError, UnsupportedMethodError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: FlashTorch picks this many random filters when none are named.
DEFAULT_COUNT = 4
#: FlashTorch's display recipe for optimised images (``GradientAscent._visualize_filters``).
DISPLAY = {"saturation": 0.15, "brightness": 0.7}


@dataclass(frozen=True, eq=False)
class FilterImages:
    """What :func:`filters` returns: one optimised input per filter, with what it is and how well it worked.

    Attributes:
        tensor: (F, 3, size, size) float32 in [0, 1] on the CPU: the images ready to show
            (FlashTorch's display recipe, ``standardize_and_clip``), as ``images`` is.
        images: (F, size, size, 3) uint8 copies of ``tensor``, for PIL and matplotlib.
        inputs: (F, 3, size, size) the optimised inputs themselves, in the model's input space
            (normalised, unbounded: feed these to the model), on its device.
        start: (F, 3, size, size) starting images (seeded grey noise), in the model's input space.
        filters: The filter index of each image.
        layer: The layer's name.
        activation: (F,) mean activation of each filter on its optimised image.
        start_activation: (F,) the same on its starting image.
    """

    tensor: Tensor
    images: Tensor
    inputs: Tensor
    start: Tensor
    filters: tuple[int, ...]
    layer: str
    activation: Tensor
    start_activation: Tensor

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __repr__(self) -> str:
        shown = self.filters if len(self.filters) <= 8 else (*self.filters[:8], "...")
        return f"FilterImages({len(self)} x {tuple(self.tensor.shape[1:])}, layer={self.layer!r}, filters={shown!r})"

    def plot(self, out: str | Path | None = None, ncols: int = 4, title: str | None = None) -> Figure:
        """Draw the images as a grid (see :func:`plot_filters`); also save it when ``out`` is given."""
        return plot_filters(self, out, ncols=ncols, title=title)

    def _repr_png_(self) -> bytes:
        from cnnlens.plot import figure_png

        return figure_png(self.plot(ncols=min(4, max(len(self), 1))), dpi=80)

    @property
    def shape(self) -> torch.Size:
        """The shape of ``tensor``, (F, 3, size, size)."""
        return self.tensor.shape

    def __getitem__(self, index: int | slice) -> FilterImages:
        """A subset, by a slice or one int (a set of one filter)."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            n = len(self)
            if not -n <= int(index) < n:
                raise IndexError(f"filter image index {int(index)} is out of range for {n} images")
            index = slice(int(index) % n, int(index) % n + 1)
        if not isinstance(index, slice):
            raise IndexError(f"FilterImages is indexed by an int or a slice, got {type(index).__name__}")
        return FilterImages(self.tensor[index], self.images[index], self.inputs[index], self.start[index],
                            self.filters[index], self.layer, self.activation[index], self.start_activation[index])

    @classmethod
    def concat(cls, parts: Sequence[FilterImages]) -> FilterImages:
        """Join the results of several :func:`filters` calls on one layer (e.g. one filter at a time)."""
        parts = list(parts)
        if not parts:
            raise OptionError("FilterImages.concat needs at least one result")
        layers = {p.layer for p in parts}
        if len(layers) > 1:
            raise OptionError(f"cannot join filter images of different layers ({', '.join(sorted(layers))})")
        return FilterImages(
            torch.cat([p.tensor for p in parts]), torch.cat([p.images for p in parts]),
            torch.cat([p.inputs for p in parts]), torch.cat([p.start for p in parts]), tuple(f for p in parts for f in p.filters), parts[0].layer,
            torch.cat([p.activation for p in parts]), torch.cat([p.start_activation for p in parts]),
        )


def start_image(seed: int, filter_idx: int, size: int, mean: Sequence[float], std: Sequence[float],
                device: torch.device, dtype: torch.dtype) -> Tensor:
    """FlashTorch's random start, reproducibly: uniform grey noise in [150, 180], normalised.

    FlashTorch draws ``np.uint8(np.random.uniform(150, 180, (size, size, 3)))`` from the global
    NumPy state and normalises it with ImageNet statistics (``apply_transforms``). Here the noise
    comes from a generator seeded with ``(seed, filter_idx)``, so each filter's image depends on the
    seed and the filter only, and it is normalised with the model's own mean and std.

    Returns:
        (1, 3, size, size) on ``device`` in ``dtype``.
    """
    rng = np.random.default_rng([seed, filter_idx])
    noise = np.uint8(rng.uniform(150, 180, (size, size, 3)))
    x = torch.from_numpy(noise).permute(2, 0, 1).to(torch.float64) / 255.0
    m = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    return ((x - m) / s)[None].to(device=device, dtype=dtype)


def _filter_mean(net: nn.Module, x: Tensor, filters: Sequence[int]) -> Tensor:
    """Mean activation of ``filters[i]`` on ``x[i]`` (FlashTorch's objective), one value per image."""
    with torch.no_grad():
        out = net(x)
    idx = torch.as_tensor(list(filters), device=out.device)
    return out[torch.arange(len(filters), device=out.device), idx].mean(dim=(1, 2)).float().cpu()


def _middle_conv(model: nn.Module, probe: _resolve.ProbeResult) -> str | None:
    """The middle Conv2d (in execution order) among those that run once and output (N, C, H, W)."""
    modules = dict(model.named_modules())
    reused = set(probe.reused())
    convs = [n for n, s in probe.order
             if isinstance(modules.get(n), nn.Conv2d) and n not in reused and s is not None and len(s) == 4]
    return convs[len(convs) // 2] if convs else None


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def filters(
    model: nn.Module,
    layer: nn.Module | str | None = None,
    filters: int | Sequence[int] | None = None,
    steps: int = 30,
    *,
    lr: float = 1.0,
    size: int | None = None,
    seed: int = 0,
    backend: str = "flashtorch",
) -> FilterImages:
    """Visualise what filters of a layer respond to, by gradient ascent on the input (FlashTorch).

    Each filter's image starts from seeded grey noise and takes ``steps`` steps of FlashTorch's
    ascent on the mean of that filter's feature map. The model is left exactly as it was (device,
    hooks, modes, parameters), and the same arguments give the same images.

    Args:
        model: Any network; the forward pass stops after ``layer``.
        layer: Module or dotted name of a layer with an (N, C, H, W) output, e.g. ``"features.3"``;
            None picks the middle convolution in execution order: the last feature map, the CAM
            default, is too abstract for 30 ascent steps to show a pattern.
        filters: Filter (output channel) indices; an int for one; None picks 4 at random (seeded).
        steps: Ascent steps per filter (FlashTorch's ``num_iter``).
        lr: Step size; FlashTorch normalises each gradient by its RMS, so this is in input units.
        size: Image side in pixels; defaults to the model's crop size (224 for ImageNet models).
        seed: Seed of the starting noise (and of the filter choice when ``filters`` is None).
        backend: Only ``"flashtorch"`` implements filter visualization.

    Returns:
        A :class:`FilterImages`: the images ready to show as ``tensor`` ((F, 3, size, size) in
        [0, 1]) and ``images`` (uint8), the optimised inputs themselves as ``inputs`` (the model's
        input space, on its device), the starting images, the filter indices, the layer's name and
        each filter's mean activation on its image and on its start. It shows itself in a
        notebook; :func:`plot_filters` draws it as a grid.

    Raises:
        LayerError: The layer is unknown or has no (N, C, H, W) output.
        OptionError: A filter index is outside ``0..C-1``, or steps/size/lr are invalid.
    """
    if backend not in ("flashtorch", "auto", None):
        raise UnsupportedMethodError(
            f"backend '{backend}' has no filter visualization; backends that have it: flashtorch"
        )
    registry.BACKENDS["flashtorch"].require()
    from cnnlens.adapters.flashtorch import CnnlensGradientAscent  # imports FlashTorch only now
    from cnnlens.models import meta_of

    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    steps = _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not np.isfinite(lr):
        raise OptionError(f"lr must be a positive number, got {lr!r}")
    meta = meta_of(model)
    size = _check_int("size", size if size is not None else meta.crop, 8)
    device, dtype = _resolve.model_device(model), _resolve.model_dtype(model)

    with ModelGuard(model):
        probe_x = start_image(seed, 0, size, meta.mean, meta.std, device, dtype)
        probe = _resolve.probe_or_fail(model, probe_x, at=f" at {size}x{size}")
        if layer is None:
            layer = _middle_conv(model, probe)
        module, name = _resolve.resolve_layer(model, layer, probe)
        shapes = [s for n, s in probe.order if n == name]
        if not shapes or shapes[0] is None or len(shapes[0]) != 4:
            got = f"outputs shape {shapes[0]}" if shapes else "is never called by forward"
            raise LayerError(f"layer '{name}' {got}; filter visualization needs a layer with an (N, C, H, W) output")
        channels = int(shapes[0][1])
        chosen = _choose(filters, channels, seed)  # every index is checked before any work is done
        ascent = CnnlensGradientAscent(model, module, channels, lr=float(lr))
        starts, finals = [], []
        for f in chosen:
            start = start_image(seed, f, size, meta.mean, meta.std, device, dtype)
            try:
                out = ascent.optimize(module, f, start, num_iter=steps)
            except CnnlensError:
                raise
            except Exception as exc:
                raise ModelError(f"flashtorch GradientAscent failed on layer '{name}': {type(exc).__name__}: {exc}") from exc
            starts.append(start[0])
            finals.append(out[-1][0])
        result = torch.stack(finals).detach()
        start_t = torch.stack(starts)
        act = _filter_mean(ascent._net, result, chosen)
        act0 = _filter_mean(ascent._net, start_t, chosen)
    shown = display_images(result)
    return FilterImages(shown.permute(0, 3, 1, 2).float() / 255.0, shown, result, start_t, tuple(chosen), name, act, act0)


def _choose(filters: int | Sequence[int] | None, channels: int, seed: int) -> list[int]:
    if filters is None:
        # FlashTorch draws with replacement (np.random.choice default), so it can repeat a filter.
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(channels, size=min(DEFAULT_COUNT, channels), replace=False))
    items = [filters] if isinstance(filters, (int, np.integer)) and not isinstance(filters, bool) else filters
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise OptionError(f"filters must be an int, a list of ints or None, got {type(filters).__name__}")
    out = []
    for f in items:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
            raise OptionError(f"filter indices must be integers, got {f!r}")
        if not 0 <= int(f) < channels:
            raise OptionError(f"filter {int(f)} is out of range: the layer has {channels} filters (0..{channels - 1})")
        out.append(int(f))
    if not out:
        raise OptionError("filters is empty; name at least one filter index, or None for 4 random ones")
    return out


def display_images(x: Tensor) -> Tensor:
    """(F, 3, H, W) optimised inputs -> (F, H, W, 3) uint8, with FlashTorch's ``standardize_and_clip``."""
    from flashtorch.utils import standardize_and_clip

    shown = [standardize_and_clip(img, **DISPLAY) for img in x.detach().float().cpu()]
    return (torch.stack(shown).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def plot_filters(imgs: FilterImages | Tensor, path: str | Path | None = None, ncols: int = 4,
                 title: str | None = None) -> Figure:
    """Draw filter images as a grid titled by filter index, as FlashTorch does; optionally save it.

    Args:
        imgs: What :func:`filters` returned, or any (F, 3, H, W) tensor of model inputs, which is
            shown with FlashTorch's display recipe.
        path: Write the figure there (PNG, PDF, SVG, by suffix).
        ncols: Images per row.
        title: Figure title; defaults to the layer name.

    Returns:
        The matplotlib ``Figure``.
    """
    from cnnlens._figure import Picture

    if isinstance(imgs, FilterImages):
        shown, idx, label, n = imgs.images, list(imgs.filters), imgs.layer, len(imgs)
    elif isinstance(imgs, Tensor) and imgs.dim() == 4 and imgs.shape[1] == 3:
        shown, idx, label, n = display_images(imgs), list(range(imgs.shape[0])), None, int(imgs.shape[0])
    else:
        shape = tuple(imgs.shape) if isinstance(imgs, Tensor) else type(imgs).__name__
        raise OptionError(f"plot_filters needs what cnnlens.filters(...) returns or an (F, 3, H, W) tensor, got {shape}")
    ncols = _check_int("ncols", ncols, 1)
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig = Picture(figsize=(2.5 * cols, 2.5 * rows + 0.4), layout="constrained")
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < n:
            ax.imshow(shown[i].numpy())
            ax.set_title(f"filter {idx[i]}", fontsize=9)
    label = title if title is not None else label
    if label:
        from cnnlens.plot import wrap

        fig.suptitle(wrap(str(label), 2.5 * cols, 12))
    if path is not None:
        from cnnlens.plot import save_figure

        save_figure(fig, path, dpi=100)
    return fig
