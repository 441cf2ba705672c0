"""Captum's layer attributions, NoiseTunnel over other gradient methods and Shapley value sampling
(issue 17, section 2): what the registry-driven tests do not already check.

Every pair is also in tests/test_direct.py (against Captum called directly), test_conformance.py,
test_batch_independence.py and test_guard_real.py, which loop over the registry.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from captum import attr as ca
from torch import nn

import cnnlens
from cnnlens import registry
from cnnlens.errors import ModelError, OptionError
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input

LAYER_METHODS = ["layer_conductance", "layer_integrated_gradients", "layer_gradient_x_activation",
                 "layer_deeplift", "layer_activation"]
NOISE_METHODS = [f"{nt}_{base}" for nt, _label, base, _what in registry.NOISE_TUNNEL_GRID]
CHEAP = {"n_steps": 4, "nt_samples": 3, "n_samples": 3}


def _explain(model, x, method, **kw):
    valid = registry.REGISTRY[(method, "captum")].all_options()
    opts = {k: v for k, v in CHEAP.items() if k in valid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method, backend="captum", **opts, **kw)


def test_the_new_pairs_are_registered():
    captum = {r.method for r in cnnlens.methods(backend="captum")}
    assert set(LAYER_METHODS) | set(NOISE_METHODS) | {"shapley_value_sampling"} <= captum
    assert len(NOISE_METHODS) == 7 and "smoothgrad_deconvolution" not in NOISE_METHODS
    for m in LAYER_METHODS:
        spec = registry.METHODS[m]
        assert spec.kind == "cam" and spec.needs_layer
        assert "sums it over channels" in registry.REGISTRY[(m, "captum")].notes
    hook_free = {m for m in captum if not registry.REGISTRY[(m, "captum")].needs_hooks}
    assert {"smoothgrad_integrated_gradients", "smoothgrad_input_x_gradient", "vargrad_integrated_gradients",
            "shapley_value_sampling"} <= hook_free
    assert not hook_free & ({"smoothgrad_guided_backprop", "vargrad_guided_backprop"} | set(LAYER_METHODS))


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_layer_raw_is_captums_layer_attribution_and_the_map_sums_its_channels(method):
    model, x = tiny_cnn(), tiny_input(n=2, size=32)
    e = _explain(model, x, method, target=[1, 2], layer="features.3")
    assert e.layer == "features.3"
    assert e.raw.shape == (2, 16, 16, 16)  # (N, C, h, w) of the layer's output, as Captum returns it
    summed = F.interpolate(e.raw.sum(dim=1, keepdim=True), size=(32, 32), mode="bilinear", align_corners=False)
    expected = torch.relu(summed[:, 0])
    lo = expected.flatten(1).amin(1)[:, None, None]
    hi = expected.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(e.maps, (expected - lo) / (hi - lo))


def test_layer_activation_ignores_the_target_and_is_the_activation():
    model, x = tiny_cnn(), tiny_input(n=2, size=32)
    a = _explain(model, x, "layer_activation", target=[0, 0], layer="features.4")
    b = _explain(model, x, "layer_activation", target=[3, 1], layer="features.4")
    assert torch.equal(a.raw, b.raw)
    with torch.no_grad():
        torch.testing.assert_close(a.raw, model.features[:5](x))


def test_layer_conductance_names_captums_internal_batch_rule():
    model, x = tiny_cnn(), tiny_input(n=3, size=32)
    with pytest.raises(OptionError, match=r"at least 2 x the images per call \(6\)"):
        _explain(model, x, "layer_conductance", target=1, internal_batch_size=5)
    e = _explain(model, x, "layer_conductance", target=1, internal_batch_size=6)
    ref = ca.LayerConductance(model, model.features).attribute(x, baselines=0.0, target=1, n_steps=4,
                                                              internal_batch_size=6)
    torch.testing.assert_close(e.raw, ref, rtol=1e-5, atol=1e-7)


def test_layer_deeplift_runs_on_a_model_whose_parameters_the_user_froze():
    """Captum's DeepLift hooks need the nonlinearities before the layer in the graph; with every
    parameter frozen (by the user here, by the model guard always) cnnlens gives Captum an input
    that requires grad, and the result is the one Captum gives on the trainable model."""
    frozen, trainable = tiny_cnn(), tiny_cnn()
    for p in frozen.parameters():
        p.requires_grad_(False)
    x = tiny_input(n=2, size=32)
    before = snapshot(frozen)
    e = _explain(frozen, x, "layer_deeplift", target=[1, 2])
    assert_same_state(before, frozen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ca.LayerDeepLift(trainable, trainable.features).attribute(x, baselines=0.0, target=torch.tensor([1, 2]))
    torch.testing.assert_close(e.raw, ref, rtol=1e-5, atol=1e-7)


class _ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean(dim=(2, 3)))


def test_layer_deeplift_refuses_a_model_that_reuses_a_module():
    with pytest.raises(ModelError, match="more than once"):
        _explain(_ReusedReLU().eval(), tiny_input(n=1, size=16), "layer_deeplift", target=0, layer="c2")


@pytest.mark.parametrize("method", [*NOISE_METHODS, "shapley_value_sampling"])
def test_stochastic_pairs_are_one_seeded_captum_call_per_image(method):
    model, x = tiny_cnn(), tiny_input(n=2, size=32)
    e = _explain(model, x, method, target=[1, 2], seed=4)
    assert any("per image" in d for d in e.provenance.driven)
    assert e.provenance.substitutions == ()
    one = _explain(model, x[1:], method, target=[2], seed=4)
    assert torch.equal(one.raw[0], e.raw[1])
    other = _explain(model, x[1:], method, target=[2], seed=5)
    assert not torch.equal(other.raw, one.raw)


def test_smoothgrad_of_integrated_gradients_is_noise_tunnel_over_captums_ig():
    model, x = tiny_cnn(), tiny_input(n=1, size=32)
    e = _explain(model, x, "smoothgrad_integrated_gradients", target=[3], seed=7)
    torch.manual_seed(7)
    nt = ca.NoiseTunnel(ca.IntegratedGradients(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.15 * float(x.max() - x.min()),
                           target=3, baselines=0.0, n_steps=4)
    torch.testing.assert_close(e.raw, ref, rtol=1e-5, atol=1e-7)
    # and it is not the plain IG map: the noise matters
    ig = _explain(model, x, "integrated_gradients", target=[3])
    assert not torch.allclose(e.raw, ig.raw, rtol=1e-3, atol=1e-6)


class _NegativeHead(nn.Module):
    """conv -> BatchNorm whose channel sum is negative everywhere -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.bias.fill_(-50.0)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_an_all_zero_layer_map_is_a_warning_not_silent():
    model, x = _NegativeHead().eval(), tiny_input(n=2, size=16)
    e = _explain(model, x, "layer_activation", layer="bn")
    assert float(e.maps.abs().max()) == 0  # the channel sum is negative everywhere: the ReLU'd map is empty
    (w,) = e.warnings  # the adapter's own cause, said once (not also the generic constant-map one)
    assert "constant map for every image" in w and "at layer 'bn' is <= 0 everywhere" in w and "with layer=" in w
    assert "with --layer" in w.words(cli=True)
    fine = _explain(tiny_cnn(), tiny_input(n=2, size=32), "layer_activation", layer="features.5")
    assert fine.warnings == () and float(fine.maps.max()) == 1


@pytest.mark.parametrize("method", [m for m in NOISE_METHODS if "guided_backprop" in m])
def test_guided_noise_tunnel_warns_on_a_model_without_relu_modules(method):
    """Captum's GuidedBackprop overrides nn.ReLU only; on a model with other activations (the
    embedded EfficientNet-Lite0 has ReLU6) the result is the plain gradient rule, and cnnlens says so."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.warns(cnnlens.CnnlensWarning, match="no nn.ReLU module"):
        e = cnnlens.explain(model, tiny_input(n=1, size=16), method, backend="captum", target=0, nt_samples=2)
    assert any("no nn.ReLU module" in w for w in e.warnings)
