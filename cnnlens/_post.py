"""The output contract: one post-processing for every backend.

* CAM-type raw outputs ``(N, h, w)`` or ``(N, 1, h, w)`` are upsampled bilinearly
  (``align_corners=False``) to the input resolution, then passed through a ReLU.
* Pixel-type raw outputs ``(N, C, H, W)`` are reduced over channels (default: absolute value, then
  the maximum over channels, as in Simonyan et al. 2014).
* Each image is then min-max normalised to [0, 1]; a constant map becomes all zeros, never NaN.
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
