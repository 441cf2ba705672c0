"""Memory kept by explained models: build, explain, delete a model several times; print the RSS.

Usage: python benchmarks/guard_leak.py [--cycles 8] [--model resnet50] [--method saliency --backend captum]

Each cycle builds a torchvision model with random weights, explains one 224 x 224 image, deletes
the model and collects garbage. With nothing kept alive, the RSS after the last cycle is about the
RSS after the first; a cache that holds every explained model grows by one model per cycle (resnet50:
about 100 MB of parameters). The script also counts the models still alive (by weak reference).
"""

from __future__ import annotations

import argparse
import gc
import weakref

import psutil
import torch
import torchvision

import cnnlens


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=8)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--method", default="saliency")
    ap.add_argument("--backend", default="captum")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    refs = []
    start = rss_mb()
    print(f"RSS before: {start:.0f} MB")
    for i in range(args.cycles):
        model = torchvision.models.get_model(args.model, weights=None).eval()
        cnnlens.explain(model, x, args.method, backend=args.backend, target=0)
        refs.append(weakref.ref(model))
        del model
        gc.collect()
        alive = sum(r() is not None for r in refs)
        print(f"cycle {i + 1}: RSS {rss_mb():.0f} MB, models alive {alive}")
    print(f"RSS after {args.cycles} build/explain/delete cycles of {args.model} ({args.method}, {args.backend}): "
          f"{rss_mb():.0f} MB ({rss_mb() - start:+.0f} MB), models alive {sum(r() is not None for r in refs)}")


if __name__ == "__main__":
    main()
