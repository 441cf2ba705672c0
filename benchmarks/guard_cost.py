"""Fixed costs per call: cnnlens's model guard (snapshot + restore of the user's model), and the
module walks pytorch-grad-cam makes on every call that cnnlens skips.

Usage: python benchmarks/guard_cost.py [--calls 300] [--device cuda]
Prints microseconds per enter+restore on resnet50, vgg11 and the embedded EfficientNet-Lite0, with
nothing changed inside the block and with one forward hook added inside it (what Captum's layer
methods and pytorch-grad-cam do), which makes the guard look for new hooks. Then, on
EfficientNet-Lite0 with a 2 x 3 x 32 x 32 input (little compute, so fixed costs show), a
pytorch-grad-cam Grad-CAM through cnnlens with and without its per-call ``model.eval()`` /
``model.zero_grad()`` walks (interleaved, median of 60).
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
    pgc_walks(dev)


def pgc_walks(device: torch.device) -> None:
    from cnnlens.adapters import pytorch_grad_cam as pgc_adapter

    model = cnnlens.load_model(device=device)
    x, t = torch.randn(2, 3, 32, 32, device=device), torch.tensor([1, 2], device=device)
    ex = cnnlens.Explainer(model, "gradcam", "pytorch-grad-cam")
    kept = set(pgc_adapter.NO_WALK)

    def call(skip: bool) -> float:
        pgc_adapter.NO_WALK.clear()
        pgc_adapter.NO_WALK.update(kept if skip else set())
        t0 = time.perf_counter()
        ex.explain(x, target=t)
        return time.perf_counter() - t0

    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for skip in (True, False):
            call(skip)
        for _ in range(60):
            for skip in (True, False):
                times[skip].append(call(skip))
    finally:
        pgc_adapter.NO_WALK.clear()
        pgc_adapter.NO_WALK.update(kept)
    a, b = (statistics.median(times[k]) * 1e3 for k in (True, False))
    print(f"pytorch-grad-cam Grad-CAM, lite0, 2 x 32 px: {a:.2f} ms skipping its eval()/zero_grad() walks, "
          f"{b:.2f} ms with them ({b - a:.2f} ms per call)")


if __name__ == "__main__":
    main()
