"""FlashTorch: the toolkit and its (method, backend) pairs (it brings no method of its own).

Nothing here imports the toolkit: its adapter (``cnnlens.adapters.flashtorch``) does, when a pair is run.
"""

from __future__ import annotations

from cnnlens.registry.schema import Backend, Implementation, add_backend, register

add_backend(Backend("flashtorch", "flashtorch", "flashtorch", "https://github.com/MisaOgura/flashtorch"))

_FLASH = "cnnlens.adapters.flashtorch:FlashTorchAdapter"

register(
    Implementation("saliency", "flashtorch", _FLASH, "Backprop.calculate_gradients(guided=False)",
                   notes="FlashTorch's own code, fixed at the boundary by cnnlens: the target honoured (a wrapper "
                         "returning the target logits' sum), batched, the input gradient recorded on a private "
                         "leaf copy of the input (not at the first Conv2d), its hooks removed"),
    Implementation("guided_backprop", "flashtorch", _FLASH, "Backprop.calculate_gradients(guided=True)",
                   notes="FlashTorch's own variant: clamp(grad_out, 0) * relu_output instead of "
                         "clamp(grad_out, 0) * (input > 0); nn.ReLU modules only; FlashTorch's own ReLU hooks, "
                         "registered as full backward hooks (in-place ReLUs run out of place); fixed at the "
                         "boundary as for saliency: the target honoured, batched, the input gradient recorded on "
                         "a private leaf copy, its hooks removed"),
)
