"""Adapter for pytorch-grad-cam (PyPI ``grad-cam``).

Every result is computed by pytorch-grad-cam's own classes, called as its README shows: each CAM
through its class and ``__call__`` with one ``ClassifierOutputTarget`` per image, guided backprop
through ``GuidedBackpropReLUModel``, Guided Grad-CAM by its recipe (that gradient times the Grad-CAM
image). cnnlens drives them, and names how in ``Explanation.provenance.driven``:

* the CAM is recorded *before* pytorch-grad-cam's ReLU, min-max scaling and OpenCV resize, by
  wrapping ``get_cam_image`` on the instance it created (``compute_cam_per_layer`` for FullGrad), so
  that the shared output contract is applied to the same thing for every backend (``raw``); the call
  stops right there (:class:`_Captured`), since the final image it would build is discarded;
* ScoreCAM and AblationCAM run one image at a time with a bounded internal batch, because
  pytorch-grad-cam materialises every masked input of the whole batch at once;
* ``GuidedBackpropReLUModel`` explains image 0 of what it is given, so it is called one image at a
  time; its (H, W, C) NumPy result is transposed back to cnnlens's (N, C, H, W) signed gradient, and
  the model's own ``nn.ReLU`` modules are put back after each call (it puts fresh ones back);
* with ``shortcuts`` the model guard freezes the parameters, so no backward computes weight gradients.

Two steps may be *substituted* (``shortcuts=True``, the default; each named in
``Explanation.provenance.substitutions`` and registered with its measured speed-up in
``Implementation.substitutions``; ``shortcuts=False`` runs pytorch-grad-cam's code throughout):

* :data:`~cnnlens.registry.PGC_EARLY_STOP`: for gradient CAMs the target layer's output becomes the
  leaf of the backward graph (:func:`_leaf_at`, with parameters frozen), so pytorch-grad-cam's
  ``loss.backward()`` stops at the layer instead of running through the whole network;
* :data:`~cnnlens.registry.PGC_ECONOMY_SVD`: Eigen-CAM's and Eigen-Grad-CAM's projection with NumPy's
  own SVD at economy size, the images side by side with single-threaded BLAS: pytorch-grad-cam asks
  for the full (C x C) right singular matrix and reads only its first row (bit-identical; tested).

Both are tested against pytorch-grad-cam called directly on EfficientNet-Lite0
(``tests/test_perf_equivalence.py``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytorch_grad_cam as pgc
import threadpoolctl
import torch
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from cnnlens import reshape
from cnnlens._resolve import internal_batch
from cnnlens.adapters.base import FROZEN_PARAMS, Adapter
from cnnlens.errors import CnnlensError, LayerError, ModelError
from cnnlens.registry import PGC_CAMS
from cnnlens.registry import PGC_EARLY_STOP as EARLY_STOP
from cnnlens.registry import PGC_ECONOMY_SVD as ECONOMY_SVD

CLASSES = PGC_CAMS
PER_IMAGE = {"scorecam", "ablationcam"}

#: How cnnlens drives pytorch-grad-cam (``Explanation.provenance.driven``); none replaces its code.
CAPTURED_DRIVE = ("CAM recorded as get_cam_image returns it (before pytorch-grad-cam's ReLU, scaling and "
                  "resize), and the call stopped there: the final image it would build is not used")
CAPTURED_DRIVE_FULLGRAD = ("FullGrad's per-layer maps recorded as compute_cam_per_layer returns them, and the "
                           "call stopped there: the aggregated image it would build is not used")
RESHAPE_DRIVE = ("layer output and its gradient reshaped to (N, C, H, W) by cnnlens.reshape {!r}, given to "
                 "pytorch-grad-cam as its reshape_transform")
FINER_DRIVE = ("one FinerCAM call per image, with targets=None and target_idx=<that image's target>, so that "
               "FinerCAM picks the comparison classes itself")
SESS_DRIVE = ("SESS called whole, as its README shows: its fused result (scaled to [0, 1], blurred when "
              "smooth=True) is the map, not a CAM recorded before pytorch-grad-cam's post-processing")
PER_IMAGE_DRIVE = ("one image per call, with a bounded internal batch_size (pytorch-grad-cam builds every "
                   "masked input of the whole batch at once)")
PER_IMAGE_SEEDED = ("one KPCA_CAM call per image, each image's random ARPACK start vector drawn from the seed "
                    "afresh (NumPy's global RNG, restored after the call)")
GUIDED_DRIVE = ("GuidedBackpropReLUModel called one image at a time (it returns image 0 only), its (H, W, C) "
                "NumPy result transposed back to (C, H, W), the model's own nn.ReLU modules put back after "
                "each call (it puts fresh nn.ReLU() objects back)")


@contextlib.contextmanager
def _quiet_progress(enabled: bool) -> Iterator[None]:
    # ScoreCAM and AblationCAM draw a tqdm bar per image on stderr; cnnlens draws its own.
    if not enabled:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _first_component(activations: np.ndarray) -> np.ndarray:
    # The loop body of pytorch-grad-cam's get_2d_projection, with full_matrices=False: NumPy's gesdd
    # returns the same first row of V^T either way (bit for bit, tested) without building C x C.
    reshaped = activations.reshape(activations.shape[0], -1).transpose()
    reshaped = reshaped - reshaped.mean(axis=0)
    _u, _s, vt = np.linalg.svd(reshaped, full_matrices=False)
    return (reshaped @ vt[0, :]).reshape(activations.shape[1:])


def economy_projection(activation_batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection``, same routine and same numbers, in less time.

    The first singular vector's sign decides the map, and that sign is an artefact of the SVD
    routine (another routine, or the same one on a factor that differs in the last bit, can return
    the opposite vector). So every image still gets NumPy's own ``svd`` of the very same matrix; what
    changes is how the calls run: economy size (pytorch-grad-cam asks for the full C x C right
    singular matrix and reads one row), and side by side on the torch thread budget with
    single-threaded BLAS in each call (OpenBLAS's own threads cost more than they give on such small
    matrices). The BLAS thread limit is restored on exit, also after an exception. Equality with
    pytorch-grad-cam's function is tested bit for bit (``tests/test_perf_equivalence.py``).
    """
    activation_batch = activation_batch.copy()
    activation_batch[np.isnan(activation_batch)] = 0
    workers = max(1, min(len(activation_batch), torch.get_num_threads()))
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            projections = [_first_component(a) for a in activation_batch]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnlens-svd") as pool:
                projections = list(pool.map(_first_component, activation_batch))
    return np.float32(projections)


def _eigen_cam_image(method: str) -> Callable[..., np.ndarray]:
    # The bodies of EigenCAM.get_cam_image and EigenGradCAM.get_cam_image, with the economy SVD.
    def get_cam_image(_input: Any, _layer: Any, _targets: Any, activations: np.ndarray, grads: np.ndarray,
                      _eigen_smooth: bool = False) -> np.ndarray:
        return economy_projection(activations if method == "eigencam" else grads * activations)

    return get_cam_image


def _leaf_at(layer: nn.Module) -> Callable[[nn.Module, Any, Any], Any]:
    """Forward hook making the layer output the start of the backward graph.

    The clone keeps later in-place ops (e.g. ``ReLU(inplace=True)``) legal on a leaf.
    """

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        if isinstance(out, Tensor) and not out.requires_grad and out.is_floating_point():
            return out.detach().requires_grad_(True).clone()
        return out

    return hook


class _Captured(Exception):
    """Raised right after the CAM is recorded: what pytorch-grad-cam does next (ReLU, min-max
    scaling, an OpenCV resize per image, layer aggregation) only produces the final image, which
    cnnlens discards (the shared output contract is applied to the recorded CAM instead)."""


class PytorchGradCamAdapter(Adapter):
    backend = "pytorch-grad-cam"

    def check_input(self, x: Tensor) -> None:
        if self.method == "shapleycam":
            if self.options.get("reshape") is not None:
                # ShapleyCAM keeps the graph (detach=False), and pytorch-grad-cam's recorder then
                # stores the layer output as it is, without its reshape_transform.
                raise LayerError(
                    "pytorch-grad-cam ShapleyCAM ignores reshape_transform (its recorder skips it when it keeps the "
                    "graph), so it cannot use a token or channels-last layer; pick an (N, C, H, W) layer, or use "
                    "gradcam or hirescam on this one"
                )
            self._check_shapley_layer(x)

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.shortcuts and self.impl.freeze_params:
            self.driven.append(FROZEN_PARAMS)
        if self.method == "guided_backprop":
            return self._guided_backprop(x, targets)
        if self.method == "guided_gradcam":
            # pytorch-grad-cam's recipe (its README and cam.py): the guided backprop gradient times
            # the Grad-CAM image (after its ReLU, scaling and resize to the input).
            gb = self._guided_backprop(x, targets)
            cam = self._cam("gradcam", x, targets, final=True)
            return gb * cam[:, None]
        return self._cam(self.method, x, targets)

    # -- CAMs -----------------------------------------------------------------------------------

    def _reshape(self) -> Callable[[Tensor], Tensor] | None:
        fn = reshape.get(self.options.get("reshape"))
        if fn is not None:
            self.driven.append(RESHAPE_DRIVE.format(reshape.name_of(fn)))
        return fn

    def _make(self, method: str) -> Any:
        cls = getattr(pgc, CLASSES[method])
        if method == "fullgrad":
            return cls(self.model, target_layers=[])
        fn = self._reshape()
        kwargs: dict[str, Any] = {"reshape_transform": fn}
        if method == "fem":
            kwargs["k"] = self.options.get("k", 2)
        if method == "sess":
            kwargs.update({k: self.options[k] for k in ("num_scales", "pool", "smooth", "batch_size")})
        if method == "ablationcam" and fn is not None:
            # pytorch-grad-cam's ablation layer for token and channels-last outputs (its ViT/Swin docs).
            kwargs["ablation_layer"] = AblationLayerVit()
        return cls(self.model, target_layers=[self.layer], **kwargs)

    def _cam(self, method: str, x: Tensor, targets: Tensor, final: bool = False) -> Tensor:
        """Run one pytorch-grad-cam class; return the pre-ReLU CAM, or its final output if ``final``."""
        if method in PER_IMAGE:
            return self.each_image(x, targets, lambda xi, ti, _i: self._cam_chunk(method, xi, ti, final),
                                   PER_IMAGE_DRIVE)
        if self.impl.spec.stochastic:
            return self.each_image(x, targets, lambda xi, ti, _i: self._cam_chunk(method, xi, ti, final),
                                   PER_IMAGE_SEEDED)
        if method == "finercam":
            return self.each_image(x, targets, lambda xi, ti, _i: self._cam_chunk(method, xi, ti, final),
                                   FINER_DRIVE)
        return self._cam_chunk(method, x, targets, final)

    def _cam_chunk(self, method: str, x: Tensor, targets: Tensor, final: bool) -> Tensor:
        cam = self._make(method)
        # FinerCAM and SESS are meta-methods over a BaseCAM they create (GradCAM by default).
        base = getattr(cam, "base_cam", cam)
        captured: list[np.ndarray] = []
        aug = bool(self.options.get("aug_smooth", False))
        eigen = bool(self.options.get("eigen_smooth", False))
        final = final or method == "sess"  # SESS fuses many window CAMs: its result is the method's output
        if method == "sess":
            self.driven.append(SESS_DRIVE)
        if method in PER_IMAGE:
            cam.batch_size = self.options.get("batch_size") or internal_batch(x)
        if self.shortcuts and method in ("eigencam", "eigengradcam"):
            cam.get_cam_image = _eigen_cam_image(method)
            self.substitutions.append(ECONOMY_SVD)
        spied = "compute_cam_per_layer" if method == "fullgrad" else "get_cam_image"
        if not aug and not final:
            inner = getattr(base, spied)

            def spy(*args: Any, **kwargs: Any) -> Any:
                out = inner(*args, **kwargs)
                captured.append(out)
                raise _Captured

            setattr(base, spied, spy)
            self.driven.append(CAPTURED_DRIVE if method != "fullgrad" else CAPTURED_DRIVE_FULLGRAD)
        handle = None
        if (self.shortcuts and EARLY_STOP in self.impl.substitutions and self.impl.freeze_params
                and base.uses_gradients and not base.compute_input_gradient and base.detach and self.layer is not None):
            handle = self.layer.register_forward_hook(_leaf_at(self.layer), prepend=True)
            self.substitutions.append(EARLY_STOP)
        result = None
        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets.tolist()]
        try:
            with _quiet_progress(method in PER_IMAGE):
                if method == "finercam":
                    # FinerCAM picks the classes nearest the target's score itself when given no targets.
                    result = cam(input_tensor=x, targets=None, eigen_smooth=eigen,
                                 alpha=float(self.options.get("alpha", 1.0)), target_idx=int(targets[0]))
                elif method == "sess":
                    result = cam(input_tensor=x, targets=pgc_targets, eigen_smooth=eigen)
                else:
                    result = cam(
                        input_tensor=x,
                        targets=pgc_targets,
                        aug_smooth=aug,
                        **({} if method in ("fullgrad", "seg_eigencam") and not eigen else {"eigen_smooth": eigen}),
                    )
        except _Captured:
            pass
        finally:
            if handle is not None:
                handle.remove()
            base.activations_and_grads.release()
            # The spy holds the CAM's bound method: without this, the cycle through BaseCAM.__del__
            # can keep the model alive until a second garbage collection.
            base.__dict__.pop(spied, None)
        if captured:
            raw = captured[-1]
            if method == "fullgrad":
                raw = raw[:, 0]
            return torch.as_tensor(np.asarray(raw, dtype=np.float32)).to(x.device)
        return torch.as_tensor(np.asarray(result, dtype=np.float32)).to(x.device)

    def _check_shapley_layer(self, x: Tensor) -> None:
        """Refuse, before pytorch-grad-cam runs, a layer whose activation or gradient is a view.

        ShapleyCAM keeps the graph (``detach=False``) and stores the layer's output and the gradient
        reaching it as they are; pytorch-grad-cam's ``ActivationsAndGradients.clear`` then calls
        ``detach_()`` on them, which torch refuses for a view: the call fails, and again in
        ``BaseCAM.__del__`` (a traceback on stderr). That happens when the layer returns a view
        (Swin's ``Permute``) or feeds a reshape directly (VGG's and AlexNet's ``avgpool`` before
        ``flatten``, ViT's ``conv_proj``). One image's forward and backward tell.
        """
        if self.layer is None:
            return
        seen: dict[str, bool] = {}

        def on_grad(grad: Tensor) -> None:
            seen["grad"] = grad._is_view()

        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                seen["activation"] = out._is_view()
                if out.requires_grad:
                    out.register_hook(on_grad)

        inp = x[:1].detach().clone().requires_grad_(True)
        handle = self.layer.register_forward_hook(hook)
        try:
            try:
                out = self.model(inp)
            except CnnlensError:
                raise
            except Exception as exc:  # the model's own failure, whichever call meets it first
                raise ModelError(f"the model's forward pass failed: {type(exc).__name__}: {exc}") from exc
            if isinstance(out, Tensor) and out.requires_grad and out.dim() == 2:
                try:
                    torch.autograd.grad(out[:, 0].sum(), inp, allow_unused=True)
                except RuntimeError:
                    return  # not this check's business: pytorch-grad-cam's own call reports it
        finally:
            handle.remove()
        what = [k for k in ("activation", "grad") if seen.get(k)]
        if what:
            kind = "its output is a view" if what[0] == "activation" else "its output goes straight into a reshape"
            raise LayerError(
                f"pytorch-grad-cam ShapleyCAM cannot use this layer: {kind} (of another tensor), and ShapleyCAM's "
                "recorder fails on views (ActivationsAndGradients.clear calls detach_() on them); choose a layer "
                "whose output is a computed (N, C, H, W) map, e.g. 'features' for torchvision VGG/AlexNet, "
                "or use gradcam or hirescam"
            )

    # -- guided backprop ------------------------------------------------------------------------

    def _guided_backprop(self, x: Tensor, targets: Tensor) -> Tensor:
        """pytorch-grad-cam's ``GuidedBackpropReLUModel``, one image per call (it returns image 0).

        It swaps every ``nn.ReLU`` for its ``GuidedBackpropReLUasModule`` and afterwards puts fresh
        ``nn.ReLU()`` objects back; the model's own modules are put back after each call. It returns
        the input gradient as an (H, W, C) NumPy array; transposed back here to (C, H, W).
        """
        gb_model = GuidedBackpropReLUModel(self.model)
        self.driven.append(GUIDED_DRIVE)
        relus = [(parent, name, child) for parent in self.model.modules()
                 for name, child in parent._modules.items() if isinstance(child, nn.ReLU)]
        grads = []
        try:
            for i, t in enumerate(targets.tolist()):
                try:
                    hwc = gb_model(x[i : i + 1].clone(), target_category=int(t))
                finally:
                    for parent, name, child in relus:
                        parent._modules[name] = child
                grads.append(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))
        finally:
            for parent, name, child in relus:
                parent._modules[name] = child
        return torch.stack(grads).to(device=x.device, dtype=x.dtype)

    def translate(self, exc: Exception) -> CnnlensError | None:
        msg = str(exc)
        if "Invalid activation shape" in msg or "Invalid grads shape" in msg:
            return LayerError(f"pytorch-grad-cam {self.impl.toolkit_name}: the layer output is not a (N, C, H, W) map ({msg})")
        return None
