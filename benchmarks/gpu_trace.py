"""Where the time between Captum called directly and ``explain()`` goes: host or device.

For Captum's saliency and LayerGradCam on each model, records ``--calls`` calls of each under
``torch.profiler`` (CPU and, on a GPU, CUDA activity) and prints per call: the wall time, the time
the device spent in kernels (the sum of every kernel's own device time), the number of kernels, and
the operators whose count or device time differs between the two. If ``explain()`` costs more wall
time but the same device time, the difference is host work on a launch-bound call; if the device
time differs too, some kernel cnnlens adds is slow.

Usage: python benchmarks/gpu_trace.py --device cuda --batch 64 [--models efficientnet_lite0,vgg11]
       python benchmarks/gpu_trace.py --device cpu --batch 2 --size 32   (the ops, without device time)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from gpu_ab import captum_case, study_args  # benchmarks/ is on sys.path when this file runs as a script
from perf import study_inputs, sync
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10)
    args, dev = study_args(ap, models="efficientnet_lite0,vgg11", batch=64)
    for mname in args.models.split(","):
        model, x, t = study_inputs(mname, dev, args.batch, args.size)
        for method in ("saliency", "gradcam"):
            trace(mname, model, x, t, method, args.calls, dev)


def _profiled(fn: Callable[[], object], calls: int, dev: torch.device) -> tuple[float, dict[str, tuple[float, float, bool]]]:
    """Wall seconds per call (unprofiled, median of 3 x calls), and per profiler entry: (count per call,
    device us per call, whether the entry is device activity (kernel, copy, memset) rather than a host op)."""
    walls = []
    for _ in range(3):
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(dev)
        walls.append((time.perf_counter() - t0) / calls)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        sync(dev)
    ops: dict[str, tuple[int, float]] = {}
    for e in prof.key_averages():
        dev_us = float(getattr(e, "self_device_time_total", 0.0) or 0.0)
        # (name, on the device?): a kernel or copy shows twice, as itself and inside its aten op
        on_dev = e.device_type != DeviceType.CPU and "Buffer" not in e.key  # not the profiler's bookkeeping
        ops[e.key] = (e.count / calls, dev_us / calls, on_dev)
    return sorted(walls)[1], ops


def trace(mname: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, method: str, calls: int,
          dev: torch.device) -> None:
    ex, _, captum_direct = captum_case(model, x, t, method)

    def direct() -> object:
        return captum_direct(x)

    def explain() -> object:
        return ex.explain(x, target=t)

    for f in (direct, explain, direct, explain):
        f()
    wd, od = _profiled(direct, calls, dev)
    we, oe = _profiled(explain, calls, dev)

    def kernels(ops: dict[str, tuple[float, float, bool]]) -> tuple[float, float]:
        # device activity only: counting the aten ops' self device time too would count every kernel twice
        on_dev = [(c, us) for c, us, is_dev in ops.values() if is_dev]
        return sum(c for c, _ in on_dev), sum(us for _, us in on_dev)

    kd, dd = kernels(od)
    ke, de = kernels(oe)
    print(f"\n## {mname} {method} ({dev}, batch {x.shape[0]}, {x.shape[2]} px, {calls} calls)")
    print(f"direct : wall {wd * 1e3:8.2f} ms  device {dd / 1e3:8.2f} ms  kernels+copies {kd:7.1f}")
    print(f"explain: wall {we * 1e3:8.2f} ms  device {de / 1e3:8.2f} ms  kernels+copies {ke:7.1f}")
    print(f"explain - direct: wall {(we - wd) * 1e3:+.2f} ms, device {(de - dd) / 1e3:+.2f} ms")
    print("ops whose count or device time differs (per call; aten ops and kernels):")
    print(f"| {'op':60s} | direct n | explain n | direct dev us | explain dev us |")
    rows = []
    for k in set(od) | set(oe):
        cd, ud, _ = od.get(k, (0.0, 0.0, False))
        ce, ue, _ = oe.get(k, (0.0, 0.0, False))
        if abs(ce - cd) > 1e-9 or abs(ue - ud) > 5.0:
            rows.append((abs(ue - ud), k, cd, ce, ud, ue))
    for _, k, cd, ce, ud, ue in sorted(rows, reverse=True)[:40]:
        print(f"| {k[:60]:60s} | {cd:8.1f} | {ce:9.1f} | {ud:13.1f} | {ue:14.1f} |")


if __name__ == "__main__":
    main()
