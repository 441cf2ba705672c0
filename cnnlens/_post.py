"""The output contract: one post-processing for every backend.

* CAM-type raw outputs ``(N, h, w)`` or ``(N, 1, h, w)`` are upsampled bilinearly
  (``align_corners=False``) to the input resolution, then passed through a ReLU.
* Pixel-type raw outputs ``(N, C, H, W)`` are reduced over channels (default: absolute value, then
  the maximum over channels, as in Simonyan et al. 2014).
* Each image is then min-max normalised to [0, 1]; a constant map becomes all zeros, never NaN.

The signed view (``Explanation.signed_maps``) is made from the same ``raw``, without the ReLU and
without min-max: CAMs are upsampled as above; pixel attributions are reduced by ``reduce`` when it
keeps the sign (``"sum"``, ``"max"``), else by the channel sum (what Captum's
``visualize_image_attr`` does). Each image is then divided by Captum's outlier threshold (the value
below which ``100 - outlier_perc`` percent of the total absolute attribution lies) and clipped to
[-1, 1], so zero stays zero and the sign of every pixel is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlens.errors import OptionError

REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "abs_max": lambda r: r.abs().amax(dim=1),
    "abs_sum": lambda r: r.abs().sum(dim=1),
    "sum": lambda r: r.sum(dim=1),
    "max": lambda r: r.amax(dim=1),
    "l2": lambda r: r.pow(2).sum(dim=1).sqrt(),
    "abs_mean": lambda r: r.abs().mean(dim=1),
}
DEFAULT_REDUCE = "abs_max"
#: Reductions whose result keeps the attribution's sign; the others lose it (absolute value, norm).
SIGNED_REDUCTIONS = ("sum", "max")
#: Captum's ``visualize_image_attr`` vocabulary, with cnnlens's short ``"absolute"`` for its
#: ``"absolute_value"`` (both are accepted).
SIGNS = ("absolute", "positive", "negative", "all")
#: Captum's default ``outlier_perc``.
DEFAULT_OUTLIER_PERC = 2.0


def check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise OptionError(f"unknown reduce='{reduce}'; choose one of {', '.join(REDUCTIONS)}")
    return reduce


def normalize(maps: Tensor) -> Tensor:
    """Min-max normalise each (H, W) map of an (N, H, W) batch; constant maps become zeros."""
    lo, hi = torch.aminmax(maps.reshape(maps.shape[0], -1), dim=1)
    lo, span = lo.view(-1, 1, 1), (hi - lo).view(-1, 1, 1)
    # A constant map has span 0 and maps - lo == 0 everywhere: divide it by 1 to get zeros.
    # (Six kernels where the two torch.where of before took eleven; same values.)
    return (maps - lo) / (span + (span == 0))


def cam_to_maps(raw: Tensor, size: tuple[int, int]) -> Tensor:
    r = raw.float()
    if r.dim() == 4:
        r = r.sum(dim=1) if r.shape[1] != 1 else r[:, 0]
    if r.dim() != 3:
        raise ValueError(f"a CAM must be (N, h, w) or (N, 1, h, w), got {tuple(raw.shape)}")
    if tuple(r.shape[-2:]) != tuple(size):
        r = F.interpolate(r[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return torch.relu(r)


def pixel_to_maps(raw: Tensor, size: tuple[int, int], reduce: str) -> Tensor:
    r = raw.float()
    if r.dim() == 3:  # already one channel
        r = r[:, None]
    m = REDUCTIONS[reduce](r)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return m


def to_maps(raw: Tensor, kind: str, size: tuple[int, int], reduce: str = DEFAULT_REDUCE) -> Tensor:
    """Apply the output contract to a backend's raw attribution."""
    m = cam_to_maps(raw, size) if kind == "cam" else pixel_to_maps(raw, size, reduce)
    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    return normalize(m)


def signed_reduce(kind: str, reduce: str) -> str | None:
    """The channel reduction of the signed view: ``reduce`` if it keeps the sign, else ``"sum"``
    (None for CAMs, which have one channel)."""
    if kind == "cam":
        return None
    return reduce if reduce in SIGNED_REDUCTIONS else "sum"


def signed_attribution(raw: Tensor, kind: str, size: tuple[int, int], reduce: str = DEFAULT_REDUCE) -> Tensor:
    """The signed (N, H, W) attribution at input resolution, unscaled: what ``maps`` is made from,
    before its ReLU (CAMs) and without a sign-discarding reduction (pixel methods)."""
    r = raw.float()
    if kind == "cam":
        if r.dim() == 4:
            r = r.sum(dim=1) if r.shape[1] != 1 else r[:, 0]
        if r.dim() != 3:
            raise ValueError(f"a CAM must be (N, h, w) or (N, 1, h, w), got {tuple(raw.shape)}")
        m = r
    else:
        if r.dim() == 3:
            r = r[:, None]
        m = REDUCTIONS[signed_reduce(kind, reduce) or "sum"](r)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)


def check_sign(sign: str) -> str:
    """``sign`` in cnnlens's spelling (Captum's ``"absolute_value"`` is read as ``"absolute"``)."""
    if sign == "absolute_value":
        return "absolute"
    if not isinstance(sign, str) or sign not in SIGNS:
        raise OptionError(f"unknown sign={sign!r}; choose one of {', '.join(SIGNS)} (Captum's visualize_image_attr signs)")
    return sign


def check_outlier_perc(outlier_perc: float) -> float:
    if (isinstance(outlier_perc, bool) or not isinstance(outlier_perc, (int, float))
            or not 0.0 <= float(outlier_perc) < 100.0):
        raise OptionError(f"outlier_perc must be a number in [0, 100), the percent of the total attribution "
                          f"left above the colour scale (Captum's default is 2), got {outlier_perc!r}")
    return float(outlier_perc)


def outlier_threshold(values: Tensor, outlier_perc: float = DEFAULT_OUTLIER_PERC) -> Tensor:
    """Captum's ``_cumulative_sum_threshold`` per image: for each (H, W) map of non-negative
    ``values``, the smallest value at which the sorted cumulative sum reaches
    ``100 - outlier_perc`` percent of the total. Returns (N,)."""
    flat = values.reshape(values.shape[0], -1).double()
    if flat.shape[1] == 0:
        return torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    s = flat.sort(dim=1).values
    c = s.cumsum(dim=1)
    goal = c[:, -1:] * (0.01 * (100.0 - outlier_perc))
    idx = (c >= goal).int().argmax(dim=1)  # the first index that reaches the goal
    return s.gather(1, idx[:, None])[:, 0].to(values.dtype)


def normalize_signed(attr: Tensor, sign: str = "all", outlier_perc: float = DEFAULT_OUTLIER_PERC) -> Tensor:
    """Captum's ``_normalize_attr`` on each (H, W) map of an (N, H, W) signed attribution.

    ``"all"`` keeps the sign and returns [-1, 1]; ``"positive"`` and ``"negative"`` keep one side
    (the negative side as magnitudes) and ``"absolute"`` takes ``|attr|``, each in [0, 1]. Each map
    is divided by its outlier threshold and clipped. A map with nothing on the chosen side gives
    zeros (Captum raises there).
    """
    sign = check_sign(sign)
    outlier_perc = check_outlier_perc(outlier_perc)
    a = attr.float()
    if sign == "positive":
        a = a.clamp(min=0.0)
    elif sign == "negative":
        a = (-a).clamp(min=0.0)
    elif sign == "absolute":
        a = a.abs()
    t = outlier_threshold(a.abs(), outlier_perc).view(-1, *([1] * (a.dim() - 1)))
    return torch.where(t > 0, a / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(a)).clamp(-1.0, 1.0)


def to_signed_maps(raw: Tensor, kind: str, size: tuple[int, int], reduce: str = DEFAULT_REDUCE,
                   outlier_perc: float = DEFAULT_OUTLIER_PERC) -> Tensor:
    """The signed view of ``raw``: (N, H, W) in [-1, 1], zero kept at zero (see the module docstring)."""
    return normalize_signed(signed_attribution(raw, kind, size, reduce), "all", outlier_perc)
