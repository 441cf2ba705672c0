"""Kernels: the weights of a convolution, as a figure-ready grid (the tutorial's first section).

    k = cnnlens.kernels(model, "features.3")     # vgg11: 128 filters, mean over the 64 inputs
    k.plot("kernels.png")

A first layer with three input channels shows one RGB tile per filter; deeper layers show the mean
over the input channels, or one input channel's slice. Tiles are min-max scaled to [0, 1] per filter
or over the whole layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens.errors import LayerError, ModelError, OptionError, close_matches

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

Mode = Literal["auto", "rgb", "mean", "channel"]
Normalize = Literal["filter", "layer"]
MODES = ("auto", "rgb", "mean", "channel")
NORMALIZE = ("filter", "layer")


@dataclass(frozen=True)
class Kernels:
    """The kernels of one ``Conv2d``, ready to draw.

    Attributes:
        tiles: (F, kh, kw, 3) for ``mode="rgb"``, else (F, kh, kw); float32 in [0, 1] on the CPU.
        weight: The layer's weight, (F, C_in / groups, kh, kw), a detached float32 CPU copy.
        layer: Dotted name of the layer.
        mode: The mode used ("rgb", "mean" or "channel"; "auto" is resolved).
        channel: Input channel shown when ``mode="channel"``, else None.
        normalize: "filter" or "layer".
    """

    tiles: Tensor
    weight: Tensor = field(repr=False)
    layer: str
    mode: str
    channel: int | None
    normalize: str

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    def __repr__(self) -> str:
        channel = f", channel={self.channel}" if self.channel is not None else ""
        return (f"Kernels({self.layer!r}, {len(self)} filters {tuple(self.tiles.shape[1:3])}, mode={self.mode!r}"
                f"{channel}, normalize={self.normalize!r})")

    @property
    def rgb(self) -> bool:
        return self.mode == "rgb"

    def grid(self, ncols: int | None = None, pad: int = 1) -> np.ndarray:
        """All tiles in one array: (rows*(kh+pad)-pad, cols*(kw+pad)-pad[, 3]) in [0, 1]."""
        from cnnlens.plot import mosaic

        return mosaic(self.tiles.numpy(), ncols, pad)

    def plot(self, out: str | Path | None = None, ncols: int | None = None, **kwargs: object) -> Figure:
        """Draw the grid (see :func:`cnnlens.plot.kernel_grid`); also save it when ``out`` is given."""
        from cnnlens.plot import kernel_grid

        return kernel_grid(self, out, ncols, **kwargs)  # type: ignore[arg-type]

    def _repr_png_(self) -> bytes:
        from cnnlens.plot import figure_png

        return figure_png(self.plot(width=6.0), dpi=80)


def _is_conv2d(m: nn.Module) -> bool:
    # TorchScript modules are RecursiveScriptModule instances that remember their Python class name.
    return isinstance(m, nn.Conv2d) or getattr(m, "original_name", None) == "Conv2d"


def conv_layers(model: nn.Module) -> list[str]:
    """Dotted names of every ``Conv2d`` in ``model``, in definition order."""
    return [n for n, m in model.named_modules() if n and _is_conv2d(m)]


def _resolve_conv(model: nn.Module, layer: nn.Module | str | None) -> tuple[nn.Module, str]:
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    convs = conv_layers(model)
    named = dict(model.named_modules())
    if layer is None:
        if not convs:
            raise LayerError("the model has no Conv2d layer, so it has no kernels to show")
        return named[convs[0]], convs[0]
    if isinstance(layer, nn.Module):
        name = next((n for n, m in named.items() if m is layer), None)
        if name is None:
            raise LayerError("the given layer module is not part of the model; pass one of its submodules or its name")
        module = layer
    elif isinstance(layer, str):
        if layer not in named or not layer:
            hint = close_matches(layer, convs) or close_matches(layer, [n for n in named if n])
            extra = f"; close matches: {hint}" if hint else ""
            raise LayerError(f"layer '{layer}' not found{extra} (`cnnlens layers --model ...` lists them)")
        module, name = named[layer], layer
    else:
        raise LayerError(f"layer must be a module, a dotted name or None, got {type(layer).__name__}")
    if not _is_conv2d(module):
        shown = ", ".join(convs[:6]) + (", ..." if len(convs) > 6 else "")
        kind = getattr(module, "original_name", None) or type(module).__name__
        raise LayerError(
            f"layer '{name}' is a {kind}, not a Conv2d, so it has no kernels to show; "
            f"Conv2d layers: {shown or 'none'}"
        )
    return module, name or "<model>"


def _scale(t: Tensor, normalize: str) -> Tensor:
    """Min-max to [0, 1] per filter (dim 0) or over the whole tensor; constant spans become 0.5."""
    flat = t.reshape(t.shape[0], -1)
    if normalize == "filter":
        lo = flat.amin(dim=1).view(-1, *([1] * (t.dim() - 1)))
        hi = flat.amax(dim=1).view(-1, *([1] * (t.dim() - 1)))
    else:
        lo, hi = flat.min(), flat.max()
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (t - lo) / safe, torch.full_like(t, 0.5))


def kernels(
    model: nn.Module,
    layer: nn.Module | str | None = None,
    mode: Mode = "auto",
    channel: int = 0,
    normalize: Normalize = "filter",
) -> Kernels:
    """The weights of a ``Conv2d`` as one tile per filter.

    Args:
        model: Any model; it is only read.
        layer: Dotted name or module of a ``Conv2d``; None takes the first one.
        mode: ``"rgb"`` shows each filter's three input channels as colour (needs 3 inputs per
            group); ``"mean"`` averages over the input channels; ``"channel"`` shows the slice of
            input channel ``channel``; ``"auto"`` is ``"rgb"`` for 3 inputs, else ``"mean"``.
        channel: Input channel for ``mode="channel"``.
        normalize: Min-max scale each filter on its own (``"filter"``) or all with one range
            (``"layer"``, which keeps the filters' magnitudes comparable).

    Returns:
        A :class:`Kernels` with ``tiles`` in [0, 1] and ``.plot(out)``.

    Raises:
        LayerError: The layer is unknown or not a ``Conv2d``.
        OptionError: ``mode``, ``channel`` or ``normalize`` is invalid for this layer.
    """
    if mode not in MODES:
        raise OptionError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    if normalize not in NORMALIZE:
        raise OptionError(f"unknown normalize '{normalize}'; choose 'filter' or 'layer'")
    module, name = _resolve_conv(model, layer)
    w = module.weight.detach().to("cpu", torch.float32).clone()
    if w.dim() != 4:
        raise LayerError(f"layer '{name}' has a weight of shape {tuple(w.shape)}, not (F, C, kh, kw)")
    inputs = int(w.shape[1])
    resolved = ("rgb" if inputs == 3 else "mean") if mode == "auto" else mode
    chosen: int | None = None
    if resolved == "rgb":
        if inputs != 3:
            raise OptionError(
                f"mode 'rgb' needs 3 input channels per filter; layer '{name}' has {inputs}: "
                "use mode='mean' or mode='channel'"
            )
        tiles = _scale(w, normalize).permute(0, 2, 3, 1)  # (F, kh, kw, 3)
    elif resolved == "mean":
        tiles = _scale(w.mean(dim=1), normalize)
    else:
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < inputs:
            raise OptionError(f"channel {channel!r} is out of range: layer '{name}' has {inputs} input channels "
                              f"per filter (0..{inputs - 1})")
        chosen = int(channel)
        tiles = _scale(w[:, chosen], normalize)
    return Kernels(tiles=tiles.contiguous(), weight=w, layer=name, mode=resolved, channel=chosen, normalize=normalize)
