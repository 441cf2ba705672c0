"""The minimal contract every backend adapter fulfils."""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens.errors import BackendError, CnnlensError, OptionError
from cnnlens.registry import Implementation

#: Warnings the toolkits raise about cnnlens's own calls to them, not about the user's model or
#: code; silenced at the adapter boundary (only these messages, only from these packages). Every
#: other warning, torch's included, reaches the caller; cnnlens reports real caveats in
#: ``Explanation.warnings``.
TOOLKIT_CHATTER: tuple[str, ...] = (
    # Captum, when the input it is given does not require grad (cnnlens hands over a private copy)
    r"Input Tensor \d+ did not already require gradients, required_grads has been set automatically",
    # Captum's GuidedBackprop / Deconvolution, on every call
    r"Setting backward hooks on ReLU activations",
    # Captum's DeepLift family and LRP, on every call
    r"Setting forward, backward hooks and attributes on non-linear",
    # FlashTorch, when the target is not the top-1 class (cnnlens's one-output wrapper avoids the case)
    r"The predicted class index \d+ does not",
)
TOOLKIT_MODULES = r"(captum|pytorch_grad_cam|flashtorch)(\.|$)"

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

    def each_image(self, x: Tensor, t: Tensor, call: Callable[[Tensor, Tensor, int], Tensor], how: str) -> Tensor:
        """``call(x[i:i+1], t[i:i+1], i)`` for every image, concatenated; ``how`` goes to :attr:`driven`.

        For a stochastic method every image is drawn from the seed afresh (``torch.manual_seed`` and
        ``np.random.seed``, inside the Explainer's seeded block, which gives the caller's RNG state
        back afterwards), so an image's result is the same alone and in any batch: what the toolkit
        returns when called on that one image after seeding.
        """
        seed = self.options.get("seed") if self.impl.spec.stochastic else None
        outs = []
        for i in range(x.shape[0]):
            if seed is not None:
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
            outs.append(call(x[i : i + 1], t[i : i + 1], i))
        self.driven.append(how)
        return torch.cat(outs)

    def check_input(self, x: Tensor) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Reject option values that are invalid for this input (e.g. a window larger than the image)."""

    def translate(self, exc: Exception) -> CnnlensError | None:
        """Map a known backend failure to a specific cnnlens error; None means "generic"."""
        return None

    def run(self, x: Tensor, targets: Tensor) -> Tensor:
        """Call :meth:`attribute`, translating every backend exception at this boundary."""
        try:
            with warnings.catch_warnings():
                for message in TOOLKIT_CHATTER:
                    warnings.filterwarnings("ignore", message=message, module=TOOLKIT_MODULES)
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


def window_pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """An occlusion window or stride option as (height, width): an int is square, a tuple's last two."""
    if isinstance(v, int):
        return (v, v)
    return (int(v[-2]), int(v[-1]))


def check_window_fits(options: Mapping[str, Any], x: Tensor) -> None:
    """Refuse an occlusion window larger than the image, before the toolkit is called (every backend
    with occlusion checks the same option the same way)."""
    wh, ww = window_pair(options["sliding_window"])
    if wh > x.shape[2] or ww > x.shape[3]:
        raise OptionError(
            f"sliding_window {wh}x{ww} is larger than the {x.shape[2]}x{x.shape[3]} image; "
            "choose a window no larger than the image"
        )
