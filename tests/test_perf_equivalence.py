"""The pytorch-grad-cam and FlashTorch paths: their own code runs, each substitution is named and
equals the toolkit called directly, and whatever a call touches comes back.

``Explainer(shortcuts=True)`` (the default) may apply the substitutions registered for a pair
(``Implementation.substitutions``); ``shortcuts=False`` runs the toolkit's own code throughout.
"""

from __future__ import annotations

import direct.pgc_calls as pgc_direct  # tests/direct, on sys.path as for tests/test_direct.py
import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.errors import BackendError, LayerError
from cnnlens.registry import PGC_EARLY_STOP, PGC_ECONOMY_SVD, REGISTRY
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input

GRAD_CAMS = ["gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "layercam", "eigengradcam", "gradcam_elementwise"]
PGC_ALL = sorted(m for m, b in REGISTRY if b == "pytorch-grad-cam")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


# ------------------------------------------------------------------------------------------------
# shortcuts=True equals shortcuts=False; what each applies is named
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "backend"), [(m, "pytorch-grad-cam") for m in PGC_ALL]
                         + [("saliency", "flashtorch"), ("guided_backprop", "flashtorch")])
def test_shortcuts_equal_the_toolkits_own_code(method, backend):
    model, x = tiny_cnn(), tiny_input(n=3)
    before = snapshot(model)
    fast = cnnlens.Explainer(model, method, backend, shortcuts=True).explain(x, target=[0, 2, 4])
    slow = cnnlens.Explainer(model, method, backend, shortcuts=False).explain(x, target=[0, 2, 4])
    assert_same_state(before, model)
    assert rel_err(fast.raw, slow.raw) <= 1e-5
    assert (fast.maps - slow.maps).abs().max() <= 1e-5
    registered = REGISTRY[(method, backend)].substitutions
    assert set(fast.provenance.substitutions) <= set(registered)  # nothing unregistered is applied
    assert slow.provenance.substitutions == ()  # the toolkit's own code throughout
    assert fast.provenance.driven and slow.provenance.driven


def test_each_substitution_is_named_in_provenance_and_methods():
    cases = {"gradcam": (PGC_EARLY_STOP,), "eigencam": (PGC_ECONOMY_SVD,),
             "eigengradcam": (PGC_ECONOMY_SVD, PGC_EARLY_STOP), "guided_backprop": (), "scorecam": (),
             "guided_gradcam": (PGC_EARLY_STOP,)}
    model, x = tiny_cnn(), tiny_input(n=2)
    for method, names in cases.items():
        e = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[1, 2])
        assert set(e.provenance.substitutions) == set(names), method
    for row in cnnlens.methods(backend="pytorch-grad-cam"):
        for name, gain in REGISTRY[(row.method, row.backend)].substitutions.items():
            assert name in row.notes and gain in row.notes and "x" in gain
    for row in cnnlens.methods(backend="flashtorch"):
        assert not REGISTRY[(row.method, row.backend)].substitutions  # FlashTorch's code throughout


@pytest.mark.slow
@pytest.mark.parametrize("method", [*GRAD_CAMS, "eigencam"])
def test_substitution_equals_pytorch_grad_cam_called_directly_on_embedded(method, embedded, cat):
    """Each substitution (early backward stop, economy SVD) against pytorch-grad-cam's own class
    called as its README shows, on EfficientNet-Lite0 with its ImageNet weights and a real photo."""
    x = torch.cat([cat, cat.flip(-1)])
    targets = torch.tensor([281, 285])
    e = cnnlens.explain(embedded, x, method, "pytorch-grad-cam", target=targets)
    assert e.provenance.substitutions  # the substituted path is the one under test
    layer = dict(embedded.named_modules())[e.layer]
    with torch.enable_grad():
        direct = pgc_direct.DIRECT[(method, "pytorch-grad-cam")](embedded, x.clone(), targets, layer, dict(e.options))
    assert rel_err(e.raw, direct) <= 1e-5


# ------------------------------------------------------------------------------------------------
# Guided backprop: the toolkits' own code
# ------------------------------------------------------------------------------------------------


def _count_calls(monkeypatch, owner, name):
    calls = {"n": 0}
    real = getattr(owner, name)

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(owner, name, staticmethod(counting) if isinstance(owner.__dict__[name], staticmethod)
                        else counting)
    return calls


@pytest.mark.parametrize("method", ["guided_backprop", "guided_gradcam"])
@pytest.mark.parametrize("shortcuts", [True, False])
def test_pgc_guided_runs_guided_backprop_relu_model(method, shortcuts, monkeypatch):
    """pytorch-grad-cam's GuidedBackpropReLUModel and its GuidedBackpropReLU rule compute the result,
    one image per call, and the model's own ReLU modules come back."""
    from pytorch_grad_cam import guided_backprop as pgc_gb

    calls = _count_calls(monkeypatch, pgc_gb.GuidedBackpropReLUModel, "__call__")
    rule = _count_calls(monkeypatch, pgc_gb.GuidedBackpropReLU, "backward")
    model, x = tiny_cnn(), tiny_input(n=3)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    before = snapshot(model)
    e = cnnlens.Explainer(model, method, "pytorch-grad-cam", shortcuts=shortcuts).explain(x, target=[0, 1, 2])
    assert calls["n"] == 3 and rule["n"] >= 3 * len(relus)
    assert_same_state(before, model)
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert e.raw.shape == x.shape and e.raw.device == x.device and e.raw.dtype == x.dtype
    assert any("GuidedBackpropReLUModel" in d for d in e.provenance.driven)


def test_pgc_guided_is_the_signed_gradient_in_nchw():
    """The (H, W, C) NumPy array pytorch-grad-cam returns is turned back into cnnlens's (N, C, H, W)
    signed gradient: equal to the guided rule written out independently."""

    class Rule(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (x > 0) * (g > 0)

    class Guided(nn.Module):
        def forward(self, x):
            return Rule.apply(x)

    model, x = tiny_cnn(), tiny_input(n=2, size=24)
    e = cnnlens.explain(model, x, "guided_backprop", "pytorch-grad-cam", target=[3, 1])
    ref_model = tiny_cnn()
    ref_model.features[2], ref_model.features[5] = Guided(), Guided()
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref_model(xi).gather(1, torch.tensor([[3], [1]])).sum(), xi)
    assert rel_err(e.raw, g) <= 1e-6
    assert e.raw.min() < 0 < e.raw.max()


@pytest.mark.parametrize(("method", "backend"), [("guided_backprop", "pytorch-grad-cam"),
                                                 ("guided_gradcam", "pytorch-grad-cam"),
                                                 ("guided_backprop", "flashtorch")])
def test_relu_modules_and_state_restored_after_an_error_in_the_toolkits_rule(method, backend, resnet18_random,
                                                                             monkeypatch):
    from flashtorch.saliency import Backprop
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLU

    before = snapshot(resnet18_random)
    relus = [m for m in resnet18_random.modules() if isinstance(m, nn.ReLU)]

    def boom(*a, **k):
        raise RuntimeError("injected in the rule")

    if backend == "pytorch-grad-cam":
        monkeypatch.setattr(GuidedBackpropReLU, "backward", staticmethod(boom))
    else:
        monkeypatch.setattr(Backprop, "_register_relu_hooks", boom)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(BackendError, match="injected"):
        cnnlens.explain(resnet18_random, x, method, backend, target=[0, 1])
    assert_same_state(before, resnet18_random)
    assert [m for m in resnet18_random.modules() if isinstance(m, nn.ReLU)] == relus
    monkeypatch.undo()
    cnnlens.explain(resnet18_random, x, method, backend, target=0)


def test_pgc_guided_keeps_the_users_relu_hooks_and_in_place_flags(resnet18_random):
    seen: list[int] = []
    relu = resnet18_random.relu
    h = relu.register_forward_hook(lambda _m, _i, o: seen.append(1))
    try:
        before = snapshot(resnet18_random)
        cnnlens.explain(resnet18_random, torch.randn(2, 3, 32, 32), "guided_backprop", "pytorch-grad-cam", target=0)
        assert_same_state(before, resnet18_random)
        assert resnet18_random.relu is relu and relu.inplace
        seen.clear()
        resnet18_random(torch.randn(1, 3, 32, 32))
        assert seen  # the user's hook is still on the user's ReLU
    finally:
        h.remove()


def test_flashtorch_guided_runs_flashtorchs_own_relu_closures(monkeypatch):
    """FlashTorch's _register_relu_hooks registers its closures (through full backward hooks), and
    its per-call model.eval() and model.zero_grad() run as FlashTorch wrote them."""
    from flashtorch.saliency import Backprop

    registered = _count_calls(monkeypatch, Backprop, "_register_relu_hooks")
    walks = {"train": 0, "zero_grad": 0}
    real_train, real_zero = nn.Module.train, nn.Module.zero_grad

    def train(self, mode=True):
        walks["train"] += 1
        return real_train(self, mode)

    def zero_grad(self, set_to_none=True):
        walks["zero_grad"] += 1
        return real_zero(self, set_to_none)

    monkeypatch.setattr(nn.Module, "train", train)
    monkeypatch.setattr(nn.Module, "zero_grad", zero_grad)
    model, x = tiny_cnn(), tiny_input(n=2)
    before = snapshot(model)
    e = cnnlens.explain(model, x, "guided_backprop", "flashtorch", target=[1, 3])
    assert registered["n"] == 1
    assert walks["train"] >= 1 and walks["zero_grad"] >= 1  # FlashTorch's own statements ran
    assert_same_state(before, model)
    assert any("full backward hooks" in d for d in e.provenance.driven)


# ------------------------------------------------------------------------------------------------
# pytorch-grad-cam CAMs: what the adapter drives, and what comes back
# ------------------------------------------------------------------------------------------------


def test_flags_restored_after_exception_in_a_cam(monkeypatch):
    import pytorch_grad_cam as pgc

    model, x = tiny_cnn(), tiny_input()
    model.features[3].weight.requires_grad_(False)
    before = snapshot(model)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(pgc.GradCAM, "get_cam_weights", boom)
    for shortcuts in (True, False):
        with pytest.raises(BackendError, match="injected"):
            cnnlens.Explainer(model, "gradcam", "pytorch-grad-cam", shortcuts=shortcuts).explain(x, target=0)
        assert_same_state(before, model)
        assert [p.requires_grad for p in model.parameters()] == [n != "features.3.weight"
                                                                 for n, _ in model.named_parameters()]
    monkeypatch.undo()
    cnnlens.explain(model, x, "gradcam", "pytorch-grad-cam", target=0)


def test_the_call_stops_once_the_cam_is_recorded(monkeypatch):
    """pytorch-grad-cam's scaling and resize of the final image never run (cnnlens discards it),
    with or without shortcuts: stopping the toolkit early is driving it, named in provenance."""
    import pytorch_grad_cam.base_cam as base_cam

    calls = {"n": 0}
    real = base_cam.scale_cam_image

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(base_cam, "scale_cam_image", counting)
    model, x = tiny_cnn(), tiny_input(n=2)
    for shortcuts in (True, False):
        e = cnnlens.Explainer(model, "gradcam", "pytorch-grad-cam", shortcuts=shortcuts).explain(x, target=1)
        assert any("stopped there" in d for d in e.provenance.driven)
    assert calls["n"] == 0


def test_scorecam_runs_per_image_with_bounded_batch():
    """ScoreCAM's masked inputs are built per image (pytorch-grad-cam builds N*C of them at once)."""
    model, x = tiny_cnn(), tiny_input(n=3)
    a = cnnlens.explain(model, x, "scorecam", "pytorch-grad-cam", target=1, batch_size=4)
    b = cnnlens.explain(model, x, "scorecam", "pytorch-grad-cam", target=1)
    torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=1e-5)
    assert any("one image per call" in d for d in b.provenance.driven)


def _layer_products(model, layer, x, classes):
    acts: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        out = model(x)
    finally:
        h.remove()
    batches = [acts[0].detach().numpy()]
    for c in classes:
        (g,) = torch.autograd.grad(out[:, c].sum(), acts[0], retain_graph=True)
        batches.append((g * acts[0]).detach().numpy())  # what Eigen-Grad-CAM projects
    return np.concatenate(batches)


@pytest.mark.parametrize("threads", [1, 2])
def test_projection_is_bit_identical_to_pytorch_grad_cam(embedded, resnet18_random, threads, monkeypatch):
    """Wide (49 x 1280), tall (784 x 128, 3136 x 64) and square-ish matrices, NaNs included."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from cnnlens.adapters.pytorch_grad_cam import economy_projection

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cases = [
        _layer_products(embedded, embedded._conv_head, x, [0, 285]),
        _layer_products(embedded, embedded._blocks[10], x, [7]),
        _layer_products(resnet18_random, resnet18_random.layer2, x, [37]),
        _layer_products(resnet18_random, resnet18_random.layer1, x[:1], [3]),
    ]
    with_nan = cases[0][:2].copy()
    with_nan[0, 5, 2, 3] = np.nan
    cases.append(with_nan)
    for batch in cases:
        ours = economy_projection(batch)
        theirs = get_2d_projection(batch)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert np.array_equal(ours, theirs)
    assert np.isnan(with_nan).sum() == 1  # the caller's array is not changed


def test_projection_restores_blas_threads_after_an_error(monkeypatch):
    import threadpoolctl

    from cnnlens.adapters import pytorch_grad_cam as adapter

    def blas_threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    seen: list[list[int]] = []

    def broken(*a, **k):
        seen.append(blas_threads())
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(adapter.np.linalg, "svd", broken)
    with pytest.raises(np.linalg.LinAlgError):
        adapter.economy_projection(np.ones((2, 4, 3, 3), dtype=np.float32))
    assert seen and all(n == 1 for n in seen[0])  # single-threaded BLAS inside
    assert blas_threads() == before


def test_shortcuts_false_leaves_parameters_trainable_for_the_toolkit(monkeypatch):
    """With shortcuts=False pytorch-grad-cam's loss.backward() runs through trainable parameters,
    as in a direct call; with shortcuts=True they are frozen and the freeze is named."""
    import pytorch_grad_cam as pgc

    seen: list[bool] = []
    real = pgc.GradCAM.get_cam_weights

    def spy(self, *a, **k):
        seen.append(all(p.requires_grad for p in self.model.parameters()))
        return real(self, *a, **k)

    monkeypatch.setattr(pgc.GradCAM, "get_cam_weights", spy)
    model, x = tiny_cnn(), tiny_input(n=2)
    fast = cnnlens.Explainer(model, "gradcam", "pytorch-grad-cam", shortcuts=True).explain(x, target=0)
    slow = cnnlens.Explainer(model, "gradcam", "pytorch-grad-cam", shortcuts=False).explain(x, target=0)
    assert seen == [False, True]
    assert any("parameters frozen" in d for d in fast.provenance.driven)
    assert not any("parameters frozen" in d for d in slow.provenance.driven)


# ------------------------------------------------------------------------------------------------
# KPCA-CAM is seeded; ShapleyCAM refuses layers its recorder cannot release
# ------------------------------------------------------------------------------------------------


def test_kpca_cam_identical_calls_give_identical_maps():
    """KernelPCA's ARPACK start vector comes from NumPy's global RNG (16 x 16 = 256 > 200 locations
    selects ARPACK); the seed option fixes it, and the caller's RNG state is left as it was."""
    model, x = tiny_cnn(), tiny_input(n=3, size=32)
    np.random.seed(123)
    state = np.random.get_state()
    a = cnnlens.explain(model, x, "kpca_cam", "pytorch-grad-cam", target=[0, 1, 2])
    b = cnnlens.explain(model, x, "kpca_cam", "pytorch-grad-cam", target=[0, 1, 2])
    assert torch.equal(a.maps, b.maps) and torch.equal(a.raw, b.raw)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    assert a.options["seed"] == 0
    c = cnnlens.explain(model, x, "kpca_cam", "pytorch-grad-cam", target=[0, 1, 2], seed=7)
    assert rel_err(c.raw, a.raw) < 1e-3  # another start vector: the same eigenvector to ARPACK's tolerance


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "kwargs"), [("vgg11", 64, {}), ("alexnet", 96, {}),
                                                      ("vit_b_16", 32, {"image_size": 32}), ("swin_t", 64, {})])
def test_shapleycam_refuses_a_layer_it_cannot_release_without_a_traceback(arch, size, kwargs, capfd):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
    before = snapshot(model)
    capfd.readouterr()
    # a CNN's automatic layer it cannot release; a transformer's token layer, whose reshape it would skip
    with pytest.raises(LayerError, match=r"ShapleyCAM (cannot use this layer|ignores reshape_transform)"):
        cnnlens.explain(model, torch.randn(1, 3, size, size), "shapleycam", "pytorch-grad-cam", target=0)
    import gc

    gc.collect()  # a BaseCAM left behind would print its __del__ traceback now
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert_same_state(before, model)


def test_shapleycam_works_on_a_layer_that_is_not_a_view():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    e = cnnlens.explain(model, torch.randn(1, 3, 64, 64), "shapleycam", "pytorch-grad-cam", layer="features", target=0)
    assert torch.isfinite(e.raw).all()


# ------------------------------------------------------------------------------------------------
# Warnings: the toolkits' known chatter is silenced, nothing else
# ------------------------------------------------------------------------------------------------


class _WarnsInForward(nn.Module):
    """tiny_cnn, whose forward makes torch itself warn (nn.Softmax without dim: torch's own warning),
    only when gradients are on, i.e. inside the toolkit's call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.softmax = nn.Softmax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if not torch.is_grad_enabled():  # cnnlens's own no-grad probe: no warning there
            return out
        return out + 0.0 * self.softmax(out)


@pytest.mark.parametrize(("method", "backend"), [("gradcam", "pytorch-grad-cam"),
                                                 ("guided_backprop", "pytorch-grad-cam"),
                                                 ("saliency", "flashtorch"), ("saliency", "captum")])
def test_torch_warning_from_the_users_forward_reaches_the_caller(method, backend):
    model, x = _WarnsInForward().eval(), tiny_input(n=2)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax") as record:
        cnnlens.explain(model, x, method, backend, layer="net.features" if method == "gradcam" else None, target=1)
    assert any("torch" in (w.filename or "") for w in record if "softmax" in str(w.message))


def test_known_toolkit_chatter_is_silenced():
    import warnings

    model, x = tiny_cnn(), tiny_input(n=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for method in ("saliency", "guided_backprop", "input_x_gradient"):
            cnnlens.explain(model, x, method, "captum", target=1)
    assert not [w for w in record if "require gradients" in str(w.message) or "Setting backward hooks" in str(w.message)]
