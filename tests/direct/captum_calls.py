"""Captum called directly, as its documentation shows: ``captum.attr.X(model).attribute(x, target=...)``.

Each call passes the options as cnnlens's Captum adapter passes them (Captum's own argument names):
``baselines`` as given, occlusion windows spanning every channel, a square-grid ``feature_mask`` for
the superpixel methods, ``stdevs`` as a fraction of the image's value range. Options cnnlens leaves
to itself when they are None (internal batch sizes, ``perturbations_per_eval``) are left to Captum's
defaults here; on the harness's 32 px input cnnlens's choice puts the same work in one batch or
differs only in how many perturbations share a forward, which changes no value beyond float noise.

The methods that draw random numbers are called one image at a time, each after
``torch.manual_seed(seed); np.random.seed(seed)``: how a user gets a reproducible, per-image result
from Captum, and how cnnlens drives it. DeepLIFT-SHAP's baseline distribution is the one cnnlens
documents: ``baselines`` plus ``n_baselines - 1`` copies with fixed-seed noise of 0.1 x the image's
standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from captum import attr as ca
from torch import Tensor, nn

from cnnlens.registry import NOISE_TUNNEL_GRID
from direct import DirectCall

Opts = dict[str, Any]


def _square_grid(x: Tensor, cell: int) -> Tensor:
    """Superpixel ids of ``cell`` x ``cell`` squares, row-major, shape (1, 1, H, W)."""
    h, w = x.shape[2], x.shape[3]
    rows = torch.arange(h)[:, None] // cell
    cols = torch.arange(w)[None, :] // cell
    return (rows * ((w + cell - 1) // cell) + cols)[None, None]


def _window(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[-2]), int(v[-1]))


def _baseline_row(x: Tensor, b: Any, i: int) -> Tensor:
    return torch.broadcast_to(torch.as_tensor(b, dtype=x.dtype), x.shape)[i : i + 1].clone()


def _value_range(image: Tensor) -> float:
    return float(image.max() - image.min())


def _per_image_seeded(call: Callable[[Tensor, Tensor, int], Tensor]) -> DirectCall:
    def run(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        outs = []
        for i in range(x.shape[0]):
            torch.manual_seed(o["seed"])
            np.random.seed(o["seed"])
            outs.append(call(x[i : i + 1], targets[i : i + 1], i).detach())
        return torch.cat(outs)

    return run


def _noise_tunnel(nt_type: str) -> DirectCall:
    def direct(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        nt = ca.NoiseTunnel(ca.Saliency(model))
        return _per_image_seeded(lambda xi, ti, _i: nt.attribute(
            xi, nt_type=nt_type, nt_samples=o["nt_samples"], nt_samples_batch_size=o["nt_samples_batch_size"],
            stdevs=o["stdevs"] * _value_range(xi), target=ti, abs=False,
        ))(model, x, targets, layer, o)

    return direct


def gradcam(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    return ca.LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=False)


def guided_gradcam(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    return ca.GuidedGradCam(model, layer).attribute(x, target=targets)


def saliency(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    return ca.Saliency(model).attribute(x, target=targets, abs=False)


def _plain(cls: type) -> DirectCall:
    def direct(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        return cls(model).attribute(x, target=targets)

    return direct


def integrated_gradients(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    return ca.IntegratedGradients(model).attribute(
        x, baselines=o["baselines"], target=targets, n_steps=o["n_steps"], internal_batch_size=o["internal_batch_size"]
    )


def gradient_shap(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    gs = ca.GradientShap(model)
    return _per_image_seeded(lambda xi, ti, i: gs.attribute(
        xi, baselines=_baseline_row(x, o["baselines"], i), n_samples=o["n_samples"],
        stdevs=o["stdevs"] * _value_range(xi), target=ti,
    ))(model, x, targets, layer, o)


def deeplift(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    return ca.DeepLift(model).attribute(x, baselines=o["baselines"], target=targets)


def deeplift_shap(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    outs = []
    for i in range(x.shape[0]):
        xi, base = x[i : i + 1], _baseline_row(x, o["baselines"], i)
        noise = torch.randn((o["n_baselines"] - 1, *x.shape[1:]), generator=torch.Generator().manual_seed(0))
        baselines = torch.cat([base, base + 0.1 * float(xi.std()) * noise])
        outs.append(ca.DeepLiftShap(model).attribute(xi, baselines=baselines, target=targets[i : i + 1]))
    return torch.cat(outs)


def occlusion(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    c = x.shape[1]
    return ca.Occlusion(model).attribute(
        x, sliding_window_shapes=(c, *_window(o["sliding_window"])), strides=(c, *_window(o["strides"])),
        baselines=o["baselines"], target=targets, perturbations_per_eval=o["perturbations_per_eval"] or 1,
    )


def feature_ablation(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    return ca.FeatureAblation(model).attribute(
        x, baselines=o["baselines"], target=targets, feature_mask=_square_grid(x, o["feature_grid"]),
        perturbations_per_eval=o["perturbations_per_eval"] or 1,
    )


def _surrogate(cls: type) -> DirectCall:
    def direct(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        explainer = cls(model)
        mask = _square_grid(x, o["feature_grid"])
        return _per_image_seeded(lambda xi, ti, _i: explainer.attribute(
            xi, target=ti, feature_mask=mask, n_samples=o["n_samples"],
            perturbations_per_eval=o["perturbations_per_eval"] or 1,
        ))(model, x, targets, layer, o)

    return direct


def _layer(cls: type, **how: Any) -> DirectCall:
    """A Captum layer attribution of ``layer``'s output, as Captum returns it (N, C, h, w)."""

    def direct(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        kwargs: dict[str, Any] = {k: o[k] for k in how.get("options", ())}
        if how.get("target", True):
            kwargs["target"] = targets
        return cls(model, layer).attribute(x, **kwargs)

    return direct


_NT_BASES = {"integrated_gradients": ca.IntegratedGradients, "input_x_gradient": ca.InputXGradient,
             "guided_backprop": ca.GuidedBackprop}


def _noise_over(nt_type: str, base: str) -> DirectCall:
    """``NoiseTunnel(Base(model))``, one seeded call per image, IG's own options passed through."""

    def direct(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        nt = ca.NoiseTunnel(_NT_BASES[base](model))

        def call(xi: Tensor, ti: Tensor, i: int) -> Tensor:
            extra = {}
            if base == "integrated_gradients":
                extra = {"baselines": _baseline_row(x, o["baselines"], i), "n_steps": o["n_steps"],
                         "internal_batch_size": o["internal_batch_size"]}
            return nt.attribute(xi, nt_type=nt_type, nt_samples=o["nt_samples"],
                                nt_samples_batch_size=o["nt_samples_batch_size"],
                                stdevs=o["stdevs"] * _value_range(xi), target=ti, **extra)

        return _per_image_seeded(call)(model, x, targets, layer, o)

    return direct


def shapley_value_sampling(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None,
                           o: Opts) -> Tensor:
    sv = ca.ShapleyValueSampling(model)
    mask = _square_grid(x, o["feature_grid"])
    return _per_image_seeded(lambda xi, ti, i: sv.attribute(
        xi, baselines=_baseline_row(x, o["baselines"], i), target=ti, feature_mask=mask, n_samples=o["n_samples"],
        perturbations_per_eval=o["perturbations_per_eval"] or 1,
    ))(model, x, targets, layer, o)


_IG = ("baselines", "n_steps", "internal_batch_size")
DIRECT: dict[tuple[str, str], DirectCall] = {
    ("gradcam", "captum"): gradcam,
    ("guided_gradcam", "captum"): guided_gradcam,
    ("saliency", "captum"): saliency,
    ("guided_backprop", "captum"): _plain(ca.GuidedBackprop),
    ("deconvolution", "captum"): _plain(ca.Deconvolution),
    ("input_x_gradient", "captum"): _plain(ca.InputXGradient),
    ("lrp", "captum"): _plain(ca.LRP),
    ("integrated_gradients", "captum"): integrated_gradients,
    ("smoothgrad", "captum"): _noise_tunnel("smoothgrad"),
    ("smoothgrad_sq", "captum"): _noise_tunnel("smoothgrad_sq"),
    ("vargrad", "captum"): _noise_tunnel("vargrad"),
    ("gradient_shap", "captum"): gradient_shap,
    ("deeplift", "captum"): deeplift,
    ("deeplift_shap", "captum"): deeplift_shap,
    ("occlusion", "captum"): occlusion,
    ("feature_ablation", "captum"): feature_ablation,
    ("lime", "captum"): _surrogate(ca.Lime),
    ("kernel_shap", "captum"): _surrogate(ca.KernelShap),
    ("layer_conductance", "captum"): _layer(ca.LayerConductance, options=_IG),
    ("layer_integrated_gradients", "captum"): _layer(ca.LayerIntegratedGradients, options=_IG),
    ("layer_gradient_x_activation", "captum"): _layer(ca.LayerGradientXActivation),
    ("layer_deeplift", "captum"): _layer(ca.LayerDeepLift, options=("baselines",)),
    ("layer_activation", "captum"): _layer(ca.LayerActivation, target=False),
    **{(f"{nt}_{base}", "captum"): _noise_over(nt, base) for nt, _label, base, _what in NOISE_TUNNEL_GRID},
    ("shapley_value_sampling", "captum"): shapley_value_sampling,
}
