"""Speed of every method against its compute limit and against the toolkit called directly.

For each (model, method, backend) it times, interleaved in one process on one machine:

* ``cnnlens``: ``Explainer(...).explain(x, target=t)`` (explicit targets, so no extra forward);
* ``direct``: the toolkit called the way its documentation shows, with the same settings;
* ``limit``: the method's compute limit -- one forward plus ``torch.autograd.grad`` of the target
  score w.r.t. the CAM layer (gradient CAMs), or w.r.t. the input (gradient methods); for
  many-forward methods, the number of image-forwards times the per-image cost of a forward at the
  study's batch size (forward+input-gradient for IG and the SmoothGrad family, no-grad forward
  otherwise), timed by running that many batched forwards (at most ``--many-limit-units`` per round,
  scaled beyond that).

It prints median times and the ratios cnnlens/limit, direct/limit and cnnlens/direct -- each the
median over rounds of the two times taken in the same round, see :func:`paired` -- plus the peak
memory of each cnnlens call (RSS high-water above the idle process on CPU, max_memory_allocated on
CUDA) and throughput. Timing claims come from this script, never from unit tests.

Usage:
    python benchmarks/perf.py --models efficientnet_lite0,resnet50,vgg11 --batch 8 --size 224 \\
        --device cpu --threads 2 --reps 5 --out benchmarks/results/perf-cpu.md
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from math import nan
from pathlib import Path

import psutil
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import _resolve
from cnnlens.registry import REGISTRY

START = time.perf_counter()

GRAD_CAMS = ["gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "layercam", "eigengradcam", "gradcam_elementwise"]
GRADIENTS = ["saliency", "guided_backprop", "input_x_gradient", "deconvolution", "guided_gradcam"]
MANY = ["scorecam", "ablationcam", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad", "occlusion",
        "lime", "kernel_shap"]
#: many-forward methods that take an input gradient at every forward
GRAD_MANY = ("integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad")
# Options for many-forward methods, kept small enough for a CPU run; the forward count follows them.
MANY_OPTS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"nt_samples": 8},
    "smoothgrad_sq": {"nt_samples": 8},
    "vargrad": {"nt_samples": 8},
    "occlusion": {"sliding_window": 56, "strides": 56},
    "lime": {"n_samples": 32, "feature_grid": 32},
    "kernel_shap": {"n_samples": 32, "feature_grid": 32},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakRSS:
    """Sample the process RSS every 2 ms in a thread; report the high-water mark above the start."""

    def __enter__(self) -> PeakRSS:
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._t.join()

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


@dataclass
class Case:
    model: str
    method: str
    backend: str
    fns: dict[str, Callable[[], object]]
    forwards: int | None = None
    #: the limit is ``scale`` times the timed ``limit`` function (a run of batched forwards of a many-forward method)
    limit_scale: float = 1.0
    images: int = 8
    times: dict[str, list[float]] = field(default_factory=dict)
    peak_mb: float = float("nan")


def build_model(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        return cnnlens.load_model(device=device)
    return cnnlens.load_model(name, weights=None, device=device)


def study_inputs(name: str, device: torch.device, batch: int = 8, size: int = 224,
                 gen: torch.Generator | None = None) -> tuple[nn.Module, Tensor, Tensor]:
    """The model with trainable parameters (as users hold models), a random batch drawn from ``gen``
    (seeded 0 by default), and the model's predicted classes for it as targets."""
    model = build_model(name, device)
    for p in model.parameters():
        p.requires_grad_(True)
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t


def target_layer(model: nn.Module, x: Tensor) -> tuple[nn.Module, str]:
    probe = _resolve.probe(model, x[:1])
    return _resolve.resolve_layer(model, None, probe)


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------


def limit_layer(model: nn.Module, layer: nn.Module, x: Tensor, t: Tensor) -> Callable[[], object]:
    def run() -> object:
        store: list[Tensor] = []
        h = layer.register_forward_hook(lambda _m, _i, o: store.append(o))
        try:
            out = model(x)
        finally:
            h.remove()
        return torch.autograd.grad(out.gather(1, t[:, None]).sum(), store[-1])

    return run


def limit_input(model: nn.Module, x: Tensor, t: Tensor) -> Callable[[], object]:
    def run() -> object:
        xi = x.detach().requires_grad_(True)
        out = model(xi)
        return torch.autograd.grad(out.gather(1, t[:, None]).sum(), xi)

    return run


def limit_forward(model: nn.Module, x: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def repeated(fn: Callable[[], object], times: int) -> Callable[[], object]:
    def run() -> object:
        out = None
        for _ in range(times):
            out = fn()
        return out

    return run


def own_forwards(model: nn.Module, call: Callable[[], object], grad: bool, device: torch.device) -> Callable[[], object]:
    """The forwards a many-forward method makes, replayed without the method's other work.

    The first run records the batch size of every forward the model sees during one ``call``; each
    run then makes forwards of those sizes (with an input gradient where the method takes one) on
    random inputs. ``cnnlens / own`` is the method's cost over its own forwards, whatever batch it
    chose; ``cnnlens / limit`` also weighs that choice against forwards at the study's batch size.
    """
    sizes: list[int] = []
    inputs: dict[int, Tensor] = {}

    def record() -> None:
        seen: list[tuple[int, ...]] = []
        h = model.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape)))
        try:
            call()
        finally:
            h.remove()
        gen = torch.Generator().manual_seed(1)
        for shape in seen:
            sizes.append(shape[0])
            if shape[0] not in inputs:
                inputs[shape[0]] = torch.randn(shape, generator=gen).to(device)

    def run() -> object:
        if not sizes:
            record()
        out = None
        for n in sizes:
            xi = inputs[n]
            if grad:
                xi = xi.detach().requires_grad_(True)
                out = torch.autograd.grad(model(xi)[:, 0].sum(), xi)
            else:
                with torch.no_grad():
                    out = model(xi)
        return out

    run.sizes = sizes  # type: ignore[attr-defined]
    return run


def many_forward_count(method: str, model: nn.Module, layer_channels: int, n: int, size: int) -> int:
    o = MANY_OPTS.get(method, {})
    if method in ("scorecam", "ablationcam"):
        return n * (layer_channels + 1)
    if method == "integrated_gradients":
        return n * o["n_steps"]
    if method in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        return n * o["nt_samples"]
    if method == "occlusion":
        w, s = o["sliding_window"], o["strides"]
        per_axis = (size - w) // s + 1
        return n * (per_axis * per_axis + 1)
    if method in ("lime", "kernel_shap"):
        return n * o["n_samples"]  # Captum forwards the perturbed samples only, not the original
    raise KeyError(method)


# ---------------------------------------------------------------------------------------------
# Direct toolkit calls (no cnnlens in the loop)
# ---------------------------------------------------------------------------------------------


def direct_call(method: str, backend: str, model: nn.Module, layer: nn.Module, x: Tensor, t: Tensor) -> Callable[[], object] | None:
    if backend == "pytorch-grad-cam":
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from cnnlens.adapters.pytorch_grad_cam import CLASSES

        if method == "guided_backprop":
            from pytorch_grad_cam import GuidedBackpropReLUModel

            def gb() -> object:
                m = copy.deepcopy(model)  # pytorch-grad-cam swaps the ReLUs and puts fresh ones back
                g = GuidedBackpropReLUModel(m)
                return [g(x[i : i + 1].clone(), target_category=int(t[i])) for i in range(x.shape[0])]

            return gb
        if method == "guided_gradcam":
            from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel

            def ggc() -> object:  # pytorch-grad-cam's README recipe: guided backprop x the Grad-CAM image
                m = copy.deepcopy(model)
                g = GuidedBackpropReLUModel(m)
                gb = [g(x[i : i + 1].clone(), target_category=int(t[i])) for i in range(x.shape[0])]
                with GradCAM(model, target_layers=[layer]) as c:
                    cams = c(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])
                return [cams[i][:, :, None] * gb[i] for i in range(x.shape[0])]

            return ggc
        if method not in CLASSES:
            return None
        cls = getattr(pgc, CLASSES[method])

        def cam() -> object:
            with cls(model, target_layers=[layer]) as c:
                return c(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])

        return cam
    if backend == "captum":
        from captum import attr as ca

        simple = {"saliency": ca.Saliency, "guided_backprop": ca.GuidedBackprop, "input_x_gradient": ca.InputXGradient,
                  "deconvolution": ca.Deconvolution}
        if method == "gradcam":
            return lambda: ca.LayerGradCam(model, layer).attribute(x, target=t)
        if method == "guided_gradcam":
            return lambda: ca.GuidedGradCam(model, layer).attribute(x, target=t)
        if method in simple:
            kw = {"abs": False} if method == "saliency" else {}
            return lambda: simple[method](model).attribute(x, target=t, **kw)
        return None
    if backend == "flashtorch":
        from flashtorch.saliency import Backprop

        def ft() -> object:
            m = copy.deepcopy(model)  # FlashTorch leaves its hooks behind
            # use_gpu: without it FlashTorch seeds backward with a CPU tensor and fails on a CUDA model
            bp = Backprop(m)
            out = []
            for i in range(x.shape[0]):
                xi = x[i : i + 1].clone().requires_grad_(True)
                out.append(bp.calculate_gradients(xi, int(t[i]), guided=method == "guided_backprop", use_gpu=x.is_cuda))
            return out

        return ft
    return None


def time_case(case: Case, reps: int, device: torch.device) -> None:
    names = list(case.fns)
    case.times = {n: [] for n in names}
    for n in names:  # warm-up, also for lazy imports
        case.fns[n]()
    for rep in range(reps):
        # Interleaved, so drifts hit every variant alike; the order rotates each round, so no variant
        # always runs right after the same neighbour.
        k = rep % len(names)
        for n in names[k:] + names[:k]:
            sync(device)
            t0 = time.perf_counter()
            case.fns[n]()
            sync(device)
            case.times[n].append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        case.fns["cnnlens"]()
        sync(device)
        case.peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        with PeakRSS() as p:
            case.fns["cnnlens"]()
        case.peak_mb = p.mb


def med(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def paired(case: Case, a: str, b: str) -> float:
    """Median over rounds of a's time / b's time in the same round (runs seconds apart).

    On a shared machine the speed drifts by tens of percent within a minute; a ratio of two times
    taken in the same round cancels that drift, where a ratio of two medians does not.
    """
    ta, tb = case.times.get(a, []), case.times.get(b, [])
    if not ta or not tb:
        return float("nan")
    return statistics.median(x / y for x, y in zip(ta, tb, strict=True))


def bench_model(mname: str, args: argparse.Namespace, device: torch.device, groups: set[str],
                on_row: Callable[[list[dict]], None] = lambda done: None) -> list[dict]:
    """Time every selected (method, backend) on one model; return one row per case."""
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(0)  # also draws the batch of the forward unit below
    model, x, t = study_inputs(mname, device, args.batch, args.size, gen)
    layer, lname = target_layer(model, x)
    with torch.no_grad():
        store: list[Tensor] = []
        h = layer.register_forward_hook(lambda _m, _i, o: store.append(o))
        model(x[:1])
        h.remove()
        channels = int(store[-1].shape[1])
    cases: list[Case] = []

    def add(method: str, backend: str, limit: Callable[[], object], forwards: int | None = None,
            scale: float = 1.0, n_img: int | None = None, **opts: object) -> None:
        if (method, backend) not in REGISTRY or not cnnlens.methods(method, backend, installed_only=True):
            return
        if args.methods and method not in args.methods.split(","):
            return
        if args.backends and backend not in args.backends.split(","):
            return
        ex = cnnlens.Explainer(model, method, backend, layer=lname if REGISTRY[(method, backend)].spec.needs_layer else None, **opts)
        xs, ts = (x[:n_img], t[:n_img]) if n_img else (x, t)
        fns: dict[str, Callable[[], object]] = {"limit": limit, "cnnlens": lambda ex=ex: ex.explain(xs, target=ts)}
        if forwards is not None:  # after "cnnlens": its warm-up has cached the probe forward
            fns["own"] = own_forwards(model, fns["cnnlens"], grad=method in GRAD_MANY, device=device)
        d = direct_call(method, backend, model, layer, x, t) if forwards is None else None
        if d is not None:
            fns["direct"] = d
        cases.append(Case(mname, method, backend, fns, forwards, scale, n_img or args.batch))

    if "cams" in groups:
        for m in GRAD_CAMS:
            add(m, "pytorch-grad-cam", limit_layer(model, layer, x, t))
        add("gradcam", "captum", limit_layer(model, layer, x, t))
    if "gradients" in groups:
        for m in GRADIENTS:
            for b in ("pytorch-grad-cam", "captum", "flashtorch"):
                add(m, b, limit_input(model, x, t))
    if "many" in groups and mname in args.many_models.split(","):
        # "one forward" is the per-image cost of a forward at the study's batch size
        ib = args.batch
        xb = torch.randn(ib, 3, args.size, args.size, generator=gen).to(device)
        tb = torch.zeros(ib, dtype=torch.long, device=device)
        fwd_unit, grad_unit = limit_forward(model, xb), limit_input(model, xb, tb)
        for m in args.many_methods.split(","):
            n_img = args.many_batch if (args.many_batch and m in ("scorecam", "ablationcam")) else args.batch
            n_fw = many_forward_count(m, model, channels, n_img, args.size)
            unit = grad_unit if m in GRAD_MANY else fwd_unit
            reps_needed = n_fw / ib
            # The limit runs the batched forwards themselves (up to --many-limit-units of them, scaled
            # up beyond that), so it spans about as much time as the method: a single 0.1 s forward
            # scaled by 33 carried that forward's noise 33-fold on this shared machine.
            units = max(1, min(round(reps_needed), args.many_limit_units))
            limit = repeated(unit, units)
            for b in ("pytorch-grad-cam", "captum"):
                add(m, b, limit, forwards=n_fw, scale=reps_needed / units, n_img=n_img, **MANY_OPTS.get(m, {}))
    for c in cases:
        reps = args.many_reps if c.forwards else args.reps
        if args.budget_s and time.perf_counter() - START > args.budget_s:
            args.skipped.append(f"{c.model} {c.method} / {c.backend}")
            print(f"[{mname}] {c.method} / {c.backend}: skipped, --budget-s {args.budget_s:g} spent", file=sys.stderr)
            continue
        print(f"[{mname}] {c.method} / {c.backend} ...", file=sys.stderr, flush=True)
        try:
            time_case(c, reps, device)
        except Exception as exc:  # one broken case must not cost the rest of a (GPU) run
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            args.failed.append(f"{c.model} {c.method} / {c.backend}: {msg}")
            print(f"  FAILED {msg}", file=sys.stderr, flush=True)
            continue
        r = {
            "model": c.model, "method": c.method, "backend": c.backend, "layer": lname,
            "cnnlens_s": med(c.times["cnnlens"]), "limit_s": med(c.times["limit"]) * c.limit_scale,
            "direct_s": med(c.times.get("direct", [])), "forwards": c.forwards, "peak_mb": c.peak_mb,
            "times": c.times,  # every round, for the JSON file
        }
        r["cnnlens_over_limit"] = paired(c, "cnnlens", "limit") / c.limit_scale
        r["direct_over_limit"] = paired(c, "direct", "limit") / c.limit_scale
        r["cnnlens_over_direct"] = paired(c, "cnnlens", "direct")
        r["own_s"] = med(c.times.get("own", []))
        r["cnnlens_over_own"] = paired(c, "cnnlens", "own")
        own_sizes = getattr(c.fns.get("own"), "sizes", [])
        r["own_batches"] = {str(b): own_sizes.count(b) for b in sorted(set(own_sizes))}
        r["images_per_s"] = c.images / r["cnnlens_s"]
        r["batch"] = c.images
        rows.append(r)
        on_row(rows)  # partial results survive an interrupted run
        print(f"  cnnlens {r['cnnlens_s']:.3f}s  direct {r['direct_s']:.3f}s  limit {r['limit_s']:.3f}s  "
              f"c/limit {r['cnnlens_over_limit']:.2f}  d/limit {r['direct_over_limit']:.2f}  "
              f"c/direct {r['cnnlens_over_direct']:.2f}  peak {r['peak_mb']:.0f} MB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet50,vgg11")
    ap.add_argument("--groups", default="cams,gradients,many")
    ap.add_argument("--methods", default=None, help="comma-separated subset of methods (default: every one in the groups)")
    ap.add_argument("--backends", default=None, help="comma-separated subset of backends (default: all)")
    ap.add_argument("--many-models", default="efficientnet_lite0", help="models for the many-forward group")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--many-reps", type=int, default=2)
    ap.add_argument("--many-batch", type=int, default=None,
                    help="batch for ScoreCAM/AblationCAM (default: --batch); each image costs C+1 forwards")
    ap.add_argument("--many-limit-units", type=int, default=64,
                    help="most batched forwards the many-forward limit runs per round (scaled beyond that)")
    ap.add_argument("--many-methods", default=",".join(MANY), help="comma-separated many-forward methods")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write a Markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write raw rows as JSON here")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new case after this many seconds (a lent GPU's time is short); skipped cases are listed")
    args = ap.parse_args(argv)
    args.skipped, args.failed = [], []

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but CUDA is not available", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    groups = set(args.groups.split(","))
    rows: list[dict] = []
    # Single-call groups on every model first, then the many-forward group: a --budget-s that runs
    # out cuts the long many-forward cases, not a whole model's gradient rows.
    passes = [groups - {"many"}, groups & {"many"}]
    for pass_groups in passes:
        if not pass_groups:
            continue
        for mname in args.models.split(","):
            if pass_groups == {"many"} and mname not in args.many_models.split(","):
                continue
            rows.extend(bench_model(mname, args, device, pass_groups, lambda done: save([*rows, *done], device, args)))
    print(save(rows, device, args))
    return 0


def save(rows: list[dict], device: torch.device, args: argparse.Namespace) -> str:
    """Write the Markdown table and JSON rows (if asked); return the Markdown."""
    text = describe(device, args) + "\n" + to_markdown(rows) + "\n"
    for what, items in (("Failed", getattr(args, "failed", [])), ("Skipped (time budget)", getattr(args, "skipped", []))):
        if items:
            text += f"\n{what}:\n" + "".join(f"- {i}\n" for i in items)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(device, args), "rows": rows, "failed": getattr(args, "failed", []),
                                         "skipped": getattr(args, "skipped", [])}, indent=1))
    return text


def describe(device: torch.device, args: argparse.Namespace) -> str:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (
        f"Machine: {card}; {psutil.cpu_count()} CPUs visible, torch threads {args.threads}; "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; torch {torch.__version__}; "
        f"batch {args.batch}, {args.size} px, random inputs; median of {args.reps} interleaved rounds "
        f"({args.many_reps} for many-forward methods) after one warm-up; ratios are medians of "
        f"per-round ratios.\n"
    )


def batches(counts: dict[str, int] | None) -> str:
    """``{"4": 64}`` -> ``64 x 4``: the forwards a many-forward method made, by batch size."""
    return " + ".join(f"{n} × {b}" for b, n in counts.items()) if counts else "–"


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | method | backend | batch | cnnlens s | direct s | limit s | cnnlens/limit | direct/limit | cnnlens/direct "
        "| img/s | peak MB | own forwards | own fwd s | cnnlens/own fwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        def f(v: float, d: int = 3) -> str:
            return "–" if v != v else f"{v:.{d}f}"

        lines.append(
            f"| {r['model']} | {r['method']} | {r['backend']} | {r['batch']} | {f(r['cnnlens_s'])} | {f(r['direct_s'])} | "
            f"{f(r['limit_s'])} | {f(r['cnnlens_over_limit'], 2)} | {f(r['direct_over_limit'], 2)} | "
            f"{f(r['cnnlens_over_direct'], 2)} | {f(r['images_per_s'], 1)} | {f(r['peak_mb'], 0)} | "
            f"{batches(r.get('own_batches'))} | {f(r.get('own_s', nan))} | {f(r.get('cnnlens_over_own', nan), 2)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
