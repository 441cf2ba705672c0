"""Each toolkit called directly, as its own documentation shows, for tests/test_direct.py.

One module per backend, each exporting ``DIRECT: dict[(method, backend), DirectCall]``. A
``DirectCall(model, x, targets, layer, options) -> Tensor`` runs the toolkit's public API on its own
(no cnnlens code in the call) and returns the attribution in cnnlens's ``raw`` convention (the CAM
before the toolkit's ReLU, scaling and resize; the signed ``(N, C, H, W)`` attribution for pixel
methods), so that ``test_direct.py`` can compare it with ``Explanation.raw`` and ``.maps``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

DirectCall = Callable[[nn.Module, Tensor, Tensor, "nn.Module | None", dict[str, Any]], Tensor]
