"""Adapter for FlashTorch (PyPI ``flashtorch`` 0.1.3): saliency, guided backprop, filter visualization.

FlashTorch is unmaintained since 2020 and is broken or wrong on torch 2.x. Each result below still
comes from FlashTorch's own code: ``Backprop.calculate_gradients`` computes every gradient (eval,
``zero_grad``, forward, ``backward``, and for guided backprop the ReLU hooks with FlashTorch's own
closures ``_record_output`` and ``_clip_gradients``), and ``GradientAscent._register_forward_hooks``
plus ``GradientAscent._ascent`` compute every filter visualization. cnnlens subclasses the two
classes and drives or fixes them at the boundary only; none of this replaces a FlashTorch
computation, and each is named in ``Explanation.provenance.driven`` (:data:`DRIVEN`) and in the
registry notes:

1. ``target_class`` was ignored (FlashTorch always backpropagates the top-1 logit). FlashTorch sees a
   wrapper of the model that returns one number, the sum of each image's target logit, so it takes
   its own one-output branch and calls ``output.backward()`` on exactly the score asked for.
2. Batch size 1 only (a ``(1, classes)`` gradient seed, and ``[0]`` on the result). The same sum
   gives image ``i`` the gradient of its own logit, because images do not interact in eval mode; the
   full ``(N, C, H, W)`` gradient is read from the input.
3. Hooks were never removed. Every hook is registered through a handle and removed when the call
   ends, even when it raises.
4. The gradient was read from ``grad_in`` of the first ``nn.Conv2d``, which is all zeros without a
   word when that conv does not receive the raw input (EfficientNet-Lite's padded stem). It is
   recorded on the input tensor itself (where FlashTorch's hook would put it: ``self.gradients``),
   and a call whose gradient never arrives raises instead.
5. Inputs had to require grad. A private leaf copy is made; the caller's tensor is never touched.
6. The deprecated ``register_backward_hook`` (a FutureWarning each call, and an API torch is
   removing) is replaced by ``register_full_backward_hook``. FlashTorch's own ReLU closures are kept:
   only the registration call they go through is redirected (:func:`_modern_registration`), and
   in-place ``nn.ReLU`` modules run out of place for the call (full backward hooks forbid in-place
   outputs; the values are the same).
7. Guided backprop keeps FlashTorch's own rule on purpose, see :class:`CnnlensBackprop`.
8. Filter visualization: see :class:`CnnlensGradientAscent`.

Removed on purpose: an earlier ``guarded=`` mode skipped FlashTorch's per-call ``model.eval()`` and
``model.zero_grad()`` (turning the wrapper's ``train`` and ``zero_grad`` into no-ops) and fed its
closing ``self.gradients.detach().cpu()[0]`` a placeholder instead of the gradient. That made three
of FlashTorch's own statements do something else than they say, for a gain of about a millisecond
on calls that take hundreds on the CPU, far below the 1.5x a substitution must earn; it was not
driving either (it changed what FlashTorch's code does, not how it is called). FlashTorch's code now
runs as written; the model is still given back as it was (:func:`_call_state` and the model guard).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from flashtorch.activmax import GradientAscent
from flashtorch.saliency import Backprop
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cnnlens._resolve import model_device
from cnnlens.adapters.base import FROZEN_PARAMS, Adapter
from cnnlens.errors import BackendError, CnnlensError, LayerError, ModelError, OptionError, TargetError

#: What FlashTorch's guided backprop computes, for docs and :func:`cnnlens.methods`.
GUIDED_RULE = (
    "FlashTorch's own guided rule: grad_in = clamp(grad_out, 0) * relu_output, where the standard rule "
    "(Springenberg 2015; Captum, pytorch-grad-cam) is clamp(grad_out, 0) * (relu_input > 0); FlashTorch "
    "also scales each gradient by the ReLU's activation, and guides nn.ReLU modules only"
)


#: How cnnlens drives FlashTorch's ``Backprop`` (``Explanation.provenance.driven``): the fixes above.
DRIVEN: tuple[str, ...] = (
    "target honoured: FlashTorch's model is a wrapper returning the sum of each image's target logit, so its own "
    "one-output branch backpropagates that score (FlashTorch backpropagates the top-1 logit)",
    "batched: one call for the whole batch, each image's gradient of its own logit (FlashTorch takes one image)",
    "input gradient recorded on a private leaf copy of the input (FlashTorch reads grad_in of the first Conv2d, "
    "zeros when that conv does not receive the raw input, and needs the caller's tensor to require grad)",
    "hooks removed: every hook FlashTorch registers is removed after the call (FlashTorch never removes them)",
)
DRIVEN_GUIDED: tuple[str, ...] = (
    *DRIVEN,
    "FlashTorch's own ReLU closures registered as full backward hooks (it calls the deprecated "
    "register_backward_hook), in-place nn.ReLU modules run out of place for the call",
)


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------


class _InputGradient:
    """Records the gradient that reaches the input of a module, on the input tensor itself.

    FlashTorch reads ``grad_in[0]`` of the first ``nn.Conv2d`` instead, and keeps zeros when its shape
    differs from the input's. A forward pre-hook puts a tensor hook on each new input; only the most
    recent input keeps its tensor hook, because in FlashTorch's gradient ascent the earlier iterates
    sit on the same autograd chain and would otherwise fire again on every step.
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.grad: Tensor | None = None
        self._tensor_handle: RemovableHandle | None = None

    def _record(self, grad: Tensor) -> None:
        # Where FlashTorch's own hooks put it: owner.gradients, which its code then reads. A copy,
        # because autograd keeps passing this very tensor down the chain, and FlashTorch's ascent
        # divides self.gradients in place.
        self.grad = grad.detach().clone()
        self.owner.gradients = self.grad

    def _pre_hook(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.release()
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.requires_grad:
            self._tensor_handle = x.register_hook(self._record)

    def register(self, module: nn.Module) -> RemovableHandle:
        return module.register_forward_pre_hook(self._pre_hook)

    def release(self) -> None:
        if self._tensor_handle is not None:
            self._tensor_handle.remove()
            self._tensor_handle = None


@contextlib.contextmanager
def _call_state(model: nn.Module, freeze_params: bool = True) -> Iterator[None]:
    """Run one FlashTorch call in eval mode, then give every flag and ``.grad`` back.

    FlashTorch calls ``model.eval()`` and leaves it so, calls ``model.zero_grad()`` (which drops the
    user's ``.grad``), and backpropagates into every parameter. No method here reads a weight
    gradient, so with ``freeze_params`` parameters are frozen for the call; their flags and
    ``.grad`` are restored after either way. torch also sets ``_is_full_backward_hook`` when a hook
    is registered and never clears it.
    """
    modules = list(model.modules())
    flags = [(m, m.training, m._is_full_backward_hook) for m in modules]
    params = [(p, p.requires_grad, p.grad) for p in dict.fromkeys(model.parameters())]
    try:
        model.eval()
        for p, _, _ in params:
            p.grad = None
            if freeze_params:
                p.requires_grad_(False)
        yield
    finally:
        for m, training, full in flags:
            m.training = training
            m._is_full_backward_hook = full
        for p, req, grad in params:
            p.requires_grad_(req)
            p.grad = grad


@contextlib.contextmanager
def _modern_registration(modules: Sequence[nn.Module], handles: list[RemovableHandle]) -> Iterator[None]:
    """Route FlashTorch's hook registrations through the current API, keeping every handle.

    FlashTorch's ``_register_relu_hooks`` defines the guided rule in two closures and registers them
    with ``register_forward_hook`` and the deprecated ``register_backward_hook``, dropping the
    handles. Shadowing those two methods on the module instances while it runs keeps FlashTorch's
    closures (the rule under comparison) but registers the backward one as a full backward hook,
    which has the same signature for a one-op module such as ``nn.ReLU``.
    """
    patched: list[nn.Module] = []

    def bind(module: nn.Module) -> None:
        def register_backward_hook(hook: Callable[..., Any]) -> RemovableHandle:
            h = module.register_full_backward_hook(hook)
            handles.append(h)
            return h

        def register_forward_hook(hook: Callable[..., Any], **kwargs: Any) -> RemovableHandle:
            h = nn.Module.register_forward_hook(module, hook, **kwargs)
            handles.append(h)
            return h

        # object.__setattr__: plain instance attributes that shadow the class methods, bypassing
        # nn.Module's own __setattr__ bookkeeping; removed below.
        object.__setattr__(module, "register_backward_hook", register_backward_hook)
        object.__setattr__(module, "register_forward_hook", register_forward_hook)
        patched.append(module)

    try:
        for m in modules:
            bind(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("register_backward_hook", None)
            m.__dict__.pop("register_forward_hook", None)


@contextlib.contextmanager
def _no_inplace_relu(model: nn.Module) -> Iterator[None]:
    """Full backward hooks forbid in-place ops on the hooked module; in-place is a memory choice only."""
    changed = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    try:
        for m in changed:
            m.inplace = False
        yield
    finally:
        for m in changed:
            m.inplace = True


def _remove_all(handles: list[RemovableHandle]) -> None:
    while handles:
        handles.pop().remove()


# ------------------------------------------------------------------------------------------------
# Saliency and guided backprop
# ------------------------------------------------------------------------------------------------


class _TargetScore(nn.Module):
    """What FlashTorch's ``Backprop`` sees as its model: the sum of each image's target logit.

    A one-element output sends ``calculate_gradients`` down its own one-output branch
    (``output.backward()`` with no seed), so the score backpropagated is exactly the one asked for.
    Summing over the batch gives image ``i`` the gradient of its own logit because, in eval mode,
    no image's logits depend on another image.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.targets: Tensor | None = None
        #: the targets on the CPU, to range-check them without a GPU synchronisation between the
        #: forward and the backward (None for targets taken from the model's own argmax)
        self.targets_cpu: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if not (isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == x.shape[0]):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(f"the model must return class scores of shape (N={x.shape[0]}, classes), got {shape}")
        if self.targets is None:
            raise CnnlensError("_TargetScore called without targets")
        c = out.shape[1]
        tc = self.targets_cpu
        if tc is not None and bool(((tc < 0) | (tc >= c)).any()):
            bad = int(tc[(tc < 0) | (tc >= c)][0])
            raise TargetError(f"target {bad} is out of range: the model has {c} classes (0..{c - 1})")
        return out.gather(1, self.targets.to(out.device)[:, None]).sum().reshape(1)


def _as_targets(target_class: Any, n: int, device: torch.device) -> Tensor | None:
    if target_class is None:
        return None
    if isinstance(target_class, Tensor):
        t = target_class.reshape(-1).to(device=device, dtype=torch.long)
    elif isinstance(target_class, (int, np.integer)) and not isinstance(target_class, bool):
        t = torch.tensor([int(target_class)], dtype=torch.long, device=device)
    else:
        t = torch.as_tensor([int(v) for v in target_class], dtype=torch.long, device=device)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise OptionError(f"got {t.numel()} targets for {n} images; give one per image or one for all")
    return t.contiguous()


class CnnlensBackprop(Backprop):  # type: ignore[misc]
    """FlashTorch's ``Backprop``, correct on torch 2.x, batched, and clean after every call.

    ``calculate_gradients`` keeps FlashTorch's signature and code path, with these differences:
    it honours ``target_class`` (an int, or one per image; None means the predicted class), takes
    any batch size and returns the ``(N, C, H, W)`` gradient (``(N, 1, H, W)`` with ``take_max``),
    takes inputs that do not require grad without changing them, and leaves no hook, flag or
    mode behind, even when it raises. ``use_gpu`` is ignored: the input is moved to the model's
    device instead of the model being moved for good.

    Guided backprop (``guided=True``) is **FlashTorch's own variant**, kept because it is what the
    ``flashtorch`` backend is there to compare: at every ``nn.ReLU`` the gradient passed down is
    ``clamp(grad_out, 0) * relu_output``. The standard rule (Springenberg et al. 2015, as in Captum
    and pytorch-grad-cam) is ``clamp(grad_out, 0) * (relu_input > 0)``. FlashTorch's extra factor
    weights each path by its activation, so its maps differ from Captum's; other activations
    (ReLU6, SiLU, ...) are not guided. FlashTorch pairs each ReLU's backward call with its forward
    output by stack order (last in, first out), which holds for sequential and residual CNNs.

    Args:
        model: A classifier returning ``(N, classes)`` scores.
        freeze_params: Freeze the parameters for each call (their flags come back after it): no
            method here reads a weight gradient, so FlashTorch's ``backward()`` then computes none.
            ``False`` lets it backpropagate into every parameter, as plain FlashTorch does.
    """

    def __init__(self, model: nn.Module, freeze_params: bool = True) -> None:
        self.user_model = model
        self.freeze_params = freeze_params
        self._net = _TargetScore(model)
        self._grad = _InputGradient(self)
        self._handles: list[RemovableHandle] = []
        self.leftover_relu_outputs = 0
        with _call_state(model, freeze_params):
            super().__init__(self._net)  # FlashTorch: model.eval(), then _register_conv_hook()

    # -- FlashTorch's private interface, fixed --------------------------------------------------

    def _register_conv_hook(self) -> None:
        # Replaces the first-Conv2d hook (fix 4). Called by Backprop.__init__ before there is
        # anything to record, so it only registers while a call is running.
        if getattr(self, "_calling", False):
            self._handles.append(self._grad.register(self._net))

    def _register_relu_hooks(self) -> None:
        relus = [m for m in self._net.modules() if isinstance(m, nn.ReLU)]
        with _modern_registration(relus, self._handles):
            super()._register_relu_hooks()  # FlashTorch's _record_output and _clip_gradients

    # -- public ---------------------------------------------------------------------------------

    def calculate_gradients(
        self,
        input_: Tensor,
        target_class: int | Sequence[int] | Tensor | None = None,
        take_max: bool = False,
        guided: bool = False,
        use_gpu: bool = False,
    ) -> Tensor:
        """Gradients of each image's ``target_class`` logit w.r.t. the image.

        Args:
            input_: (N, C, H, W) batch; any ``requires_grad``; left unchanged.
            target_class: None (each image's predicted class), an int for every image, or N ints.
            take_max: Maximum over colour channels, as in FlashTorch.
            guided: FlashTorch's guided backprop (see the class docstring for its rule).
            use_gpu: Accepted for compatibility and ignored: the model's device is used.

        Returns:
            (N, C, H, W) gradients (``(N, 1, H, W)`` with ``take_max``), detached, on the model's device.
        """
        del use_gpu  # FlashTorch's flag moves the model to CUDA for good; cnnlens never moves it
        model = self.user_model
        device = model_device(model)
        x = input_.detach().to(device).clone().requires_grad_(True)  # a private leaf (fix 5)
        with _call_state(self._net, self.freeze_params):
            targets = _as_targets(target_class, x.shape[0], device)
            self._net.targets_cpu = None if targets is None else targets.cpu()
            if targets is None:
                with torch.no_grad():
                    targets = model(x).argmax(dim=1)
            self._net.targets = targets
            self._grad.grad = None
            self._calling = True
            try:
                self._register_conv_hook()
                # With a one-element output FlashTorch neither picks the top-1 class nor warns.
                guide = _no_inplace_relu(self._net) if guided else contextlib.nullcontext()
                with guide:
                    super().calculate_gradients(x, None, take_max=False, guided=guided, use_gpu=False)
                self.leftover_relu_outputs = len(getattr(self, "relu_outputs", []) or [])
            finally:
                self._calling = False
                _remove_all(self._handles)
                self._grad.release()
                self._net.targets = self._net.targets_cpu = None
                self.relu_outputs = []
        grad = self._grad.grad
        if grad is None or grad.shape != x.shape:
            raise BackendError(
                "flashtorch Backprop: no gradient reached the input; the model's output does not depend on it"
            )
        self.gradients = grad
        return grad.amax(dim=1, keepdim=True) if take_max else grad


class FlashTorchAdapter(Adapter):
    """``saliency`` and ``guided_backprop`` through :class:`CnnlensBackprop`.

    ``guided_backprop`` here is FlashTorch's variant: ``clamp(grad_out, 0) * relu_output`` at each
    ``nn.ReLU`` instead of the standard ``clamp(grad_out, 0) * (relu_input > 0)``; see
    :class:`CnnlensBackprop`.
    """

    backend = "flashtorch"

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        freeze = self.shortcuts and self.impl.freeze_params  # as the Explainer's model guard decided
        if freeze:
            self.driven.append(FROZEN_PARAMS)
        self.driven.extend(DRIVEN_GUIDED if self.method == "guided_backprop" else DRIVEN)
        bp = CnnlensBackprop(self.model, freeze_params=freeze)
        grad = bp.calculate_gradients(x, targets, guided=self.method == "guided_backprop")
        if bp.leftover_relu_outputs:
            self.warnings.append(
                f"flashtorch guided_backprop: {bp.leftover_relu_outputs} ReLU output(s) never received a gradient; "
                "FlashTorch pairs ReLU outputs with gradients by stack order, so some pairs may be misaligned"
            )
        return grad.detach()

    def translate(self, exc: Exception) -> CnnlensError | None:
        msg = str(exc)
        if "is a view and is being modified inplace" in msg:
            return ModelError(
                "flashtorch guided_backprop: the model modifies a ReLU's input or output in place, which the "
                "backward hooks cannot follow; use backend='captum' for this model"
            )
        return None


# ------------------------------------------------------------------------------------------------
# Filter visualization (activation maximization)
# ------------------------------------------------------------------------------------------------


class _Reached(BaseException):
    """Stops the forward pass once the target layer has run.

    A BaseException so that a model's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


class _UpToLayer(nn.Module):
    """The model cut after ``layer``: what ``GradientAscent`` sees as its model.

    FlashTorch runs the whole network on every ascent step although only the layer's output is
    used; stopping there saves the rest of the forward pass and changes no number.
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    @staticmethod
    def _stop(_m: nn.Module, _inp: Any, out: Any) -> None:
        raise _Reached(out)

    def forward(self, x: Tensor) -> Tensor:
        # Registered per call so that it runs after FlashTorch's own activation hook.
        handle = self.layer.register_forward_hook(self._stop)
        try:
            self.model(x)
        except _Reached as reached:
            return reached.output  # type: ignore[no-any-return]
        finally:
            handle.remove()
        raise LayerError("the model's forward pass never called the chosen layer")


class CnnlensGradientAscent(GradientAscent):  # type: ignore[misc]
    """FlashTorch's ``GradientAscent``, fixed.

    ``optimize`` runs FlashTorch's own activation hook (``_register_forward_hooks``: the mean of the
    filter's feature map) and its own ascent loop (``_ascent``: the gradient normalised by its RMS,
    times ``lr``), with these fixes: the filter index is checked against ``0..channels-1``
    (FlashTorch accepts ``channels``); any layer with an ``(N, C, H, W)`` output works, including
    ``nn.Conv2d`` subclasses (FlashTorch accepts ``type(layer) is nn.Conv2d`` only); the gradient is
    read at the input itself (FlashTorch reads the first 3-channel ``nn.Conv2d``, which stays zero
    when that conv pads its input); the model is never moved (``use_gpu`` is off; the start image
    must already be on the model's device); every hook is removed when the call ends.

    Args:
        model: The network (a full classifier is fine: the forward pass stops after ``layer``).
        layer: The layer whose filters are visualised.
        channels: Its number of output channels.
        lr: FlashTorch's step size.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, channels: int, lr: float = 1.0) -> None:
        self._net = _UpToLayer(model, layer)
        self._grad = _InputGradient(self)
        self.layer = layer
        self.channels = channels
        super().__init__(self._net, lr=lr, use_gpu=False)

    def _validate_filter_idx(self, num_filters: int, filter_idx: Any) -> None:
        if isinstance(filter_idx, bool) or not isinstance(filter_idx, (int, np.integer)):
            raise OptionError(f"filter indices must be integers, got {filter_idx!r}")
        if not 0 <= int(filter_idx) < num_filters:
            raise OptionError(
                f"filter {int(filter_idx)} is out of range: the layer has {num_filters} filters (0..{num_filters - 1})"
            )

    def _register_backward_hooks(self) -> RemovableHandle:
        return self._grad.register(self._net)

    def optimize(self, layer: nn.Module, filter_idx: int, input_: Tensor | None = None, num_iter: int = 30) -> list[Tensor]:
        """Ascend from ``input_`` for ``num_iter`` steps; return every iterate, as FlashTorch does."""
        if layer is not self.layer:
            raise LayerError("CnnlensGradientAscent.optimize: pass the layer the object was made for")
        if input_ is None:
            raise OptionError("CnnlensGradientAscent.optimize needs a start image on the model's device")
        self._validate_filter_idx(self.channels, filter_idx)
        x = input_.detach().clone().requires_grad_(True)
        with _call_state(self._net):
            try:
                self.handlers.append(self._register_forward_hooks(layer, int(filter_idx)))  # FlashTorch's
                self.handlers.append(self._register_backward_hooks())
                self.gradients = torch.zeros_like(x)
                self._grad.grad = None
                out = self._ascent(x, num_iter)  # FlashTorch's loop
            finally:
                _remove_all(self.handlers)
                self._grad.release()
        if self._grad.grad is None:  # FlashTorch would return the start unchanged, without a word
            raise BackendError("flashtorch GradientAscent: no gradient reached the input image")
        return [o.detach() for o in out]
