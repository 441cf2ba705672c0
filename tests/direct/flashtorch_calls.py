"""FlashTorch 0.1.3 called directly, as its README shows, for every registry pair.

``Backprop(model)`` and ``backprop.calculate_gradients(input_, target_class, guided=...)`` on a
batch-1 input that requires grad, one image at a time (FlashTorch takes one image), on a copy of the
model (FlashTorch never removes its hooks). It returns the (C, H, W) gradient of image 0.

Two FlashTorch bugs decide where such a call is valid, and the direct call is built to stay there:

* it ignores ``target_class`` and backpropagates the top-1 logit. The call therefore gives FlashTorch
  the model plus a constant added to the target's logit (computed beforehand without grad), so that
  the target *is* the top-1 class; a constant changes no gradient, so this is FlashTorch's gradient
  of the target logit;
* it reads the input gradient as ``grad_in[0]`` of the first ``nn.Conv2d``, which is the input
  gradient only when that conv receives the raw input: true of ``tiny_cnn`` (the harness's model),
  not of EfficientNet-Lite's padded stem.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from flashtorch.saliency import Backprop
from torch import Tensor, nn

from . import DirectCall


class _TargetOnTop(nn.Module):
    """The model's logits plus a constant that makes ``target`` the top-1 class (no gradient changes)."""

    def __init__(self, model: nn.Module, offset: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("offset", offset)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) + self.offset


def _flashtorch(guided: bool) -> DirectCall:
    def call(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, options: dict[str, Any]) -> Tensor:
        out = []
        for i, t in enumerate(targets.tolist()):
            m = copy.deepcopy(model).eval()
            xi = x[i : i + 1].clone()
            with torch.no_grad():
                logits = m(xi)
            offset = torch.zeros_like(logits)
            offset[0, t] = logits.max() - logits[0, t] + 1.0
            backprop = Backprop(_TargetOnTop(m, offset))
            xi.requires_grad_(True)
            out.append(backprop.calculate_gradients(xi, target_class=t, guided=guided))
        return torch.stack(out)

    return call


DIRECT: dict[tuple[str, str], DirectCall] = {
    ("saliency", "flashtorch"): _flashtorch(guided=False),
    ("guided_backprop", "flashtorch"): _flashtorch(guided=True),
}
