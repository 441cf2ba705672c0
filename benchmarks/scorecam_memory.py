"""Peak memory of ScoreCAM at batch 8: cnnlens against pytorch-grad-cam called directly.

pytorch-grad-cam's ScoreCAM materialises ``input[:, None] * masks[:, :, None]`` for the whole batch,
an (N, C, 3, H, W) tensor: 8 x 1280 x 3 x 224 x 224 float32 = 7.7 GB on EfficientNet-Lite0 and
12.3 GB on resnet50 (2048 channels), before the upsampled masks. cnnlens runs it one image at a time.

Usage:
    python benchmarks/scorecam_memory.py --model efficientnet_lite0 --batch 8 [--direct]
Prints the peak RSS above the idle process for each variant, and the analytic tensor sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from perf import PeakRSS, build_model, target_layer

import cnnlens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--direct", action="store_true", help="also run pytorch-grad-cam directly (needs the RAM above)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model = build_model(args.model, torch.device("cpu"))
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = model(x).argmax(1)
    layer, name = target_layer(model, x)
    store: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda _m, _i, o: store.append(o))
    with torch.no_grad():
        model(x[:1])
    h.remove()
    c = int(store[-1].shape[1])
    masked = args.batch * c * 3 * args.size * args.size * 4 / 2**30
    masks = args.batch * c * args.size * args.size * 4 / 2**30
    print(f"{args.model}, layer {name} ({c} channels), batch {args.batch}, {args.size} px")
    print(f"pytorch-grad-cam direct builds masked inputs of {masked:.2f} GiB plus masks of {masks:.2f} GiB at once; "
          f"cnnlens per image: {masked / args.batch:.2f} + {masks / args.batch:.2f} GiB")
    # the limit: (C + 1) forwards per image, at the per-image cost of a no-grad forward of 8 images
    xb = torch.randn(8, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(xb)
        t0 = time.perf_counter()
        model(xb)
        per_image = (time.perf_counter() - t0) / 8
    limit = per_image * (c + 1) * args.batch
    print(f"limit    : {(c + 1) * args.batch} forwards x {per_image * 1000:.1f} ms = {limit:.1f} s")
    ex = cnnlens.Explainer(model, "scorecam", "pytorch-grad-cam", layer=name)
    t0 = time.perf_counter()
    with PeakRSS() as p:
        e = ex.explain(x, target=t)
    took = time.perf_counter() - t0
    print(f"cnnlens  : peak RSS +{p.mb / 1024:.2f} GiB, {took:.1f} s ({took / limit:.2f}x the limit), maps {tuple(e.maps.shape)}")
    if args.direct:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        t0 = time.perf_counter()
        with PeakRSS() as p, pgc.ScoreCAM(model, target_layers=[layer]) as cam:
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])
        took = time.perf_counter() - t0
        print(f"direct   : peak RSS +{p.mb / 1024:.2f} GiB, {took:.1f} s ({took / limit:.2f}x the limit)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
