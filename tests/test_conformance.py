"""One table over every registered (method, backend): the output contract and model hygiene.

New registry entries are covered with no extra work (timm/Captum style)."""

from __future__ import annotations

import warnings

import pytest
import torch

import cnnlens
from cnnlens.registry import BACKENDS, REGISTRY
from cnnlens.testing import assert_same_state, hook_count, snapshot, tiny_cnn, tiny_input

PAIRS = sorted(REGISTRY)


def _explain(model, x, method, backend, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method=method, backend=backend, **kw)


@pytest.mark.parametrize(("method", "backend"), PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_contract_and_hygiene(method, backend):
    if not BACKENDS[backend].installed:
        pytest.skip(f"{backend} not installed")
    model = tiny_cnn()
    # give the user's model some state to preserve: .grad, mixed requires_grad, train mode on one block
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    model.features[0].weight.requires_grad_(False)
    model.features[4].train()
    x = tiny_input(n=3, size=32)
    x_before = x.clone()
    before = snapshot(model)
    e = _explain(model, x, method, backend, target=[0, 1, 2])
    assert_same_state(before, model)
    assert hook_count(model) == 0
    assert torch.equal(x, x_before) and not x.requires_grad
    # the contract
    assert e.maps.shape == (3, 32, 32)
    assert e.maps.dtype == torch.float32
    assert e.maps.device == x.device and e.raw.device == x.device
    assert isinstance(e.raw, torch.Tensor)
    assert torch.isfinite(e.maps).all()
    assert e.maps.min() >= 0 and e.maps.max() <= 1
    assert e.targets.tolist() == [0, 1, 2]
    assert (e.method, e.backend) == (method, backend)
    assert e.seconds > 0 and backend in e.versions and "torch" in e.versions
    if REGISTRY[(method, backend)].spec.needs_layer:
        assert e.layer


@pytest.mark.parametrize(("method", "backend"), [p for p in PAIRS if REGISTRY[p].spec.stochastic])
def test_seeded_determinism(method, backend):
    model, x = tiny_cnn(), tiny_input(n=2, size=32)
    rng_before = torch.get_rng_state()
    a = _explain(model, x, method, backend, seed=3)
    b = _explain(model, x, method, backend, seed=3)
    assert torch.equal(a.maps, b.maps)
    assert torch.equal(torch.get_rng_state(), rng_before), "the caller's RNG state must be untouched"


@pytest.mark.parametrize(("method", "backend"), [p for p in PAIRS if not REGISTRY[p].spec.stochastic])
def test_batch_equals_singles(method, backend):
    """Any batch size works, and an image's map does not depend on its batch mates."""
    model, x = tiny_cnn(), tiny_input(n=3, size=32)
    spec = REGISTRY[(method, backend)].spec
    if spec.stochastic:
        pytest.skip("noise draws depend on the batch layout")
    full = _explain(model, x, method, backend, target=1)
    for i in range(3):
        one = _explain(model, x[i : i + 1], method, backend, target=1)
        torch.testing.assert_close(one.maps[0], full.maps[i], atol=1e-3, rtol=1e-3)


def test_hooks_removed_when_model_raises():
    model = tiny_cnn()
    calls = {"n": 0}

    def boom(_m, _i, _o):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("boom")

    h = model.features[2].register_forward_hook(boom)
    before = snapshot(model)
    with pytest.raises(cnnlens.CnnlensError, match="boom"):
        _explain(model, tiny_input(), "gradcam", "pytorch-grad-cam", target=0)
    assert_same_state(before, model)
    h.remove()
    assert hook_count(model) == 0
    _explain(model, tiny_input(), "gradcam", "pytorch-grad-cam", target=0)
