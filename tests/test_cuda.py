"""Every (method, backend) on a CUDA model and input: the output contract, model hygiene, and the same
maps as on the CPU. Skipped without a GPU (CI has none); run on a lent GPU machine."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

import cnnlens
from cnnlens.registry import BACKENDS, REGISTRY
from cnnlens.testing import assert_same_state, hook_count, snapshot, tiny_cnn, tiny_input

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PAIRS = sorted(REGISTRY)


def _explain(model, x, method, backend, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method=method, backend=backend, **kw)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float(torch.equal(a, b))


@pytest.fixture(autouse=True)
def _full_precision():
    """Convolutions in float32, as on the CPU (cuDNN uses TF32 by default on Ampere and newer)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize(("method", "backend"), PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_cuda_contract_hygiene_and_cpu_agreement(method, backend):
    if not BACKENDS[backend].installed:
        pytest.skip(f"{backend} not installed")
    cpu_model, x_cpu = tiny_cnn(), tiny_input(n=3, size=32)
    model, x = tiny_cnn().cuda(), x_cpu.cuda()
    model.features[4].train()
    seed = {"seed": 0} if REGISTRY[(method, backend)].spec.stochastic else {}
    # a first call allocates what stays for the process (cuBLAS workspaces, RNG state); then none may grow
    _explain(model, x, method, backend, target=[0, 1, 2], **seed)
    gc.collect()
    torch.cuda.synchronize()
    before = snapshot(model)
    mem0 = torch.cuda.memory_allocated()
    e = _explain(model, x, method, backend, target=[0, 1, 2], **seed)
    assert_same_state(before, model)
    assert hook_count(model) == 0
    assert e.maps.device.type == "cuda" and e.raw.device.type == "cuda" and e.targets.device.type == "cuda"
    assert e.maps.shape == (3, 32, 32) and torch.isfinite(e.maps).all()
    assert e.maps.min() >= 0 and e.maps.max() <= 1
    del e
    gc.collect()  # toolkits' objects hold tensors in reference cycles (hook closures) until a collection
    torch.cuda.synchronize()
    left = torch.cuda.memory_allocated() - mem0
    if not REGISTRY[(method, backend)].spec.stochastic:  # CPU and CUDA draw different noise from one seed
        cpu_model.features[4].train()
        g = _explain(model, x, method, backend, target=[0, 1, 2])
        c = _explain(cpu_model, x_cpu, method, backend, target=[0, 1, 2])
        for i in range(3):
            r = _corr(g.maps[i].cpu(), c.maps[i])
            assert r > 0.99, f"image {i}: CUDA and CPU maps correlate at {r:.4f}"
    # nothing the call allocated stays on the card (the caching allocator keeps blocks, not tensors)
    assert left <= 0, f"{left} bytes still allocated on the GPU after the call"


def test_cuda_input_on_cpu_model_on_cuda_every_backend():
    """The model's device wins for the computation; results come back on the input's device."""
    model, x = tiny_cnn().cuda(), tiny_input(n=2, size=32)
    for method, backend in [("gradcam", "pytorch-grad-cam"), ("saliency", "captum"), ("saliency", "flashtorch")]:
        if not BACKENDS[backend].installed:
            continue
        e = _explain(model, x, method, backend, target=1)
        assert e.maps.device.type == "cpu" and e.raw.device.type == "cpu"


def test_cuda_embedded_model_predicts_the_cat():
    model = cnnlens.load_model(device="cuda")
    imgs = cnnlens.demo_images(model, names=["chelsea"])
    assert imgs.device.type == "cuda"
    e = cnnlens.explain(model, imgs, method="gradcam", backend="captum")
    assert "cat" in e.labels[0].lower()


@pytest.mark.parametrize(("method", "backend"), [("gradcam", "captum"), ("saliency", "flashtorch"),
                                                  ("gradcam", "pytorch-grad-cam"), ("lime", "captum")])
def test_cuda_nan_input_refused_after_the_call(method, backend):
    """On a GPU the NaN/Inf check is read after the backend ran (no synchronisation before it): the
    user still gets the InputError, the model is untouched and no hook is left."""
    if not BACKENDS[backend].installed:
        pytest.skip(f"{backend} not installed")
    model, x = tiny_cnn().cuda(), tiny_input(n=2, size=32).cuda()
    x[1, 0, 3, 3] = float("nan")
    before = snapshot(model)
    with pytest.raises(cnnlens.errors.InputError, match="NaN or Inf"):
        _explain(model, x, method, backend, target=1, **({"n_samples": 8} if method == "lime" else {}))
    assert_same_state(before, model)
    assert hook_count(model) == 0
