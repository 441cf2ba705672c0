"""Adapter for torchcam (PyPI ``torchcam``).

Every result is computed by torchcam's own extractor classes (``torchcam.methods``), driven as its
README shows: the extractor is a context manager around the model (leaving it removes its hooks),
the model runs forward, and ``cam_extractor(class_idx, scores)`` returns one CAM per hooked layer.
cnnlens translates at the boundary, and names how it drives torchcam in
``Explanation.provenance.driven``; no step of torchcam's is replaced
(``provenance.substitutions`` stays empty):

* the target layer is the one cnnlens resolved, given as the module itself; the classifier layer of
  CAM (``fc_layer``) is the option's module or, by torchcam's own rule, the model's only
  ``nn.Linear``, found here so that the choice is named in the provenance (torchcam only logs it)
  and a model with none or several gets a cnnlens error that says what to pass;
* targets become torchcam's ``class_idx`` list (one class per image); a ``reshape`` the Explainer
  hands over (for token or channels-last layers) becomes torchcam's own ``reshape_transform``;
* the extractor is called with ``normalized=False``: its CAM before torchcam's min-max scaling (and
  after its ReLU, part of every gradient and score CAM's definition in torchcam), at the layer's
  resolution, which is cnnlens's ``raw``; the shared output contract is applied to it as to every
  backend's;
* the gradient CAMs get a private copy of the input that requires grad, so that the target layer's
  output is in the graph even with the parameters frozen (by the model guard or by the user);
  torchcam's ``torch.autograd.grad`` to that output computes no weight gradient in any case;
* Score-CAM, SS-CAM and IS-CAM run one image per call with a bounded internal ``batch_size``
  (torchcam forwards the masked inputs of several images in one batch), and SS-CAM and Smooth
  Grad-CAM++ one image per call with each image's noise drawn from the seed afresh (torchcam
  draws one noise tensor for the whole batch, so an image's noise would depend on its neighbours).

torchcam's exceptions are translated into :mod:`cnnlens.errors` classes (:meth:`translate`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchcam import methods as tcm

from cnnlens._resolve import OutputSelector, internal_batch
from cnnlens.adapters.base import FROZEN_PARAMS, Adapter
from cnnlens.errors import CnnlensError, LayerError, OptionError, close_matches
from cnnlens.registry import TORCHCAM_CAMS, TORCHCAM_FINER_BASES

CLASSES = TORCHCAM_CAMS
SCORE = {"scorecam", "sscam", "iscam"}
NOISY = {"sscam", "smoothgradcam_plusplus"}
#: Extractors that differentiate the scores they are given at the layer (so the forward keeps the graph).
GRADIENT = {"gradcam", "gradcam_plusplus", "xgradcam", "layercam", "finercam"}

#: How cnnlens drives torchcam (``Explanation.provenance.driven``); none replaces its code.
RAW_DRIVE = ("torchcam's extractor called with normalized=False: its CAM at the layer's resolution, before "
             "torchcam's min-max scaling, recorded as raw")
PER_IMAGE_DRIVE = ("one image per call, with a bounded internal batch_size (torchcam forwards the masked inputs of "
                   "several images in one batch)")
PER_IMAGE_SEEDED = ("one torchcam call per image, each image's noise drawn from the seed afresh (torchcam draws one "
                    "noise tensor for the whole batch)")
INPUT_GRAD_DRIVE = ("a private copy of the input requires grad (the parameters may be frozen), so that the target "
                    "layer's output is in the graph torchcam differentiates")
FC_DRIVE = "CAM's fc_layer found by torchcam's own rule (the model's only nn.Linear) and passed explicitly"
NOISE_DTYPE_DRIVE = ("torchcam's noise drawn as torchcam draws it (float32), then cast to the model's {dtype}: added "
                     "as drawn it would turn the input into float32, which a {dtype} model refuses")


class _CastNoise:
    """torchcam's noise distribution with each sample cast to the model's dtype (torchcam's
    ``Normal(0, std)`` samples float32 whatever the model)."""

    def __init__(self, distrib: Any, dtype: torch.dtype) -> None:
        self.distrib = distrib
        self.dtype = dtype

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.distrib.sample(*args, **kwargs).to(self.dtype)


class TorchcamAdapter(Adapter):
    backend = "torchcam"

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.shortcuts and self.impl.freeze_params:
            self.driven.append(FROZEN_PARAMS)
        self.driven.append(RAW_DRIVE)
        if self.method in NOISY:
            return self.each_image(x, targets, lambda xi, ti, _i: self._call(xi, ti), PER_IMAGE_SEEDED)
        if self.method in SCORE:
            return self.each_image(x, targets, lambda xi, ti, _i: self._call(xi, ti), PER_IMAGE_DRIVE)
        return self._call(x, targets)

    # -- building the extractor ------------------------------------------------------------------

    def _root(self) -> nn.Module:
        """The user's model (the Explainer may have wrapped it to select one output)."""
        return self.model.model if isinstance(self.model, OutputSelector) else self.model

    def _fc_layer(self) -> nn.Linear:
        """CAM's classifier layer: the ``fc_layer`` option, or the model's only ``nn.Linear``."""
        root = self._root()
        name = self.options.get("fc_layer")
        if name is not None:
            found = dict(root.named_modules()).get(name)
            if found is None:
                hint = close_matches(name, dict(root.named_modules()))
                extra = f"; close matches: {hint}" if hint else ""
                raise LayerError(f"fc_layer '{name}' not found in the model{extra}")
            if not isinstance(found, nn.Linear):
                raise OptionError(f"fc_layer '{name}' is a {type(found).__name__}; CAM needs the nn.Linear classifier")
            return found
        linear = [(n, m) for n, m in root.named_modules() if isinstance(m, nn.Linear)]
        if len(linear) != 1:
            what = "no nn.Linear" if not linear else f"{len(linear)} nn.Linear layers ({', '.join(n for n, _ in linear[:4])})"
            raise LayerError(
                f"torchcam CAM reads the class weights of the model's classifier layer, and the model has {what}; "
                "pass fc_layer='<name of the final nn.Linear>', or use gradcam, which needs no classifier layer"
            )
        self.driven.append(FC_DRIVE)
        return linear[0][1]

    def _extractor(self, x: Tensor) -> Any:
        m, o = self.method, self.options
        cls = getattr(tcm, CLASSES[m])
        kwargs: dict[str, Any] = {"input_shape": tuple(x.shape[1:])}
        if m == "cam":
            kwargs["fc_layer"] = self._fc_layer()
        if m in SCORE:
            kwargs["batch_size"] = o.get("batch_size") or internal_batch(x)
        if "num_samples" in o:
            kwargs["num_samples"] = o["num_samples"]
        if "std" in o:
            kwargs["std"] = o["std"]
        if o.get("reshape") is not None:
            # a token or channels-last layer: torchcam applies it to the hooked activations and gradients
            kwargs["reshape_transform"] = o["reshape"]
        if m == "finercam":
            kwargs.update(base_method=getattr(tcm, TORCHCAM_FINER_BASES[o["base_method"]]), gamma=o["gamma"],
                          num_references=o["num_references"])
        extractor = cls(self.model, target_layer=self.layer, **kwargs)
        distrib = getattr(extractor, "_distrib", None)
        if distrib is not None and x.dtype != torch.float32:  # Smooth Grad-CAM++ and SS-CAM on a float16 model
            extractor._distrib = _CastNoise(distrib, x.dtype)
            self.driven.append(NOISE_DTYPE_DRIVE.format(dtype=str(x.dtype).removeprefix("torch.")))
        return extractor

    # -- one call --------------------------------------------------------------------------------

    def _call(self, x: Tensor, targets: Tensor) -> Tensor:
        class_idx = [int(t) for t in targets.tolist()]
        gradient = self.method in GRADIENT
        with self._extractor(x) as extractor:
            if gradient:
                self.driven.append(INPUT_GRAD_DRIVE)
                scores = self.model(x.detach().clone().requires_grad_(True))
            else:
                # CAM reads the fc weights, the score CAMs forward masked inputs under no_grad, and
                # Smooth Grad-CAM++ forwards its noisy copies itself: this pass only feeds the hooks.
                with torch.no_grad():
                    scores = self.model(x)
            if self.method == "cam":
                self._check_cam_layer(extractor)
            cams = extractor(class_idx, scores if gradient else None, normalized=False)
        return cams[0].detach()

    def _check_cam_layer(self, extractor: Any) -> None:
        """Refuse a layer whose channels are not the classifier's inputs (CAM's weights would not fit)."""
        activation = extractor.hook_a[0]
        fc = extractor._fc_weights
        if activation is None or activation.dim() != 4 or activation.shape[1] != fc.shape[1]:
            got = "no output" if activation is None else f"output {tuple(activation.shape)}"
            raise LayerError(
                f"torchcam CAM weighs the layer's channels by the classifier's weights, which take {fc.shape[1]} "
                f"inputs, and the layer gives {got}; choose the layer that feeds the global pooling before the "
                "classifier (the default layer usually is), or use gradcam"
            )

    def translate(self, exc: Exception) -> CnnlensError | None:
        msg = str(exc)
        if "not connected to every target layer" in msg:
            return LayerError(
                f"torchcam {self.impl.toolkit_name}: the target score does not depend on the layer's output (the "
                "forward pass does not use it on the way to the scores); choose a layer on that path"
            )
        return None
