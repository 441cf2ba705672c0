"""The model's modules in execution order with their output shapes, and the automatic CAM layer.

The data behind ``cnnlens layers`` and the web app's layer picker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlens import _resolve, reshape
from cnnlens.errors import CnnlensError, ModelError


@dataclass(frozen=True)
class LayerInfo:
    """One module as it ran in a dry forward pass."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    #: How many times the module ran in one forward pass (a CAM needs a module that runs once).
    calls: int = 1
    #: The :mod:`cnnlens.reshape` preset a CAM at this layer would use (a token or channels-last
    #: output of a known family, such as ViT's "vit" or Swin's "swin"), or None.
    reshape: str | None = None

    @property
    def spatial(self) -> bool:
        """Whether the output is an (N, C, H, W) feature map with a spatial extent (a CAM can use it),
        or a token / channels-last output that :attr:`reshape` turns into one."""
        s = self.shape
        if self.reshape is not None:
            return s is not None and len(s) in (3, 4)
        return s is not None and len(s) == 4 and (s[2] > 1 or s[3] > 1)


def list_layers(model: nn.Module, size: int | None = None) -> tuple[list[LayerInfo], str | None]:
    """Run one no-grad forward on a zero image and list the modules that ran.

    Args:
        model: The classifier.
        size: Input side in pixels (default: the model's crop size, 224 for unknown models).

    Returns:
        The modules in execution order (each once), and the layer a CAM uses when none is given
        (None when the model has no spatial layer).
    """
    from cnnlens.models import meta_of

    side = size or meta_of(model).crop
    x = torch.zeros(1, 3, side, side, dtype=_resolve.model_dtype(model), device=_resolve.model_device(model))
    probe = _resolve.probe_or_fail(model, x, f" on a 1x3x{side}x{side} input")
    try:
        default: str | None = _resolve.resolve_layer(model, None, probe)[1]
    except CnnlensError:
        default = None
    named = dict(model.named_modules())
    rows: list[LayerInfo] = []
    seen: set[str] = set()
    for name, shape in probe.order:
        if name in seen:
            continue
        seen.add(name)
        mod = named.get(name)
        if mod is None:
            raise ModelError(f"module '{name}' ran in the forward pass but is not among the model's modules")
        rows.append(LayerInfo(name, getattr(mod, "original_name", None) or type(mod).__name__, shape, probe.calls(name),
                              reshape.name_of(reshape.for_layer(model, name)) if shape else None))
    return rows, default
