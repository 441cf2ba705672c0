"""Adapter for pytorch-grad-cam (PyPI ``grad-cam``).

Every CAM runs through the toolkit's own class and ``__call__``. The adapter only:

* passes targets as ``ClassifierOutputTarget`` objects, one per image (never truncated);
* records the CAM *before* pytorch-grad-cam's ReLU, min-max scaling and OpenCV resize, by wrapping
  ``get_cam_image`` on the instance it created, so that the shared output contract is applied to the
  same thing for every backend (``raw``);
* avoids work the method never reads: parameters are frozen by the model guard, and for gradient CAMs
  the target layer's output becomes the leaf of the backward graph, so ``.backward()`` stops at the
  layer instead of running through the whole network (pytorch-grad-cam's output is unchanged);
* computes Eigen-CAM's and Eigen-Grad-CAM's projection with NumPy's own SVD at economy size, the
  images side by side with single-threaded BLAS: pytorch-grad-cam asks for the full (C x C) right
  singular matrix and reads only its first row (bit-identical; tested);
* runs ScoreCAM and AblationCAM one image at a time with a bounded internal batch, because
  pytorch-grad-cam materialises every masked input of the whole batch at once;
* batches guided backprop, which pytorch-grad-cam's ``GuidedBackpropReLUModel`` limits to image 0,
  applying the toolkit's ``GuidedBackpropReLU`` rule through an allocation-free equivalent
  (:func:`pgc_guided_rule` in :class:`~cnnlens.adapters.base.RuleReLU`; bit-identical, tested).
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
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from cnnlens._resolve import internal_batch
from cnnlens.adapters.base import Adapter, RuleReLU, swapped_relus
from cnnlens.errors import CnnlensError, LayerError

CLASSES: dict[str, str] = {
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
}
PER_IMAGE = {"scorecam", "ablationcam"}




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


def pgc_guided_rule(grad: Tensor, out: Tensor) -> Tensor:
    """pytorch-grad-cam's ``GuidedBackpropReLU`` backward without its temporaries.

    pytorch-grad-cam computes ``addcmul(zeros, x, x > 0)`` forward and
    ``addcmul(zeros, addcmul(zeros, grad, x > 0), grad > 0)`` backward, allocating a zero tensor and
    two float masks per ReLU each way (1.3x the gradient limit on resnet50 and vgg11). The values are
    the same bit for bit: ReLU forward, ``grad * (x > 0) * (grad > 0)`` backward, where
    ``x > 0`` is ``relu(x) > 0`` (tested against the toolkit's own function with
    ``cnnlens.self.shortcuts = False``). ``threshold_backward`` is ReLU's own fused backward.
    """
    return torch.ops.aten.threshold_backward(grad.clamp(min=0), out, 0)


def _pgc_relu(relu: nn.Module) -> nn.Module:
    return RuleReLU(pgc_guided_rule, relu.inplace)


def _toolkit_relu(module: nn.Module) -> Callable[[nn.Module], nn.Module]:
    """pytorch-grad-cam's own ``GuidedBackpropReLUasModule`` in place of every ReLU (OPTIMIZE off)."""
    return lambda _relu: module


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


class _OnDeviceActivations(ActivationsAndGradients):  # type: ignore[misc]
    """pytorch-grad-cam's recorder, without a device-to-host copy inside the forward and backward.

    pytorch-grad-cam copies the layer's activation to the CPU in a forward hook and its gradient in
    a tensor hook (its issue #356); on a GPU each copy synchronises mid-call, so the CPU cannot queue
    the rest of the forward / backward while the GPU runs. This keeps an on-device copy instead
    (``clone``, as ``.cpu()`` also copies, so a later in-place op on the layer output cannot reach it),
    and ``compute_cam_per_layer`` moves both to NumPy once, after the backward: the same values.
    On the CPU it stores exactly what pytorch-grad-cam stores (``.cpu()`` is then a no-op).
    """

    @staticmethod
    def _keep(t: Tensor) -> Tensor:
        return t.cpu().detach() if t.device.type == "cpu" else t.detach().clone()

    def save_activation(self, module: nn.Module, input: Any, output: Any) -> None:
        if not self.detach:
            return super().save_activation(module, input, output)
        activation = output if self.reshape_transform is None else self.reshape_transform(output)
        self.activations.append(self._keep(activation))
        return None

    def save_gradient(self, module: nn.Module, input: Any, output: Any) -> None:
        if not self.detach:
            return super().save_gradient(module, input, output)
        if not hasattr(output, "requires_grad") or not output.requires_grad:
            return None

        def _store_grad(grad: Tensor) -> None:
            if self.reshape_transform is not None:
                grad = self.reshape_transform(grad)
            self.gradients = [self._keep(grad), *self.gradients]

        output.register_hook(_store_grad)
        return None


#: CAMs constructed on :class:`_InEvalMode` (those whose class only reads the model through its
#: forward, hooks on the target layer, ``eval()``, ``zero_grad()`` and ``parameters()``).
NO_WALK = {"gradcam", "gradcam_plusplus", "hirescam", "xgradcam", "layercam", "eigencam", "eigengradcam",
           "gradcam_elementwise"}


class _InEvalMode(nn.Module):
    """The model as pytorch-grad-cam sees it inside a cnnlens call: ``eval()`` and ``zero_grad()``
    do nothing.

    pytorch-grad-cam calls ``model.eval()`` in every CAM's constructor and ``model.zero_grad()``
    before every backward; the first walks every module through ``nn.Module.__setattr__``, the
    second every parameter: 0.54 ms and 0.22 ms per call on EfficientNet-Lite0 here, and on a GPU,
    where a batch-8 Grad-CAM takes a few milliseconds that the CPU spends launching kernels, they
    add in full (1.8-2.3 ms per call in the H200 profile). Inside the model guard both change nothing:
    every module is already in eval mode (the guard's ``eval_mode``) and no parameter can hold a
    gradient (the guard detaches ``.grad`` and freezes every parameter). Used only when the guard
    freezes parameters (``Implementation.freeze_params``) and with ``cnnlens.self.shortcuts``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> _InEvalMode:
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


class PytorchGradCamAdapter(Adapter):
    backend = "pytorch-grad-cam"

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.method == "guided_backprop":
            return self._guided_backprop(x, targets)
        if self.method == "guided_gradcam":
            gb = self._guided_backprop(x, targets)
            cam = self._cam("gradcam", x, targets, final=True)
            return gb * cam[:, None]
        return self._cam(self.method, x, targets)

    # -- CAMs -----------------------------------------------------------------------------------

    def _make(self, method: str) -> Any:
        cls = getattr(pgc, CLASSES[method])
        if method == "fullgrad":
            return cls(self.model, target_layers=[])
        model = self.model
        if self.shortcuts and self.impl.freeze_params and method in NO_WALK:
            model = _InEvalMode(self.model)
        if method == "fem":
            cam = cls(model, target_layers=[self.layer], k=self.options.get("k", 2))
        else:
            cam = cls(model, target_layers=[self.layer])
        if self.shortcuts and type(cam.activations_and_grads) is ActivationsAndGradients:
            cam.activations_and_grads.release()
            cam.activations_and_grads = _OnDeviceActivations(
                model, [self.layer], cam.reshape_transform, cam.activations_and_grads.detach)
        return cam

    def _cam(self, method: str, x: Tensor, targets: Tensor, final: bool = False) -> Tensor:
        """Run one pytorch-grad-cam class; return the pre-ReLU CAM, or its final output if ``final``."""
        chunks = [slice(i, i + 1) for i in range(x.shape[0])] if method in PER_IMAGE else [slice(0, x.shape[0])]
        outs = [self._cam_chunk(method, x[s], targets[s], final) for s in chunks]
        return torch.cat(outs, dim=0)

    def _cam_chunk(self, method: str, x: Tensor, targets: Tensor, final: bool) -> Tensor:
        cam = self._make(method)
        captured: list[np.ndarray] = []
        aug = bool(self.options.get("aug_smooth", False))
        eigen = bool(self.options.get("eigen_smooth", False))
        if method in PER_IMAGE:
            cam.batch_size = self.options.get("batch_size") or internal_batch(x)
        if self.shortcuts and method in ("eigencam", "eigengradcam"):
            cam.get_cam_image = _eigen_cam_image(method)
        if not aug and not final:
            name = "compute_cam_per_layer" if method == "fullgrad" else "get_cam_image"
            inner = getattr(cam, name)

            skip_rest = self.shortcuts

            def spy(*args: Any, **kwargs: Any) -> Any:
                out = inner(*args, **kwargs)
                captured.append(out)
                if skip_rest:
                    raise _Captured
                return out

            setattr(cam, name, spy)
        handle = None
        if (self.shortcuts and cam.uses_gradients and not cam.compute_input_gradient and cam.detach
                and self.layer is not None):
            handle = self.layer.register_forward_hook(_leaf_at(self.layer), prepend=True)
        result = None
        try:
            with _quiet_progress(method in PER_IMAGE):
                result = cam(
                    input_tensor=x,
                    targets=[ClassifierOutputTarget(int(t)) for t in targets.tolist()],
                    aug_smooth=aug,
                    **({} if method == "fullgrad" and not eigen else {"eigen_smooth": eigen}),
                )
        except _Captured:
            pass
        finally:
            if handle is not None:
                handle.remove()
            cam.activations_and_grads.release()
        if captured:
            raw = captured[-1]
            if method == "fullgrad":
                raw = raw[:, 0]
            return torch.as_tensor(np.asarray(raw, dtype=np.float32)).to(x.device)
        return torch.as_tensor(np.asarray(result, dtype=np.float32)).to(x.device)

    # -- guided backprop ------------------------------------------------------------------------

    def _guided_backprop(self, x: Tensor, targets: Tensor) -> Tensor:
        # pytorch-grad-cam's GuidedBackpropReLUModel swaps every nn.ReLU for its rule and puts fresh
        # ReLUs back; cnnlens swaps the same way and puts the very same objects back.
        make = _pgc_relu if self.shortcuts else _toolkit_relu(GuidedBackpropReLUasModule())
        with swapped_relus(self.model, make):
            inp = x.detach().requires_grad_(True)
            out = self.model(inp)
            score = out.gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(score, inp)
        return grad

    def translate(self, exc: Exception) -> CnnlensError | None:
        msg = str(exc)
        if "Invalid activation shape" in msg or "Invalid grads shape" in msg:
            return LayerError(f"pytorch-grad-cam {self.impl.toolkit_name}: the layer output is not a (N, C, H, W) map ({msg})")
        return None
