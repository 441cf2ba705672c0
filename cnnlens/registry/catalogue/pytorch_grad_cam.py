"""pytorch-grad-cam (PyPI ``grad-cam``): the toolkit, the methods it brings first (the CAM family,
guided backprop, Guided Grad-CAM) and its (method, backend) pairs.

Nothing here imports the toolkit: its adapter (``cnnlens.adapters.pytorch_grad_cam``) does, when a pair is run.
"""

from __future__ import annotations

from cnnlens.registry.options import (
    AUG_SMOOTH,
    BOOL,
    CAM_BATCH,
    EIGEN_SMOOTH,
    NONNEG,
    POS_INT,
    RESHAPE,
    Option,
    _bool,
    _finite_num,
    _nonneg_num,
    _pos_int,
)
from cnnlens.registry.schema import Backend, Implementation, MethodSpec, add_backend, declare, register

add_backend(Backend("pytorch-grad-cam", "pytorch_grad_cam", "grad-cam", "https://github.com/jacobgil/pytorch-grad-cam"))

declare(
    MethodSpec("gradcam", "cam", True, True, False, "Grad-CAM: activations weighted by spatially averaged gradients"),
    MethodSpec("gradcam_plusplus", "cam", True, True, False, "Grad-CAM++: second-order weighting of positive gradients"),
    MethodSpec("hirescam", "cam", True, True, False, "HiResCAM: element-wise gradient x activation, summed over channels"),
    MethodSpec("xgradcam", "cam", True, True, False, "XGrad-CAM: axiom-derived normalised gradient weights"),
    MethodSpec("layercam", "cam", True, False, False, "LayerCAM: positive gradients x activations, per location"),
    MethodSpec("eigencam", "cam", True, True, False, "Eigen-CAM: first principal component of the activations (no target)"),
    MethodSpec("eigengradcam", "cam", True, True, False, "Eigen-Grad-CAM: first principal component of grad x activation"),
    MethodSpec("gradcam_elementwise", "cam", True, False, False, "Grad-CAM element-wise: ReLU(grad x activation) summed"),
    MethodSpec("scorecam", "cam", True, True, False, "Score-CAM: activation maps weighted by the score of the masked input"),
    MethodSpec("ablationcam", "cam", True, True, False, "Ablation-CAM: score drop when each channel is zeroed"),
    MethodSpec("fullgrad", "cam", False, False, False, "FullGrad: input-gradient plus bias-gradients of every layer"),
    MethodSpec("kpca_cam", "cam", True, True, True, "KPCA-CAM: kernel PCA of the activations (random ARPACK start: seeded)"),
    MethodSpec("shapleycam", "cam", True, True, False, "ShapleyCAM: gradient and Hessian-vector product weights"),
    MethodSpec("fem", "cam", True, False, False, "FEM: k-sigma feature explanation (no target)"),
    MethodSpec("finercam", "cam", True, True, False, "Finer-CAM: a CAM of the target score minus a weighted score of "
                                                     "the most similar classes (Zhang et al. 2025)"),
    MethodSpec("sess", "cam", True, False, False, "SESS: Grad-CAMs of scaled sliding windows, weighted by their scores "
                                                 "and fused"),
    MethodSpec("seg_eigencam", "cam", True, True, False, "Seg-Eigen-CAM: sign-corrected first principal component of "
                                                        "|gradient| x activation"),
    MethodSpec("randomcam", "cam", True, True, True, "Random-CAM: activations weighted by uniform random channel weights "
                                                    "(a baseline)"),
    MethodSpec("guided_backprop", "pixel", False, True, False, "Guided backpropagation (Springenberg 2015)"),
    MethodSpec("guided_gradcam", "pixel", True, True, False, "Guided Grad-CAM: guided backprop x Grad-CAM"),
)

_PGC = "cnnlens.adapters.pytorch_grad_cam:PytorchGradCamAdapter"
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


register(
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
)
