"""Signed views of an explanation: absolute, positive, negative or all of the attribution.

``Explanation.maps`` follows one contract (CAMs after a ReLU, pixel attributions reduced with
``abs_max``), which hides the sign. These views go back to ``raw``: a CAM is upsampled as it is, a
pixel attribution is summed over channels (Captum's ``visualize_image_attr`` convention), then the
sign is applied. Every map is divided by its own largest magnitude, so all views share one colour
scale: [0, 1], or [-1, 1] for ``"all"``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnlens.errors import OptionError
from cnnlens.explanation import Explanation

SIGNS = ("absolute", "positive", "negative", "all")


def signed_maps(explanation: Explanation, sign: str = "positive") -> np.ndarray:
    """(N, H, W) float32 maps of ``explanation`` for ``sign`` (see the module docstring)."""
    if sign not in SIGNS:
        raise OptionError(f"unknown sign '{sign}'; choose one of {', '.join(SIGNS)}")
    e = explanation
    raw = e.raw.detach().float().cpu()
    size = tuple(e.maps.shape[-2:])
    if e.kind == "cam":
        r = raw if raw.dim() == 3 else (raw[:, 0] if raw.shape[1] == 1 else raw.sum(dim=1))
        if tuple(r.shape[-2:]) != size:
            r = F.interpolate(r[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    else:
        r = raw if raw.dim() == 3 else raw.sum(dim=1)
    r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    if sign == "absolute":
        r = r.abs()
    elif sign == "positive":
        r = r.clamp(min=0)
    elif sign == "negative":
        r = (-r).clamp(min=0)
    top = r.abs().reshape(r.shape[0], -1).amax(dim=1).view(-1, 1, 1)
    return (r / torch.where(top > 0, top, torch.ones_like(top))).numpy().astype(np.float32)
