"""The lazy registry: which methods exist, which backend implements each, and what they accept.

Nothing here imports a backend. An implementation is addressed as ``"module:Class"`` and imported
only when an :class:`~cnnlens.Explainer` asks for it, so ``import cnnlens`` stays light and a missing
toolkit only matters for the methods that need it.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from cnnlens.errors import (
    BackendUnavailableError,
    OptionError,
    UnknownMethodError,
    UnsupportedMethodError,
    close_matches,
    install_hint,
)

Kind = Literal["cam", "pixel"]


@dataclass(frozen=True)
class Backend:
    """A wrapped toolkit: its id, the module that proves it is installed, its pip name, and the
    cnnlens extra that installs it (``None``: a core dependency)."""

    id: str
    module: str
    pip: str
    homepage: str
    extra: str | None = None

    @property
    def install(self) -> str:
        """How to install it: cnnlens's extra, which carries cnnlens's version cap on the toolkit."""
        return install_hint(self.extra)

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def require(self) -> None:
        if not self.installed:
            raise BackendUnavailableError(
                f"backend '{self.id}' needs the package '{self.pip}', which is not installed; "
                f"install it with: {self.install}"
            )


BACKENDS: dict[str, Backend] = {
    b.id: b
    for b in (
        Backend("pytorch-grad-cam", "pytorch_grad_cam", "grad-cam", "https://github.com/jacobgil/pytorch-grad-cam"),
        Backend("captum", "captum", "captum", "https://captum.ai"),
        Backend("flashtorch", "flashtorch", "flashtorch", "https://github.com/MisaOgura/flashtorch"),
        Backend("torchcam", "torchcam", "torchcam", "https://github.com/frgfm/torch-cam", extra="torchcam"),
        Backend("zennit", "zennit", "zennit", "https://github.com/chr-peters/zennit", extra="zennit"),
    )
}


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a (method, backend): its default, a validity check and what it does."""

    default: Any
    doc: str
    check: Callable[[Any], bool] | None = None
    expect: str = ""

    def validate(self, name: str, value: Any) -> Any:
        if self.check is not None and value is not None:
            ok = False
            try:
                ok = bool(self.check(value))
            except Exception:  # a check that cannot even evaluate the value means "invalid"
                ok = False
            if not ok:
                raise OptionError(f"invalid value for option '{name}': {_describe(value)}; expected {self.expect}")
        return value


def _describe(value: Any) -> str:
    """A value for an error message: arrays by dtype and shape, not their (possibly huge) repr."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (int, float)):
        return f"{type(value).__name__} of shape {tuple(shape)}, dtype {getattr(value, 'dtype', '?')}"
    return repr(value)


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _finite_num(v: Any) -> bool:
    """A real number that is neither NaN nor infinite (an int of any size, or a finite float)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nonneg_num(v: Any) -> bool:
    return _finite_num(v) and v >= 0


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _window(v: Any) -> bool:
    if isinstance(v, int):
        return not isinstance(v, bool) and v >= 1
    return (isinstance(v, (tuple, list)) and len(v) in (2, 3)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v))


#: torch.manual_seed takes a 64-bit seed; a larger int would fail inside the call with a raw error.
SEED_RANGE = (-(2**63), 2**63 - 1)


def _seed(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and SEED_RANGE[0] <= v <= SEED_RANGE[1]


def _baselines(v: Any) -> bool:
    """A finite number, or a real tensor (on a device with values) whose every element is finite."""
    if _finite_num(v):
        return True
    import torch  # only when a tensor is given: the registry itself stays import-light

    if isinstance(v, torch.Tensor):
        if v.device.type == "meta" or v.is_complex() or v.layout != torch.strided or v.dtype == torch.bool:
            return False
        return not v.is_floating_point() or bool(torch.isfinite(v).all())
    if hasattr(v, "shape"):  # a NumPy array
        import numpy as np

        a = np.asarray(v)
        return a.dtype.kind in "iuf" and bool(np.isfinite(a).all())
    return False


POS_INT = "a positive integer"
NONNEG = "a finite number >= 0"
BOOL = "True or False"

SEED = Option(0, "random seed; the global RNG state is left untouched (None draws a fresh seed)",
              _seed, "an integer in the 64-bit range (-2**63 .. 2**63 - 1) or None")
N_STEPS = Option(50, "integration steps", _pos_int, POS_INT)
INTERNAL_BS = Option(None, "batch size of the internal forward passes (None: cnnlens picks one within memory)",
                     _pos_int, POS_INT + " or None")
NT_SAMPLES = Option(10, "noisy samples per image", _pos_int, POS_INT)
STDEVS = Option(0.15, "noise standard deviation, as a fraction of each image's own value range (max - min)",
                _nonneg_num, NONNEG)
BASELINES = Option(0.0, "reference input: a number, or a tensor broadcastable to the input (one row per image "
                        "gives each image its own)", _baselines, "a finite number or a tensor of finite values")
WINDOW = Option(16, "occlusion window in pixels: an int or (h, w)", _window, "an int >= 1 or an (h, w) pair")
STRIDE = Option(8, "occlusion stride in pixels", _window, "an int >= 1 or an (h, w) pair")
N_SAMPLES = Option(200, "perturbed samples per image", _pos_int, POS_INT)
FEATURE_GRID = Option(16, "side in pixels of the square superpixels the image is split into", _pos_int, POS_INT)
PER_EVAL = Option(None, "perturbations evaluated per forward pass (None: cnnlens picks within memory)",
                  _pos_int, POS_INT + " or None")
AUG_SMOOTH = Option(False, "test-time augmentation smoothing (pytorch-grad-cam)", _bool, BOOL)
EIGEN_SMOOTH = Option(False, "first principal component of the weighted activations (pytorch-grad-cam)", _bool, BOOL)


def _reshape(v: Any) -> bool:
    from cnnlens import reshape  # only when a value is given: it imports torch

    return reshape.valid(v)


RESHAPE = Option(None, "layer output to (N, C, H, W) for token or channels-last layers (None: picked for known "
                       "families such as ViT, DeiT, Swin, ConvNeXt; see cnnlens.reshape)", _reshape,
                 "None, a callable (layer output) -> (N, C, H, W), or a preset: vit, deit, tokens, swin, channels_last")
CAM_BATCH = Option(None, "masked or ablated inputs per forward (None: cnnlens picks within memory)",
                   _pos_int, POS_INT + " or None")


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, whatever the backend."""

    name: str
    kind: Kind
    needs_layer: bool
    signed: bool
    stochastic: bool
    summary: str


@dataclass(frozen=True)
class Implementation:
    """One (method, backend) pair: where the adapter lives and what it accepts."""

    method: str
    backend: str
    adapter: str
    toolkit_name: str
    options: Mapping[str, Option] = field(default_factory=dict)
    notes: str = ""
    #: Freeze parameters during the call (no method reads weight gradients). ShapleyCAM needs the
    #: graph through the weights for its Hessian-vector product, so it opts out.
    freeze_params: bool = True
    #: The toolkit rewrites weights during the call and restores them itself (Captum's LRP); the
    #: guard then keeps a copy and verifies values instead of version counters.
    mutates_params: bool = False
    #: The toolkit stores one input/output per module, so a module called twice per forward gives
    #: silently wrong results (Captum's DeepLift family and LRP); refuse such models up front.
    refuses_reuse: bool = False
    #: Steps of the toolkit that cnnlens may replace when ``Explainer(shortcuts=True)`` (the
    #: default): the name an adapter puts in ``Explanation.provenance.substitutions``, mapped to the
    #: speed-up measured side by side by ``benchmarks/substitutions.py``. Each one is tested against
    #: the toolkit called directly; ``shortcuts=False`` runs the toolkit's own code throughout.
    substitutions: Mapping[str, str] = field(default_factory=dict)

    @property
    def described(self) -> str:
        """:attr:`notes`, followed by the substitutions this pair may apply and their measured gain."""
        subs = "; ".join(f"{name} ({gain})" for name, gain in self.substitutions.items())
        if not subs:
            return self.notes
        head = f"{self.notes}; " if self.notes else ""
        return f"{head}with shortcuts=True, substituted: {subs}"

    #: Per backend, the methods whose toolkit code only runs the model and differentiates (or
    #: perturbs) its input: no module hooks, no module swaps.
    _HOOK_FREE: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType({
        "captum": frozenset({
            "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad",
            "gradient_shap", "occlusion", "feature_ablation", "lime", "kernel_shap",
            # NoiseTunnel over hook-free bases, and Shapley value sampling (perturbs the input only)
            "smoothgrad_integrated_gradients", "smoothgrad_input_x_gradient", "smoothgrad_sq_integrated_gradients",
            "vargrad_integrated_gradients", "shapley_value_sampling",
        }),
        # zennit's attributors without a composite register nothing on the model
        "zennit": frozenset({"saliency", "smoothgrad", "integrated_gradients", "occlusion"}),
    })

    @property
    def needs_hooks(self) -> bool:
        """True if the toolkit hooks or swaps modules (every CAM, the guided and DeepLIFT families,
        LRP, every FlashTorch method), which a TorchScript model does not allow: module hooks on it
        never run, so such a method is refused for it."""
        return self.method not in self._HOOK_FREE.get(self.backend, frozenset())

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    def load(self) -> type:
        """Import the adapter class (and with it the backend)."""
        BACKENDS[self.backend].require()
        module_name, _, cls_name = self.adapter.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, cls_name)  # type: ignore[no-any-return]

    def all_options(self) -> dict[str, Option]:
        """The options this pair accepts, including the ones cnnlens adds to every method."""
        opts = dict(self.options)
        if self.spec.stochastic:
            opts.setdefault("seed", SEED)
        return opts

    def validate_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check names and values; unknown names list the valid ones."""
        valid = self.all_options()
        out: dict[str, Any] = {}
        for key, value in given.items():
            if key not in valid:
                names = ", ".join(sorted(valid)) or "none"
                hint = close_matches(key, valid)
                extra = f" (did you mean {hint}?)" if hint else ""
                raise OptionError(
                    f"unknown option '{key}' for {self.method} on backend '{self.backend}'{extra}; "
                    f"valid options: {names}"
                )
            out[key] = valid[key].validate(key, value)
        for key, opt in valid.items():
            out.setdefault(key, opt.default)
        return out


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


def _m(name: str, kind: Kind, layer: bool, signed: bool, stochastic: bool, summary: str) -> MethodSpec:
    return MethodSpec(name, kind, layer, signed, stochastic, summary)


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        _m("gradcam", "cam", True, True, False, "Grad-CAM: activations weighted by spatially averaged gradients"),
        _m("gradcam_plusplus", "cam", True, True, False, "Grad-CAM++: second-order weighting of positive gradients"),
        _m("hirescam", "cam", True, True, False, "HiResCAM: element-wise gradient x activation, summed over channels"),
        _m("xgradcam", "cam", True, True, False, "XGrad-CAM: axiom-derived normalised gradient weights"),
        _m("layercam", "cam", True, False, False, "LayerCAM: positive gradients x activations, per location"),
        _m("eigencam", "cam", True, True, False, "Eigen-CAM: first principal component of the activations (no target)"),
        _m("eigengradcam", "cam", True, True, False, "Eigen-Grad-CAM: first principal component of grad x activation"),
        _m("gradcam_elementwise", "cam", True, False, False, "Grad-CAM element-wise: ReLU(grad x activation) summed"),
        _m("scorecam", "cam", True, True, False, "Score-CAM: activation maps weighted by the score of the masked input"),
        _m("ablationcam", "cam", True, True, False, "Ablation-CAM: score drop when each channel is zeroed"),
        _m("fullgrad", "cam", False, False, False, "FullGrad: input-gradient plus bias-gradients of every layer"),
        _m("kpca_cam", "cam", True, True, True, "KPCA-CAM: kernel PCA of the activations (random ARPACK start: seeded)"),
        _m("shapleycam", "cam", True, True, False, "ShapleyCAM: gradient and Hessian-vector product weights"),
        _m("fem", "cam", True, False, False, "FEM: k-sigma feature explanation (no target)"),
        _m("finercam", "cam", True, True, False, "Finer-CAM: Grad-CAM of the target score minus alpha x the most "
                                                 "similar classes' scores"),
        _m("sess", "cam", True, False, False, "SESS: Grad-CAMs of scaled sliding windows, weighted by their scores "
                                             "and fused"),
        _m("seg_eigencam", "cam", True, True, False, "Seg-Eigen-CAM: sign-corrected first principal component of "
                                                    "|gradient| x activation"),
        _m("randomcam", "cam", True, True, True, "Random-CAM: activations weighted by uniform random channel weights "
                                                "(a baseline)"),
        _m("guided_backprop", "pixel", False, True, False, "Guided backpropagation (Springenberg 2015)"),
        _m("guided_gradcam", "pixel", True, True, False, "Guided Grad-CAM: guided backprop x Grad-CAM"),
        _m("saliency", "pixel", False, True, False, "Vanilla gradient of the target score (Simonyan 2014)"),
        _m("deconvolution", "pixel", False, True, False, "Deconvnet backward rule (Zeiler & Fergus 2014)"),
        _m("input_x_gradient", "pixel", False, True, False, "Input x gradient"),
        _m("integrated_gradients", "pixel", False, True, False, "Integrated Gradients (Sundararajan 2017)"),
        _m("smoothgrad", "pixel", False, True, True, "SmoothGrad: mean gradient over noisy copies"),
        _m("smoothgrad_sq", "pixel", False, False, True, "SmoothGrad-Squared: mean squared gradient over noisy copies"),
        _m("vargrad", "pixel", False, False, True, "VarGrad: variance of gradients over noisy copies"),
        _m("gradient_shap", "pixel", False, True, True, "GradientSHAP: expected gradients from noisy baselines"),
        _m("deeplift", "pixel", False, True, False, "DeepLIFT rescale rule"),
        _m("deeplift_shap", "pixel", False, True, False, "DeepLIFT-SHAP over a baseline distribution"),
        _m("lrp", "pixel", False, True, False, "Layer-wise relevance propagation (Captum: epsilon rule; zennit: a composite)"),
        _m("occlusion", "pixel", False, True, False, "Occlusion: score change under a sliding patch"),
        _m("feature_ablation", "pixel", False, True, False, "Feature ablation over a superpixel grid"),
        _m("lime", "pixel", False, True, True, "LIME with a superpixel grid"),
        _m("kernel_shap", "pixel", False, True, True, "Kernel SHAP with a superpixel grid"),
        # Captum's layer attributions, as spatial maps: raw is the (N, C, h, w) attribution of the
        # layer's output; the CAM contract sums it over channels (see CAPTUM_LAYER_NOTE).
        _m("layer_conductance", "cam", True, True, False, "Layer Conductance: integrated gradients through the "
                                                          "layer's neurons (Dhamdhere et al. 2018)"),
        _m("layer_integrated_gradients", "cam", True, True, False, "Integrated Gradients of the layer's output"),
        _m("layer_gradient_x_activation", "cam", True, True, False, "Gradient x activation of the layer's output"),
        _m("layer_deeplift", "cam", True, True, False, "DeepLIFT rescale rule, attributed to the layer's output"),
        _m("layer_activation", "cam", True, True, False, "The layer's activations (no target)"),
        # Captum's NoiseTunnel over other gradient methods (Smilkov et al. 2017; the SG-SQ and VarGrad
        # ensembles of IG and guided backprop are those Hooker et al. 2019 benchmarked with ROAR).
        *(_m(f"{nt}_{base}", "pixel", False, nt == "smoothgrad", True,
             f"{label} of {what} over noisy copies")
          for nt, label, base, what in NOISE_TUNNEL_GRID),
        _m("shapley_value_sampling", "pixel", False, True, True,
           "Shapley values by permutation sampling over a superpixel grid"),
    )
}

# torchcam's methods that no other backend of this file names (the block of the torchcam backend);
# setdefault, so that a row another backend's block gives the same method stays the one in force.
for _spec in (
    _m("cam", "cam", True, True, False, "CAM: the classifier's weights of the target class over the last feature maps "
                                        "(Zhou 2016); needs global pooling then one linear layer"),
    _m("sscam", "cam", True, True, True, "SS-CAM: Score-CAM with its weights averaged over noisy masks"),
    _m("iscam", "cam", True, True, False, "IS-CAM: Score-CAM with its weights integrated over scaled masks"),
    _m("smoothgradcam_plusplus", "cam", True, True, True, "Smooth Grad-CAM++: Grad-CAM++ from gradients averaged "
                                                          "over noisy inputs"),
    _m("finercam", "cam", True, True, False, "Finer-CAM: a CAM of the target score minus the mean score of the most "
                                             "similar classes"),
):
    METHODS.setdefault(_spec.name, _spec)

_PGC = "cnnlens.adapters.pytorch_grad_cam:PytorchGradCamAdapter"
_CAPTUM = "cnnlens.adapters.captum:CaptumAdapter"
_FLASH = "cnnlens.adapters.flashtorch:FlashTorchAdapter"

_CAM_OPTS = {"aug_smooth": AUG_SMOOTH, "eigen_smooth": EIGEN_SMOOTH, "reshape": RESHAPE}
#: pytorch-grad-cam's CAM classes by method: the one table the adapter, the direct tests and the
#: benchmarks read.
PGC_CAMS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam_plusplus": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcam_elementwise": "GradCAMElementWise",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
    "kpca_cam": "KPCA_CAM",
    "shapleycam": "ShapleyCAM",
    "fem": "FEM",
    "finercam": "FinerCAM",
    "sess": "SESS",
    "seg_eigencam": "SegEigenCAM",
    "randomcam": "RandomCAM",
}


#: pytorch-grad-cam steps cnnlens may replace (``Explainer(shortcuts=True)``); the adapter names them so.
PGC_ECONOMY_SVD = ("Eigen-CAM's SVD at economy size (numpy.linalg.svd full_matrices=False, images side by side "
                   "with single-threaded BLAS) instead of pytorch-grad-cam's get_2d_projection")
PGC_EARLY_STOP = ("backward stopped at the CAM layer (parameters frozen, the layer output made the graph's leaf) "
                  "instead of pytorch-grad-cam's loss.backward() through the whole network")


def _pgc_options(method: str) -> dict[str, Option]:
    opts: dict[str, Option] = dict(_CAM_OPTS)
    if method in ("scorecam", "ablationcam"):
        opts["batch_size"] = CAM_BATCH
    if method == "fem":
        opts = {"k": Option(2, "k in the k-sigma rule", _nonneg_num, NONNEG), "reshape": RESHAPE}
    if method == "fullgrad":
        opts.pop("eigen_smooth")
        opts.pop("reshape")  # every layer at once, none chosen: no reshape to give
    if method in ("finercam", "sess"):
        opts.pop("aug_smooth")  # their forward takes none
    if method == "finercam":
        opts["alpha"] = Option(1.0, "weight of the similar classes' scores subtracted from the target's",
                               _finite_num, "a finite number")
    if method == "sess":
        opts["num_scales"] = Option(12, "image scales the sliding window runs over", _pos_int, POS_INT)
        opts["pool"] = Option("mean", "fusion of the window CAMs: 'mean' (weighted average) or 'max'",
                              lambda v: v in ("mean", "max"), "'mean' or 'max'")
        opts["smooth"] = Option(True, "Gaussian blur of the fused CAM", _bool, BOOL)
        opts["batch_size"] = Option(32, "windows per forward pass", _pos_int, POS_INT)
    if method == "seg_eigencam":
        opts.pop("eigen_smooth")  # its get_cam_image is already a projection and ignores the flag
    return opts


#: Measured by ``benchmarks/substitutions.py`` (a call with shortcuts=False over one with
#: shortcuts=True, batch 8 at 224 px, 2 torch threads, EfficientNet-Lite0 and resnet50 with random
#: weights; medians of per-round ratios, interleaved rounds, on the shared 2-CPU machine).
_PGC_EARLY_STOP_GAIN = ("measured 4.2-5.8x per call on EfficientNet-Lite0 (gradcam, gradcam_plusplus, xgradcam), "
                        "2.8x on resnet50 (gradcam)")
_PGC_SVD_GAIN = ("measured 3.6x per Eigen-CAM call on EfficientNet-Lite0 and on resnet50 (the projection alone "
                 "110-420x; Eigen-Grad-CAM with both substitutions 5.0-5.8x)")


def _pgc_substitutions(method: str) -> dict[str, str]:
    subs: dict[str, str] = {}
    if method in ("eigencam", "eigengradcam"):
        subs[PGC_ECONOMY_SVD] = _PGC_SVD_GAIN
    if method in ("gradcam", "gradcam_plusplus", "hirescam", "xgradcam", "layercam", "eigengradcam",
                  "gradcam_elementwise"):
        subs[PGC_EARLY_STOP] = _PGC_EARLY_STOP_GAIN
    return subs


#: pytorch-grad-cam CAMs that run with the parameters as the user left them: ShapleyCAM needs the
#: graph through the weights; the others backpropagate from the scores, which with frozen parameters
#: would need the early stop at the layer (measured and registered for the older CAMs only).
_PGC_FULL_BACKWARD = frozenset({"shapleycam", "finercam", "sess", "seg_eigencam", "randomcam"})


def _pgc_notes(method: str) -> str:
    if method == "sess":
        return ("pytorch-grad-cam's SESS over its GradCAM, the result as SESS returns it (fused, scaled to [0, 1], "
                "blurred when smooth=True)")
    notes = "cnnlens records the CAM before pytorch-grad-cam's ReLU, scaling and resize, and stops the call there"
    if method in ("scorecam", "ablationcam"):
        notes += "; one image per call"
    if method == "finercam":
        notes += ("; one call per image with target_idx=<target> (FinerCAM picks the comparison classes, the "
                  "target's nearest scores, by itself)")
    if method == "randomcam":
        notes += "; each image's weights drawn from the seed afresh: a random baseline at the CAM layer"
    return notes


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

_IMPLS: list[Implementation] = [
    *(Implementation(m, "pytorch-grad-cam", _PGC, cls, _pgc_options(m), freeze_params=m not in _PGC_FULL_BACKWARD,
                     substitutions=_pgc_substitutions(m),
                     notes=_pgc_notes(m))
      for m, cls in PGC_CAMS.items()),
    Implementation("guided_backprop", "pytorch-grad-cam", _PGC, "GuidedBackpropReLUModel",
                   notes="guides nn.ReLU modules only; pytorch-grad-cam's own GuidedBackpropReLUModel, called by "
                         "cnnlens one image at a time (it explains image 0), the model's own ReLU modules put back"),
    Implementation("guided_gradcam", "pytorch-grad-cam", _PGC, "GuidedBackpropReLUModel x GradCAM",
                   {"reshape": RESHAPE}, substitutions={PGC_EARLY_STOP: _PGC_EARLY_STOP_GAIN},
                   notes="pytorch-grad-cam's recipe: its GuidedBackpropReLUModel (one image per call) times its "
                         "GradCAM image (after ReLU, scaling and resize)"),
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
    Implementation("saliency", "flashtorch", _FLASH, "Backprop.calculate_gradients(guided=False)",
                   notes="FlashTorch's own code, fixed at the boundary by cnnlens: the target honoured (a wrapper "
                         "returning the target logits' sum), batched, the input gradient recorded on a private "
                         "leaf copy of the input (not at the first Conv2d), its hooks removed"),
    Implementation("guided_backprop", "flashtorch", _FLASH, "Backprop.calculate_gradients(guided=True)",
                   notes="FlashTorch's own variant: clamp(grad_out, 0) * relu_output instead of "
                         "clamp(grad_out, 0) * (input > 0); nn.ReLU modules only; FlashTorch's own ReLU hooks, "
                         "registered as full backward hooks (in-place ReLUs run out of place); fixed at the "
                         "boundary as for saliency: the target honoured, batched, the input gradient recorded on "
                         "a private leaf copy, its hooks removed"),
]

# --- torchcam ---------------------------------------------------------------------------------

_TORCHCAM = "cnnlens.adapters.torchcam:TorchcamAdapter"
#: torchcam's extractor classes (``torchcam.methods``) by method: read by the adapter and the direct tests.
TORCHCAM_CAMS: dict[str, str] = {
    "cam": "CAM",
    "gradcam": "GradCAM",
    "gradcam_plusplus": "GradCAMpp",
    "smoothgradcam_plusplus": "SmoothGradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "sscam": "SSCAM",
    "iscam": "ISCAM",
    "finercam": "FinerCAM",
}
#: Finer-CAM's base extractors in torchcam, by cnnlens method name.
TORCHCAM_FINER_BASES: dict[str, str] = {"gradcam": "GradCAM", "gradcam_plusplus": "GradCAMpp", "layercam": "LayerCAM"}


def _module_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _torchcam_options(method: str) -> dict[str, Option]:
    opts: dict[str, Option] = {"reshape": RESHAPE}  # token layers reach torchcam's own reshape_transform
    if method == "cam":
        opts["fc_layer"] = Option(None, "the linear layer whose class weights CAM reads (None: the model's only "
                                        "nn.Linear)", _module_name, "a dotted module name or None")
    if method in ("scorecam", "sscam", "iscam"):
        opts["batch_size"] = CAM_BATCH
    if method == "sscam":
        opts["num_samples"] = Option(35, "noisy masks per channel (torchcam's num_samples)", _pos_int, POS_INT)
        opts["std"] = Option(2.0, "standard deviation of the noise added to the normalised masks", _nonneg_num, NONNEG)
    if method == "iscam":
        opts["num_samples"] = Option(10, "integration steps (torchcam's num_samples)", _pos_int, POS_INT)
    if method == "smoothgradcam_plusplus":
        opts["num_samples"] = Option(4, "noisy inputs (torchcam's num_samples)", _pos_int, POS_INT)
        opts["std"] = Option(0.3, "standard deviation of the input noise, in input units", _nonneg_num, NONNEG)
    if method == "finercam":
        opts["base_method"] = Option("gradcam", "the CAM Finer-CAM modifies", lambda v: v in TORCHCAM_FINER_BASES,
                                     " or ".join(repr(b) for b in TORCHCAM_FINER_BASES))
        opts["gamma"] = Option(0.6, "weight of the mean score of the reference classes", _nonneg_num, NONNEG)
        opts["num_references"] = Option(3, "most similar classes to compare with (capped by the classes there are)",
                                        _pos_int, POS_INT)
    return opts


_TORCHCAM_RAW = ("torchcam's own extractor, called as its README shows with normalized=False: raw is its CAM after "
                 "torchcam's ReLU, before cnnlens's resize (pytorch-grad-cam's and Captum's raw is the CAM before "
                 "the ReLU, which cnnlens applies after the resize), so the maps can differ near the map's zero "
                 "crossings")
_TORCHCAM_NOTES: dict[str, str] = {
    "cam": ("torchcam's CAM with normalized=False: no ReLU in torchcam's CAM, so raw is signed; the layer must feed "
            "global pooling then fc_layer (as many channels as its inputs)"),
    "gradcam_plusplus": (_TORCHCAM_RAW + "; torchcam 0.5's alpha division is a no-op (an in-place division of a "
                         "boolean-mask copy), so its weights are sum(grad**2 * relu(grad)) over locations, not Grad-CAM++'s "
                         "alpha-weighted gradients as in pytorch-grad-cam"),
    "smoothgradcam_plusplus": (_TORCHCAM_RAW + "; noise std in input units; one image per call, each image's noise "
                               "drawn from the seed afresh (torchcam draws one noise tensor for the whole batch)"),
    "scorecam": (_TORCHCAM_RAW + "; torchcam min-max normalises each activation map before upsampling it (pytorch-"
                 "grad-cam after); one image per call with a bounded internal batch_size"),
    "sscam": (_TORCHCAM_RAW + "; one image per call, each image's noise drawn from the seed afresh (torchcam draws "
              "the noise for the whole batch at once)"),
    "iscam": _TORCHCAM_RAW + "; one image per call with a bounded internal batch_size",
    "finercam": _TORCHCAM_RAW + "; the reference classes are the num_references classes scored closest to the target",
}

_IMPLS += [
    Implementation(m, "torchcam", _TORCHCAM, cls, _torchcam_options(m), notes=_TORCHCAM_NOTES.get(m, _TORCHCAM_RAW))
    for m, cls in TORCHCAM_CAMS.items()
]

# ---- zennit ------------------------------------------------------------------------------------

_ZENNIT = "cnnlens.adapters.zennit:ZennitAdapter"


@dataclass(frozen=True)
class Choice(Option):
    """An option that takes one of a few names; a near miss is answered with the close matches."""

    choices: tuple[str, ...] = ()

    def validate(self, name: str, value: Any) -> Any:
        if value not in self.choices:
            hint = close_matches(str(value), self.choices)
            extra = f" (did you mean {hint}?)" if hint else ""
            raise OptionError(f"invalid value for option '{name}': {_describe(value)}{extra}; expected one of "
                              f"{', '.join(self.choices)}")
        return value


#: zennit's own names of the LRP composites cnnlens offers (keys of ``zennit.composites.COMPOSITES``).
ZENNIT_COMPOSITES: tuple[str, ...] = (
    "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus", "epsilon_alpha2_beta1_flat",
)
_ZENNIT_BOX = ("(epsilon_gamma_box only) {} pixel value of the model's input for zennit's ZBox rule: a number or a "
               "tensor broadcastable to the input (None: {} of the model's preprocessing, (0 - mean) / std or "
               "(1 - mean) / std per channel, as zennit's ZBox documentation advises)")
_ZENNIT_CANON = ("canonizer picked for the model: ResNetCanonizer for torchvision ResNets, VGGCanonizer for "
                 "torchvision VGGs, SequentialMergeBatchNorm for other models with BatchNorm, none without; refuses "
                 "a model with a BatchNorm that no Conv/Linear leaf directly precedes (EfficientNet-Lite0: zennit "
                 "would pass relevance through it unchanged) or whose Conv/Linear/pooling modules run twice per "
                 "forward; residual additions that are not modules are not conserved (zennit's ResNetCanonizer "
                 "makes torchvision's a module)")

_IMPLS += [
    Implementation("saliency", "zennit", _ZENNIT, "Gradient",
                   notes="zennit's Gradient attributor with a one-hot output relevance: the signed input gradient"),
    Implementation("smoothgrad", "zennit", _ZENNIT, "SmoothGrad",
                   {"nt_samples": NT_SAMPLES, "stdevs": STDEVS},
                   notes="nt_samples is zennit's n_iter, stdevs its noise_level (both a fraction of each image's "
                         "value range); zennit's last sample is the noise-free input (nt_samples - 1 noisy copies, "
                         "Captum's NoiseTunnel draws nt_samples); one zennit call per image, each drawn from the "
                         "seed afresh"),
    Implementation("integrated_gradients", "zennit", _ZENNIT, "IntegratedGradients",
                   {"n_steps": N_STEPS, "baselines": BASELINES},
                   notes="n_steps is zennit's n_iter: a right Riemann sum at alpha = 1/n .. 1 (Captum's default is "
                         "Gauss-Legendre); baselines becomes zennit's baseline_fn"),
    Implementation("occlusion", "zennit", _ZENNIT, "Occlusion",
                   {"sliding_window": WINDOW, "strides": STRIDE, "baselines": BASELINES},
                   notes="zennit's Occlusion with the window itself occluded (occlude_independent, invert=True, "
                         "filled with baselines; zennit's default keeps only the window) and the score drop "
                         "(original score - occluded score) as output function; each pixel gets the sum over the "
                         "windows covering it, and zennit's windows wrap around the image edges (torch.roll), "
                         "where Captum's stop at the edge and average; one zennit call per image"),
    Implementation("guided_backprop", "zennit", _ZENNIT, "Gradient(composite=GuidedBackprop)",
                   notes="zennit's GuidedBackprop composite: guides nn.ReLU modules only"),
    Implementation("deconvolution", "zennit", _ZENNIT, "Gradient(composite=DeconvNet)",
                   notes="zennit's DeconvNet composite: overrides nn.ReLU modules only"),
    Implementation("lrp", "zennit", _ZENNIT, "Gradient(composite=<composite>, canonizers)",
                   {"composite": Choice("epsilon_plus_flat", "zennit's LRP composite (rules per layer type); "
                                        "epsilon_plus_flat is the one zennit recommends for CNNs", expect="",
                                        choices=ZENNIT_COMPOSITES),
                    "low": Option(None, _ZENNIT_BOX.format("lowest", "the lowest"), _baselines,
                                  "a finite number, a tensor of finite values, or None"),
                    "high": Option(None, _ZENNIT_BOX.format("highest", "the highest"), _baselines,
                                   "a finite number, a tensor of finite values, or None")},
                   notes="zennit's composites assign one rule per layer type: epsilon_plus_flat (default) is flat "
                         "on the first layer, z-plus on convolutions and epsilon on dense layers, where Captum's "
                         "lrp is the epsilon rule on every layer with BatchNorm left unmerged; relevance starts from the "
                         "target score, as in Captum; " + _ZENNIT_CANON,
                   mutates_params=True),
]

REGISTRY: dict[tuple[str, str], Implementation] = {(i.method, i.backend): i for i in _IMPLS}

# When backend="auto" and no measured table says otherwise: the toolkit that defines the method
# most canonically comes first.
PREFERENCE: tuple[str, ...] = ("pytorch-grad-cam", "captum", "flashtorch", "torchcam", "zennit")


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodInfo:
    """One row of :func:`methods`: a (method, backend) pair and what it can do."""

    method: str
    backend: str
    toolkit_name: str
    installed: bool
    kind: Kind
    needs_layer: bool
    signed: bool
    stochastic: bool
    options: dict[str, Any]
    notes: str


def methods(pattern: str = "*", backend: str | None = None, installed_only: bool = False) -> list[MethodInfo]:
    """List every (method, backend) pair, optionally filtered by a wildcard and a backend.

    Args:
        pattern: ``fnmatch`` pattern on the method name, e.g. ``"*cam*"``.
        backend: Keep only this backend id.
        installed_only: Keep only pairs whose toolkit is importable.
    """
    rows = []
    for (m, b), impl in REGISTRY.items():
        if not fnmatch.fnmatch(m, pattern) or (backend is not None and b != backend):
            continue
        ok = BACKENDS[b].installed
        if installed_only and not ok:
            continue
        spec = impl.spec
        rows.append(MethodInfo(m, b, impl.toolkit_name, ok, spec.kind, spec.needs_layer, spec.signed,
                               spec.stochastic, {k: o.default for k, o in impl.all_options().items()},
                               impl.described))
    return rows


def markdown_table() -> str:
    """The README's methods table: one row per method, one column per backend (its toolkit class).

    README.md holds this table as printed by ``cnnlens methods --markdown``; a test keeps the two equal,
    so a new registry entry shows up there by rerunning that command.
    """
    backends = list(BACKENDS)
    head = ["method", "kind", "layer", "signed", "stochastic", *backends]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m, spec in METHODS.items():
        cells = [m, spec.kind, "yes" if spec.needs_layer else "", "yes" if spec.signed else "",
                 "yes" if spec.stochastic else ""]
        for b in backends:
            impl = REGISTRY.get((m, b))
            cells.append(f"`{impl.toolkit_name}`".replace("|", "\\|") if impl else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def list_methods(pattern: str = "*") -> list[str]:
    """Method names matching a wildcard pattern, in registry order."""
    return [m for m in METHODS if fnmatch.fnmatch(m, pattern)]


def is_method(name: str) -> bool:
    return name in METHODS


def backends_for(method: str) -> list[str]:
    """Backends that implement ``method``, in preference order."""
    have = [b for (m, b) in REGISTRY if m == method]
    return sorted(have, key=lambda b: PREFERENCE.index(b) if b in PREFERENCE else len(PREFERENCE))


def resolve(method: str, backend: str | None = "auto") -> Implementation:
    """Find the implementation of ``method`` on ``backend``, with helpful errors.

    ``backend=None`` or ``"auto"`` picks the first installed backend from the shipped auto table
    (see :mod:`cnnlens.auto`), falling back to :data:`PREFERENCE`.
    """
    if not isinstance(method, str) or method not in METHODS:
        hint = close_matches(str(method), METHODS)
        extra = f"; did you mean {hint}?" if hint else ""
        raise UnknownMethodError(
            f"unknown method '{method}'{extra} (cnnlens.methods() or `cnnlens methods` lists all)"
        )
    have = backends_for(method)
    if backend is None or backend == "auto":
        from cnnlens import auto  # local: reads a small JSON only when asked

        order = auto.preferred_backends(method, have)
        for b in order:
            if BACKENDS[b].installed:
                return REGISTRY[(method, b)]
        BACKENDS[order[0]].require()
    if backend not in BACKENDS:
        hint = close_matches(str(backend), BACKENDS)
        extra = f"; did you mean {hint}?" if hint else ""
        raise BackendUnavailableError(
            f"unknown backend '{backend}'{extra}; backends: {', '.join(BACKENDS)}, or 'auto'"
        )
    impl = REGISTRY.get((method, backend))
    if impl is None:
        raise UnsupportedMethodError(
            f"backend '{backend}' has no method '{method}'; backends that have it: {', '.join(have)}"
        )
    BACKENDS[backend].require()
    return impl
