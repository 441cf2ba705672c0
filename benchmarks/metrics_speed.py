"""Speed of the metrics a study computes twice: cnnlens' (or Captum's through cnnlens) against Quantus
called the way its documentation shows, on the same maps of the same images.

For each shared metric, interleaved in one process for ``--reps`` rounds, on ``--images`` images:

* pointing game: ``cnnlens.bench.metrics.pointing_hit`` per image / ``quantus.PointingGame()(...)`` on the batch;
* deletion: ``perturbation_curve`` (deletion to 0, ``--steps`` steps, one batched forward per image) /
  ``quantus.PixelFlipping(features_in_step=H*W/steps)(...)`` (the same number of steps);
* infidelity: ``captum_infidelity`` (``--samples`` Gaussian perturbations) /
  ``quantus.Infidelity(perturb_patch_sizes=[--patch], n_perturb_samples=--samples)(...)``;
* model randomisation: one re-explanation of the fully randomised model (cnnlens' sanity stages,
  last step) / ``quantus.MPRT(skip_layers=True)(...)`` with cnnlens' explain as ``explain_func``.

It prints seconds per image for each and the median over rounds of the per-round ratio Quantus /
cnnlens (a ratio of two times taken in the same round cancels the machine's drift). The two sides
do not do identical work everywhere (the metrics' definitions differ: see
``cnnlens.bench.metric_agreement.SHARED``); the table says what each side computed.

Usage:
    python benchmarks/metrics_speed.py --images 4 --size 160 --method saliency --backend captum --reps 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--method", default="saliency")
    ap.add_argument("--backend", default="captum")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--patch", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")

    import quantus

    import cnnlens
    from cnnlens.bench import metrics as M
    from cnnlens.bench import quantus_metrics as Q
    from cnnlens.bench.engine import randomization_stages
    from cnnlens.explainer import Explainer

    model = cnnlens.load_model(a.model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.images, 3, a.size, a.size, generator=g)
    with torch.no_grad():
        t = model(x).argmax(1)
    targets = t.tolist()
    maps = Explainer(model, a.method, a.backend).explain(x, target=t).maps.float().numpy()
    hw = a.size * a.size
    box = (a.size // 4, a.size // 4, 3 * a.size // 4, 3 * a.size // 4)
    masks = np.zeros((a.images, a.size, a.size), bool)
    masks[:, box[1]:box[3], box[0]:box[2]] = True
    xn, yn = x.numpy(), np.asarray(targets)
    an, sn = maps[:, None], masks[:, None].astype(np.float32)
    explain_func = Q.make_explain_func(a.method, a.backend)

    def randomised_explain() -> None:
        for j in range(a.images):
            m = copy.deepcopy(model)
            torch.manual_seed(0)
            for _name, stage in randomization_stages(m):  # every stage re-initialised, as the study's last step
                for sub in stage.modules():
                    if hasattr(sub, "reset_parameters"):
                        sub.reset_parameters()
            Explainer(m, a.method, a.backend).explain(x[j:j + 1], target=t[j:j + 1])

    kw = {"disable_warnings": True, "display_progressbar": False}
    pairs: dict[str, tuple[str, Callable[[], Any], str, Callable[[], Any]]] = {
        "pointing game": (
            "pointing_hit per image", lambda: [M.pointing_hit(maps[j], box) for j in range(a.images)],
            "quantus.PointingGame",
            lambda: quantus.PointingGame(**kw)(model=model, x_batch=xn, y_batch=yn, a_batch=an, s_batch=sn,
                                               device="cpu")),
        "deletion": (
            f"perturbation_curve, {a.steps} steps",
            lambda: [M.perturbation_curve(model, x[j], maps[j], targets[j], torch.zeros_like(x[j]), "deletion",
                                          a.steps) for j in range(a.images)],
            f"quantus.PixelFlipping(features_in_step={hw // a.steps})",
            lambda: quantus.PixelFlipping(features_in_step=hw // a.steps, **kw)(
                model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu", softmax=True)),
        "infidelity": (
            f"captum infidelity, {a.samples} samples",
            lambda: [M.captum_infidelity(model, x[j], maps[j], targets[j], n_perturb_samples=a.samples)
                     for j in range(a.images)],
            f"quantus.Infidelity(patch {a.patch}, {a.samples} samples)",
            lambda: quantus.Infidelity(perturb_patch_sizes=[a.patch], n_perturb_samples=a.samples, **kw)(
                model=model, x_batch=xn, y_batch=yn, a_batch=an, device="cpu")),
        "model randomisation": (
            "explain the fully randomised model", randomised_explain,
            "quantus.MPRT(skip_layers=True)",
            lambda: quantus.MPRT(skip_layers=True, **kw)(model=model, x_batch=xn, y_batch=yn, a_batch=an,
                                                          device="cpu", explain_func=explain_func)),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in pairs}
    for _ in range(a.reps):
        for name, (_d1, ours, _d2, theirs) in pairs.items():
            times[name].append((_timed(ours), _timed(theirs)))
    print(f"{a.model} at {a.size} px, {a.images} images, {a.method} [{a.backend}] maps, {a.threads} thread(s), "
          f"{a.reps} rounds, torch {torch.__version__}, quantus {quantus.__version__}")
    print()
    print("| metric | cnnlens side | s/image | Quantus side | s/image | Quantus / cnnlens (median ratio) |")
    print("|---|---|---|---|---|---|")
    for name, (d1, _o, d2, _t) in pairs.items():
        ts = times[name]
        ours = statistics.median(o for o, _ in ts) / a.images
        theirs = statistics.median(q for _, q in ts) / a.images
        ratio = statistics.median(q / o for o, q in ts if o > 0)
        print(f"| {name} | {d1} | {ours:.4f} | {d2} | {theirs:.4f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
