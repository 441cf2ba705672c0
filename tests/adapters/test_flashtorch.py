"""The FlashTorch adapter: conformance, and one test per FlashTorch bug that cnnlens fixes.

Each fix is shown twice with the same check: ``test_fixN_*`` passes through cnnlens, and
``test_upstreamN_*`` shows that plain FlashTorch 0.1.3 fails that check today. If an upstream test
starts failing, FlashTorch has changed and the workaround should be revisited.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cnnlens
from cnnlens import registry
from cnnlens.adapters.flashtorch import GUIDED_RULE, CnnlensBackprop, FlashTorchAdapter
from cnnlens.errors import CnnlensError, OptionError
from cnnlens.testing import assert_same_state, hook_count, snapshot, tiny_cnn, tiny_input

flashtorch_saliency = pytest.importorskip("flashtorch.saliency")
Backprop = flashtorch_saliency.Backprop

FLASH_METHODS = [r.method for r in registry.methods(backend="flashtorch")]


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def logit_grad(model: nn.Module, x: Tensor, targets: list[int]) -> Tensor:
    """The reference saliency: d logit_target / d input, by plain autograd."""
    inp = x.detach().clone().requires_grad_(True)
    out = model.eval()(inp)
    (g,) = torch.autograd.grad(out[torch.arange(len(targets)), torch.tensor(targets)].sum(), inp)
    return g


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


class PadConv(nn.Conv2d):
    """A Conv2d that pads its input itself, like EfficientNet's Conv2dStaticSamePadding."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1)))


class PadStemCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = PadConv(3, 8, 3)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu2(self.conv(self.relu(self.stem(x))))
        return self.fc(h.mean(dim=(2, 3)))


def pad_stem_cnn() -> PadStemCNN:
    torch.manual_seed(0)
    return PadStemCNN().eval()


def second_class(model: nn.Module, x: Tensor) -> list[int]:
    """For each image, its second most likely class: a target FlashTorch would not pick."""
    with torch.no_grad():
        return [int(t) for t in model(x).topk(2, dim=1).indices[:, 1]]


class FlashTorchRule(torch.autograd.Function):
    """FlashTorch's guided ReLU written independently: grad_in = clamp(grad_out, 0) * relu_output."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return g.clamp(min=0) * out


class StandardRule(torch.autograd.Function):
    """Springenberg's guided ReLU: grad_in = clamp(grad_out, 0) * (relu_input > 0)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x > 0).to(g.dtype)


class RuleReLU(nn.Module):
    def __init__(self, rule: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x: Tensor) -> Tensor:
        return self.rule.apply(x)  # type: ignore[no-any-return]


def with_rule(model: nn.Module, rule: type[torch.autograd.Function]) -> nn.Module:
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, nn.ReLU):
                parent._modules[name] = RuleReLU(rule)
    return m.eval()


# ------------------------------------------------------------------------------------------------
# Conformance: the FlashTorch rows of the registry under the shared contract
# ------------------------------------------------------------------------------------------------


def test_methods_lists_flashtorch_rows() -> None:
    rows = {r.method: r for r in cnnlens.methods(backend="flashtorch")}
    assert set(rows) == {"saliency", "guided_backprop"}
    assert all(r.installed for r in rows.values())
    assert "relu_output" in rows["guided_backprop"].notes and "(input > 0)" in rows["guided_backprop"].notes


@pytest.mark.parametrize("method", FLASH_METHODS)
@pytest.mark.parametrize("n", [1, 3])
def test_conformance(method: str, n: int) -> None:
    model = tiny_cnn()
    x = tiny_input(n)
    x0 = x.clone()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = cnnlens.explain(model, x, method, backend="flashtorch", target=[i % 5 for i in range(n)])
        again = cnnlens.explain(model, x, method, backend="flashtorch", target=[i % 5 for i in range(n)])
    assert_same_state(before, model)
    assert torch.equal(x, x0) and not x.requires_grad and x.grad is None
    assert e.maps.shape == (n, 32, 32) and e.maps.dtype == torch.float32 and e.maps.device == x.device
    assert bool(torch.isfinite(e.maps).all()) and float(e.maps.min()) >= 0 and float(e.maps.max()) <= 1
    assert e.raw.shape == (n, 3, 32, 32) and not e.raw.requires_grad
    assert e.backend == "flashtorch" and e.versions["flashtorch"] == "0.1.3"
    assert torch.equal(e.raw, again.raw)  # deterministic


def test_predicted_class_by_default() -> None:
    model, x = tiny_cnn(), tiny_input(3)
    e = cnnlens.explain(model, x, "saliency", backend="flashtorch")
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.equal(e.targets, pred)
    assert rel_err(e.raw, logit_grad(model, x, pred.tolist())) < 1e-6


def test_same_as_upstream_where_upstream_works() -> None:
    """One image, its top class, first conv on the raw input: FlashTorch 0.1.3 is right here, and so
    cnnlens must give exactly its numbers, vanilla and guided (this pins the FlashTorch code path)."""
    x = tiny_input(1)
    for guided in (False, True):
        ours = CnnlensBackprop(tiny_cnn()).calculate_gradients(x, guided=guided)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = Backprop(tiny_cnn()).calculate_gradients(x.clone().requires_grad_(True), guided=guided)
        assert torch.equal(ours[0], theirs), guided


# ------------------------------------------------------------------------------------------------
# Fix 1: target_class is honoured
# ------------------------------------------------------------------------------------------------


def test_fix1_target_class_honoured() -> None:
    model, x = tiny_cnn(), tiny_input(1)
    target = second_class(model, x)
    ref = logit_grad(model, x, target)
    e = cnnlens.explain(model, x, "saliency", backend="flashtorch", target=target[0])
    assert int(e.targets[0]) == target[0]
    assert rel_err(e.raw, ref) < 1e-6
    assert rel_err(CnnlensBackprop(model).calculate_gradients(x, target[0]), ref) < 1e-6


def test_upstream1_target_class_ignored() -> None:
    model, x = tiny_cnn(), tiny_input(1)
    target = second_class(model, x)
    with pytest.warns(UserWarning, match="does not"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # A copy: FlashTorch leaves its hook on the model it was given.
        g = Backprop(copy.deepcopy(model)).calculate_gradients(x.clone().requires_grad_(True), target[0])
    assert rel_err(g[None], logit_grad(model, x, target)) > 0.1  # not the target's gradient
    with torch.no_grad():
        top = [int(model(x).argmax())]
    assert rel_err(g[None], logit_grad(model, x, top)) < 1e-6  # the top-1 gradient instead


# ------------------------------------------------------------------------------------------------
# Fix 2: any batch size
# ------------------------------------------------------------------------------------------------


def test_fix2_batch_equals_single_calls() -> None:
    model, x = tiny_cnn(), tiny_input(3)
    targets = [0, 3, 4]
    for method in FLASH_METHODS:
        batch = cnnlens.explain(model, x, method, backend="flashtorch", target=targets)
        singles = [cnnlens.explain(model, x[i : i + 1], method, backend="flashtorch", target=targets[i]) for i in range(3)]
        torch.testing.assert_close(batch.raw, torch.cat([s.raw for s in singles]), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(batch.maps, torch.cat([s.maps for s in singles]), rtol=1e-5, atol=1e-6)


def test_upstream2_batch_fails() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"[Mm]ismatch in shape"):
            Backprop(tiny_cnn()).calculate_gradients(tiny_input(2).requires_grad_(True))


# ------------------------------------------------------------------------------------------------
# Fix 3: hooks are removed after every call
# ------------------------------------------------------------------------------------------------


def test_fix3_no_hooks_and_guided_does_not_stick() -> None:
    model, x = tiny_cnn(), tiny_input(2)
    bp = CnnlensBackprop(model)  # no ModelGuard here: the adapter cleans up by itself
    assert hook_count(model) == 0
    vanilla = bp.calculate_gradients(x, [1, 2])
    assert hook_count(model) == 0
    guided = bp.calculate_gradients(x, [1, 2], guided=True)
    assert hook_count(model) == 0
    after = bp.calculate_gradients(x, [1, 2])
    assert hook_count(model) == 0
    assert not torch.allclose(guided, vanilla)
    assert torch.equal(after, vanilla)


def test_fix3_no_hooks_after_a_call_that_raises() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()
            self.net.features[2].inplace = True

        def forward(self, x: Tensor) -> Tensor:
            self.net(x)
            raise ValueError("boom")

    model = Boom().train()
    before = snapshot(model)
    with pytest.raises(ValueError, match="boom"):
        CnnlensBackprop(model).calculate_gradients(tiny_input(1), 0, guided=True)
    assert_same_state(before, model)  # hooks, in-place flags, train mode, grads


def test_upstream3_hooks_stay_and_guided_sticks() -> None:
    model, x = tiny_cnn(), tiny_input(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bp = Backprop(model)
        assert hook_count(model) == 1  # its conv hook, from construction on
        vanilla = bp.calculate_gradients(x.clone().requires_grad_(True))
        bp.calculate_gradients(x.clone().requires_grad_(True), guided=True)
        assert hook_count(model) > 1
        after = bp.calculate_gradients(x.clone().requires_grad_(True))
    assert not torch.allclose(after, vanilla)  # the "vanilla" call is still guided


# ------------------------------------------------------------------------------------------------
# Fix 4: the gradient is read at the input, never a silent all-zero map
# ------------------------------------------------------------------------------------------------


def test_fix4_padded_stem() -> None:
    model, x = pad_stem_cnn(), tiny_input(2)
    e = cnnlens.explain(model, x, "saliency", backend="flashtorch", target=[1, 3])
    assert float(e.raw.abs().max()) > 0
    assert rel_err(e.raw, logit_grad(model, x, [1, 3])) < 1e-6


def test_upstream4_padded_stem_gives_zeros() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = Backprop(pad_stem_cnn()).calculate_gradients(tiny_input(1).requires_grad_(True))
    assert float(g.abs().max()) == 0.0


@pytest.mark.slow
def test_fix4_embedded_equals_captum(embedded: nn.Module, cat: Tensor) -> None:
    model, x = embedded, cat
    ours = cnnlens.explain(model, x, "saliency", backend="flashtorch")
    captum = cnnlens.explain(model, x, "saliency", backend="captum", target=ours.targets)
    assert 281 <= int(ours.targets[0]) <= 285  # a cat
    assert float(ours.raw.abs().max()) > 0
    assert rel_err(ours.raw, captum.raw) <= 1e-5
    torch.testing.assert_close(ours.maps, captum.maps, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_upstream4_embedded_all_zero(embedded: nn.Module, cat: Tensor) -> None:
    model, x = embedded, cat
    fresh = copy.deepcopy(model)  # FlashTorch leaves a hook behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = Backprop(fresh).calculate_gradients(x.clone().requires_grad_(True))
    assert float(g.abs().max()) == 0.0


@pytest.mark.slow
def test_vgg11_saliency_equals_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cnnlens.load_model("vgg11", weights=None)
    x = cnnlens.demo_images(model, names=["chelsea", "coffee"], size=96)
    ours = cnnlens.explain(model, x, "saliency", backend="flashtorch", target=[281, 967])
    captum = cnnlens.explain(model, x, "saliency", backend="captum", target=[281, 967])
    assert float(ours.raw.abs().max()) > 0
    assert rel_err(ours.raw, captum.raw) <= 1e-5
    torch.testing.assert_close(ours.maps, captum.maps, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Fix 5: inputs that do not require grad, left untouched
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_fix5_plain_input_untouched(requires_grad: bool) -> None:
    model = tiny_cnn()
    x = tiny_input(2).requires_grad_(requires_grad)
    x0 = x.detach().clone()
    for guided in (False, True):
        g = CnnlensBackprop(model).calculate_gradients(x, [0, 1], guided=guided)
        assert g.shape == x.shape and not g.requires_grad
    e = cnnlens.explain(model, x, "saliency", backend="flashtorch", target=[0, 1])
    assert torch.equal(x.detach(), x0)
    assert x.requires_grad == requires_grad and x.grad is None and not x._backward_hooks
    # Results are detached, so FlashTorch's own denormalize (its issues #42, #45) works on them.
    from flashtorch.utils import denormalize

    denormalize(e.raw)


def test_upstream5_plain_input_and_denormalize_fail() -> None:
    from flashtorch.utils import denormalize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
            Backprop(tiny_cnn()).calculate_gradients(tiny_input(1))
    with pytest.raises(RuntimeError, match="inplace"):
        denormalize(tiny_input(1).requires_grad_(True))
    from cnnlens.images import denormalize as cnnlens_denormalize

    assert not cnnlens_denormalize(tiny_input(1).requires_grad_(True)).requires_grad


# ------------------------------------------------------------------------------------------------
# Fix 6: no deprecated hooks, no warnings
# ------------------------------------------------------------------------------------------------


def test_fix6_no_warnings_and_no_deprecated_api(monkeypatch: pytest.MonkeyPatch) -> None:
    def removed(*_a: Any, **_k: Any) -> None:
        raise AssertionError("register_backward_hook is deprecated and must not be used")

    monkeypatch.setattr(nn.Module, "register_backward_hook", removed)
    model = tiny_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in FLASH_METHODS:
            cnnlens.explain(model, tiny_input(2), method, backend="flashtorch", target=[0, 4])


def test_upstream6_deprecated_hooks_warn() -> None:
    with pytest.warns(FutureWarning, match="non-full backward hook"):
        Backprop(tiny_cnn()).calculate_gradients(tiny_input(1).requires_grad_(True), guided=True)


# ------------------------------------------------------------------------------------------------
# Fix 7: guided backprop keeps FlashTorch's rule, and says so
# ------------------------------------------------------------------------------------------------


def test_fix7_guided_is_flashtorch_rule_not_standard() -> None:
    model, x = tiny_cnn(), tiny_input(3)
    targets = [0, 2, 4]
    ours = cnnlens.explain(model, x, "guided_backprop", backend="flashtorch", target=targets).raw
    captum = cnnlens.explain(model, x, "guided_backprop", backend="captum", target=targets).raw
    flash_ref = logit_grad(with_rule(model, FlashTorchRule), x, targets)
    standard_ref = logit_grad(with_rule(model, StandardRule), x, targets)
    assert rel_err(ours, flash_ref) < 1e-5
    assert rel_err(captum, standard_ref) < 1e-5
    assert rel_err(ours, captum) > 0.1


def test_fix7_guided_with_inplace_and_reused_relu() -> None:
    # A module called twice, in place, as in torchvision's ResNet blocks.
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.fc = nn.Linear(6, 4)

        def forward(self, x: Tensor) -> Tensor:
            h = self.relu(self.c1(x))
            h = self.relu(self.c2(h) + h)
            return self.fc(h.mean(dim=(2, 3)))

    model = Reuse().eval()
    x = tiny_input(2)
    ours = cnnlens.explain(model, x, "guided_backprop", backend="flashtorch", target=[1, 2])
    assert model.relu.inplace
    assert not ours.warnings
    assert rel_err(ours.raw, logit_grad(with_rule(model, FlashTorchRule), x, [1, 2])) < 1e-5


def test_fix7_documented() -> None:
    for doc in (CnnlensBackprop.__doc__, FlashTorchAdapter.__doc__, GUIDED_RULE):
        assert doc and "clamp(grad_out, 0) * relu_output" in doc
        assert "(relu_input > 0)" in doc
    notes = registry.REGISTRY[("guided_backprop", "flashtorch")].notes
    assert "clamp(grad_out, 0) * relu_output" in notes and "clamp(grad_out, 0) * (input > 0)" in notes


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.slow
def test_fix7_resnet18_measured_difference_from_captum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded random resnet18, the demo cat at 224: the two guided rules give different maps.

    Measured (torch 2.14, captum 0.9): Pearson of the maps 0.31, of the raw gradients 0.28;
    pytorch-grad-cam vs Captum, which share the standard rule: 1.000.
    """
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cnnlens.load_model("resnet18", weights=None)
    x = cnnlens.demo_images(model, names=["chelsea"]).tensor
    ours = cnnlens.explain(model, x, "guided_backprop", backend="flashtorch")
    captum = cnnlens.explain(model, x, "guided_backprop", backend="captum", target=ours.targets)
    pgc = cnnlens.explain(model, x, "guided_backprop", backend="pytorch-grad-cam", target=ours.targets)
    r_maps, r_raw = pearson(ours.maps, captum.maps), pearson(ours.raw, captum.raw)
    print(f"resnet18 guided_backprop flashtorch vs captum: pearson maps {r_maps:.3f}, raw {r_raw:.3f}")
    assert pearson(pgc.maps, captum.maps) > 0.999
    assert 0.2 < r_maps < 0.45
    assert 0.15 < r_raw < 0.45
    assert rel_err(ours.raw, logit_grad(with_rule(model, FlashTorchRule), x, ours.targets.tolist())) < 1e-4


# ------------------------------------------------------------------------------------------------
# Errors at the boundary
# ------------------------------------------------------------------------------------------------


def test_wrong_target_count_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="3 targets for 2 images"):
        CnnlensBackprop(tiny_cnn()).calculate_gradients(tiny_input(2), [0, 1, 2])


def test_backend_failure_is_translated() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x: Tensor) -> Tensor:
            if torch.is_grad_enabled() and x.requires_grad:
                raise KeyError("inside")
            return self.net(x)

    with pytest.raises(CnnlensError, match=r"flashtorch .* failed for method 'saliency'"):
        cnnlens.explain(Bad(), tiny_input(1), "saliency", backend="flashtorch", target=0)


# ------------------------------------------------------------------------------------------------
# Installation: FlashTorch imports on the pinned environment
# ------------------------------------------------------------------------------------------------


def test_flashtorch_imports_and_importlib_resources_is_constrained() -> None:
    """flashtorch.utils does ``from importlib_resources import path``: a legacy API that
    importlib_resources 6.0 removed and 6.4 restored, so 6.0-6.3 must be excluded."""
    from importlib.metadata import version
    from pathlib import Path

    import flashtorch.utils
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert flashtorch.utils.ImageNetIndex()["tabby cat"] == 281  # reads its packaged resource via `path`
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    reqs = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    spec = reqs["importlib-resources" if "importlib-resources" in reqs else "importlib_resources"].specifier
    for bad in ("6.0.0", "6.1.3", "6.2.0", "6.3.2"):
        assert bad not in spec, bad
    for good in ("5.12.0", "6.4.0", "6.5.2", version("importlib_resources")):
        assert good in spec, good


def test_out_of_range_target_is_a_target_error() -> None:
    from cnnlens.errors import TargetError

    model = tiny_cnn()
    with pytest.raises(TargetError, match="target 5 is out of range: the model has 5 classes"):
        CnnlensBackprop(model).calculate_gradients(tiny_input(2), [0, 5])
    assert hook_count(model) == 0


def test_every_fix_is_named_in_provenance_and_registry_notes() -> None:
    """Each fix at the boundary is driving FlashTorch, not replacing it: each one is named."""
    from cnnlens.adapters.flashtorch import DRIVEN, DRIVEN_GUIDED

    model, x = tiny_cnn(), tiny_input(2)
    for method, driven in (("saliency", DRIVEN), ("guided_backprop", DRIVEN_GUIDED)):
        e = cnnlens.explain(model, x, method, backend="flashtorch", target=[1, 2])
        assert set(driven) <= set(e.provenance.driven)
        assert e.provenance.substitutions == ()
        notes = registry.REGISTRY[(method, "flashtorch")].notes
        for words in ("target honoured", "batched", "private leaf", "hooks removed"):
            assert words in notes and any(words.split()[0] in d for d in e.provenance.driven), (method, words)
    assert "full backward hooks" in registry.REGISTRY[("guided_backprop", "flashtorch")].notes


def test_shortcuts_false_lets_flashtorch_backpropagate_into_the_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """shortcuts=False: FlashTorch's backward runs through trainable parameters, as plain FlashTorch."""
    seen: list[bool] = []
    real = Backprop.calculate_gradients

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        seen.append(any(p.requires_grad for p in self.model.parameters()))
        return real(self, *a, **k)

    monkeypatch.setattr(Backprop, "calculate_gradients", spy)
    model, x = tiny_cnn(), tiny_input(2)
    before = snapshot(model)
    fast = cnnlens.Explainer(model, "saliency", "flashtorch", shortcuts=True).explain(x, target=[0, 1])
    slow = cnnlens.Explainer(model, "saliency", "flashtorch", shortcuts=False).explain(x, target=[0, 1])
    assert seen == [False, True]
    assert torch.equal(fast.raw, slow.raw)
    assert_same_state(before, model)
