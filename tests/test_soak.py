"""Issue 7, part 3 (CI size): consecutive explain calls leak no hooks, memory or autograd graphs.

The full 500-call run is ``python benchmarks/soak.py``; this test runs the same code with fewer calls.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import weakref
from pathlib import Path

import pytest
import torch

import cnnlens
from cnnlens.testing import hook_count, tiny_cnn, tiny_input

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("cnnlens_soak", SOAK)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_soak_small() -> None:
    pytest.importorskip("psutil")
    soak = _soak_module()
    n_pairs = len(soak.pairs())
    r = soak.run_soak(calls=max(60, n_pairs + 10))  # every pair at least once after the warm-up
    assert not r.errors, r.errors[:3]
    assert r.max_hooks_seen == 0 and r.hooks_left == 0
    assert r.rss_growth_mb < 50, f"RSS grew by {r.rss_growth_mb} MB over {r.calls} calls"
    assert r.graph_tensors_after <= r.graph_tensors_before, (r.graph_tensors_before, r.graph_tensors_after)
    assert not r.leaks, f"toolkit objects left alive, by pair: {r.leaks}"
    assert r.toolkit_objects_alive == 0


def test_soak_counts_only_what_it_created() -> None:
    """A toolkit object left alive by an earlier test in the same process is not the soak's leak."""
    pytest.importorskip("psutil")
    from captum.attr import Saliency

    soak = _soak_module()
    leftover = Saliency(tiny_cnn())  # what an earlier test could leave behind
    r = soak.run_soak(calls=3)
    assert r.toolkit_objects_alive == 0 and not r.leaks, r.leaks
    del leftover


def test_soak_names_the_pair_that_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that leaves a toolkit object alive is charged to its (method, backend) pair."""
    pytest.importorskip("psutil")
    from captum.attr import Saliency

    soak = _soak_module()
    kept: list[object] = []
    real = soak.one_call
    leaky = soak.pairs()[1]

    def one_call(model, method, backend, i):
        real(model, method, backend, i)
        if (method, backend) == leaky and i >= len(soak.pairs()):  # after the warm-up pass
            kept.append(Saliency(model))

    monkeypatch.setattr(soak, "one_call", one_call)
    r = soak.run_soak(calls=len(soak.pairs()) + 2)
    assert r.leaks == {f"{leaky[0]}/{leaky[1]}": 1}
    assert r.toolkit_objects_alive == 1


def test_graph_detector_sees_a_kept_graph() -> None:
    """The soak's graph detector is not blind: a tensor with a graph kept in a list is counted."""
    soak = _soak_module()
    base = soak.graph_tensors()
    w = torch.randn(3, requires_grad=True)
    kept = [w * 2]
    assert soak.graph_tensors() >= base + 1
    del kept
    assert soak.graph_tensors() == base


@pytest.mark.parametrize("method,backend", [("gradcam", "pytorch-grad-cam"), ("gradcam", "captum"),
                                            ("guided_backprop", "pytorch-grad-cam"), ("deeplift", "captum"),
                                            ("lrp", "captum")])
def test_activations_are_not_kept_alive(method: str, backend: str) -> None:
    """Outputs of the model's layers produced during a call are freed when the call returns."""
    model = tiny_cnn()
    refs: list[weakref.ref[torch.Tensor]] = []

    # A hook of the test's own, registered and removed around the call, that only takes weak refs
    # of what flows through the layers during the call.
    def spy(_m, _i, out):
        if isinstance(out, torch.Tensor):
            refs.append(weakref.ref(out))

    handles = [m.register_forward_hook(spy) for m in model.modules() if m is not model]
    try:
        e = cnnlens.explain(model, tiny_input(), method=method, backend=backend, target=1)
    finally:
        for h in handles:
            h.remove()
    assert hook_count(model) == 0
    assert refs, "the spy saw no activation"
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} of {len(refs)} activations still alive, e.g. shape {tuple(alive[0].shape)}"
    assert e.raw.grad_fn is None and not e.raw.requires_grad
