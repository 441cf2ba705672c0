"""Every speed-up leaves outputs equal to the unoptimised path, and restores what it touches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


def test_lean_guided_relu_is_bit_identical(resnet18_random, monkeypatch):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fast = cnnlens.explain(resnet18_random, x, "guided_backprop", "pytorch-grad-cam", target=[1, 2])
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(resnet18_random, x, "guided_backprop", "pytorch-grad-cam", target=[1, 2])
    assert torch.equal(fast.raw, slow.raw)


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


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_lean_flashtorch_guided_relu_is_bit_identical(arch, resnet18_random, monkeypatch):
    """FlashTorch's guided rule through swapped modules equals FlashTorch's own hooks, bit for bit."""
    import torchvision

    if arch == "resnet18":
        model = resnet18_random
    else:
        torch.manual_seed(0)
        model = torchvision.models.vgg11(weights=None).eval()  # in-place ReLUs
    before = snapshot(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fast = cnnlens.explain(model, x, "guided_backprop", "flashtorch", target=[1, 2])
    monkeypatch.setattr(_config, "OPTIMIZE", False)
    slow = cnnlens.explain(model, x, "guided_backprop", "flashtorch", target=[1, 2])
    assert torch.equal(fast.raw, slow.raw)
    assert not fast.warnings and not slow.warnings
    assert_same_state(before, model)
