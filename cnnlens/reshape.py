"""Layer outputs that are not (N, C, H, W) feature maps, turned into ones a CAM can use.

A CAM weighs the channels of a spatial feature map. Vision transformers and some modern backbones
keep their features in other layouts:

* ViT and DeiT blocks output tokens, (N, L, C): ``L`` is a grid of patch tokens (row by row) after
  one class token (ViT) or a class and a distillation token (DeiT);
* Swin keeps (N, H, W, C) maps throughout its stages, and ConvNeXt's blocks switch to that
  channels-last layout between their ``Permute`` modules.

A :class:`Reshape` turns such an output (and the gradient reaching it, which has the same layout)
into (N, C, H, W), dropping the class and distillation tokens. It is what pytorch-grad-cam calls a
``reshape_transform``, and it is handed to pytorch-grad-cam as that argument. :func:`for_layer`
picks one for the layers of known families by inspecting the model's and the layer's types (not
the model's name), and :func:`preferred_layer` names the layer a CAM uses on such a model when the
user names none.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cnnlens.errors import LayerError, OptionError

Layout = Literal["tokens", "channels_last"]


@dataclass(frozen=True)
class Reshape:
    """A layer output to (N, C, H, W): a named, picklable ``reshape_transform``.

    Args:
        name: The preset name (``"vit"``, ``"deit"``, ``"tokens"``, ``"swin"``, ``"channels_last"``)
            or a descriptive one.
        layout: ``"tokens"`` for (N, L, C) token sequences, ``"channels_last"`` for (N, H, W, C).
        prefix_tokens: Tokens before the patch grid that are dropped (1: a class token, 2: class and
            distillation tokens); tokens layout only.
        grid: (rows, columns) of the patch grid; None infers a square grid from the token count.
    """

    name: str
    layout: Layout
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def __call__(self, t: Tensor) -> Tensor:
        if self.layout == "channels_last":
            if t.dim() != 4:
                raise LayerError(
                    f"reshape '{self.name}' expects a channels-last (N, H, W, C) layer output, got shape "
                    f"{tuple(t.shape)}; pick another layer or pass reshape=<callable>"
                )
            return t.permute(0, 3, 1, 2)
        if t.dim() != 3:
            raise LayerError(
                f"reshape '{self.name}' expects (N, tokens, C) layer output, got shape {tuple(t.shape)}; "
                "pick a transformer block's layer or pass reshape=<callable>"
            )
        n, length, c = t.shape
        patches = length - self.prefix_tokens
        rows, cols = self.grid if self.grid is not None else _square(patches, self)
        if patches != rows * cols:
            raise LayerError(
                f"reshape '{self.name}': {length} tokens minus {self.prefix_tokens} prefix token(s) do not "
                f"form a {rows}x{cols} patch grid; pass reshape=<callable> for this layout"
            )
        return t[:, self.prefix_tokens :].reshape(n, rows, cols, c).permute(0, 3, 1, 2)


    def restore(self, grid: Tensor, original: Tensor) -> Tensor:
        """The inverse of :meth:`__call__`: ``grid`` back in ``original``'s layout, with the dropped
        prefix tokens taken from ``original`` (same values; the gradient reaching ``grid`` is the
        gradient of the patch tokens)."""
        if self.layout == "channels_last":
            return grid.permute(0, 2, 3, 1)
        n, c = grid.shape[0], grid.shape[1]
        patches = grid.permute(0, 2, 3, 1).reshape(n, -1, c)
        return torch.cat([original[:, : self.prefix_tokens], patches], dim=1) if self.prefix_tokens else patches


class GridView(nn.Module):
    """A module outside the model whose output is a layer's output as (N, C, H, W); see :func:`grid_view`."""

    def __init__(self, fn: Reshape) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, t: Tensor) -> Tensor:
        return self.fn(t)


@contextlib.contextmanager
def grid_view(layer: nn.Module, fn: Reshape) -> Iterator[GridView]:
    """For toolkits with no ``reshape_transform`` argument (Captum's ``LayerGradCam``): a module that
    runs inside the forward pass right after ``layer`` and outputs its output as (N, C, H, W).

    A forward hook on ``layer`` passes the output through the :class:`GridView` and hands the next
    module :meth:`Reshape.restore` of it: the same values, so the model computes what it always
    does, while the toolkit, given the view as its layer, hooks an (N, C, H, W) activation whose
    gradient is the patch tokens' gradient. The hook is removed on exit, also after an exception.
    """
    view = GridView(fn)

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        return fn.restore(view(out), out) if isinstance(out, Tensor) else out

    handle = layer.register_forward_hook(hook)
    try:
        yield view
    finally:
        handle.remove()


def _square(patches: int, r: Reshape) -> tuple[int, int]:
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise LayerError(
            f"reshape '{r.name}': {patches} patch tokens (after dropping {r.prefix_tokens}) are not a square "
            "grid (a non-square input?); pass reshape=cnnlens.reshape.Reshape(..., grid=(rows, cols)) or a callable"
        )
    return side, side


#: Named presets, accepted as ``reshape="<name>"``.
PRESETS: dict[str, Reshape] = {
    r.name: r
    for r in (
        Reshape("vit", "tokens", prefix_tokens=1),
        Reshape("deit", "tokens", prefix_tokens=2),
        Reshape("tokens", "tokens", prefix_tokens=0),
        Reshape("swin", "channels_last"),
        Reshape("channels_last", "channels_last"),
    )
}


def tokens(prefix_tokens: int) -> Reshape:
    """The token reshape dropping ``prefix_tokens`` leading tokens (a preset where one exists)."""
    for r in PRESETS.values():
        if r.layout == "tokens" and r.prefix_tokens == prefix_tokens:
            return r
    return Reshape(f"tokens[{prefix_tokens} prefix]", "tokens", prefix_tokens=prefix_tokens)


def valid(value: Any) -> bool:
    """Whether ``value`` is an acceptable ``reshape=`` option: None, a preset name or a callable."""
    return value is None or (isinstance(value, str) and value in PRESETS) or (
        callable(value) and not isinstance(value, (str, type)))


EXPECT = "None (automatic), a callable (N, ...) -> (N, C, H, W), or one of the presets: " + ", ".join(PRESETS)


def get(value: str | Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor] | None:
    """Turn a ``reshape=`` option into a callable (None stays None)."""
    if value is None or (callable(value) and not isinstance(value, (str, type))):
        return value
    if isinstance(value, str) and value in PRESETS:
        return PRESETS[value]
    from cnnlens.errors import close_matches

    hint = close_matches(str(value), PRESETS) if isinstance(value, str) else ""
    extra = f" (did you mean {hint}?)" if hint else ""
    raise OptionError(f"invalid value for option 'reshape': {value!r}{extra}; expected {EXPECT}")


def name_of(r: Callable[[Tensor], Tensor] | None) -> str | None:
    """A reshape's name for provenance and ``cnnlens layers``: the preset's, or the callable's."""
    if r is None:
        return None
    if isinstance(r, Reshape):
        return r.name
    return getattr(r, "__name__", None) or type(r).__name__


# ------------------------------------------------------------------------------------------------
# Known families
# ------------------------------------------------------------------------------------------------


def _path(model: nn.Module, layer_name: str) -> list[tuple[str, nn.Module]] | None:
    """``[(relative name, module), ...]`` from the model down to the layer, or None if absent."""
    out = [("", model)]
    m: nn.Module | None = model
    for part in layer_name.split(".") if layer_name else []:
        m = m._modules.get(part) if m is not None else None
        if m is None:
            return None
        out.append((part, m))
    return out


def _tv(name: str) -> type | None:
    """A torchvision model class, or None when torchvision lacks it or was never imported (then no
    model can be an instance of its classes, and importing it just to tell would be slow)."""
    tvm = sys.modules.get("torchvision.models")
    return getattr(tvm, name, None) if tvm is not None else None


def _is_tv(m: nn.Module, name: str) -> bool:
    cls = _tv(name)
    return cls is not None and isinstance(m, cls)


def _timm_vit(m: nn.Module) -> bool:
    # timm's VisionTransformer and its relatives (DeiT, distilled DeiT, ...): no timm import needed.
    return (type(m).__module__.startswith("timm.") and isinstance(getattr(m, "num_prefix_tokens", None), int)
            and isinstance(getattr(m, "blocks", None), nn.Module) and hasattr(m, "patch_embed"))


def _timm_nhwc(m: nn.Module) -> bool:
    # timm's Swin family keeps (N, H, W, C) maps between its patch embedding and its head.
    return type(m).__module__.startswith("timm.") and getattr(m, "output_fmt", None) == "NHWC"


def _permute_layout(seq: nn.Sequential, upto: int) -> str | None:
    """The layout after ``seq[upto]`` as its torchvision ``Permute`` modules leave it, or None if none ran."""
    layout = None
    for child in list(seq)[: upto + 1]:
        dims = list(getattr(child, "dims", []) or []) if type(child).__name__ == "Permute" else []
        if dims == [0, 2, 3, 1]:
            layout = "channels_last"
        elif dims == [0, 3, 1, 2]:
            layout = "channels_first"
    return layout


def for_layer(model: nn.Module, layer_name: str) -> Reshape | None:
    """The reshape a CAM needs at ``layer_name`` of a known family, or None (an (N, C, H, W) layer,
    or a family cnnlens does not know: pass ``reshape=`` then).

    Known: torchvision ``VisionTransformer`` (encoder layers: ``"vit"``), ``SwinTransformer``
    (stages and final norm: ``"swin"``), layers between a ``Permute([0, 2, 3, 1])`` and the
    ``Permute([0, 3, 1, 2])`` that undoes it in one ``nn.Sequential`` (ConvNeXt blocks:
    ``"channels_last"``); timm ViT/DeiT (blocks and final norm, prefix tokens from the model's
    ``num_prefix_tokens``), timm Swin (``output_fmt == "NHWC"``) and timm ConvNeXt blocks' norm
    and MLP when the block runs its MLP channels-last.
    """
    path = _path(model, layer_name)
    if path is None or len(path) < 2:
        return None
    for i, (_part, m) in enumerate(path[:-1]):
        below = path[i + 1][0]
        if _is_tv(m, "VisionTransformer") and below == "encoder":
            return PRESETS["vit"]
        if _is_tv(m, "SwinTransformer"):
            if below == "norm":
                return PRESETS["swin"]
            if below == "features":
                # Only the stem's convolution (features.0.0) still outputs (N, C, H, W).
                stem_conv = len(path) > i + 3 and path[i + 2][0] == "0" and path[i + 3][0] == "0"
                return None if stem_conv else PRESETS["swin"]
            return None
        if _timm_vit(m) and below in ("blocks", "norm"):
            return tokens(int(m.num_prefix_tokens))
        if _timm_nhwc(m) and below in ("layers", "norm"):
            return PRESETS["swin"]
        if (type(m).__module__.startswith("timm.") and getattr(m, "use_conv_mlp", True) is False
                and below in ("norm", "mlp")):
            return PRESETS["channels_last"]
        if isinstance(m, nn.Sequential) and below.isdigit():
            layout = _permute_layout(m, int(below))
            if layout == "channels_last":
                return PRESETS["channels_last"]
    return None


def candidate_layers(model: nn.Module) -> list[str]:
    """Layers of a known family that give a CAM a meaningful map, best first (empty if unknown).

    ViT: the first norm of the last three blocks (a block's output is read by the head through the
    class token only, so its patch tokens get no gradient); Swin: the final norm and the last two
    stages; ConvNeXt: the last two stages.
    """
    if _is_tv(model, "VisionTransformer"):
        return [f"encoder.layers.{n}.ln_1" for n, _m in list(model.encoder.layers.named_children())[::-1][:3]]
    if _is_tv(model, "SwinTransformer"):
        k = len(model.features)
        return ["norm", f"features.{k - 1}", f"features.{k - 3}"]
    if _is_tv(model, "ConvNeXt"):
        k = len(model.features)
        return [f"features.{k - 1}", f"features.{k - 3}"]
    if _timm_vit(model):
        return [f"blocks.{i}.norm1" for i in range(len(model.blocks) - 1, max(len(model.blocks) - 4, -1), -1)
                if hasattr(model.blocks[i], "norm1")]
    first = preferred_layer(model)
    return [first] if first is not None else []


def preferred_layer(model: nn.Module) -> str | None:
    """The layer a CAM uses on a known family when none is named, or None (the generic rule then).

    ViT: the last block's first norm (as pytorch-grad-cam's documentation does); Swin: the final
    norm after the last stage; ConvNeXt: the last stage.
    """
    if _is_tv(model, "VisionTransformer"):
        last = list(model.encoder.layers.named_children())[-1][0]
        return f"encoder.layers.{last}.ln_1"
    if _is_tv(model, "SwinTransformer"):
        return "norm"
    if _is_tv(model, "ConvNeXt"):
        return f"features.{len(model.features) - 1}"
    if _timm_vit(model) and len(model.blocks) and hasattr(model.blocks[-1], "norm1"):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    if _timm_nhwc(model) and isinstance(getattr(model, "norm", None), nn.Module):
        return "norm"
    stages = getattr(model, "stages", None)
    if type(model).__name__ == "ConvNeXt" and isinstance(stages, nn.Sequential) and len(stages):
        return f"stages.{len(stages) - 1}"
    return None
