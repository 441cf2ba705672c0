"""The minimal contract every backend adapter fulfils."""

from __future__ import annotations

import abc
import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cnnlens.errors import BackendError, CnnlensError
from cnnlens.registry import Implementation

#: Named in ``Explanation.provenance.driven`` when the model guard froze the parameters for a call.
FROZEN_PARAMS = ("parameters frozen for the call (requires_grad=False, restored after): the toolkit's backward "
                 "computes no weight gradient, which no method reads")


class Adapter(abc.ABC):
    """Wraps one toolkit. Instantiated per call, inside the model guard.

    Args:
        model: The network to explain (returns (N, classes) scores), in eval mode, parameters frozen.
        impl: The registry entry being run.
        layer: The resolved layer module, or None when the method needs none.
        options: Validated options with defaults filled in.
        shortcuts: Whether the substitutions registered for this pair may be applied (the
            Explainer decides). An adapter appends the name of each one it applies to
            :attr:`substitutions`, and how it drove the toolkit (per-image calls, early stops) to
            :attr:`driven`; both end up in ``Explanation.provenance``.
    """

    backend: ClassVar[str]

    def __init__(self, model: nn.Module, impl: Implementation, layer: nn.Module | None, options: dict[str, Any],
                 *, shortcuts: bool = True) -> None:
        self.model = model
        self.shortcuts = shortcuts
        self.substitutions: list[str] = []
        self.driven: list[str] = []
        self.impl = impl
        self.method = impl.method
        self.layer = layer
        self.options = options
        self.warnings: list[str] = []

    @abc.abstractmethod
    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        """Return the backend's raw attribution as a tensor on ``x``'s device.

        Args:
            x: (N, C, H, W) input, a private copy on the model's device (requires_grad is off).
            targets: (N,) long tensor of class indices on the model's device.
        """

    def check_input(self, x: Tensor) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Reject option values that are invalid for this input (e.g. a window larger than the image)."""

    def translate(self, exc: Exception) -> CnnlensError | None:
        """Map a known backend failure to a specific cnnlens error; None means "generic"."""
        return None

    def run(self, x: Tensor, targets: Tensor) -> Tensor:
        """Call :meth:`attribute`, translating every backend exception at this boundary."""
        try:
            with warnings.catch_warnings():
                # Toolkit chatter ("Input Tensor 0 did not already require gradients", "Setting backward
                # hooks on ReLU activations", deprecated-hook FutureWarnings) is about the adapter's own
                # calls, not the user's code; cnnlens reports real caveats in Explanation.warnings.
                warnings.filterwarnings("ignore", module=r"(captum|pytorch_grad_cam|flashtorch|torch)(\.|$)")
                return self.attribute(x, targets)
        except CnnlensError:
            raise
        except Exception as exc:  # the boundary: nothing from inside a toolkit escapes untranslated
            mapped = self.translate(exc)
            if mapped is None:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                mapped = BackendError(
                    f"{self.backend} {self.impl.toolkit_name} failed for method '{self.method}': "
                    f"{type(exc).__name__}: {first}"
                )
            raise mapped from exc


#: A guided-backprop rule: ``rule(grad_output, relu_output) -> grad_input`` of one ReLU call.
Rule = Callable[[Tensor, Tensor], Tensor]
#: Applied to the total gradient of a ReLU's input (``hook(total, rule_result) -> new gradient``).
InputHook = Callable[[Tensor, Tensor], Tensor]


class _RuleReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: Rule, inplace: bool, cell: list[Tensor] | None) -> Tensor:
        out = x.relu_() if inplace else torch.relu(x)
        if inplace:
            ctx.mark_dirty(out)
        ctx.save_for_backward(out)
        ctx.rule, ctx.cell = rule, cell
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (out,) = ctx.saved_tensors
        result = ctx.rule(grad, out)
        if ctx.cell is not None:
            ctx.cell.append(result)
        return result, None, None, None


class RuleReLU(nn.Module):
    """A ReLU whose backward is a toolkit's guided rule, put in place of an ``nn.ReLU`` for one call.

    The toolkits apply their rules through module and tensor hooks (Captum also clones every ReLU
    input to make room for them, FlashTorch lets ReLU's own backward run and throws it away); here the
    rule *is* the backward, so only the rule's own operations run. The forward is the original
    module's ReLU, in place where the original is (so an in-place ReLU stays in place and the forward
    allocates nothing more than the model's own); the values are the same either way.

    Args:
        rule: ``rule(grad_output, relu_output)``, the gradient passed to the ReLU's input.
        inplace: The original module's ``inplace`` flag.
        input_hook: For rules that a toolkit applies to the *total* gradient of the ReLU's input (a
            tensor hook on it, as Captum does): called as ``input_hook(total, rule_result)`` and
            returns the gradient the input gets. With a single consumer, ``total`` is ``rule_result``.
    """

    def __init__(self, rule: Rule, inplace: bool = False, input_hook: InputHook | None = None) -> None:
        super().__init__()
        self.rule, self.inplace, self.input_hook = rule, inplace, input_hook

    def forward(self, x: Tensor) -> Tensor:
        # In place only on an intermediate result that is no view: never on a leaf (autograd forbids
        # it for one that requires grad) or on memory another tensor shares.
        inplace = self.inplace and x.grad_fn is not None and x._base is None
        cell: list[Tensor] | None = None
        if self.input_hook is not None and x.requires_grad:
            cell = []
            hook = self.input_hook

            def on_input(total: Tensor, cell: list[Tensor] = cell) -> Tensor:
                return hook(total, cell.pop() if cell else total)

            x.register_hook(on_input)
        return _RuleReLUFn.apply(x, self.rule, inplace, cell)


@contextlib.contextmanager
def swapped_relus(model: nn.Module, make: Callable[[nn.ReLU], nn.Module]) -> Iterator[None]:
    """Put ``make(relu)`` wherever ``model`` holds an ``nn.ReLU``; the very same ReLU objects go back.

    The guided-backprop rules of every toolkit run as modules in place of the ReLUs (the model guard
    would also restore the tree, but guided Grad-CAM runs a CAM pass in between). ``make`` is called
    once per distinct ReLU module (a module called several times in forward gets one replacement).
    """
    originals = [(parent, name, child) for parent in model.modules()
                 for name, child in parent._modules.items() if isinstance(child, nn.ReLU)]
    made: dict[int, nn.Module] = {}
    try:
        for parent, name, child in originals:
            if id(child) not in made:
                made[id(child)] = make(child)
            parent._modules[name] = made[id(child)]
        yield
    finally:
        for parent, name, child in originals:
            parent._modules[name] = child
