"""Resolution shared by every backend: inputs, layers, targets and the model's output."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens import reshape
from cnnlens.errors import InputError, LayerError, ModelError, TargetError, close_matches

#: Images larger than this many pixels (per channel) are refused: beyond it a single backward pass
#: of a typical CNN needs tens of GB. Resize first (cnnlens.load_images does).
MAX_PIXELS = 4096 * 4096


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def internal_batch(x: Tensor) -> int:
    """Inputs per internal forward for many-forward methods, when the user gives none.

    4 images at 224x224 on the CPU, where larger batches are slower per image (EfficientNet-Lite0 on
    one core, no-grad forward: 27-34 ms per image at batch 4, 41-43 at 8, 50-53 at 16, 86 at 64), and
    64 on an accelerator; scaled with the pixel count so memory stays about the same at other sizes.
    """
    per_224 = 64 if x.device.type != "cpu" else 4
    return max(1, int(per_224 * 224 * 224 / (x.shape[2] * x.shape[3])))


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first ``nn.Conv2d`` in *definition* order (for kernels; the one that runs first can differ)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


def check_channels(model: nn.Module, x: Tensor) -> None:
    """After a failed forward: refuse the input if the first convolution that *runs* rejects its channels.

    Definition order says nothing about execution order (a CoordConv layer adding channels, an
    RGB-to-gray wrapper, a head declared before the stem), so the model is run again on ``x`` with a
    pre-hook on every ``nn.Conv2d`` that records the first one entered and stops the pass there. Only
    a convolution that receives the input's own channel count and expects another blames the input;
    any other failure is left to the caller's error about the forward pass.
    """
    base = model.model if isinstance(model, OutputSelector) else model
    names = {m: n for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    if not names:
        return
    seen: list[tuple[str, int, int]] = []

    class _Stop(Exception):
        pass

    def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        inp = args[0] if args else None
        if isinstance(inp, Tensor) and inp.dim() >= 3:
            seen.append((names[mod], int(inp.shape[-3]), int(mod.in_channels)))  # type: ignore[arg-type]
        raise _Stop

    handles = [m.register_forward_pre_hook(pre_hook) for m in names]
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # _Stop, or the failure that happened before any convolution ran
        pass
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return
    name, got, expects = seen[0]
    if got == x.shape[1] and got != expects:
        raise InputError(
            f"inputs have {got} channels but the model's first convolution to run ('{name}') expects {expects}; "
            f"pass (N, {expects}, H, W) images" + (" (RGB)" if expects == 3 else "")
        )


def check_input(x: Any, model: nn.Module) -> Tensor:
    """Validate an image batch and return a detached copy on the model's device and dtype."""
    if not isinstance(x, Tensor):
        raise InputError(
            f"inputs must be a torch.Tensor of shape (N, 3, H, W), got {type(x).__name__}; "
            "use cnnlens.load_images(paths, model) to load image files"
        )
    if x.layout != torch.strided:
        raise InputError(
            f"inputs are a {str(x.layout).removeprefix('torch.')} tensor; pass a dense (strided) tensor, "
            "e.g. x.to_dense()"
        )
    if x.dim() == 3:
        raise InputError(
            f"inputs must be a batch of shape (N, C, H, W), got a single image {tuple(x.shape)}; "
            "add the batch dimension with x.unsqueeze(0)"
        )
    if x.dim() != 4:
        raise InputError(f"inputs must have 4 dimensions (N, C, H, W), got {x.dim()}: {tuple(x.shape)}")
    n, _c, h, w = x.shape
    if n == 0:
        raise InputError("inputs are an empty batch (N=0); pass at least one image")
    if h == 0 or w == 0:
        raise InputError(f"inputs have a zero-size image ({h}x{w}); images need H, W >= 1")
    if h * w > MAX_PIXELS:
        raise InputError(
            f"image of {h}x{w} pixels exceeds the limit of {MAX_PIXELS} pixels (4096x4096); resize it first, "
            "e.g. with cnnlens.load_images(..., size=224)"
        )
    # The channel count is checked against the convolution that runs first, by check_channels when
    # the forward pass fails: the first one defined need not be the first one to run.
    if not x.is_floating_point():
        kind = "complex" if x.is_complex() else "boolean" if x.dtype == torch.bool else "integer"
        raise InputError(
            f"inputs have {kind} dtype {x.dtype}; expected a float tensor, normalised as the model "
            "expects (e.g. x.float() / 255, then the model's mean/std)"
        )
    if x.device.type == "meta":
        raise InputError("inputs are on the 'meta' device and hold no values; pass a tensor on 'cpu' or 'cuda'")
    device, dtype = model_device(model), model_dtype(model)
    if device.type == "meta":
        raise ModelError(
            "the model's parameters are on the 'meta' device and hold no values; load its weights first "
            "(model.to_empty(device='cpu') then load_state_dict, or cnnlens.load_model)"
        )
    if x.device.type == "cpu":
        check_finite(x)
    return x.detach().to(device=device, dtype=dtype).clone()


def check_finite(x: Tensor, finite: Tensor | None = None) -> None:
    """Refuse NaN / Inf pixels. ``finite``: :func:`finite_flag` of ``x``, computed earlier.

    On a GPU, ``Explainer.explain`` computes the flag before the call and reads it afterwards, so
    the check costs no synchronisation in front of the backend's kernels.
    """
    if finite is None:
        finite = finite_flag(x)
    if not math.isfinite(finite.item()) and not bool(torch.isfinite(x).all()):
        raise InputError("inputs contain NaN or Inf values; every pixel must be finite")


def finite_flag(x: Tensor) -> Tensor:
    """The sum of ``x``: a NaN or Inf anywhere makes it non-finite; only a non-finite sum (which finite
    values can also reach by overflow) needs the exact, element-wise check. One reduction kernel:
    ``torch.isfinite`` of it would add four more (abs, ne, eq, mul), launched on every GPU call."""
    return x.detach().sum()


# ------------------------------------------------------------------------------------------------
# Model output
# ------------------------------------------------------------------------------------------------


class OutputSelector(nn.Module):
    """Wraps a model whose forward returns a tuple or dict and exposes one tensor of logits."""

    def __init__(self, model: nn.Module, key: int | str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        try:
            return out[self.key]  # type: ignore[index,no-any-return]
        except (KeyError, IndexError, TypeError):
            raise ModelError(
                f"output={self.key!r} does not select anything from the model's output ({describe_output(out)}); "
                "pass one of its keys or indices"
            ) from None


def describe_output(out: Any) -> str:
    if isinstance(out, dict):
        return "dict with keys " + ", ".join(repr(k) for k in out)
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {len(out)} items"
    return type(out).__name__


def check_logits(out: Any, n: int, output: int | str | None) -> None:
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == n:
        return
    if isinstance(out, (dict, tuple, list)) and output is None:
        raise ModelError(
            f"the model returns a {describe_output(out)}, not a (N, classes) tensor of scores; "
            "choose the scores with output=<key or index>, e.g. Explainer(model, ..., output='logits')"
        )
    shape = tuple(out.shape) if isinstance(out, Tensor) else describe_output(out)
    raise ModelError(f"the model must return class scores of shape (N={n}, classes), got {shape}")


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """What one dry forward pass tells: output shapes per module, in execution order, and classes."""

    order: list[tuple[str, tuple[int, ...] | None]]
    num_classes: int
    #: The probed image's scores, when they hold NaN or Inf (see :func:`check_scores`); else None.
    nonfinite: Tensor | None = None

    def calls(self, name: str) -> int:
        """How many times the module ``name`` ran in one forward pass."""
        return sum(1 for n, _s in self.order if n == name)

    def reused(self) -> list[str]:
        """Modules called more than once per forward (e.g. one activation object shared by blocks)."""
        seen: dict[str, int] = {}
        for n, _s in self.order:
            seen[n] = seen.get(n, 0) + 1
        return [n for n, c in seen.items() if c > 1]


def probe(model: nn.Module, x: Tensor) -> ProbeResult:
    """Run one no-grad forward on ``x`` recording each module's output shape in execution order.

    TorchScript modules (``torch.jit.script`` / ``trace``) are run but not recorded: their compiled
    forward calls submodules in C++, where module hooks never run (and a scripted module refuses
    them), so ``order`` lists the eager modules only, and nothing for a fully scripted model.
    """
    # With output=..., ``model`` is an OutputSelector: report names relative to the user's model.
    base = model.model if isinstance(model, OutputSelector) else model
    names = {m: n for n, m in base.named_modules() if n and not isinstance(m, torch.jit.ScriptModule)}
    order: list[tuple[str, tuple[int, ...] | None]] = []
    handles = []

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        order.append((names[mod], tuple(out.shape) if isinstance(out, Tensor) else None))

    try:
        for m in names:
            handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    check_logits(out, x.shape[0], None)
    finite = bool(torch.isfinite(out).all())
    return ProbeResult(order, int(out.shape[1]), None if finite else out.detach())


def probe_or_fail(model: nn.Module, x: Tensor, at: str = "") -> ProbeResult:
    """:func:`probe`, with a failing user forward turned into one :class:`ModelError`.

    Args:
        at: Optional context for the message, e.g. ``" at 224x224"``.
    """
    from cnnlens.errors import CnnlensError

    try:
        return probe(model, x)
    except CnnlensError:
        raise
    except Exception as exc:
        raise ModelError(f"the model's forward pass failed{at}: {type(exc).__name__}: {exc}") from exc


def resolve_layer(model: nn.Module, layer: nn.Module | str | None, probe_result: ProbeResult | None,
                  *, reshape_ok: bool = True) -> tuple[nn.Module, str]:
    """Turn a module, a dotted name or ``None`` into ``(module, name)``.

    ``None`` picks, for a known transformer or modern backbone, the layer that gives a meaningful
    map (:func:`cnnlens.reshape.preferred_layer`: a ViT's last block's first norm, Swin's final
    norm, ConvNeXt's last stage); otherwise the last module, in execution order, whose output is
    4-D with a spatial extent larger than 1x1: the last feature map before the classifier.

    Args:
        reshape_ok: Whether the backend can use a layer whose output needs a reshape (tokens, or a
            channels-last map); when False, only layers that output (N, C, H, W) are picked.
    """
    named = dict(model.named_modules())
    if layer is model or (isinstance(model, OutputSelector) and layer is model.model):
        raise LayerError(
            "layer is the model itself; a layer is one of its submodules: pass one (e.g. its last "
            "convolutional block) or its dotted name, or None for the last feature map (`cnnlens layers` lists them)"
        )
    if isinstance(layer, nn.Module):
        for n, m in named.items():
            if m is layer:
                return m, n or "<model>"
        raise LayerError("the given layer module is not part of the model; pass one of model's submodules or its name")
    if isinstance(layer, str):
        if layer in named and layer:
            return named[layer], layer
        hint = close_matches(layer, [n for n in named if n])
        extra = f"; close matches: {hint}" if hint else ""
        raise LayerError(f"layer '{layer}' not found{extra} (`cnnlens layers --model ...` lists them)")
    if layer is not None:
        raise LayerError(f"layer must be a module, a dotted name or None, got {type(layer).__name__}")
    if probe_result is None:
        raise LayerError("no layer given and none could be inferred")
    reused = set(probe_result.reused())
    base = model.model if isinstance(model, OutputSelector) else model
    preferred = reshape.preferred_layer(base)
    if (preferred is not None and preferred in named and probe_result.calls(preferred) == 1
            and (reshape_ok or reshape.for_layer(base, preferred) is None)):
        return named[preferred], preferred
    spatial = [n for n, s in probe_result.order
               if s is not None and len(s) == 4 and (s[2] > 1 or s[3] > 1) and n not in reused]
    # A 4-D channels-last output (Swin, inside ConvNeXt blocks) is no (N, C, H, W) map as it is.
    spatial = [n for n in spatial if reshape.for_layer(base, n) is None]
    if not spatial:
        raise LayerError(
            "no layer with a spatial (N, C, H, W) output was found; CAM methods need a convolutional "
            "layer: pass layer=... or pick a gradient method such as 'saliency'"
        )
    name = spatial[-1]
    return named[name], name


def layer_reshape(model: nn.Module, name: str, given: Any, accepted: bool,
                  probe_result: ProbeResult | None) -> Callable[[Tensor], Tensor] | None:
    """The reshape a CAM at layer ``name`` uses: the ``reshape=`` option, else the known family's.

    Args:
        given: The ``reshape=`` option (None, a preset name or a callable).
        accepted: Whether the (method, backend) pair takes a reshape at all; when it does not and
            the layer needs one, the layer is refused with the layers that would work.
        probe_result: For the error's list of (N, C, H, W) layers.
    """
    base = model.model if isinstance(model, OutputSelector) else model
    chosen = reshape.get(given) if given is not None else reshape.for_layer(base, name)
    if chosen is not None and not accepted:
        hint = ""
        if probe_result is not None:
            flat = [n for n, s in probe_result.order if s is not None and len(s) == 4 and (s[2] > 1 or s[3] > 1)
                    and reshape.for_layer(base, n) is None]
            hint = f"; layers with an (N, C, H, W) output: {', '.join(dict.fromkeys(flat[-3:]))}" if flat else ""
        raise LayerError(
            f"layer '{name}' outputs {reshape.name_of(chosen)}-layout features that need a reshape to (N, C, H, W), "
            f"which this backend's method cannot take{hint}; or use backend 'pytorch-grad-cam', which takes one"
        )
    return chosen


def reshaped_shape(fn: Callable[[Tensor], Tensor] | None, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The shape ``fn`` turns a layer output of ``shape`` into (computed on the meta device, no data).

    A user's callable that cannot run on a meta tensor leaves the shape unchecked (None); a
    preset's own error (a wrong layout) is raised.
    """
    if fn is None or shape is None:
        return shape
    if isinstance(fn, reshape.Reshape):
        return tuple(fn(torch.empty(shape, device="meta")).shape)
    try:
        out = fn(torch.empty(shape, device="meta"))
    except Exception:
        return None
    return tuple(out.shape) if isinstance(out, Tensor) else None


def better_layers(model: nn.Module, probe_result: ProbeResult, current: str, reshape_ok: bool) -> list[str]:
    """Up to three layers other than ``current`` that give a CAM a feature map: the known family's
    candidates (:func:`cnnlens.reshape.candidate_layers`), then the last leaf modules, latest first,
    with an (N, C, H, W) output (or, when the backend takes a reshape, one a known reshape turns into
    that), running once per forward."""
    base = model.model if isinstance(model, OutputSelector) else model
    reused = set(probe_result.reused())
    named = dict(base.named_modules())
    ran = {n for n, _s in probe_result.order}
    out = [n for n in reshape.candidate_layers(base)
           if n != current and n in ran and (reshape_ok or reshape.for_layer(base, n) is None)][:3]
    for name, shape in reversed(probe_result.order):
        if len(out) >= 3:
            break
        leaf = name in named and not named[name]._modules
        if name == current or name in out or name in reused or shape is None or not leaf:
            continue
        fn = reshape.for_layer(base, name)
        if fn is not None and not reshape_ok:
            continue
        try:
            after = reshaped_shape(fn, shape)
        except LayerError:
            continue
        if after is not None and len(after) == 4 and (after[2] > 1 or after[3] > 1):
            out.append(name)
    return out


def check_scores(model: nn.Module, scores: Tensor, images: Sequence[int] | None = None) -> None:
    """Refuse non-finite model scores with one :class:`ModelError` naming the likely cause.

    ``argmax`` of NaN scores is class 0, and every toolkit then explains a NaN: zero maps (FlashTorch,
    zennit, Captum's integrated gradients) or NaN ones, without a word.

    Args:
        model: The model (its weights are searched for NaN / Inf to name the cause).
        scores: (N, classes) scores of the images explained.
        images: The batch indices of ``scores``' rows (default 0..N-1).
    """
    bad_rows = (~torch.isfinite(scores.detach())).flatten(1).any(dim=1).tolist()
    bad = [images[i] if images is not None else i for i, b in enumerate(bad_rows) if b]
    if not bad:
        return
    which = "every image" if len(bad) == len(bad_rows) and images is None else _image_list(bad)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    broken = [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    if broken:
        cause = (f"its weights hold NaN or Inf ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}); "
                 "load valid weights")
    elif dtype in (torch.float16, torch.bfloat16):
        cause = (f"it runs in {str(dtype).removeprefix('torch.')}, whose range the forward pass overflows; "
                 "run it in float32 (model.float())")
    else:
        cause = ("its weights and the pixels are finite, so its forward pass makes them (an overflow, a log or "
                 "a division by zero); check the model on these images")
    raise ModelError(
        f"the model's scores are NaN or Inf for {which}; no explanation of such a score means anything (toolkits "
        f"return zero or NaN maps for it): {cause}"
    )


def _image_list(images: Sequence[int]) -> str:
    shown = ", ".join(map(str, images[:5]))
    return f"image {shown}" if len(images) == 1 else f"images {shown}{', ...' if len(images) > 5 else ''}"


def constant_maps(maps: Tensor) -> list[int]:
    """Indices of the (N, H, W) maps, min-max normalised, that are constant (normalised to all zeros)."""
    return [i for i, top in enumerate(maps.reshape(maps.shape[0], -1).amax(dim=1).tolist()) if not top > 0]


class Caveat(str):
    """A warning about one result that says which images it concerns and why, in the Python API's
    words (the string itself) and in the command line's (:meth:`words`).

    Two results with the same cause (three backends of one method, given one zero-initialised head)
    say it once when merged (:func:`merge_caveats`); a result explained in chunks says it once for all.
    """

    method: str
    backend: str
    cause: str
    cli_cause: str
    images: tuple[int, ...]
    n: int

    def __new__(cls, method: str, backend: str, cause: str, cli_cause: str | None = None,
                images: Sequence[int] = (), n: int = 0) -> Caveat:
        images = tuple(sorted(set(images)))
        self = super().__new__(cls, _caveat_text([(method, backend)], cause, images, n))
        self.method, self.backend, self.cause = method, backend, cause
        self.cli_cause = cause if cli_cause is None else cli_cause
        self.images, self.n = images, n
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Caveat, (self.method, self.backend, self.cause, self.cli_cause, self.images, self.n))

    def shifted(self, start: int, n: int) -> Caveat:
        """The same caveat for images ``start`` onwards of a batch of ``n`` (a chunk's, in the whole batch)."""
        return Caveat(self.method, self.backend, self.cause, self.cli_cause, [i + start for i in self.images], n)

    def words(self, cli: bool) -> str:
        return _caveat_text([(self.method, self.backend)], self.cli_cause if cli else self.cause, self.images, self.n)


def _caveat_text(pairs: Sequence[tuple[str, str]], cause: str, images: Sequence[int], n: int) -> str:
    by_method: dict[str, list[str]] = {}
    for m, b in pairs:
        by_method.setdefault(m, []).append(b)
    source = "; ".join(f"{m} ({', '.join(bs)})" for m, bs in by_method.items())
    which = "every image" if len(images) == n else _image_list(images)
    return f"{source} gave a constant map for {which}, which shows nothing: {cause}"


def merge_caveats(warnings: Sequence[str]) -> list[str]:
    """``warnings`` with each result's caveats of one cause joined across chunks (their images united)."""
    out: list[str] = []
    at: dict[tuple[str, str, str], int] = {}
    for w in warnings:
        if not isinstance(w, Caveat):
            if w not in out:
                out.append(w)
            continue
        key = (w.method, w.backend, w.cause)
        if key in at:
            old = out[at[key]]
            assert isinstance(old, Caveat)
            out[at[key]] = Caveat(w.method, w.backend, w.cause, w.cli_cause, old.images + w.images, max(old.n, w.n))
        else:
            at[key] = len(out)
            out.append(w)
    return out


def warning_lines(warnings: Sequence[str], cli: bool = False) -> list[str]:
    """One line per cause for a run over several results: caveats of the same cause and images are
    said once, naming every method and backend; in the command line's words when ``cli``."""
    merged = merge_caveats(warnings)
    groups: dict[tuple[str, tuple[int, ...], int], list[tuple[str, str]]] = {}
    lines: list[Any] = []
    for w in merged:
        if isinstance(w, Caveat):
            key = (w.cli_cause if cli else w.cause, w.images, w.n)
            if key not in groups:
                groups[key] = []
                lines.append(key)
            groups[key].append((w.method, w.backend))
        elif w not in lines:
            lines.append(w)
    return [_caveat_text(groups[k], *k) if isinstance(k, tuple) else k for k in lines]


def constant_map_causes(
    *, model: nn.Module, method: str, kind: str, layer: str | None, auto_layer: bool, size: tuple[int, int],
    scores: Tensor, targets: Tensor, probe_result: ProbeResult, reshape_ok: bool,
) -> tuple[str, str]:
    """Why maps came out constant, in the Python API's words and in the command line's.

    Args:
        scores: (n, classes) scores of the images whose maps are constant (finite).
        targets: (n,) their explained classes.
    """
    if size[0] * size[1] == 1:
        why = "the image is 1x1 pixel, so any map of it is one value; give images of at least 2x2 pixels"
        return why, why
    python, cli = _constant_map_causes(model=model, method=method, kind=kind, layer=layer, auto_layer=auto_layer,
                                       scores=scores, targets=targets, probe_result=probe_result,
                                       reshape_ok=reshape_ok)
    if scores.dtype in (torch.float16, torch.bfloat16):
        dtype = str(scores.dtype).removeprefix("torch.")
        note = f" (the model runs in {dtype}, whose rounding can also flatten a map; float32 may not)"
        python, cli = python + note, cli + note
    return python, cli


def _constant_map_causes(
    *, model: nn.Module, method: str, kind: str, layer: str | None, auto_layer: bool, scores: Tensor,
    targets: Tensor, probe_result: ProbeResult, reshape_ok: bool,
) -> tuple[str, str]:
    s = scores.detach().float()
    if bool((s == s[:, :1]).all()):
        value = float(s[0, 0])
        why = (f"the model gives every class the same score ({value:.3g}), so no pixel changes the target score "
               "(a classifier head still at its zero initialisation, or float16 scores that underflow)")
        return why, why
    target_scores = s.gather(1, targets.to(s.device).view(-1, 1))[:, 0].abs()
    if method == "lrp" and float(target_scores.max()) < 1e-6:
        why = (f"the target score is {float(target_scores.max()):.1e}, and LRP distributes that score over the "
               "pixels; a score this small is absorbed by the rules' stabiliser (epsilon), leaving zeros; explain a "
               "class with a larger score")
        return why, why
    if kind == "cam" and layer is not None:
        what = (f"the automatically chosen layer '{layer}'" if auto_layer else f"layer '{layer}'")
        why = (f"the activations or gradients at {what} do not vary over the image (or the scores do not depend on "
               "them, e.g. a classifier head at its zero initialisation)")
        better = better_layers(model, probe_result, layer, reshape_ok)
        if better:
            return (f"{why}; try layer= one of: {', '.join(better)}",
                    f"{why}; try --layer with one of: {', '.join(better)}")
        return (f"{why}; pass another layer=... (`cnnlens layers` on the command line lists them)",
                f"{why}; pass another --layer (`cnnlens layers` lists them)")
    why = (f"the target score does not change with the pixels under {method} (a zero gradient: dead or saturated "
           "activations, or a model that ignores its input)")
    return why, why


def check_spatial_layer(name: str, probe_result: ProbeResult | None,
                        fn: Callable[[Tensor], Tensor] | None = None) -> None:
    """A CAM needs a feature map: refuse layers whose output (after ``fn``, the layer's reshape)
    is not (N, C, H, W)."""
    if probe_result is None:
        return
    shapes = [s for n, s in probe_result.order if n == name]
    if fn is not None and len(shapes) == 1:
        after = reshaped_shape(fn, shapes[0])
        if after is None:
            return  # a user's callable the meta device cannot run: the toolkit's own call tells
        if len(after) != 4:
            raise LayerError(
                f"reshape {reshape.name_of(fn)!r} turns layer '{name}' output {shapes[0]} into {after}, "
                "not a (N, C, H, W) feature map"
            )
        return
    if len(shapes) > 1:
        raise LayerError(
            f"layer '{name}' runs {len(shapes)} times per forward pass (outputs {', '.join(str(s) for s in shapes[:3])}); "
            "toolkits disagree on which call a CAM uses, so pick a module that runs once (e.g. the block or "
            "BatchNorm before it)"
        )
    if shapes and (shapes[-1] is None or len(shapes[-1]) != 4):
        spatial = [n for n, s in probe_result.order if s is not None and len(s) == 4 and (s[2] > 1 or s[3] > 1)]
        hint = f"; spatial layers include {', '.join(spatial[-3:])}" if spatial else ""
        raise LayerError(
            f"layer '{name}' outputs shape {shapes[-1]}, not a (N, C, H, W) feature map, so a CAM cannot "
            f"be computed from it{hint}"
        )


# ------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------


def _class_index(name: str, categories: Sequence[str] | None) -> int:
    if not categories:
        raise TargetError(
            f"target '{name}' is a class name, but the model has no category names; pass an integer "
            "class index, or categories=[...] to the Explainer"
        )
    lowered = [c.lower() for c in categories]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    hint = close_matches(name, categories)
    extra = f"; close matches: {hint}" if hint else ""
    raise TargetError(f"unknown class name '{name}'{extra}")


def resolve_targets(
    target: Any,
    n: int,
    num_classes: int,
    categories: Sequence[str] | None,
    predicted: Tensor | None,
) -> Tensor:
    """Turn the ``target=`` argument into a (N,) long tensor of class indices (CPU)."""
    if target is None:
        if predicted is None:
            raise TargetError("target=None needs the predicted classes")
        return predicted.detach().to("cpu", torch.long)
    items: list[Any]
    if isinstance(target, np.generic):  # np.int64(3) (what indexing an array gives), np.str_
        target = target.item()
    elif isinstance(target, np.ndarray):
        if target.dtype.kind not in "iu":
            raise TargetError(f"target array must hold integer class indices, got dtype {target.dtype}; "
                              "e.g. np.array([1, 0])")
        target = torch.from_numpy(np.array(target, dtype=np.int64))  # a copy, 0-D kept
    if isinstance(target, (int, str)) and not isinstance(target, bool):
        items = [target] * n
    elif isinstance(target, Tensor):
        if target.device.type == "meta":
            raise TargetError(
                "target tensor is on the 'meta' device and holds no values; pass class indices in a tensor on "
                "'cpu' or the inputs' device, or a list of ints"
            )
        if target.layout != torch.strided:
            raise TargetError(f"target tensor is {target.layout}; pass a dense tensor of class indices (target.to_dense())")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            # A bool tensor would silently read as classes 1 and 0 (while a scalar True is refused).
            raise TargetError(
                f"target tensor must hold integer class indices, got dtype {target.dtype}; "
                "e.g. torch.tensor([1, 0]) (torch.long)"
            )
        if target.dim() == 0:
            items = [int(target)] * n
        elif target.dim() == 1:
            items = [int(t) for t in target.tolist()]
        else:
            raise TargetError(f"target tensor must be 0-D or 1-D of length N={n}, got shape {tuple(target.shape)}")
    elif isinstance(target, Sequence):
        items = list(target)
    else:
        raise TargetError(
            f"target must be None, an int, a class name, or a list/tensor/array of length N={n}; got "
            f"{type(target).__name__}"
        )
    if len(items) != n:
        raise TargetError(
            f"got {len(items)} targets for {n} images; give one target per image, or a single int/name for all "
            "(pytorch-grad-cam would silently truncate)"
        )
    out = []
    for t in items:
        if isinstance(t, str):
            idx = _class_index(t, categories)
        elif isinstance(t, bool) or not isinstance(t, int):
            try:
                idx = int(t)
                integral = not isinstance(t, bool) and bool(idx == t)
            except (TypeError, ValueError, RuntimeError):
                integral = False
            if not integral:  # 1.5 or True would silently become class 1
                raise TargetError(f"target {t!r} is neither an integer class index nor a class name") from None
        else:
            idx = t
        if not 0 <= idx < num_classes:
            raise TargetError(f"target {idx} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
        out.append(idx)
    return torch.tensor(out, dtype=torch.long)
