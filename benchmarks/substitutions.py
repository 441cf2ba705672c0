"""Speed of each substitution cnnlens may apply, against the toolkit's own code, side by side.

A substitution (a toolkit step replaced by cnnlens code) stays only where it is at least 1.5x
faster. For each (model, method) this times, interleaved in one process,

* ``shortcuts``: ``Explainer(model, method, "pytorch-grad-cam", shortcuts=True).explain(x, target=t)``;
* ``toolkit``: the same with ``shortcuts=False`` (pytorch-grad-cam's own code throughout, parameters
  trainable as the user holds them),

and reports the median over rounds of the per-round ratio ``toolkit / shortcuts`` (the machine's
speed drifts within a minute; a ratio of two times taken in the same round cancels that). The
substitutions each call applied are printed from ``Explanation.provenance``: Grad-CAM and the other
gradient CAMs apply the early backward stop, Eigen-CAM the economy SVD, Eigen-Grad-CAM both.

A second table isolates the economy SVD: pytorch-grad-cam's ``get_2d_projection`` against
``economy_projection`` on the very activations (and gradient x activation products) of the CAM
layer for the same batch.

Usage:
    python benchmarks/substitutions.py --models efficientnet_lite0,resnet50 --batch 8 --size 224 \\
        --threads 2 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import _resolve

METHODS = ["gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "layercam", "gradcam_elementwise", "eigencam",
           "eigengradcam"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        model = cnnlens.load_model()
    else:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(True)  # as users hold models
    return model


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a / b, both taken in the same round."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def layer_products(model: nn.Module, layer: nn.Module, x: Tensor, t: Tensor) -> tuple:
    acts: list[Tensor] = []
    h = layer.register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        out = model(x)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), acts[0])
    a = acts[0].detach().numpy()
    return a, (g * acts[0]).detach().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from cnnlens.adapters.pytorch_grad_cam import economy_projection

    rows, svd_rows = [], []
    for mname in args.models.split(","):
        model = build(mname)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            t = model(x).argmax(1)
        probe = _resolve.probe(model, x[:1])
        layer, lname = _resolve.resolve_layer(model, None, probe)
        for method in args.methods.split(","):
            fast = cnnlens.Explainer(model, method, "pytorch-grad-cam", layer=lname, shortcuts=True)
            slow = cnnlens.Explainer(model, method, "pytorch-grad-cam", layer=lname, shortcuts=False)
            fns = {"shortcuts": lambda ex=fast, x=x, t=t: ex.explain(x, target=t),
                   "toolkit": lambda ex=slow, x=x, t=t: ex.explain(x, target=t)}
            subs = fns["shortcuts"]().provenance.substitutions  # warm-up, and what it substitutes
            fns["toolkit"]()
            times: dict[str, list[float]] = {k: [] for k in fns}
            names = list(fns)
            for rep in range(args.reps):
                for n in names[rep % 2:] + names[: rep % 2]:
                    t0 = time.perf_counter()
                    fns[n]()
                    times[n].append(time.perf_counter() - t0)
            r = (mname, lname, method, statistics.median(times["shortcuts"]), statistics.median(times["toolkit"]),
                 paired(times["toolkit"], times["shortcuts"]), "; ".join(subs) or "none")
            rows.append(r)
            print(f"[{mname}] {method}: shortcuts {r[3]:.3f}s toolkit {r[4]:.3f}s toolkit/shortcuts {r[5]:.2f} ({r[6]})",
                  file=sys.stderr, flush=True)
        acts, prods = layer_products(model, layer, x, t)
        for what, batch in (("activations (Eigen-CAM)", acts), ("grad x activations (Eigen-Grad-CAM)", prods)):
            times = {"economy": [], "toolkit": []}
            economy_projection(batch)
            get_2d_projection(batch)
            for rep in range(args.reps):
                order = [("economy", economy_projection), ("toolkit", get_2d_projection)]
                for n, fn in order[rep % 2:] + order[: rep % 2]:
                    t0 = time.perf_counter()
                    fn(batch)
                    times[n].append(time.perf_counter() - t0)
            svd_rows.append((mname, lname, what, tuple(batch.shape), statistics.median(times["economy"]),
                             statistics.median(times["toolkit"]), paired(times["toolkit"], times["economy"])))

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size} px, "
          f"median of {args.reps} interleaved rounds after one warm-up; ratios are medians of per-round ratios.\n")
    print("| model | layer | method | shortcuts=True s | shortcuts=False s | False/True | substitutions applied |")
    print("|---|---|---|---|---|---|---|")
    for m, ln, me, a, b, r, s in rows:
        print(f"| {m} | {ln} | {me} | {a:.3f} | {b:.3f} | {r:.2f} | {s} |")
    print("\n| model | layer | projected | shape | economy_projection s | get_2d_projection s | toolkit/economy |")
    print("|---|---|---|---|---|---|---|")
    for m, ln, w, shp, a, b, r in svd_rows:
        print(f"| {m} | {ln} | {w} | {shp} | {a:.4f} | {b:.4f} | {r:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
