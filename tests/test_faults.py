"""Issue 7, part 4: faults in the middle of a call leave the user's model exactly as it was.

Two kinds of fault, for every installed (method, backend) in the registry:

* the model raises in ``forward`` on a chosen call (the first is cnnlens's probe, later ones are the
  prediction pass and the backend's own passes);
* a backend call raises half-way, after the toolkit has registered its hooks. The injected fault
  also misbehaves the way toolkits do (it leaks hooks of every kind, swaps a module, flips flags and
  parks an attribute) and pytorch-grad-cam's hook release is disabled, as when it is used without
  ``with`` (its issue #483), so only cnnlens's guard can clean up.

Afterwards hooks are gone, flags, parameters, buffers, ``.grad`` and module types are restored, and
the next call works and gives the same result as before the fault.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

import cnnlens
from cnnlens import errors as E
from cnnlens import registry
from cnnlens.testing import assert_same_state, hook_count, snapshot, tiny_cnn, tiny_input

PAIRS = sorted((m, b) for (m, b) in registry.REGISTRY if registry.BACKENDS[b].installed)
FAST = [("gradcam", "pytorch-grad-cam"), ("scorecam", "pytorch-grad-cam"), ("guided_backprop", "pytorch-grad-cam"),
        ("gradcam", "captum"), ("integrated_gradients", "captum"), ("occlusion", "captum"), ("lime", "captum")]


class Flaky(nn.Module):
    """The tiny CNN, but ``forward`` raises on call number ``fail_on`` (once)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.fail_on = fail_on
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError(f"injected fault in forward call {self.calls}")
        return self.net(x)


def user_state(model: nn.Module) -> nn.Module:
    """Give the model state a careless guard would lose: a .grad, a frozen param, a BN in train mode."""
    net = model.net if isinstance(model, Flaky) else model
    net.fc.weight.grad = torch.full_like(net.fc.weight, 0.5)
    net.features[0].bias.requires_grad_(False)
    net.features[1].train()
    return model


def _run(model: nn.Module, method: str, backend: str, target: Any = 1) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, tiny_input(n=2, size=32), method=method, backend=backend, target=target)


def _reference(method: str, backend: str) -> torch.Tensor:
    return _run(user_state(tiny_cnn()), method, backend).maps


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("method,backend", PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_model_raises_on_second_forward(method: str, backend: str) -> None:
    model = user_state(Flaky(fail_on=2))  # call 1 is cnnlens's probe, call 2 is inside the backend
    before = snapshot(model)
    with pytest.raises((E.BackendError, E.ModelError)) as info:
        _run(model, method, backend)
    assert "injected fault in forward call 2" in str(info.value)
    assert_same_state(before, model)
    assert hook_count(model) == 0
    e = _run(model, method, backend)  # the model no longer raises: the next call works
    torch.testing.assert_close(e.maps, _reference(method, backend))
    assert_same_state(before, model)


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("fail_on", [2, 3])
@pytest.mark.parametrize("method,backend", FAST, ids=[f"{m}-{b}" for m, b in FAST])
def test_model_raises_in_prediction_pass(method: str, backend: str, fail_on: int) -> None:
    """target=None: call 2 is the prediction pass (a ModelError), call 3 is inside the backend."""
    model = user_state(Flaky(fail_on=fail_on))
    before = snapshot(model)
    expected = E.ModelError if fail_on == 2 else (E.BackendError, E.ModelError)
    with pytest.raises(expected) as info:
        _run(model, method, backend, target=None)
    assert f"injected fault in forward call {fail_on}" in str(info.value)
    assert_same_state(before, model)
    assert _run(model, method, backend, target=None).maps.shape == (2, 32, 32)


# ------------------------------------------------------------------------------------------------
# A backend call that raises half-way
# ------------------------------------------------------------------------------------------------


class Injector:
    """Raises from inside a toolkit, after misbehaving on the model like a leaky toolkit would."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.fired = 0

    def misbehave(self) -> None:
        m = self.model
        noop = lambda *a: None  # noqa: E731
        m.features[0].register_forward_hook(noop)
        m.features[0].register_forward_pre_hook(noop)
        m.features[3].register_full_backward_hook(noop)
        m.fc.weight.requires_grad_(True)  # (the guard froze it) a flag flip, and a tensor hook
        m.fc.weight.register_hook(lambda g: g)
        module_mod.register_module_forward_hook(noop)
        m.features[2] = nn.ReLU(inplace=True)  # a module swap, as pytorch-grad-cam's guided backprop does
        m.features[4].cnnlens_test_leftover = "parked attribute"
        m.features[1].eval()
        m.fc.weight.grad = None

    def raiser(self, *args: Any, **kwargs: Any) -> Any:
        self.fired += 1
        self.misbehave()
        raise RuntimeError("injected backend fault")


@pytest.fixture()
def injected(monkeypatch: pytest.MonkeyPatch) -> Iterator[Injector]:
    """Patch deep points of every toolkit so that the first one reached raises mid-call."""
    model = user_state(tiny_cnn())
    inj = Injector(model)
    # gradients, whichever toolkit asks for them
    monkeypatch.setattr(torch.autograd, "grad", inj.raiser)
    monkeypatch.setattr(torch.Tensor, "backward", inj.raiser)
    # captum: the perturbation methods' forward passes
    import captum.attr._core.feature_ablation as fa
    import captum.attr._core.lime as lime

    monkeypatch.setattr(fa, "_run_forward", inj.raiser)
    monkeypatch.setattr(lime, "_run_forward", inj.raiser)
    # captum: Shapley value sampling's forwards, and LayerActivation's (a forward, no gradient)
    import captum.attr._core.layer.layer_activation as la
    import captum.attr._core.shapley_value as sv

    monkeypatch.setattr(sv, "_run_forward", inj.raiser)
    monkeypatch.setattr(la, "_forward_layer_eval", inj.raiser)
    # pytorch-grad-cam: after its hooks are registered and the forward pass ran; and its release
    # of those hooks disabled, so that only the guard can remove them
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule

    monkeypatch.setattr(BaseCAM, "compute_cam_per_layer", inj.raiser)
    monkeypatch.setattr(FullGrad, "compute_cam_per_layer", inj.raiser)
    monkeypatch.setattr(GuidedBackpropReLUasModule, "forward", inj.raiser)
    monkeypatch.setattr(ActivationsAndGradients, "release", lambda self: None)
    # torchcam (an optional extra): after its hooks are registered and the forward pass ran; and its
    # removal of those hooks disabled, so that only the guard can remove them
    if registry.BACKENDS["torchcam"].installed:
        from torchcam.methods.core import _CAM

        monkeypatch.setattr(_CAM, "compute_cams", inj.raiser)
        monkeypatch.setattr(_CAM, "remove_hooks", lambda self: None)
    # zennit: its Occlusion's window set-up (its other attributors call torch.autograd.grad)
    if registry.BACKENDS["zennit"].installed:
        from zennit.attribution import Occlusion as ZennitOcclusion

        monkeypatch.setattr(ZennitOcclusion, "_resolve_window_stride", inj.raiser)
    globals_before = {k: len(getattr(module_mod, k)) for k in ("_global_forward_hooks", "_global_forward_pre_hooks")}
    yield inj
    for k, n in globals_before.items():
        assert len(getattr(module_mod, k)) == n, f"global hooks left in {k}"


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("method,backend", PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_backend_raises_mid_call(method: str, backend: str, injected: Injector,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = injected.model
    before = snapshot(model)
    relu = model.features[2]
    with pytest.raises(E.CnnlensError) as info:
        _run(model, method, backend)
    assert injected.fired >= 1, "no patched point was reached: the fault was not injected"
    err = info.value
    assert isinstance(err, E.BackendError), f"{type(err).__name__}: {err}"
    assert "injected backend fault" in str(err) and backend in str(err) and method in str(err)
    assert_same_state(before, model)
    assert model.features[2] is relu and not hasattr(model.features[4], "cnnlens_test_leftover")
    assert hook_count(model) == 0
    monkeypatch.undo()  # the toolkits work again: the next call on the same model succeeds
    e = _run(model, method, backend)
    torch.testing.assert_close(e.maps, _reference(method, backend))
    assert_same_state(before, model)
