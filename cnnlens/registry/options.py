"""Option types and the options several methods share: a default, a validity check, a description.

Nothing here imports torch at module level: a check that needs it (a tensor baseline, a reshape)
imports it when a value is given, so reading the registry stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnnlens.errors import OptionError, close_matches


@dataclass(frozen=True)
class Option:
    """One option of a (method, backend): its default, a validity check and what it does."""

    default: Any
    doc: str
    check: Callable[[Any], bool] | None = None
    expect: str = ""

    def validate(self, name: str, value: Any) -> Any:
        if self.check is not None and value is not None:
            ok = False
            try:
                ok = bool(self.check(value))
            except Exception:  # a check that cannot even evaluate the value means "invalid"
                ok = False
            if not ok:
                raise OptionError(f"invalid value for option '{name}': {_describe(value)}; expected {self.expect}")
        return value


def _describe(value: Any) -> str:
    """A value for an error message: arrays by dtype and shape, not their (possibly huge) repr."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (int, float)):
        return f"{type(value).__name__} of shape {tuple(shape)}, dtype {getattr(value, 'dtype', '?')}"
    return repr(value)


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _finite_num(v: Any) -> bool:
    """A real number that is neither NaN nor infinite (an int of any size, or a finite float)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nonneg_num(v: Any) -> bool:
    return _finite_num(v) and v >= 0


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _window(v: Any) -> bool:
    if isinstance(v, int):
        return not isinstance(v, bool) and v >= 1
    return (isinstance(v, (tuple, list)) and len(v) in (2, 3)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v))


#: torch.manual_seed takes a 64-bit seed; a larger int would fail inside the call with a raw error.
SEED_RANGE = (-(2**63), 2**63 - 1)


def _seed(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and SEED_RANGE[0] <= v <= SEED_RANGE[1]


def _baselines(v: Any) -> bool:
    """A finite number, or a real tensor (on a device with values) whose every element is finite."""
    if _finite_num(v):
        return True
    import torch  # only when a tensor is given: the registry itself stays import-light

    if isinstance(v, torch.Tensor):
        if v.device.type == "meta" or v.is_complex() or v.layout != torch.strided or v.dtype == torch.bool:
            return False
        return not v.is_floating_point() or bool(torch.isfinite(v).all())
    if hasattr(v, "shape"):  # a NumPy array
        import numpy as np

        a = np.asarray(v)
        return a.dtype.kind in "iuf" and bool(np.isfinite(a).all())
    return False


POS_INT = "a positive integer"
NONNEG = "a finite number >= 0"
BOOL = "True or False"

SEED = Option(0, "random seed; the global RNG state is left untouched (None draws a fresh seed)",
              _seed, "an integer in the 64-bit range (-2**63 .. 2**63 - 1) or None")
N_STEPS = Option(50, "integration steps", _pos_int, POS_INT)
INTERNAL_BS = Option(None, "batch size of the internal forward passes (None: cnnlens picks one within memory)",
                     _pos_int, POS_INT + " or None")
NT_SAMPLES = Option(10, "noisy samples per image", _pos_int, POS_INT)
STDEVS = Option(0.15, "noise standard deviation, as a fraction of each image's own value range (max - min)",
                _nonneg_num, NONNEG)
BASELINES = Option(0.0, "reference input: a number, or a tensor broadcastable to the input (one row per image "
                        "gives each image its own)", _baselines, "a finite number or a tensor of finite values")
WINDOW = Option(16, "occlusion window in pixels: an int or (h, w)", _window, "an int >= 1 or an (h, w) pair")
STRIDE = Option(8, "occlusion stride in pixels", _window, "an int >= 1 or an (h, w) pair")
N_SAMPLES = Option(200, "perturbed samples per image", _pos_int, POS_INT)
FEATURE_GRID = Option(16, "side in pixels of the square superpixels the image is split into", _pos_int, POS_INT)
PER_EVAL = Option(None, "perturbations evaluated per forward pass (None: cnnlens picks within memory)",
                  _pos_int, POS_INT + " or None")
AUG_SMOOTH = Option(False, "test-time augmentation smoothing (pytorch-grad-cam)", _bool, BOOL)
EIGEN_SMOOTH = Option(False, "first principal component of the weighted activations (pytorch-grad-cam)", _bool, BOOL)


def _reshape(v: Any) -> bool:
    from cnnlens import reshape  # only when a value is given: it imports torch

    return reshape.valid(v)


RESHAPE = Option(None, "layer output to (N, C, H, W) for token or channels-last layers (None: picked for known "
                       "families such as ViT, DeiT, Swin, ConvNeXt; see cnnlens.reshape)", _reshape,
                 "None, a callable (layer output) -> (N, C, H, W), or a preset: vit, deit, tokens, swin, channels_last")
CAM_BATCH = Option(None, "masked or ablated inputs per forward (None: cnnlens picks within memory)",
                   _pos_int, POS_INT + " or None")


@dataclass(frozen=True)
class Choice(Option):
    """An option that takes one of a few names; a near miss is answered with the close matches."""

    choices: tuple[str, ...] = ()

    def validate(self, name: str, value: Any) -> Any:
        if value not in self.choices:
            hint = close_matches(str(value), self.choices)
            extra = f" (did you mean {hint}?)" if hint else ""
            raise OptionError(f"invalid value for option '{name}': {_describe(value)}{extra}; expected one of "
                              f"{', '.join(self.choices)}")
        return value


def _module_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v)
