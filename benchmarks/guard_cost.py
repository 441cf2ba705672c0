"""Fixed cost per call of cnnlens's model guard (snapshot + restore of the user's model).

Usage: python benchmarks/guard_cost.py [--calls 300] [--device cuda]
Prints microseconds per enter+restore on resnet50, vgg11 and the embedded EfficientNet-Lite0, with
nothing changed inside the block and with one forward hook added inside it (what Captum's layer
methods and pytorch-grad-cam do), which makes the guard look for new hooks. Then, on
EfficientNet-Lite0 with a 2 x 3 x 32 x 32 input (little compute, so fixed costs show), the guard's
own cost timed right after a Captum saliency call on that input (what it pays inside ``explain()``,
with the CPU caches full of the forward and backward) against right after another guard.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cnnlens
from cnnlens._guard import ModelGuard


def per_call_us(fn, calls: int) -> float:
    fn()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--device", default="cpu", help="where the model lives (its buffer copies are made there)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    for name in ("efficientnet_lite0", "resnet50", "vgg11"):
        model = (cnnlens.load_model(device=dev) if name == "efficientnet_lite0"
                 else cnnlens.load_model(name, weights=None, device=dev))
        for p in model.parameters():
            p.requires_grad_(True)
        last = list(model.modules())[-1]

        def plain(model=model) -> None:
            with ModelGuard(model):
                pass

        def hooked(model=model, last=last) -> None:
            with ModelGuard(model):
                last.register_forward_hook(lambda *_a: None)

        n = sum(1 for _ in model.modules())
        print(f"{name} ({n} modules): guard {per_call_us(plain, args.calls):.0f} us per call, "
              f"with a hook added inside {per_call_us(hooked, args.calls):.0f} us")
    guard_after_a_call(dev)


def guard_after_a_call(device: torch.device, rounds: int = 60) -> None:
    """The guard's enter + restore right after a model call, against right after another guard."""
    from captum.attr import Saliency

    model = cnnlens.load_model(device=device)
    for p in model.parameters():
        p.requires_grad_(True)
    x = torch.randn(2, 3, 32, 32, device=device).requires_grad_()  # as Captum wants it: no warning
    t = torch.tensor([1, 2], device=device)
    saliency = Saliency(model)

    def timed_guard() -> float:
        t0 = time.perf_counter()
        with ModelGuard(model):
            pass
        return time.perf_counter() - t0

    saliency.attribute(x, target=t)
    warm, cold = [], []
    for _ in range(rounds):
        warm.append((timed_guard(), timed_guard())[1])
        saliency.attribute(x, target=t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cold.append(timed_guard())
    print(f"guard on lite0: {statistics.median(warm) * 1e6:.0f} us right after another guard, "
          f"{statistics.median(cold) * 1e6:.0f} us right after a Captum saliency call (2 x 32 px)")


if __name__ == "__main__":
    main()
