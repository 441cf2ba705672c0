"""Adapter for Captum.

Each method is the Captum class of the same name, called with Captum's own argument names. The
adapter only translates: ``target`` becomes Captum's ``target``, image-level options become Captum's
shapes (sliding windows, superpixel feature masks, baseline tensors), and Captum's exceptions become
cnnlens errors. ``saliency`` is called with ``abs=False`` and ``gradcam`` with
``relu_attributions=False`` so that ``raw`` stays signed and the shared contract does the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from captum import attr as ca
from torch import Tensor

from cnnlens._resolve import internal_batch
from cnnlens.adapters.base import Adapter
from cnnlens.errors import CnnlensError, ModelError, OptionError

NOISE = {"smoothgrad": "smoothgrad", "smoothgrad_sq": "smoothgrad_sq", "vargrad": "vargrad"}
SIMPLE = {
    "guided_backprop": ca.GuidedBackprop,
    "deconvolution": ca.Deconvolution,
    "input_x_gradient": ca.InputXGradient,
    "lrp": ca.LRP,
}




def grid_mask(x: Tensor, cell: int) -> Tensor:
    """Superpixels as a grid of ``cell`` x ``cell`` squares, shape (1, 1, H, W), ids 0..K-1."""
    h, w = x.shape[2], x.shape[3]
    cols = -(-w // cell)
    rows = torch.arange(h, device=x.device) // cell
    colsi = torch.arange(w, device=x.device) // cell
    return (rows[:, None] * cols + colsi[None, :])[None, None]


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[-2]), int(v[-1]))


class CaptumAdapter(Adapter):
    backend = "captum"

    def check_input(self, x: Tensor) -> None:
        if self.method == "occlusion":
            wh, ww = _pair(self.options["sliding_window"])
            if wh > x.shape[2] or ww > x.shape[3]:
                raise OptionError(
                    f"sliding_window {wh}x{ww} is larger than the {x.shape[2]}x{x.shape[3]} image; "
                    "choose a window no larger than the image"
                )
        grid = self.options.get("feature_grid")
        if grid is not None and grid > max(x.shape[2], x.shape[3]):
            raise OptionError(f"feature_grid {grid} is larger than the {x.shape[2]}x{x.shape[3]} image")

    def _baseline(self, x: Tensor) -> Tensor | float:
        b = self.options.get("baselines", 0.0)
        if isinstance(b, Tensor):
            return b.to(device=x.device, dtype=x.dtype)
        return float(b)

    @staticmethod
    def _per_eval(x: Tensor) -> int:
        # Occlusion and FeatureAblation forward every image of the batch for each perturbation, so a
        # forward holds N * perturbations_per_eval inputs; keep that near the internal batch.
        return max(1, internal_batch(x) // x.shape[0])

    def _noise_scale(self, x: Tensor) -> float:
        return float(self.options["stdevs"]) * float(x.max() - x.min())

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        m, o, model, t = self.method, self.options, self.model, targets
        if m == "gradcam":
            out = ca.LayerGradCam(model, self.layer).attribute(x, target=t, relu_attributions=False)
        elif m == "guided_gradcam":
            out = ca.GuidedGradCam(model, self.layer).attribute(x, target=t)
        elif m == "saliency":
            out = ca.Saliency(model).attribute(x, target=t, abs=False)
        elif m in SIMPLE:
            out = SIMPLE[m](model).attribute(x, target=t)
        elif m == "integrated_gradients":
            out = ca.IntegratedGradients(model).attribute(
                x, baselines=self._baseline(x), target=t, n_steps=o["n_steps"],
                internal_batch_size=o["internal_batch_size"] or internal_batch(x),
            )
        elif m in NOISE:
            out = ca.NoiseTunnel(ca.Saliency(model)).attribute(
                x, nt_type=NOISE[m], nt_samples=o["nt_samples"], stdevs=self._noise_scale(x),
                nt_samples_batch_size=o["nt_samples_batch_size"] or max(1, internal_batch(x) // x.shape[0]),
                target=t, abs=False,
            )
        elif m == "gradient_shap":
            base = torch.zeros_like(x[:1]) + self._baseline(x)
            out = ca.GradientShap(model).attribute(
                x, baselines=base, n_samples=o["n_samples"], stdevs=self._noise_scale(x), target=t
            )
        elif m == "deeplift":
            out = ca.DeepLift(model).attribute(x, baselines=self._baseline(x), target=t)
        elif m == "deeplift_shap":
            base = torch.zeros_like(x[:1]) + self._baseline(x)
            gen = torch.Generator(device="cpu").manual_seed(0)
            noise = torch.randn((o["n_baselines"] - 1, *x.shape[1:]), generator=gen).to(x.device, x.dtype)
            bases = torch.cat([base, base + 0.1 * float(x.std()) * noise])
            out = ca.DeepLiftShap(model).attribute(x, baselines=bases, target=t)
        elif m == "occlusion":
            wh, ww = _pair(o["sliding_window"])
            sh, sw = _pair(o["strides"])
            c = x.shape[1]
            out = ca.Occlusion(model).attribute(
                x, sliding_window_shapes=(c, wh, ww), strides=(c, sh, sw), baselines=self._baseline(x),
                target=t, perturbations_per_eval=o["perturbations_per_eval"] or self._per_eval(x),
            )
        elif m == "feature_ablation":
            out = ca.FeatureAblation(model).attribute(
                x, baselines=self._baseline(x), target=t, feature_mask=grid_mask(x, o["feature_grid"]),
                perturbations_per_eval=o["perturbations_per_eval"] or self._per_eval(x),
            )
        elif m in ("lime", "kernel_shap"):
            cls = ca.Lime if m == "lime" else ca.KernelShap
            out = self._per_image(cls, x, t)
        else:  # the registry only routes methods listed above
            raise CnnlensError(f"captum adapter has no route for '{m}'")
        return out.detach()

    def _per_image(self, cls: Any, x: Tensor, t: Tensor) -> Tensor:
        # Captum's Lime and KernelShap take one example at a time when a feature mask is shared.
        o = self.options
        mask = grid_mask(x, o["feature_grid"])
        per_eval = o["perturbations_per_eval"] or internal_batch(x)
        outs = [
            cls(self.model).attribute(
                x[i : i + 1], target=t[i : i + 1], feature_mask=mask, n_samples=o["n_samples"],
                perturbations_per_eval=per_eval,
            )
            for i in range(x.shape[0])
        ]
        return torch.cat(outs)

    def translate(self, exc: Exception) -> CnnlensError | None:
        msg = str(exc)
        if self.method in ("deeplift", "deeplift_shap") and ("used more than once" in msg or "more than once" in msg):
            return ModelError(
                f"captum {self.impl.toolkit_name} cannot run on this model: a nonlinearity module is called more "
                "than once in forward (EfficientNet-Lite reuses one activation per block), and DeepLift needs "
                "each module used once; use integrated_gradients or input_x_gradient instead"
            )
        if self.method == "lrp" and ("rule" in msg.lower()):
            return ModelError(
                f"captum LRP has no propagation rule for a layer of this model ({msg.splitlines()[0]}); "
                "LRP supports Conv2d, Linear, ReLU, pooling and BatchNorm; pick another method"
            )
        return None
