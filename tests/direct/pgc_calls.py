"""pytorch-grad-cam (PyPI ``grad-cam``) called directly, as its README shows, for every registry pair.

CAMs: ``with GradCAM(model=model, target_layers=[layer]) as cam: cam(input_tensor=x, targets=[...])``
with one ``ClassifierOutputTarget`` per image. cnnlens's ``raw`` is the CAM before pytorch-grad-cam's
ReLU, scaling and resize, so the call records what that instance's ``get_cam_image`` returns
(``compute_cam_per_layer`` for FullGrad) through a pass-through spy: pytorch-grad-cam's own code
still runs from start to end.

Guided backprop: ``GuidedBackpropReLUModel(model=model, device=...)`` and ``gb_model(input_tensor,
target_category=...)``, which returns image 0's gradient as an (H, W, C) array: called per image, on
a copy of the model (it puts fresh ``nn.ReLU()`` objects in place of the model's own), and
transposed to (C, H, W). Guided Grad-CAM: the README / ``cam.py`` recipe, the Grad-CAM image
``cv2.merge``-d to three channels times the guided backprop gradient.
"""

from __future__ import annotations

import copy
from typing import Any

import cv2
import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from cnnlens.registry import PGC_CAMS

from . import DirectCall

CAMS = PGC_CAMS  # the class each method is registered with (its toolkit_name)


def _targets(targets: Tensor) -> list[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(int(t)) for t in targets.tolist()]


#: Called one image at a time, as cnnlens drives them. ScoreCAM / Ablation-CAM: with a batch, each
#: image's weights come from differences of scores taken from the batch's forward, which differ from a
#: one-image forward's in the last bits; the subtraction amplifies that (1.7e-5 of the map's range on
#: tiny_cnn, Ablation-CAM). KPCA-CAM: each image's random start is drawn from the seed afresh.
PER_IMAGE = {"scorecam", "ablationcam", "kpca_cam", "randomcam", "finercam"}
#: Seeded per image from NumPy's global RNG (KernelPCA's ARPACK start, RandomCAM's weights).
SEEDED = {"kpca_cam", "randomcam"}


def _cam_call(method: str, cls_name: str) -> DirectCall:
    one = _one_call(method, cls_name)

    def call(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, options: dict[str, Any]) -> Tensor:
        if method in PER_IMAGE:
            return torch.cat([one(model, x[i : i + 1], targets[i : i + 1], layer, options) for i in range(x.shape[0])])
        return one(model, x, targets, layer, options)

    return call


def _one_call(method: str, cls_name: str) -> DirectCall:
    def call(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, options: dict[str, Any]) -> Tensor:
        cls = getattr(pytorch_grad_cam, cls_name)
        kwargs: dict[str, Any] = {"k": options["k"]} if method == "fem" else {}
        if method == "sess":
            kwargs.update({k: options[k] for k in ("num_scales", "pool", "smooth", "batch_size")})
        if options.get("reshape") is not None:
            kwargs["reshape_transform"] = options["reshape"]
        layers = [] if method == "fullgrad" else [layer]
        call_kw: dict[str, Any] = {"targets": _targets(targets)}
        if "aug_smooth" in options:
            call_kw["aug_smooth"] = options["aug_smooth"]
        if "eigen_smooth" in options:
            call_kw["eigen_smooth"] = options["eigen_smooth"]
        if method == "finercam":
            # FinerCAM's documented use: no targets, target_idx names the class (one image per call).
            call_kw.update(targets=None, alpha=options["alpha"], target_idx=int(targets[0]))
        recorded: list[np.ndarray] = []
        if method in SEEDED:
            # KernelPCA's ARPACK start vector and RandomCAM's weights come from NumPy's global RNG:
            # seeded per image, as cnnlens does.
            np.random.seed(options["seed"] % 2**32)
        with cls(model=model, target_layers=layers, **kwargs) as cam:
            name = "compute_cam_per_layer" if method == "fullgrad" else "get_cam_image"
            owner = getattr(cam, "base_cam", cam)  # FinerCAM's and SESS's inner GradCAM
            inner = getattr(owner, name)

            def spy(*args: Any, **kw: Any) -> Any:  # pass-through: records, changes nothing
                out = inner(*args, **kw)
                recorded.append(out)
                return out

            setattr(owner, name, spy)
            result = cam(input_tensor=x, **call_kw)
        if method == "sess":
            return torch.as_tensor(np.asarray(result, dtype=np.float32))  # SESS's fused result is the method's
        raw = recorded[-1][:, 0] if method == "fullgrad" else recorded[-1]
        return torch.as_tensor(np.asarray(raw, dtype=np.float32))

    return call


def _guided(model: nn.Module, x: Tensor, targets: Tensor) -> list[np.ndarray]:
    """(H, W, C) gradients, one GuidedBackpropReLUModel call per image (it explains image 0)."""
    gb_model = GuidedBackpropReLUModel(model=copy.deepcopy(model), device=x.device)
    return [gb_model(x[i : i + 1].clone(), target_category=int(t)) for i, t in enumerate(targets.tolist())]


def guided_backprop(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None,
                    options: dict[str, Any]) -> Tensor:
    return torch.stack([torch.from_numpy(g.transpose(2, 0, 1).copy()) for g in _guided(model, x, targets)])


def guided_gradcam(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None,
                   options: dict[str, Any]) -> Tensor:
    with GradCAM(model=model, target_layers=[layer]) as cam:
        grayscale_cam = cam(input_tensor=x, targets=_targets(targets))
    gbs = _guided(model, x, targets)
    out = []
    for i, gb in enumerate(gbs):
        cam_mask = cv2.merge([grayscale_cam[i]] * 3)
        out.append(torch.from_numpy((cam_mask * gb).transpose(2, 0, 1).copy()))
    return torch.stack(out)


DIRECT: dict[tuple[str, str], DirectCall] = {
    **{(m, "pytorch-grad-cam"): _cam_call(m, c) for m, c in CAMS.items()},
    ("guided_backprop", "pytorch-grad-cam"): guided_backprop,
    ("guided_gradcam", "pytorch-grad-cam"): guided_gradcam,
}
