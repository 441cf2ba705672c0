"""Soak: many consecutive ``explain`` calls across every installed method and backend (issue 7, part 3).

Runs on the tiny CNN (32x32 inputs, CPU) and checks, after every call, that no hook is left on the
model and that the call left no toolkit object alive (pytorch-grad-cam CAMs with their stored
activations, Captum attribution objects): only objects the soak itself created are counted, so
leftovers of whatever ran earlier in the same process (other tests) cannot fail it, and a leak is
charged to the (method, backend) pair whose call left it. At the end it reports the resident memory
growth and how many tensors still hold an autograd graph (``grad_fn``).

Usage::

    python benchmarks/soak.py                 # 500 calls, the figures for the closing note
    python benchmarks/soak.py --calls 60 --json soak.json

A first pass over every (method, backend) warms up imports and lazy allocations before the baseline
RSS is taken, so the growth measures leaks, not one-off initialisation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

os.environ.setdefault("CNNLENS_OFFLINE", "1")

import psutil
import torch

import cnnlens
from cnnlens import registry
from cnnlens.testing import hook_count, tiny_cnn, tiny_input

MB = 1024 * 1024
#: Smaller sample counts than the defaults where a method has them: the soak is about leaks, and
#: every code path (hooks, batching, noise, perturbation loops) still runs.
CHEAP: dict[str, Any] = {"n_steps": 8, "nt_samples": 4, "n_samples": 16, "n_baselines": 2}


@dataclass
class SoakResult:
    calls: int
    pairs: int
    seconds: float
    rss_before_mb: float
    rss_after_mb: float
    rss_growth_mb: float
    max_hooks_seen: int
    hooks_left: int
    graph_tensors_before: int
    graph_tensors_after: int
    toolkit_objects_alive: int
    errors: list[str] = field(default_factory=list)
    #: ``"method/backend" -> number of toolkit objects its calls left alive``; empty when none leaked.
    leaks: dict[str, int] = field(default_factory=dict)


def pairs() -> list[tuple[str, str]]:
    """Every installed (method, backend), in registry order."""
    return [(m, b) for (m, b) in registry.REGISTRY if registry.BACKENDS[b].installed]


def graph_tensors() -> int:
    """Live tensors that still carry an autograd graph (a kept-alive activation or output)."""
    gc.collect()
    n = 0
    for o in gc.get_objects():
        try:
            if issubclass(type(o), torch.Tensor) and o.grad_fn is not None:  # type(): no __class__ proxies
                n += 1
        except Exception:  # objects half torn down by gc
            continue
    return n


def toolkit_kinds() -> tuple[type, ...]:
    """The toolkit classes whose instances hold the model: pytorch-grad-cam CAMs, Captum attributions."""
    kinds: list[type] = []
    try:
        from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
        from pytorch_grad_cam.base_cam import BaseCAM

        kinds += [BaseCAM, ActivationsAndGradients]
    except ImportError:
        pass
    try:
        from captum.attr._utils.attribution import Attribution

        kinds.append(Attribution)
    except ImportError:
        pass
    return tuple(kinds)


def toolkit_objects(known: weakref.WeakSet[Any] | None = None) -> list[Any]:
    """Live toolkit objects (:func:`toolkit_kinds`), leaving out those in ``known``."""
    kinds = toolkit_kinds()
    if not kinds:
        return []
    gc.collect()
    skip = known if known is not None else ()
    return [o for o in gc.get_objects() if issubclass(type(o), kinds) and o not in skip]


def one_call(model: torch.nn.Module, method: str, backend: str, i: int) -> None:
    n = 1 + i % 3  # vary the batch size: 1, 2, 3
    x = tiny_input(n=n, size=32, seed=i)
    target = None if i % 2 else [(i + k) % 5 for k in range(n)]
    valid = registry.REGISTRY[(method, backend)].all_options()
    opts = {k: v for k, v in CHEAP.items() if k in valid}
    e = cnnlens.explain(model, x, method=method, backend=backend, target=target, **opts)
    if e.raw.requires_grad or e.raw.grad_fn is not None or e.maps.grad_fn is not None:
        raise AssertionError(f"{method}/{backend}: the result holds an autograd graph")
    if not bool(torch.isfinite(e.maps).all()):
        raise AssertionError(f"{method}/{backend}: non-finite maps")


def run_soak(calls: int = 500, verbose: bool = False) -> SoakResult:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model = tiny_cnn()
    todo = pairs()
    proc = psutil.Process()
    errors: list[str] = []
    leaks: dict[str, int] = {}
    known: weakref.WeakSet[Any] = weakref.WeakSet()
    left: weakref.WeakSet[Any] = weakref.WeakSet()  # what the soak's own calls left alive

    def charge(pair: str) -> None:
        new = toolkit_objects(known)
        if new:
            leaks[pair] = leaks.get(pair, 0) + len(new)
            known.update(new)  # charged once, to the call that left it
            left.update(new)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, (m, b) in enumerate(todo):  # warm-up: imports, lazy tables, allocator pools
            one_call(model, m, b, k)
        # Toolkit objects alive now (earlier tests in the same process, first-call caches) are not
        # the soak's leaks.
        known.update(toolkit_objects())
        graphs_before = graph_tensors()
        rss0 = proc.memory_info().rss
        max_hooks = 0
        t0 = time.perf_counter()
        for i in range(calls):
            m, b = todo[i % len(todo)]
            try:
                one_call(model, m, b, i)
            except Exception as exc:  # report, keep soaking
                errors.append(f"call {i} {m}/{b}: {type(exc).__name__}: {exc}")
            charge(f"{m}/{b}")
            h = hook_count(model)
            max_hooks = max(max_hooks, h)
            if verbose and (i + 1) % 50 == 0:
                rss = (proc.memory_info().rss - rss0) / MB
                print(f"  {i + 1:4d} calls  rss {rss:+7.1f} MB  hooks {h}", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0
        gc.collect()
        rss1 = proc.memory_info().rss
    return SoakResult(
        calls=calls,
        pairs=len(todo),
        seconds=round(seconds, 2),
        rss_before_mb=round(rss0 / MB, 1),
        rss_after_mb=round(rss1 / MB, 1),
        rss_growth_mb=round((rss1 - rss0) / MB, 1),
        max_hooks_seen=max_hooks,
        hooks_left=hook_count(model),
        graph_tensors_before=graphs_before,
        graph_tensors_after=graph_tensors(),
        toolkit_objects_alive=(gc.collect(), len(left))[1],
        errors=errors,
        leaks=leaks,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    args = ap.parse_args(argv)
    r = run_soak(args.calls, verbose=True)
    print(f"calls:                 {r.calls} over {r.pairs} (method, backend) pairs in {r.seconds:.1f} s")
    print(f"RSS before / after:    {r.rss_before_mb:.1f} MB / {r.rss_after_mb:.1f} MB")
    print(f"RSS growth:            {r.rss_growth_mb:+.1f} MB (limit {args.max_growth_mb:.0f} MB)")
    print(f"hooks left:            {r.hooks_left} (max seen after any call: {r.max_hooks_seen})")
    print(f"live graph tensors:    {r.graph_tensors_after} (before: {r.graph_tensors_before})")
    print(f"toolkit objects alive: {r.toolkit_objects_alive} (left by the soak's calls)")
    for pair, n in r.leaks.items():
        print(f"  {pair}: left {n} toolkit object(s) alive after its call")
    print(f"errors:                {len(r.errors)}")
    for e in r.errors[:10]:
        print("  " + e)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(r) | {"torch": torch.__version__, "cnnlens": cnnlens.__version__}, fh, indent=1)
    ok = (r.hooks_left == 0 and r.max_hooks_seen == 0 and r.rss_growth_mb < args.max_growth_mb
          and r.graph_tensors_after <= r.graph_tensors_before and r.toolkit_objects_alive == 0 and not r.leaks and not r.errors)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())


__all__: list[Any] = ["SoakResult", "main", "run_soak"]
