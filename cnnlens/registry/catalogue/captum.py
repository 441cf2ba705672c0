"""Captum: the toolkit, the methods it brings first (gradient, perturbation and layer attributions,
NoiseTunnel ensembles) and its (method, backend) pairs.

Nothing here imports the toolkit: its adapter (``cnnlens.adapters.captum``) does, when a pair is run.
"""

from __future__ import annotations

from cnnlens.registry.options import (
    BASELINES,
    FEATURE_GRID,
    INTERNAL_BS,
    N_SAMPLES,
    N_STEPS,
    NT_SAMPLES,
    PER_EVAL,
    POS_INT,
    RESHAPE,
    STDEVS,
    STRIDE,
    WINDOW,
    Option,
    _pos_int,
)
from cnnlens.registry.schema import Backend, Implementation, MethodSpec, add_backend, declare, register

add_backend(Backend("captum", "captum", "captum", "https://captum.ai"))

#: NoiseTunnel over other gradient methods: (nt_type, label, base method, what it averages); the one
#: table the registry, the Captum adapter and the direct tests read.
#: SmoothGrad of integrated gradients, input x gradient and guided backprop; SmoothGrad-Squared and
#: VarGrad of integrated gradients and guided backprop, the ensembles Hooker et al. (2019) measured
#: with ROAR. No SmoothGrad of deconvolution: without max-pooling switches the deconvnet backward
#: pass does not depend on the input at all (two different images get the identical map on
#: cnnlens.testing.tiny_cnn), so every noisy copy gives the same map and the pair would add nothing.
#: (SmoothGrad, SG-SQ and VarGrad of the plain gradient are ``smoothgrad``, ``smoothgrad_sq``, ``vargrad``.)
#: Each combination is a method of its own, not an option of ``smoothgrad``: whether it needs module
#: hooks (guided backprop does, IG does not), whether it is signed and which options it takes differ
#: per combination, and the benchmark runs every method at its defaults, so an option would never be
#: measured. The grid is kept to combinations with a published use, so the pair count stays meaningful.
NOISE_TUNNEL_GRID: tuple[tuple[str, str, str, str], ...] = (
    ("smoothgrad", "SmoothGrad: mean", "integrated_gradients", "integrated gradients"),
    ("smoothgrad", "SmoothGrad: mean", "input_x_gradient", "input x gradient"),
    ("smoothgrad", "SmoothGrad: mean", "guided_backprop", "guided backprop"),
    ("smoothgrad_sq", "SmoothGrad-Squared: mean square", "integrated_gradients", "integrated gradients"),
    ("smoothgrad_sq", "SmoothGrad-Squared: mean square", "guided_backprop", "guided backprop"),
    ("vargrad", "VarGrad: variance", "integrated_gradients", "integrated gradients"),
    ("vargrad", "VarGrad: variance", "guided_backprop", "guided backprop"),
)

declare(
    MethodSpec("saliency", "pixel", False, True, False, "Vanilla gradient of the target score (Simonyan 2014)"),
    MethodSpec("deconvolution", "pixel", False, True, False, "Deconvnet backward rule (Zeiler & Fergus 2014)"),
    MethodSpec("input_x_gradient", "pixel", False, True, False, "Input x gradient"),
    MethodSpec("integrated_gradients", "pixel", False, True, False, "Integrated Gradients (Sundararajan 2017)"),
    MethodSpec("smoothgrad", "pixel", False, True, True, "SmoothGrad: mean gradient over noisy copies"),
    MethodSpec("smoothgrad_sq", "pixel", False, False, True, "SmoothGrad-Squared: mean squared gradient over noisy copies"),
    MethodSpec("vargrad", "pixel", False, False, True, "VarGrad: variance of gradients over noisy copies"),
    MethodSpec("gradient_shap", "pixel", False, True, True, "GradientSHAP: expected gradients from noisy baselines"),
    MethodSpec("deeplift", "pixel", False, True, False, "DeepLIFT rescale rule"),
    MethodSpec("deeplift_shap", "pixel", False, True, False, "DeepLIFT-SHAP over a baseline distribution"),
    MethodSpec("lrp", "pixel", False, True, False, "Layer-wise relevance propagation (Captum: epsilon rule; zennit: a composite)"),
    MethodSpec("occlusion", "pixel", False, True, False, "Occlusion: score change under a sliding patch"),
    MethodSpec("feature_ablation", "pixel", False, True, False, "Feature ablation over a superpixel grid"),
    MethodSpec("lime", "pixel", False, True, True, "LIME with a superpixel grid"),
    MethodSpec("kernel_shap", "pixel", False, True, True, "Kernel SHAP with a superpixel grid"),
    # Captum's layer attributions, as spatial maps: raw is the (N, C, h, w) attribution of the
    # layer's output; the CAM contract sums it over channels (see CAPTUM_LAYER_NOTE).
    MethodSpec("layer_conductance", "cam", True, True, False, "Layer Conductance: integrated gradients through the "
                                                              "layer's neurons (Dhamdhere et al. 2018)"),
    MethodSpec("layer_integrated_gradients", "cam", True, True, False, "Integrated Gradients of the layer's output"),
    MethodSpec("layer_gradient_x_activation", "cam", True, True, False, "Gradient x activation of the layer's output"),
    MethodSpec("layer_deeplift", "cam", True, True, False, "DeepLIFT rescale rule, attributed to the layer's output"),
    MethodSpec("layer_activation", "cam", True, True, False, "The layer's activations (no target)"),
    # Captum's NoiseTunnel over other gradient methods (Smilkov et al. 2017; the SG-SQ and VarGrad
    # ensembles of IG and guided backprop are those Hooker et al. 2019 benchmarked with ROAR).
    *(MethodSpec(f"{nt}_{base}", "pixel", False, nt == "smoothgrad", True,
                 f"{label} of {what} over noisy copies")
      for nt, label, base, what in NOISE_TUNNEL_GRID),
    MethodSpec("shapley_value_sampling", "pixel", False, True, True,
               "Shapley values by permutation sampling over a superpixel grid"),
)

_CAPTUM = "cnnlens.adapters.captum:CaptumAdapter"

# Captum: layer attributions, NoiseTunnel over other gradient methods, Shapley value sampling.
CAPTUM_LAYER_NOTE = ("attributes the layer's output; raw is Captum's (N, C, h, w) layer attribution, and the map "
                     "sums it over channels (signed; for conductance, IG and DeepLIFT the sum keeps completeness: "
                     "the map's total is the attribution's), then upsamples bilinearly and applies a ReLU like "
                     "every CAM")
_NT_OPTS = {"nt_samples": NT_SAMPLES, "stdevs": STDEVS, "nt_samples_batch_size": INTERNAL_BS}
_IG_OPTS = {"n_steps": N_STEPS, "internal_batch_size": INTERNAL_BS, "baselines": BASELINES}
_NT_BASE_CLASS = {"integrated_gradients": "IntegratedGradients", "input_x_gradient": "InputXGradient",
                  "guided_backprop": "GuidedBackprop"}
_CAPTUM_MORE: list[Implementation] = [
    Implementation("layer_conductance", "captum", _CAPTUM, "LayerConductance", _IG_OPTS,
                   notes=CAPTUM_LAYER_NOTE + "; internal_batch_size must be at least 2 x the images per call "
                                             "(Captum's rule)"),
    Implementation("layer_integrated_gradients", "captum", _CAPTUM, "LayerIntegratedGradients", _IG_OPTS,
                   notes=CAPTUM_LAYER_NOTE),
    Implementation("layer_gradient_x_activation", "captum", _CAPTUM, "LayerGradientXActivation",
                   notes=CAPTUM_LAYER_NOTE),
    Implementation("layer_deeplift", "captum", _CAPTUM, "LayerDeepLift", {"baselines": BASELINES},
                   notes=CAPTUM_LAYER_NOTE + "; refuses models that reuse a module within one forward",
                   refuses_reuse=True),
    Implementation("layer_activation", "captum", _CAPTUM, "LayerActivation",
                   notes=CAPTUM_LAYER_NOTE + "; the target is ignored"),
    *(
        Implementation(f"{nt}_{base}", "captum", _CAPTUM, f"NoiseTunnel({_NT_BASE_CLASS[base]}, {nt})",
                       {**_NT_OPTS, **(_IG_OPTS if base == "integrated_gradients" else {})},
                       notes="one Captum call per image, each drawn from the seed afresh"
                             + ("; overrides nn.ReLU modules only" if base == "guided_backprop"
                                else ""))
        for nt, _label, base, _what in NOISE_TUNNEL_GRID
    ),
    Implementation("shapley_value_sampling", "captum", _CAPTUM, "ShapleyValueSampling",
                   {"n_samples": Option(25, "feature permutations per image", _pos_int, POS_INT),
                    "feature_grid": FEATURE_GRID, "baselines": BASELINES, "perturbations_per_eval": PER_EVAL},
                   notes="one Captum call per image, each drawn from the seed afresh; n_samples x (grid cells) "
                         "forwards per image"),
]

register(
    Implementation("gradcam", "captum", _CAPTUM, "LayerGradCam", {"reshape": RESHAPE}),
    Implementation("guided_backprop", "captum", _CAPTUM, "GuidedBackprop", notes="overrides nn.ReLU modules only"),
    Implementation("guided_gradcam", "captum", _CAPTUM, "GuidedGradCam", {"reshape": RESHAPE}),
    Implementation("saliency", "captum", _CAPTUM, "Saliency", notes="called with abs=False; cnnlens reduces"),
    Implementation("deconvolution", "captum", _CAPTUM, "Deconvolution", notes="overrides nn.ReLU modules only"),
    Implementation("input_x_gradient", "captum", _CAPTUM, "InputXGradient"),
    Implementation("integrated_gradients", "captum", _CAPTUM, "IntegratedGradients",
                   {"n_steps": N_STEPS, "internal_batch_size": INTERNAL_BS, "baselines": BASELINES}),
    *(
        Implementation(m, "captum", _CAPTUM, f"NoiseTunnel(Saliency, {m})",
                       {"nt_samples": NT_SAMPLES, "stdevs": STDEVS, "nt_samples_batch_size": INTERNAL_BS},
                       notes="one Captum call per image, each drawn from the seed afresh")
        for m in ("smoothgrad", "smoothgrad_sq", "vargrad")
    ),
    Implementation("gradient_shap", "captum", _CAPTUM, "GradientShap",
                   {"n_samples": Option(20, "samples per image", _pos_int, POS_INT), "stdevs": STDEVS,
                    "baselines": BASELINES}, notes="one Captum call per image, each drawn from the seed afresh"),
    Implementation("deeplift", "captum", _CAPTUM, "DeepLift", {"baselines": BASELINES},
                   notes="refuses models that reuse a module within one forward", refuses_reuse=True),
    Implementation("deeplift_shap", "captum", _CAPTUM, "DeepLiftShap",
                   {"n_baselines": Option(4, "baselines drawn around `baselines`", _pos_int, POS_INT),
                    "baselines": BASELINES},
                   notes="one Captum call per image; its baselines are `baselines` plus n_baselines-1 copies with "
                         "fixed-seed noise of 0.1 x that image's standard deviation", refuses_reuse=True),
    Implementation("lrp", "captum", _CAPTUM, "LRP", notes="supports Conv2d, Linear, ReLU, pooling, BatchNorm only",
                   mutates_params=True, refuses_reuse=True),
    Implementation("occlusion", "captum", _CAPTUM, "Occlusion",
                   {"sliding_window": WINDOW, "strides": STRIDE, "baselines": BASELINES,
                    "perturbations_per_eval": PER_EVAL}),
    Implementation("feature_ablation", "captum", _CAPTUM, "FeatureAblation",
                   {"feature_grid": FEATURE_GRID, "baselines": BASELINES, "perturbations_per_eval": PER_EVAL}),
    Implementation("lime", "captum", _CAPTUM, "Lime",
                   {"n_samples": N_SAMPLES, "feature_grid": FEATURE_GRID, "perturbations_per_eval": PER_EVAL},
                   notes="one Captum call per image, each drawn from the seed afresh"),
    Implementation("kernel_shap", "captum", _CAPTUM, "KernelShap",
                   {"n_samples": N_SAMPLES, "feature_grid": FEATURE_GRID, "perturbations_per_eval": PER_EVAL},
                   notes="one Captum call per image, each drawn from the seed afresh"),
    *_CAPTUM_MORE,
)
