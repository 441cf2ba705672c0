"""The minimal contract every backend adapter fulfils."""

from __future__ import annotations

import abc
import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

from torch import Tensor, nn

from cnnlens.errors import BackendError, CnnlensError
from cnnlens.registry import Implementation


class Adapter(abc.ABC):
    """Wraps one toolkit. Instantiated per call, inside the model guard.

    Args:
        model: The network to explain (returns (N, classes) scores), in eval mode, parameters frozen.
        impl: The registry entry being run.
        layer: The resolved layer module, or None when the method needs none.
        options: Validated options with defaults filled in.
    """

    backend: ClassVar[str]

    def __init__(self, model: nn.Module, impl: Implementation, layer: nn.Module | None, options: dict[str, Any]) -> None:
        self.model = model
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


@contextlib.contextmanager
def swapped_relus(model: nn.Module, replacement: nn.Module) -> Iterator[None]:
    """Put ``replacement`` wherever ``model`` holds an ``nn.ReLU``; the very same ReLU objects go back.

    The guided-backprop rules of pytorch-grad-cam and FlashTorch run as modules in place of the ReLUs
    (the model guard would also restore the tree, but guided Grad-CAM runs a CAM pass in between).
    """
    originals = [(parent, name, child) for parent in model.modules()
                 for name, child in parent._modules.items() if isinstance(child, nn.ReLU)]
    try:
        for parent, name, _child in originals:
            parent._modules[name] = replacement
        yield
    finally:
        for parent, name, child in originals:
            parent._modules[name] = child
