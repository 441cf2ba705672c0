"""The zennit adapter: LRP conservation with the canonizer zennit ships, the model given back whole,
models zennit cannot canonize refused, options translated, and the methods zennit shares with
Captum agreeing where their definitions coincide."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import registry
from cnnlens.errors import ModelError, OptionError
from cnnlens.models import load_embedded
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input

zennit_composites = pytest.importorskip("zennit.composites")
torchvision = pytest.importorskip("torchvision")

from cnnlens.adapters.zennit import COMPOSITES, pick_canonizer  # noqa: E402 - after the importorskip


def _explain(model: nn.Module, x: torch.Tensor, method: str, backend: str = "zennit", **kw: object) -> cnnlens.Explanation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method, backend=backend, **kw)


def _bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias and BatchNorm shift: then LRP's epsilon, z-plus and flat rules conserve relevance
    exactly (a bias absorbs its share), and the BatchNorm scales still have to be merged."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
    return model.eval()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _bias_free(torchvision.models.resnet18(num_classes=10))


def _scores(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[torch.arange(len(targets)), torch.tensor(targets)]


# ------------------------------------------------------------------------------------------------
# Conservation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1_flat"])
@pytest.mark.parametrize("build", [lambda: _bias_free(tiny_cnn()), _resnet18], ids=["tiny-cnn", "resnet18"])
def test_lrp_relevance_sums_to_the_target_score(build, composite) -> None:
    """Bias-free ReLU networks: zennit's relevance at the input sums to the explained score, with
    BatchNorm merged by the canonizer cnnlens picks (SequentialMergeBatchNorm, ResNetCanonizer)."""
    model, x, targets = build(), tiny_input(n=2, size=32, seed=3), [1, 4]
    e = _explain(model, x, "lrp", target=targets, composite=composite)
    torch.testing.assert_close(e.raw.sum(dim=(1, 2, 3)), _scores(model, x, targets), rtol=1e-3, atol=1e-4)


def test_resnet_needs_zennits_resnet_canonizer_to_conserve_relevance() -> None:
    """Without ResNetCanonizer (BatchNorm merged only) the residual additions copy relevance into both
    branches: the sum is many times the score. cnnlens picks ResNetCanonizer for torchvision ResNets."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    model, x, targets = _resnet18(), tiny_input(n=2, size=32, seed=3), [1, 4]
    e = _explain(model, x, "lrp", target=targets)
    assert "canonizer ResNetCanonizer" in " ".join(e.provenance.driven)
    composite = zennit_composites.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    with Gradient(model, composite) as attributor:
        _, merged_only = attributor(x.clone(), lambda out: torch.eye(10)[targets] * out)
    ratio = merged_only.sum(dim=(1, 2, 3)) / _scores(model, x, targets)
    assert (ratio.abs() > 5).all(), ratio


def test_the_canonizer_is_picked_for_the_model() -> None:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    with torch.device("meta"):
        vgg_bn, vgg, resnet = (torchvision.models.vgg11_bn(), torchvision.models.vgg11(),
                               torchvision.models.resnet18())
    assert isinstance(pick_canonizer(vgg_bn), VGGCanonizer)
    assert pick_canonizer(vgg) is None  # nothing to merge
    assert isinstance(pick_canonizer(resnet), ResNetCanonizer)
    assert isinstance(pick_canonizer(tiny_cnn()), SequentialMergeBatchNorm)


# ------------------------------------------------------------------------------------------------
# The model given back whole
# ------------------------------------------------------------------------------------------------


def test_resnet_canonizer_leaves_no_trace() -> None:
    model = _resnet18()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.layer1[0].bn1.train()
    before = snapshot(model)
    _explain(model, tiny_input(n=2, size=32), "lrp", target=[0, 1])
    assert_same_state(before, model)
    for block in model.modules():
        assert "forward" not in vars(block) and "canonizer_sum" not in dict(block.named_children())


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("build", [tiny_cnn, _resnet18], ids=["tiny-cnn", "resnet18"])
def test_model_restored_when_the_call_raises_inside_the_canonized_model(build) -> None:
    """A forward that fails while zennit's canonizer has rewritten the weights (the third forward:
    cnnlens's probe, its check, then zennit's own): every weight, buffer and hook comes back."""
    model = build()
    head = model.fc
    calls = {"n": 0}

    def boom(_m: nn.Module, _i: object, _o: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Boom("boom")

    handle = head.register_forward_hook(boom)
    before = snapshot(model)
    with pytest.raises(cnnlens.CnnlensError, match="boom"):
        _explain(model, tiny_input(n=2, size=32), "lrp", target=[0, 1])
    assert calls["n"] == 3
    assert_same_state(before, model)
    handle.remove()


def _state_bits(model: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
    """Every parameter and buffer: name, storage pointer and a copy of its values."""
    return [(k, v.data_ptr(), v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()]


def _assert_bit_identical(before: list[tuple[str, int, torch.Tensor]], model: nn.Module) -> None:
    for (k, ptr, v), (k1, ptr1, v1) in zip(before, _state_bits(model), strict=True):
        assert k == k1 and ptr == ptr1, f"{k}: storage replaced"
        assert torch.equal(v, v1), f"{k}: values changed"


def _bn_then_unmergeable(**second: bool) -> nn.Module:
    """Conv -> BatchNorm2d -> ReLU -> Conv -> BatchNorm2d(``second``) -> ReLU -> pool -> Linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, **second), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            if bn.running_mean is not None:
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("second", [{"affine": False}, {"track_running_stats": False}],
                         ids=["affine-false", "no-running-stats"])
def test_a_batchnorm_zennit_cannot_merge_is_refused_and_the_model_left_bit_identical(second) -> None:
    """zennit's merge reads weight, bias and running statistics: a BatchNorm without them made zennit
    raise after merging the first BatchNorm, whose statistics stayed at 0 and 1. One clear error now,
    and every tensor of the model on its own storage with its own values."""
    model = _bn_then_unmergeable(**second)
    x = tiny_input(n=2, size=16)
    out = model(x).detach()
    before, state = _state_bits(model), snapshot(model)
    with pytest.raises(cnnlens.CnnlensError, match="'4'") as info:
        _explain(model, x, "lrp", target=[0, 1])
    assert "affine" in str(info.value) and "integrated_gradients" in str(info.value)
    _assert_bit_identical(before, model)
    assert_same_state(state, model)
    assert torch.equal(model(x), out)


def test_canonizers_applied_before_a_failing_one_are_removed(monkeypatch) -> None:
    """zennit's ``apply`` loses the instances it merged when a later merge raises; cnnlens removes
    them itself (checked here without the model guard, which would also restore them)."""
    from zennit.canonizers import MergeBatchNorm as ZennitMerge

    from cnnlens.adapters.zennit import remove_applied

    model = _bn_then_unmergeable()
    merge = ZennitMerge.merge_batch_norm
    calls = {"n": 0}

    def second_fails(modules: object, batch_norm: nn.Module) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Boom("second merge")
        merge(modules, batch_norm)

    monkeypatch.setattr(ZennitMerge, "merge_batch_norm", staticmethod(second_fails))
    before, eps = _state_bits(model), model[1].eps
    canonizer = pick_canonizer(model)
    with pytest.raises(_Boom):
        try:
            canonizer.apply(model)
        finally:
            remove_applied(canonizer)
    assert calls["n"] == 2
    _assert_bit_identical(before, model)
    assert model[1].eps == eps


def _frozen_pair() -> tuple[nn.Module, nn.Module]:
    """A resnet18 with BatchNorm2d (random statistics and shifts) and the same network with
    torchvision's FrozenBatchNorm2d, loaded from its state: the same function."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    bn = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    frozen = torchvision.models.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d)
    frozen.load_state_dict(bn.state_dict(), strict=False)  # (FrozenBatchNorm2d has no num_batches_tracked)
    return bn.eval(), frozen.eval()


def test_frozen_batchnorms_are_merged_like_batchnorms() -> None:
    """torchvision's detection backbones use FrozenBatchNorm2d, which zennit's types do not list: left
    unmerged, the relevance sum was many times the score. Merged, LRP on it is LRP on the BatchNorm2d
    network that computes the same function."""
    bn, frozen = _frozen_pair()
    x, targets = tiny_input(n=2, size=32, seed=3), [1, 4]
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    state = snapshot(frozen)
    e_bn, e_frozen = _explain(bn, x, "lrp", target=targets), _explain(frozen, x, "lrp", target=targets)
    assert_same_state(state, frozen)
    scale = float(e_bn.raw.abs().max())
    torch.testing.assert_close(e_frozen.raw, e_bn.raw, rtol=0, atol=1e-3 * scale)
    sums, scores = e_frozen.raw.sum(dim=(1, 2, 3)), _scores(frozen, x, targets)
    torch.testing.assert_close(sums, e_bn.raw.sum(dim=(1, 2, 3)), rtol=1e-3, atol=1e-4)
    assert ((sums - scores).abs() < 0.5 * scores.abs()).all(), (sums, scores)  # biases absorb a part
    assert "FrozenBatchNorm2d" in " ".join(e_frozen.provenance.driven)


# ------------------------------------------------------------------------------------------------
# Models zennit cannot canonize
# ------------------------------------------------------------------------------------------------


def test_efficientnet_lite0_is_refused_for_lrp_and_left_untouched() -> None:
    """EfficientNet-Lite0's convolutions hold their padding as a child module, so no BatchNorm
    directly follows a Conv leaf: zennit's SequentialMergeBatchNorm merges none of the 49 and its
    Pass rule would skip them. The refusal names the cause and what works instead."""
    model = load_embedded(pretrained=False)
    before = snapshot(model)
    with pytest.raises(ModelError, match="no canonizer") as info:
        _explain(model, tiny_input(n=1, size=64), "lrp", target=0)
    msg = str(info.value)
    assert "49 BatchNorm" in msg and "_bn0" in msg and "integrated_gradients" in msg
    assert_same_state(before, model)
    e = _explain(model, tiny_input(n=1, size=64), "integrated_gradients", target=0, n_steps=4)
    assert e.raw.abs().max() > 0


class _Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(torch.relu(self.conv(x))).mean(dim=(2, 3)))


def test_a_conv_run_twice_per_forward_is_refused() -> None:
    with pytest.raises(ModelError, match="more than once"):
        _explain(_Reused().eval(), tiny_input(n=1), "lrp", target=0)


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------


def test_composite_names_are_zennits_own() -> None:
    assert set(registry.ZENNIT_COMPOSITES) == set(COMPOSITES)
    for name, cls in COMPOSITES.items():
        assert zennit_composites.COMPOSITES[name] is cls


def test_a_misspelt_composite_gets_the_close_matches() -> None:
    with pytest.raises(OptionError, match="did you mean epsilon_plus_flat") as info:
        cnnlens.Explainer(tiny_cnn(), "lrp", backend="zennit", composite="epsilon_plus_flatt")
    assert "expected one of" in str(info.value)
    with pytest.raises(OptionError, match="composite"):
        cnnlens.Explainer(tiny_cnn(), "lrp", backend="zennit", composite=None)


def test_box_bounds_apply_to_epsilon_gamma_box_only() -> None:
    with pytest.raises(OptionError, match="apply to composite='epsilon_gamma_box' only"):
        _explain(tiny_cnn(), tiny_input(), "lrp", target=0, low=-2.0)


def test_box_bounds_default_to_the_models_preprocessing() -> None:
    """None gives (0 - mean) / std .. (1 - mean) / std: [-1, 1] for the embedded model's 0.5 / 0.5,
    per-channel ImageNet bounds for a model cnnlens did not load."""
    x = tiny_input(n=2)
    model = tiny_cnn()
    plain = _explain(model, x, "lrp", target=[0, 1], composite="epsilon_gamma_box")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    low, high = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    given = _explain(model, x, "lrp", target=[0, 1], composite="epsilon_gamma_box", low=low, high=high)
    torch.testing.assert_close(plain.raw, given.raw)
    other = _explain(model, x, "lrp", target=[0, 1], composite="epsilon_gamma_box", low=-1.0, high=1.0)
    assert not torch.allclose(plain.raw, other.raw)
    model.cnnlens_meta = load_embedded(pretrained=False).cnnlens_meta  # mean = std = 0.5
    torch.testing.assert_close(_explain(model, x, "lrp", target=[0, 1], composite="epsilon_gamma_box").raw, other.raw)


# ------------------------------------------------------------------------------------------------
# Where zennit's and Captum's definitions coincide, so do their results
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "deconvolution"])
def test_gradient_rules_equal_captums(method) -> None:
    model, x = tiny_cnn(), tiny_input(n=3)
    a, b = _explain(model, x, method, target=[0, 1, 2]), _explain(model, x, method, "captum", target=[0, 1, 2])
    torch.testing.assert_close(a.raw, b.raw, rtol=1e-5, atol=1e-7)


def test_occlusion_equals_captums_where_no_window_wraps() -> None:
    """Window = stride dividing the image: the same windows, each pixel in one, no wrap-around."""
    model, x = tiny_cnn(), tiny_input(n=2)
    opts = {"sliding_window": 8, "strides": 8, "baselines": 0.5}
    a = _explain(model, x, "occlusion", target=[0, 1], **opts)
    b = _explain(model, x, "occlusion", "captum", target=[0, 1], **opts)
    torch.testing.assert_close(a.raw, b.raw, rtol=1e-4, atol=1e-6)


def test_smoothgrad_with_one_sample_is_the_gradient() -> None:
    """zennit's last SmoothGrad sample is the noise-free input (noted in cnnlens.methods())."""
    model, x = tiny_cnn(), tiny_input(n=2)
    a = _explain(model, x, "smoothgrad", target=[0, 1], nt_samples=1, stdevs=0.5)
    torch.testing.assert_close(a.raw, _explain(model, x, "saliency", target=[0, 1]).raw)


def test_integrated_gradients_is_complete() -> None:
    """Attributions sum to score(x) - score(baseline), up to zennit's Riemann-sum error."""
    model, x = tiny_cnn(), tiny_input(n=2)
    e = _explain(model, x, "integrated_gradients", target=[0, 1], n_steps=200, baselines=0.0)
    expected = _scores(model, x, [0, 1]) - _scores(model, torch.zeros_like(x), [0, 1])
    torch.testing.assert_close(e.raw.sum(dim=(1, 2, 3)), expected, rtol=2e-2, atol=2e-3)
