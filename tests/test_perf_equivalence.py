"""Every speed-up leaves outputs equal to the unoptimised path, and restores what it touches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import _config
from cnnlens.errors import BackendError
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input

GRAD_CAMS = ["gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "layercam", "eigengradcam", "gradcam_elementwise"]


@pytest.fixture()
def unoptimised(monkeypatch):
    monkeypatch.setattr(_config, "OPTIMIZE", False)


@pytest.mark.parametrize("method", [*GRAD_CAMS, "eigencam", "scorecam", "fullgrad", "guided_backprop", "guided_gradcam"])
def test_optimised_equals_unoptimised(method, monkeypatch):
    model, x = tiny_cnn(), tiny_input(n=3)
    fast = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[0, 2, 4])
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[0, 2, 4])
    assert (fast.maps - slow.maps).abs().max() <= 1e-5
    torch.testing.assert_close(fast.raw, slow.raw, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", GRAD_CAMS)
def test_equal_to_direct_pytorch_grad_cam(method):
    """pytorch-grad-cam's own post-processing of our raw CAM equals a direct, documented call."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnnlens.adapters.pytorch_grad_cam import CLASSES

    model, x = tiny_cnn(), tiny_input(n=3)
    for p in model.parameters():
        p.requires_grad_(True)
    e = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[1, 2, 3])
    with getattr(pgc, CLASSES[method])(model, target_layers=[model.features]) as cam:
        direct = cam(input_tensor=x, targets=[ClassifierOutputTarget(i) for i in (1, 2, 3)])
    # pytorch-grad-cam's own post-processing: ReLU, scale+resize per layer, then aggregate_multi_layers
    per_layer = scale_cam_image(np.maximum(e.raw.numpy(), 0), (x.shape[3], x.shape[2]))
    ours = scale_cam_image(np.maximum(per_layer, 0))
    assert np.abs(ours - direct).max() <= 1e-5


def test_flags_restored_after_exception_in_optimised_path(monkeypatch):
    import pytorch_grad_cam as pgc

    model, x = tiny_cnn(), tiny_input()
    model.features[3].weight.requires_grad_(False)
    before = snapshot(model)

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(pgc.GradCAM, "get_cam_weights", boom)
    with pytest.raises(BackendError, match="injected"):
        cnnlens.explain(model, x, "gradcam", "pytorch-grad-cam", target=0)
    assert_same_state(before, model)
    assert [p.requires_grad for p in model.parameters()] == [n != "features.3.weight" for n, _ in model.named_parameters()]
    monkeypatch.undo()
    cnnlens.explain(model, x, "gradcam", "pytorch-grad-cam", target=0)


def test_scorecam_runs_per_image_with_bounded_batch():
    """ScoreCAM's masked inputs are built per image (pytorch-grad-cam builds N*C of them at once)."""
    model, x = tiny_cnn(), tiny_input(n=3)
    a = cnnlens.explain(model, x, "scorecam", "pytorch-grad-cam", target=1, batch_size=4)
    b = cnnlens.explain(model, x, "scorecam", "pytorch-grad-cam", target=1)
    torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_economy_svd_equals_pytorch_grad_cam_on_embedded(method, embedded, demo, monkeypatch):
    fast = cnnlens.explain(embedded, demo, method, "pytorch-grad-cam")
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(embedded, demo, method, "pytorch-grad-cam")
    assert (fast.maps - slow.maps).abs().max() <= 1e-5


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


class _OddReLUs(nn.Module):
    """Every way a ReLU module can sit in a graph: on the raw input (in place), called twice, with an
    input that has a second consumer, in place after a conv, next to a functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.r0 = nn.ReLU(inplace=True)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.ri = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.r0(x * 1.0)
        a = self.c1(x)
        b = self.r(a) + 0.5 * a  # a reaches the output through the ReLU and around it
        c = self.ri(self.c2(b))
        d = self.r(c - 0.1)  # the same module again
        return self.fc(torch.nn.functional.relu(d).mean((2, 3)))


def _relu_models(resnet18_random):
    import torchvision

    torch.manual_seed(0)
    return {"resnet18": resnet18_random, "vgg11": torchvision.models.vgg11(weights=None).eval(), "odd": _OddReLUs().eval()}


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "odd"])
@pytest.mark.parametrize(("method", "backend"), [("guided_backprop", "captum"), ("deconvolution", "captum"),
                                                 ("guided_backprop", "pytorch-grad-cam"), ("guided_backprop", "flashtorch")])
def test_relu_rules_in_swapped_modules_are_bit_identical(arch, method, backend, resnet18_random, monkeypatch):
    """Each toolkit's guided rule run as the backward of RuleReLU equals the toolkit's own hooks or
    modules (Captum's classes called directly when OPTIMIZE is off), bit for bit, in-place ReLUs included."""
    model = _relu_models(resnet18_random)[arch]
    before = snapshot(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fast = cnnlens.explain(model, x, method, backend, target=[1, 2])
    assert_same_state(before, model)
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, method, backend, target=[1, 2])
    assert torch.equal(fast.raw, slow.raw)
    assert fast.raw.abs().sum() > 0
    assert fast.warnings == slow.warnings
    assert_same_state(before, model)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvolution"])
def test_captum_rule_on_the_total_input_gradient(method):
    """Captum's hook acts on the total gradient of a ReLU's input; applying the rule per path (a
    mutant) gives other numbers on a model where that input has a second consumer."""
    from cnnlens.adapters import base
    from cnnlens.adapters import captum as adapter

    model, x = _OddReLUs().eval(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    right = cnnlens.explain(model, x, method, "captum", target=[1, 2])
    rule = adapter._guided_rule if method == "guided_backprop" else adapter._deconv_rule
    per_path = (lambda g, o: torch.relu(rule(g, o))) if method == "guided_backprop" else rule
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapter, "captum_relu_rule", lambda m: lambda relu: base.RuleReLU(per_path, relu.inplace))
        mutant = cnnlens.explain(model, x, method, "captum", target=[1, 2])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_config, "OPTIMIZE", False)
        captum_direct = cnnlens.explain(model, x, method, "captum", target=[1, 2])
    assert torch.equal(right.raw, captum_direct.raw)
    assert not torch.equal(mutant.raw, captum_direct.raw)


@pytest.mark.parametrize(("method", "backend"), [("guided_backprop", "captum"), ("deconvolution", "captum"),
                                                 ("guided_backprop", "pytorch-grad-cam"), ("guided_backprop", "flashtorch")])
def test_relu_modules_restored_after_an_error_in_the_rule(method, backend, resnet18_random, monkeypatch):
    from cnnlens.adapters import base

    before = snapshot(resnet18_random)
    relus = [m for m in resnet18_random.modules() if isinstance(m, nn.ReLU)]

    def boom(*a, **k):
        raise RuntimeError("injected in backward")

    monkeypatch.setattr(base._RuleReLUFn, "backward", staticmethod(boom))
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(BackendError, match="injected"):
        cnnlens.explain(resnet18_random, x, method, backend, target=0)
    assert_same_state(before, resnet18_random)
    assert [m for m in resnet18_random.modules() if isinstance(m, nn.ReLU)] == relus
    monkeypatch.undo()
    cnnlens.explain(resnet18_random, x, method, backend, target=0)



class _InPlaceAfterLayer(nn.Module):
    """A conv whose output an in-place ReLU overwrites: what a recorder keeps then matters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "gradcam_plusplus", "layercam", "eigencam", "scorecam"])
def test_on_device_recorder_equals_pytorch_grad_cams_with_an_in_place_op_after_the_layer(method, monkeypatch):
    """The recorder that keeps activations on the device stores what pytorch-grad-cam stores, also
    when an in-place ReLU overwrites the layer's output afterwards (on the CPU both keep a view)."""
    model = _InPlaceAfterLayer().eval()
    x = tiny_input(n=2)
    fast = cnnlens.explain(model, x, method, "pytorch-grad-cam", layer="conv2", target=[0, 3])
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, method, "pytorch-grad-cam", layer="conv2", target=[0, 3])
    assert torch.equal(fast.raw, slow.raw)


def test_optimised_path_skips_the_discarded_post_processing(monkeypatch):
    """pytorch-grad-cam's scaling and resize of the final image never run: cnnlens discards it."""
    import pytorch_grad_cam.base_cam as base_cam

    calls = {"n": 0}
    real = base_cam.scale_cam_image

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(base_cam, "scale_cam_image", counting)
    model, x = tiny_cnn(), tiny_input(n=2)
    before = snapshot(model)
    fast = cnnlens.explain(model, x, "gradcam", "pytorch-grad-cam", target=1)
    assert calls["n"] == 0
    assert_same_state(before, model)
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, "gradcam", "pytorch-grad-cam", target=1)
    assert calls["n"] == 2  # per layer, then after aggregation
    assert torch.equal(fast.raw, slow.raw)


def _count_walks(monkeypatch) -> dict[str, int]:
    """Count calls of every module's train() (eval() calls it) and zero_grad(): the per-call walks."""
    calls = {"train": 0, "zero_grad": 0}
    real_train, real_zero = nn.Module.train, nn.Module.zero_grad

    def train(self, mode=True):
        calls["train"] += 1
        return real_train(self, mode)

    def zero_grad(self, set_to_none=True):
        calls["zero_grad"] += 1
        return real_zero(self, set_to_none)

    monkeypatch.setattr(nn.Module, "train", train)
    monkeypatch.setattr(nn.Module, "zero_grad", zero_grad)
    return calls


@pytest.mark.parametrize("method", [*GRAD_CAMS, "eigencam"])
def test_no_module_walk_per_call_for_gradient_cams(method, monkeypatch):
    """pytorch-grad-cam's model.eval() (every module through __setattr__) and model.zero_grad() (every
    parameter) run on every call; inside the guard neither changes anything, so they are skipped —
    with the same raw CAM as the unoptimised path, a train-mode model given back in train mode."""
    model, x = tiny_cnn().eval(), tiny_input(n=2)
    calls = _count_walks(monkeypatch)
    fast = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[1, 3])
    assert calls == {"train": 0, "zero_grad": 0}
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[1, 3])
    assert calls["train"] >= 1 and (calls["zero_grad"] >= 1 or method == "eigencam")
    assert torch.equal(fast.raw, slow.raw)
    monkeypatch.setattr(_config, "OPTIMIZE", True)
    model.features[1].train()
    before = snapshot(model)
    again = cnnlens.explain(model, x, method, "pytorch-grad-cam", target=[1, 3])
    assert_same_state(before, model)
    assert torch.equal(again.raw, fast.raw)  # the guard's eval mode, not the user's train mode, ran


@pytest.mark.parametrize("method", ["saliency", "guided_backprop"])
def test_flashtorch_no_module_walk_and_no_host_copy_per_call(method, monkeypatch):
    """Inside the guard FlashTorch's per-call model.eval() / zero_grad() and cnnlens's own call-state
    walk are skipped, and its closing host copy of the gradient reads a placeholder: same raw
    gradient as the unoptimised path, and the user's model comes back as it was."""
    from cnnlens.adapters import flashtorch as ft

    copied: list[tuple[int, ...]] = []
    real_cpu = torch.Tensor.cpu

    def cpu(self, *a, **k):
        copied.append(tuple(self.shape))
        return real_cpu(self, *a, **k)

    model, x = tiny_cnn().eval(), tiny_input(n=3)
    calls = _count_walks(monkeypatch)  # every module's walk, FlashTorch's wrapper's too
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    fast = cnnlens.explain(model, x, method, "flashtorch", target=[1, 3, 0])
    assert calls == {"train": 0, "zero_grad": 0}
    assert tuple(x.shape) not in copied  # FlashTorch's .cpu() of the whole gradient did not run
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, method, "flashtorch", target=[1, 3, 0])
    assert calls["train"] >= 1 and calls["zero_grad"] >= 1 and tuple(x.shape) in copied
    assert torch.equal(fast.raw, slow.raw)
    monkeypatch.setattr(_config, "OPTIMIZE", True)
    model.features[1].train()
    before = snapshot(model)
    again = cnnlens.explain(model, x, method, "flashtorch", target=[1, 3, 0])
    assert_same_state(before, model)
    assert torch.equal(again.raw, fast.raw)
    bp = ft.CnnlensBackprop(model, guarded=False)  # standalone: still cleans up after itself
    before = snapshot(model)
    g = bp.calculate_gradients(x, [1, 3, 0], guided=method == "guided_backprop")
    assert_same_state(before, model)
    assert torch.equal(g, fast.raw) and torch.equal(bp.gradients, g)
