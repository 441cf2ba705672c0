"""torchcam: the toolkit, the methods it brings first (CAM, SS-CAM, IS-CAM, Smooth Grad-CAM++) and its
(method, backend) pairs.

Nothing here imports the toolkit: its adapter (``cnnlens.adapters.torchcam``) does, when a pair is run.
"""

from __future__ import annotations

from cnnlens.registry.options import (
    CAM_BATCH,
    NONNEG,
    POS_INT,
    RESHAPE,
    Option,
    _module_name,
    _nonneg_num,
    _pos_int,
)
from cnnlens.registry.schema import Backend, Implementation, MethodSpec, add_backend, declare, register

add_backend(Backend("torchcam", "torchcam", "torchcam", "https://github.com/frgfm/torch-cam", extra="torchcam"))

declare(
    MethodSpec("cam", "cam", True, True, False, "CAM: the classifier's weights of the target class over the last feature maps "
                                                "(Zhou 2016); needs global pooling then one linear layer"),
    MethodSpec("sscam", "cam", True, True, True, "SS-CAM: Score-CAM with its weights averaged over noisy masks"),
    MethodSpec("iscam", "cam", True, True, False, "IS-CAM: Score-CAM with its weights integrated over scaled masks"),
    MethodSpec("smoothgradcam_plusplus", "cam", True, True, True, "Smooth Grad-CAM++: Grad-CAM++ from gradients averaged "
                                                                  "over noisy inputs"),
)

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

register(*(
    Implementation(m, "torchcam", _TORCHCAM, cls, _torchcam_options(m), notes=_TORCHCAM_NOTES.get(m, _TORCHCAM_RAW))
    for m, cls in TORCHCAM_CAMS.items()
))
