"""Speed and memory: latency, throughput, peak memory, and each method's compute limit.

The *limit* is the least work the method could possibly do, measured in the same run on the same
batch: a forward pass for forward-only methods, forward + gradient to the layer for gradient CAMs,
forward + gradient to the input for gradient methods, and n x one forward (or n x one gradient) for
methods that evaluate the model n times. Every latency is also given as a ratio to it, so "3.1x"
reads the same on any machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: method -> (unit, what n counts). unit: "forward", "grad_layer" or "grad_input". Methods not
#: listed fall back on their kind: CAMs -> grad_layer, pixel methods -> grad_input, n = 1.
LIMITS: dict[str, tuple[str, str]] = {
    "eigencam": ("forward", "1"),
    "kpca_cam": ("forward", "1"),
    "fem": ("forward", "1"),
    "scorecam": ("forward", "channels+1"),
    "ablationcam": ("forward", "channels+1"),
    "fullgrad": ("grad_input", "1"),
    "guided_backprop": ("grad_input", "1"),
    "guided_gradcam": ("grad_input", "1"),
    "integrated_gradients": ("grad_input", "n_steps"),
    "smoothgrad": ("grad_input", "nt_samples"),
    "smoothgrad_sq": ("grad_input", "nt_samples"),
    "vargrad": ("grad_input", "nt_samples"),
    "gradient_shap": ("grad_input", "n_samples"),
    "deeplift_shap": ("grad_input", "n_baselines"),
    "occlusion": ("forward", "windows+1"),
    "feature_ablation": ("forward", "features+1"),
    "lime": ("forward", "n_samples+1"),
    "kernel_shap": ("forward", "n_samples+1"),
}


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return int(v[-2]), int(v[-1])


def limit_of(method: str, kind: str, options: dict[str, Any], x: Tensor, layer: nn.Module | None,
             model: nn.Module) -> tuple[str, int]:
    """The (unit, n) of a method's compute limit on batch ``x``."""
    unit, count = LIMITS.get(method, ("grad_layer" if kind == "cam" else "grad_input", "1"))
    if unit == "grad_layer" and layer is None:
        unit = "grad_input"
    h, w = x.shape[-2:]
    if count == "1":
        n = 1
    elif count == "channels+1":
        n = _channels(model, layer, x) + 1
    elif count == "windows+1":
        wh, ww = _pair(options["sliding_window"])
        sh, sw = _pair(options["strides"])
        n = ((h - wh) // sh + 1) * ((w - ww) // sw + 1) + 1
    elif count == "features+1":
        g = int(options["feature_grid"])
        n = math.ceil(h / g) * math.ceil(w / g) + 1
    elif count == "n_samples+1":
        n = int(options["n_samples"]) + 1
    else:
        n = int(options[count])
    return unit, n


def _channels(model: nn.Module, layer: nn.Module | None, x: Tensor) -> int:
    if layer is None:
        return 1
    got: list[int] = []
    h = layer.register_forward_hook(lambda _m, _i, o: got.append(int(o.shape[1])))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        h.remove()
    return got[0] if got else 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall times of ``fn`` after warm-up, with a device synchronisation before each clock read."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def unit_fns(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None) -> dict[str, Callable[[], Any]]:
    """The three limit units as callables on the batch."""
    params = [p for p in model.parameters()]

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def grad_input() -> None:
        xi = x.detach().requires_grad_(True)
        with torch.enable_grad():
            score = model(xi).gather(1, targets[:, None]).sum()
            torch.autograd.grad(score, xi)

    fns = {"forward": forward, "grad_input": grad_input}
    if layer is not None:
        def grad_layer() -> None:
            acts: list[Tensor] = []
            h = layer.register_forward_hook(lambda _m, _i, o: acts.append(o))
            # The input needs grad only so that the graph reaches the layer when the parameters are
            # frozen; autograd.grad(..., acts) never runs the part below the layer.
            xi = x.detach().requires_grad_(True)
            try:
                with torch.enable_grad():
                    score = model(xi).gather(1, targets[:, None]).sum()
                    torch.autograd.grad(score, acts[-1])
            finally:
                h.remove()

        fns["grad_layer"] = grad_layer
    del params
    return fns


@contextlib.contextmanager
def no_param_grad(model: nn.Module) -> Iterator[None]:
    """Time the limits with parameters frozen, as the Explainer runs methods."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    # Writing 5 to clear_refs resets the kernel's RSS high-water mark (Linux >= 4.0), which makes
    # VmHWM a per-measurement peak rather than the process's lifetime peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak extra memory (bytes) over a block: CUDA allocator peak, or the CPU RSS high-water mark.

    On CPU the kernel's VmHWM is reset first; where that is impossible a psutil sampler thread
    (1 ms period) stands in, which can miss very short spikes.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.how = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.how = "torch.cuda.max_memory_allocated"
            return self
        self.base = _rss_bytes()
        if _reset_hwm() and _hwm_bytes() is not None:
            self.how = "VmHWM (RSS high-water mark, reset via /proc/self/clear_refs)"
            self._stop = None
        else:
            import psutil

            self.how = "psutil RSS sampled every 1 ms"
            proc = psutil.Process()
            self._max = self.base
            self._stop = threading.Event()

            def sample() -> None:
                while not self._stop.is_set():
                    self._max = max(self._max, int(proc.memory_info().rss))
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
            return
        if self._stop is None:
            self.peak = max(0, (_hwm_bytes() or 0) - self.base)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(0, self._max - self.base)


def summarize(times: list[float], per: int) -> dict[str, float]:
    """Median and IQR of per-image latency, and throughput (images/s)."""
    t = np.asarray(times, np.float64) / per
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"latency_median": float(med), "latency_iqr": float(q3 - q1), "throughput": float(1.0 / med) if med > 0 else 0.0}
