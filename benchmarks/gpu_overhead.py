"""Where a cnnlens call spends its time beyond the toolkit's own, on a GPU (or CPU).

Profiles N calls of ``Explainer(model, method, "captum").explain`` with cProfile after a warm-up and
prints (1) the median wall time of cnnlens and of the direct Captum call, interleaved, each followed
by a device synchronisation, and (2) the functions with the most own time inside explain(), so a
synchronisation or a slow step outside the toolkit shows up by name.

Usage: python benchmarks/gpu_overhead.py --device cuda --models efficientnet_lite0,resnet50 --calls 50
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
import warnings

import torch
from perf import limit_layer, study_inputs  # benchmarks/ is on sys.path when this file runs as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--methods", default="saliency,gradcam",
                    help="captum methods; 'pgc-gradcam' is pytorch-grad-cam's GradCAM (direct = its GradCAM)")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from captum import attr as ca

    import cnnlens

    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for mname in args.models.split(","):
        model, x, t = study_inputs(mname, dev, args.batch)
        for method in args.methods.split(","):
            pgc = method.startswith("pgc-")
            ex = cnnlens.Explainer(model, method.removeprefix("pgc-"), "pytorch-grad-cam" if pgc else "captum")
            layer = ex.explain(x[:1], target=t[:1]).layer
            mod = dict(model.named_modules())[layer] if layer else None
            direct = {
                "saliency": lambda m=model, x=x, t=t: ca.Saliency(m).attribute(x, target=t, abs=False),
                "gradcam": lambda m=model, mod=mod, x=x, t=t: ca.LayerGradCam(m, mod).attribute(x, target=t),
                "pgc-gradcam": lambda m=model, mod=mod, x=x, t=t: pgc_gradcam(m, mod, x, t),
            }[method]
            fns = {"cnnlens": lambda ex=ex, x=x, t=t: ex.explain(x, target=t), "direct": direct}
            if mod is not None:  # the Grad-CAM limit of perf.py: forward + grad of the score to the layer
                fns["limit"] = limit_layer(model, mod, x, t)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for f in fns.values():
                f()
            for _ in range(args.calls):
                for k, f in fns.items():
                    sync()
                    t0 = time.perf_counter()
                    f()
                    sync()
                    times[k].append(time.perf_counter() - t0)
            c, d = (statistics.median(times[k]) * 1e3 for k in ("cnnlens", "direct"))
            ratio = statistics.median(a / b for a, b in zip(times["cnnlens"], times["direct"], strict=True))
            lim = ""
            if "limit" in times:
                r = statistics.median(a / b for a, b in zip(times["cnnlens"], times["limit"], strict=True))
                lim = f", limit {statistics.median(times['limit']) * 1e3:.2f} ms, cnnlens/limit {r:.3f}"
            print(f"\n## {mname} {method} ({dev}): cnnlens {c:.2f} ms, direct {d:.2f} ms, "
                  f"cnnlens/direct {ratio:.3f}, difference {c - d:.2f} ms{lim}")
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(args.calls):
                ex.explain(x, target=t)
            sync()
            pr.disable()
            s = io.StringIO()
            st = pstats.Stats(pr, stream=s)
            st.sort_stats("tottime").print_stats(18)
            print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:4000])


def pgc_gradcam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> object:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model, [layer]) as cam:
        return cam(x, targets=[ClassifierOutputTarget(int(c)) for c in t.tolist()])


if __name__ == "__main__":
    main()
