"""Adapter for Captum.

Every method runs the Captum class the registry names (``toolkit_name``), called as Captum documents
it and with Captum's own argument names; no step of Captum's is replaced
(``Explanation.provenance.substitutions`` stays empty). The adapter only translates: ``target``
becomes Captum's ``target``, image-level options become Captum's shapes (sliding windows, superpixel
feature masks, baseline tensors, noise scales), and Captum's exceptions become cnnlens errors.
``saliency`` is called with ``abs=False`` and ``gradcam`` with ``relu_attributions=False`` so that
``raw`` stays signed and the shared contract does the rest. ``guided_backprop`` and
``deconvolution`` are ``captum.attr.GuidedBackprop`` / ``Deconvolution`` themselves, with Captum's
own hooks on every ``nn.ReLU``.

The layer attributions (``layer_conductance``, ``layer_integrated_gradients``,
``layer_gradient_x_activation``, ``layer_deeplift``, ``layer_activation``) return Captum's
attribution of the chosen layer's output unchanged, (N, C, h, w), as ``raw``; the CAM contract sums
it over channels, upsamples and applies a ReLU. ``smoothgrad_<base>``, ``smoothgrad_sq_<base>`` and
``vargrad_<base>`` are ``captum.attr.NoiseTunnel`` around the base method's own Captum class.

An image's result never depends on the other images of its batch. Options derived from the input
come from each image alone: the noise scale (``stdevs`` times that image's value range) and
DeepLIFT-SHAP's noisy baselines (scaled by that image's standard deviation), so both methods are
called once per image. The methods that draw random numbers (the SmoothGrad family and every
NoiseTunnel method, GradientSHAP, LIME, Kernel SHAP, Shapley value sampling) are called one image at
a time, and with a seed every image is drawn from it afresh (``torch.manual_seed`` and
``np.random.seed`` inside the Explainer's seeded block, which gives the caller's RNG state back): an
image's map alone and in any batch is then bit-identical, and it is what Captum returns when called
on that image after ``torch.manual_seed(seed); np.random.seed(seed)``.
(Captum's ``NoiseTunnel`` and ``GradientShap`` take one ``stdevs`` per input tensor, not per example,
so a per-image scale needs a call per image in any case; the noisy copies of one image still share
the internal batches.) Each such loop is named in ``provenance.driven``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from captum import attr as ca
from torch import Tensor

from cnnlens import reshape
from cnnlens._resolve import Caveat, internal_batch
from cnnlens.adapters.base import Adapter, check_window_fits, window_pair
from cnnlens.errors import CnnlensError, ModelError, OptionError
from cnnlens.registry import NOISE_TUNNEL_GRID

NOISE = {"smoothgrad": "smoothgrad", "smoothgrad_sq": "smoothgrad_sq", "vargrad": "vargrad"}
SIMPLE = {
    "guided_backprop": ca.GuidedBackprop,
    "deconvolution": ca.Deconvolution,
    "input_x_gradient": ca.InputXGradient,
    "lrp": ca.LRP,
}
#: Captum's layer attributions: the attribution of the layer's output, (N, C, h, w), returned as
#: ``raw``; the shared CAM contract sums it over channels into the spatial map.
LAYER = {
    "layer_conductance": ca.LayerConductance,
    "layer_integrated_gradients": ca.LayerIntegratedGradients,
    "layer_gradient_x_activation": ca.LayerGradientXActivation,
    "layer_deeplift": ca.LayerDeepLift,
    "layer_activation": ca.LayerActivation,
}
#: NoiseTunnel over another gradient method: method -> (Captum's nt_type, the base attribution class).
_NT_BASES = {"integrated_gradients": ca.IntegratedGradients, "input_x_gradient": ca.InputXGradient,
             "guided_backprop": ca.GuidedBackprop}
NOISE_OVER = {f"{nt}_{base}": (nt, _NT_BASES[base]) for nt, _label, base, _what in NOISE_TUNNEL_GRID}
#: Named in ``provenance.driven`` when Captum is called once per image.
GRID_VIEW_DRIVE = ("Captum's layer is a view of the token / channels-last layer output as (N, C, H, W) (cnnlens.reshape "
                   "{!r}, run by a forward hook on the layer that hands the model the same values back)")
PER_IMAGE_SEEDED = "one Captum call per image, each image drawn from the seed afresh"
PER_IMAGE_BASELINES = "one Captum call per image, with that image's own baseline distribution"


def grid_mask(x: Tensor, cell: int) -> Tensor:
    """Superpixels as a grid of ``cell`` x ``cell`` squares, shape (1, 1, H, W), ids 0..K-1."""
    h, w = x.shape[2], x.shape[3]
    cols = -(-w // cell)
    rows = torch.arange(h, device=x.device) // cell
    colsi = torch.arange(w, device=x.device) // cell
    return (rows[:, None] * cols + colsi[None, :])[None, None]


def noise_scale(stdevs: float, image: Tensor) -> float:
    """Captum's ``stdevs`` for one image: ``stdevs`` as a fraction of that image's value range."""
    return float(stdevs) * float(image.max() - image.min())


def deeplift_shap_baselines(base: Tensor, image: Tensor, n_baselines: int) -> Tensor:
    """``base`` and ``n_baselines - 1`` noisy copies, the noise 0.1 x the image's standard deviation.

    The noise pattern comes from a fixed-seed generator, so DeepLIFT-SHAP stays deterministic; only
    its scale depends on the image (one image, shape (1, C, H, W)).
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn((n_baselines - 1, *image.shape[1:]), generator=gen).to(image.device, image.dtype)
    return torch.cat([base, base + 0.1 * float(image.std()) * noise])


class CaptumAdapter(Adapter):
    backend = "captum"

    def check_input(self, x: Tensor) -> None:
        if self.method == "occlusion":
            check_window_fits(self.options, x)
        ibs = self.options.get("internal_batch_size")
        if self.method == "layer_conductance" and ibs is not None and ibs < 2 * x.shape[0]:
            raise OptionError(
                f"internal_batch_size {ibs} is too small for layer_conductance on {x.shape[0]} images: Captum's "
                f"LayerConductance needs at least 2 x the images per call ({2 * x.shape[0]}); give a larger "
                "value, or None to let cnnlens choose"
            )
        grid = self.options.get("feature_grid")
        if grid is not None and grid > max(x.shape[2], x.shape[3]):
            raise OptionError(f"feature_grid {grid} is larger than the {x.shape[2]}x{x.shape[3]} image")

    def _baseline(self, x: Tensor) -> Tensor | float:
        b = self.options.get("baselines", 0.0)
        if isinstance(b, Tensor):
            return b.to(device=x.device, dtype=x.dtype)
        return float(b)

    def _baseline_of(self, x: Tensor, i: int) -> Tensor:
        """Image ``i``'s baseline as a (1, C, H, W) tensor (a per-image tensor gives its own row)."""
        b = self._baseline(x)
        if isinstance(b, Tensor):
            return torch.broadcast_to(b, x.shape)[i : i + 1].clone()
        return torch.full_like(x[i : i + 1], b)

    @staticmethod
    def _per_eval(x: Tensor) -> int:
        # Occlusion and FeatureAblation forward every image of the batch for each perturbation, so a
        # forward holds N * perturbations_per_eval inputs; keep that near the internal batch.
        return max(1, internal_batch(x) // x.shape[0])

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        route = ROUTES.get(self.method)
        if route is None:  # the registry only routes methods of the table below
            raise CnnlensError(f"captum adapter has no route for '{self.method}'")
        return route(self, x, targets).detach()

    # One route per method (the table ROUTES below): Captum's class, called as Captum documents it.

    def _gradcam(self, x: Tensor, t: Tensor) -> Tensor:
        if self.options.get("reshape") is not None:
            with self._grid_view() as view:
                return ca.LayerGradCam(self.model, view).attribute(x, target=t, relu_attributions=False)
        return ca.LayerGradCam(self.model, self.layer).attribute(x, target=t, relu_attributions=False)

    def _guided_gradcam(self, x: Tensor, t: Tensor) -> Tensor:
        if self.options.get("reshape") is not None:
            with self._grid_view() as view:
                return ca.GuidedGradCam(self.model, view).attribute(x, target=t)
        return ca.GuidedGradCam(self.model, self.layer).attribute(x, target=t)

    @contextlib.contextmanager
    def _grid_view(self) -> Iterator[Any]:
        """A token or channels-last layer: Captum's layer is a view of it as (N, C, H, W) (cnnlens.reshape)."""
        fn = self.options["reshape"]
        if not isinstance(fn, reshape.Reshape):
            raise OptionError(
                "backend 'captum' needs a cnnlens.reshape preset (vit, deit, tokens, swin, channels_last) or a "
                "cnnlens.reshape.Reshape: Captum's layer is a view of the layer output, which must be undone; "
                "a plain callable works with backend 'pytorch-grad-cam'"
            )
        self.driven.append(GRID_VIEW_DRIVE.format(fn.name))
        with reshape.grid_view(self.layer, fn) as view:
            yield view

    def _saliency(self, x: Tensor, t: Tensor) -> Tensor:
        return ca.Saliency(self.model).attribute(x, target=t, abs=False)

    def _simple(self, x: Tensor, t: Tensor) -> Tensor:
        return SIMPLE[self.method](self.model).attribute(x, target=t)  # type: ignore[no-any-return]

    def _integrated_gradients(self, x: Tensor, t: Tensor) -> Tensor:
        o = self.options
        return ca.IntegratedGradients(self.model).attribute(
            x, baselines=self._baseline(x), target=t, n_steps=o["n_steps"],
            internal_batch_size=o["internal_batch_size"] or internal_batch(x),
        )

    def _noise(self, x: Tensor, t: Tensor) -> Tensor:
        # One image per call: the noisy copies of one image fill an internal batch.
        o = self.options
        per_batch = o["nt_samples_batch_size"] or min(o["nt_samples"], internal_batch(x))
        nt = ca.NoiseTunnel(ca.Saliency(self.model))
        return self.each_image(x, t, lambda xi, ti, _i: nt.attribute(
            xi, nt_type=NOISE[self.method], nt_samples=o["nt_samples"], nt_samples_batch_size=per_batch,
            stdevs=noise_scale(o["stdevs"], xi), target=ti, abs=False,
        ), PER_IMAGE_SEEDED)

    def _layer(self, x: Tensor, t: Tensor) -> Tensor:
        out = self._layer_attribution(x, t)
        self._warn_if_no_positive_sum(out)
        return out

    def _shapley_value_sampling(self, x: Tensor, t: Tensor) -> Tensor:
        o = self.options
        sv = ca.ShapleyValueSampling(self.model)
        mask = grid_mask(x, o["feature_grid"])
        per_eval = o["perturbations_per_eval"] or internal_batch(x)
        return self.each_image(x, t, lambda xi, ti, i: sv.attribute(
            xi, baselines=self._baseline_of(x, i), target=ti, feature_mask=mask, n_samples=o["n_samples"],
            perturbations_per_eval=per_eval,
        ), PER_IMAGE_SEEDED)

    def _gradient_shap(self, x: Tensor, t: Tensor) -> Tensor:
        o = self.options
        gs = ca.GradientShap(self.model)
        return self.each_image(x, t, lambda xi, ti, i: gs.attribute(
            xi, baselines=self._baseline_of(x, i), n_samples=o["n_samples"],
            stdevs=noise_scale(o["stdevs"], xi), target=ti,
        ), PER_IMAGE_SEEDED)

    def _deeplift(self, x: Tensor, t: Tensor) -> Tensor:
        return ca.DeepLift(self.model).attribute(x, baselines=self._baseline(x), target=t)

    def _deeplift_shap(self, x: Tensor, t: Tensor) -> Tensor:
        dls = ca.DeepLiftShap(self.model)
        return self.each_image(x, t, lambda xi, ti, i: dls.attribute(
            xi, baselines=deeplift_shap_baselines(self._baseline_of(x, i), xi, self.options["n_baselines"]),
            target=ti,
        ), PER_IMAGE_BASELINES)

    def _occlusion(self, x: Tensor, t: Tensor) -> Tensor:
        o = self.options
        wh, ww = window_pair(o["sliding_window"])
        sh, sw = window_pair(o["strides"])
        c = x.shape[1]
        return ca.Occlusion(self.model).attribute(
            x, sliding_window_shapes=(c, wh, ww), strides=(c, sh, sw), baselines=self._baseline(x),
            target=t, perturbations_per_eval=o["perturbations_per_eval"] or self._per_eval(x),
        )

    def _feature_ablation(self, x: Tensor, t: Tensor) -> Tensor:
        o = self.options
        return ca.FeatureAblation(self.model).attribute(
            x, baselines=self._baseline(x), target=t, feature_mask=grid_mask(x, o["feature_grid"]),
            perturbations_per_eval=o["perturbations_per_eval"] or self._per_eval(x),
        )

    def _lime_or_kernel_shap(self, x: Tensor, t: Tensor) -> Tensor:
        # Captum's Lime and KernelShap take one example at a time when a feature mask is shared.
        o = self.options
        explainer: Any = (ca.Lime if self.method == "lime" else ca.KernelShap)(self.model)
        mask = grid_mask(x, o["feature_grid"])
        per_eval = o["perturbations_per_eval"] or internal_batch(x)
        return self.each_image(x, t, lambda xi, ti, _i: explainer.attribute(
            xi, target=ti, feature_mask=mask, n_samples=o["n_samples"], perturbations_per_eval=per_eval,
        ), PER_IMAGE_SEEDED)

    def _layer_attribution(self, x: Tensor, t: Tensor) -> Tensor:
        """Captum's layer attribution of the layer's output, as Captum returns it (N, C, h, w)."""
        m, o = self.method, self.options
        explainer: Any = LAYER[m](self.model, self.layer)
        if m in ("layer_conductance", "layer_integrated_gradients"):
            ibs = o["internal_batch_size"] or internal_batch(x)
            if m == "layer_conductance":
                # Captum's minimum; a user's smaller value was refused in check_input
                ibs = max(ibs, 2 * x.shape[0])
            return explainer.attribute(  # type: ignore[no-any-return]
                x, baselines=self._baseline(x), target=t, n_steps=o["n_steps"], internal_batch_size=ibs,
            )
        if m == "layer_deeplift":
            # Captum's DeepLift hooks register on the inputs of the nonlinearities before the layer,
            # which needs them in the graph: with the parameters frozen that takes an input that
            # requires grad (a user's model with trainable weights gets the same graph through them).
            xg = x.detach().requires_grad_()
            return explainer.attribute(xg, baselines=self._baseline(x), target=t)  # type: ignore[no-any-return]
        if m == "layer_activation":
            return explainer.attribute(x)  # type: ignore[no-any-return]
        return explainer.attribute(x, target=t)  # type: ignore[no-any-return]

    def _warn_if_no_positive_sum(self, raw: Tensor) -> None:
        """The map of a layer attribution is the ReLU of its channel sum, like every CAM's: where that
        sum is <= 0 everywhere (the channel sum of a BatchNorm output before its activation, as at
        EfficientNet-Lite0's last spatial layer ``_bn1``), the map is all zeros; say so, not silently."""
        flat = raw.detach().sum(dim=1).flatten(1)
        # (an attribution that is zero everywhere has another cause, which the Explainer names)
        empty = ((flat.amax(dim=1) <= 0) & (flat.abs().amax(dim=1) > 0)).nonzero().flatten().tolist()
        if empty:
            name = next((n for n, mod in self.model.named_modules() if mod is self.layer), "?")
            why = (f"the channel sum of the attribution at layer '{name}' is <= 0 everywhere, so the map (its ReLU, "
                   "as for every CAM) is all zeros; pick a layer after an activation (e.g. a block's output) with "
                   "{}, or read the signed attribution in raw")
            self.warnings.append(Caveat(self.method, "captum", why.format("layer="), why.format("--layer"), empty,
                                        raw.shape[0]))

    def _noise_over(self, x: Tensor, t: Tensor) -> Tensor:
        """Captum's NoiseTunnel around another gradient method, one image per call (see the module doc)."""
        o = self.options
        nt_type, base = NOISE_OVER[self.method]
        nt = ca.NoiseTunnel(base(self.model))
        per_batch = o["nt_samples_batch_size"] or min(o["nt_samples"], internal_batch(x))

        def call(xi: Tensor, ti: Tensor, i: int) -> Tensor:
            extra: dict[str, Any] = {}
            if base is ca.IntegratedGradients:
                extra = {"baselines": self._baseline_of(x, i), "n_steps": o["n_steps"],
                         "internal_batch_size": o["internal_batch_size"] or internal_batch(x)}
            return nt.attribute(  # type: ignore[no-any-return]
                xi, nt_type=nt_type, nt_samples=o["nt_samples"], nt_samples_batch_size=per_batch,
                stdevs=noise_scale(o["stdevs"], xi), target=ti, **extra,
            )

        return self.each_image(x, t, call, PER_IMAGE_SEEDED)

    def translate(self, exc: Exception) -> CnnlensError | None:
        msg = str(exc)
        if self.method in ("deeplift", "deeplift_shap", "layer_deeplift") and ("used more than once" in msg or "more than once" in msg):
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


_Route = Callable[[CaptumAdapter, Tensor, Tensor], Tensor]
#: The adapter's dispatch: method -> the route that calls Captum for it. A Captum method added to
#: ``cnnlens.registry.catalogue.captum`` gets its route here (a test checks every registered pair has one).
ROUTES: dict[str, _Route] = {
    "gradcam": CaptumAdapter._gradcam,
    "guided_gradcam": CaptumAdapter._guided_gradcam,
    "saliency": CaptumAdapter._saliency,
    **dict.fromkeys(SIMPLE, CaptumAdapter._simple),
    "integrated_gradients": CaptumAdapter._integrated_gradients,
    **dict.fromkeys(NOISE, CaptumAdapter._noise),
    **dict.fromkeys(LAYER, CaptumAdapter._layer),
    **dict.fromkeys(NOISE_OVER, CaptumAdapter._noise_over),
    "shapley_value_sampling": CaptumAdapter._shapley_value_sampling,
    "gradient_shap": CaptumAdapter._gradient_shap,
    "deeplift": CaptumAdapter._deeplift,
    "deeplift_shap": CaptumAdapter._deeplift_shap,
    "occlusion": CaptumAdapter._occlusion,
    "feature_ablation": CaptumAdapter._feature_ablation,
    "lime": CaptumAdapter._lime_or_kernel_shap,
    "kernel_shap": CaptumAdapter._lime_or_kernel_shap,
}
