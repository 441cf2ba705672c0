"""Adapter for Captum.

Each method is the Captum class of the same name, called with Captum's own argument names. The
adapter only translates: ``target`` becomes Captum's ``target``, image-level options become Captum's
shapes (sliding windows, superpixel feature masks, baseline tensors), and Captum's exceptions become
cnnlens errors. ``saliency`` is called with ``abs=False`` and ``gradcam`` with
``relu_attributions=False`` so that ``raw`` stays signed and the shared contract does the rest.

Guided backprop and deconvolution run Captum's rules without Captum's hook machinery (see
:func:`captum_relu_rule`): the same operations on the same tensors, bit-identical to
``captum.attr.GuidedBackprop`` / ``Deconvolution`` (tested); ``cnnlens.self.shortcuts = False``
calls Captum's classes instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum import attr as ca
from torch import Tensor, nn

from cnnlens._resolve import internal_batch
from cnnlens.adapters.base import Adapter, RuleReLU, swapped_relus
from cnnlens.errors import CnnlensError, ModelError, OptionError

NOISE = {"smoothgrad": "smoothgrad", "smoothgrad_sq": "smoothgrad_sq", "vargrad": "vargrad"}
SIMPLE = {
    "guided_backprop": ca.GuidedBackprop,
    "deconvolution": ca.Deconvolution,
    "input_x_gradient": ca.InputXGradient,
    "lrp": ca.LRP,
}



def _guided_rule(grad: Tensor, out: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward(grad, out, 0)  # ReLU's own backward, as autograd runs it


def _guided_input(total: Tensor, _rule_result: Tensor) -> Tensor:
    return F.relu(total)


def _deconv_rule(grad: Tensor, _out: Tensor) -> Tensor:
    return F.relu(grad)


def _deconv_input(_total: Tensor, rule_result: Tensor) -> Tensor:
    return rule_result


def captum_relu_rule(method: str) -> Callable[[nn.ReLU], nn.Module]:
    """Captum's guided-backprop / deconvolution rule as a module to put in place of each ``nn.ReLU``.

    Captum (``ModifiedReluGradientAttribution``) puts a forward pre-hook on every ``nn.ReLU`` that
    clones its input and hangs a tensor hook on the original; the hook replaces the input's total
    gradient by ``F.relu(grad_input)`` (guided backprop: ReLU's own backward, then ``F.relu``) or by
    ``F.relu(grad_output)`` (deconvolution). The clone (a copy of every activation, and an in-place
    ReLU made out-of-place) costs about as much as the rule itself: resnet50, batch 8, 1.05-1.09x of
    forward + input gradient against 1.01-1.03x here. :class:`RuleReLU` applies the same operations
    to the same tensors in the same places (the input's total gradient for the ``F.relu`` of guided
    backprop), without the clone; the only difference is that an in-place ReLU modifies its input as
    the model itself does, where Captum's clone leaves it intact, which shows only in a model that
    reads a tensor again after an in-place ReLU has overwritten it.
    """
    if method == "guided_backprop":
        return lambda relu: RuleReLU(_guided_rule, relu.inplace, _guided_input)
    return lambda relu: RuleReLU(_deconv_rule, relu.inplace, _deconv_input)


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
        elif m in ("guided_backprop", "deconvolution") and self.shortcuts:
            out = self._modified_relu(x, t)
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

    def _modified_relu(self, x: Tensor, t: Tensor) -> Tensor:
        # Captum's compute_gradients: grad of each image's target score w.r.t. the input.
        with swapped_relus(self.model, captum_relu_rule(self.method)):
            inp = x.detach().requires_grad_(True)
            out = self.model(inp)
            (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), inp)
        return grad

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
