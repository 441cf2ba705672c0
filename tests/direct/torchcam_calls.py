"""torchcam called directly, as its README shows, for every registry pair.

``with GradCAM(model, target_layer) as cam_extractor: scores = model(x); cams = cam_extractor(class_idx,
scores)``, with one class index per image and ``normalized=False``: cnnlens's ``raw`` is torchcam's
CAM before its min-max scaling, at the layer's resolution. CAM's ``fc_layer`` is left to torchcam's
own resolution (the model's only ``nn.Linear``) unless the option names one. Score-CAM, SS-CAM and
IS-CAM are called one image at a time (as cnnlens drives them), SS-CAM and Smooth Grad-CAM++ with
``torch.manual_seed(seed)`` before each image. torchcam is an optional extra (``cnnlens[torchcam]``),
imported only when a call runs, so that the other backends' tests collect without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.registry import TORCHCAM_CAMS, TORCHCAM_FINER_BASES

from . import DirectCall

PER_IMAGE = {"scorecam", "sscam", "iscam", "smoothgradcam_plusplus"}
SEEDED = {"sscam", "smoothgradcam_plusplus"}
USES_SCORES = {"gradcam", "gradcam_plusplus", "xgradcam", "layercam", "finercam"}


def _one(method: str, cls_name: str) -> DirectCall:
    def call(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, options: dict[str, Any]) -> Tensor:
        from torchcam import methods  # an optional extra: imported when a pair runs, not when tests collect

        kwargs: dict[str, Any] = {}
        if method == "cam":
            kwargs["fc_layer"] = options["fc_layer"]
        if method in ("scorecam", "sscam", "iscam") and options["batch_size"] is not None:
            kwargs["batch_size"] = options["batch_size"]
        for key in ("num_samples", "std", "gamma", "num_references"):
            if key in options:
                kwargs[key] = options[key]
        if method == "finercam":
            kwargs["base_method"] = getattr(methods, TORCHCAM_FINER_BASES[options["base_method"]])
        if method in SEEDED:
            torch.manual_seed(options["seed"])
        with getattr(methods, cls_name)(model, layer, **kwargs) as cam_extractor:
            scores = model(x)
            cams = cam_extractor([int(t) for t in targets.tolist()], scores if method in USES_SCORES else None,
                                 normalized=False)
        return cams[0].detach()

    return call


def _direct(method: str, cls_name: str) -> DirectCall:
    one = _one(method, cls_name)

    def call(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, options: dict[str, Any]) -> Tensor:
        if method in PER_IMAGE:
            return torch.cat([one(model, x[i : i + 1], targets[i : i + 1], layer, options) for i in range(x.shape[0])])
        return one(model, x, targets, layer, options)

    return call


DIRECT: dict[tuple[str, str], DirectCall] = {(m, "torchcam"): _direct(m, cls) for m, cls in TORCHCAM_CAMS.items()}
