"""Which ingredient of a cnnlens call costs time on a GPU: an A/B of each, interleaved.

For Captum's saliency and LayerGradCam on each model, times (median of --rounds interleaved rounds,
each call followed by a device synchronisation) the direct Captum call, then the same call with one
ingredient of ``Explainer.explain`` added at a time: parameters frozen (``requires_grad=False``, as
the guard does), a cloned input, the model guard around it, the output contract's post-processing,
the adapter inside the guard, and the whole ``explain``. Also prints the CPU time until each call
returns (before the synchronisation): when it is close to the wall time, the call is bound by the
CPU launching kernels, and any Python added per call adds in full.

Without a GPU, ``--device cpu --batch 2 --size 32 --threads 1`` shrinks the compute until the same
fixed per-call costs dominate, so a CPU-only session can still see what each ingredient costs.

Usage: python benchmarks/gpu_ab.py --device cuda [--models efficientnet_lite0,resnet50] [--rounds 30]
       python benchmarks/gpu_ab.py --device cpu --batch 2 --size 32 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from perf import study_inputs, sync  # benchmarks/ is on sys.path when this file runs as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args, dev = study_args(ap, models="efficientnet_lite0,resnet50", batch=8)
    for mname in args.models.split(","):
        model, x, t = study_inputs(mname, dev, args.batch, args.size)
        print(f"\n# {mname}")
        for method in ("saliency", "gradcam"):
            ab(model, x, t, method, args.rounds, dev)


def study_args(ap: argparse.ArgumentParser, models: str, batch: int) -> tuple[argparse.Namespace, torch.device]:
    """The options this script shares with gpu_trace.py; parses them and applies --threads."""
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=models)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--size", type=int, default=224, help="image side in pixels")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)


def captum_case(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, method: str
                ) -> tuple[Any, torch.nn.Module | None, Callable[[torch.Tensor], torch.Tensor]]:
    """cnnlens's Explainer for ``method`` on Captum, the layer it resolves, and Captum called directly
    with the same settings (saliency without abs, Grad-CAM without ReLU: cnnlens applies both itself)."""
    from captum import attr as ca

    import cnnlens

    ex = cnnlens.Explainer(model, method, "captum")
    name = ex.explain(x[:1], target=t[:1]).layer
    layer = model.get_submodule(name) if name else None

    def direct(xx: torch.Tensor) -> torch.Tensor:
        if method == "saliency":
            return ca.Saliency(model).attribute(xx, target=t, abs=False)
        return ca.LayerGradCam(model, layer).attribute(xx, target=t, relu_attributions=False)

    return ex, layer, direct


def ab(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, method: str, rounds: int, dev: torch.device) -> None:
    from cnnlens import _post
    from cnnlens._guard import ModelGuard

    params = list(model.parameters())
    ex, layer, direct = captum_case(model, x, t, method)
    kind = "cam" if method == "gradcam" else "pixel"
    adapter = ex._adapter_cls(ex.net, ex.impl, layer, ex.options)

    def frozen() -> object:
        for p in params:
            p.requires_grad_(False)
        try:
            return direct(x)
        finally:
            for p in params:
                p.requires_grad_(True)

    def guarded() -> object:
        with ModelGuard(model):
            return direct(x)

    def in_guard() -> object:
        with ModelGuard(model), torch.enable_grad():
            return adapter.run(x.clone(), t)

    variants: dict[str, Callable[[], object]] = {
        "direct": lambda: direct(x),
        "+ params frozen": frozen,
        "+ input cloned": lambda: direct(x.clone()),
        "+ guard": guarded,
        "+ post-processing": lambda: _post.to_maps(direct(x), kind, (x.shape[2], x.shape[3])),
        "adapter in guard": in_guard,
        "explain": lambda: ex.explain(x, target=t),
    }
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():
        f()
    for _ in range(rounds):
        for k, f in variants.items():
            sync(dev)
            t0 = time.perf_counter()
            f()
            t1 = time.perf_counter()
            sync(dev)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(t1 - t0)
    base = statistics.median(wall["direct"])
    print(f"\n## {method} ({dev}, batch {x.shape[0]}, {x.shape[2]} px)")
    print("| variant | wall ms | CPU until return ms | / direct |")
    print("|---|---|---|---|")
    for k in variants:
        w = statistics.median(wall[k])
        print(f"| {k} | {w * 1e3:.2f} | {statistics.median(cpu[k]) * 1e3:.2f} | {w / base:.3f} |")

if __name__ == "__main__":
    main()
