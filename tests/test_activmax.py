"""cnnlens.filters: FlashTorch's activation maximization, fixed (issue 3, fix 8).

As in tests/adapters/test_flashtorch.py, ``test_upstream8_*`` shows that plain FlashTorch fails the
check that the matching cnnlens test passes.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cnnlens
from cnnlens.activmax import start_image
from cnnlens.errors import LayerError, OptionError, UnsupportedMethodError
from cnnlens.testing import assert_same_state, hook_count, snapshot, tiny_cnn

activmax = pytest.importorskip("flashtorch.activmax")
GradientAscent = activmax.GradientAscent

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class PadConv(nn.Conv2d):
    """A Conv2d that pads its input itself, like EfficientNet's Conv2dStaticSamePadding."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def pad_stem_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(PadConv(3, 8, 3), nn.ReLU(), PadConv(8, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 3)).eval()


def filter_mean(model: nn.Module, layer: nn.Module, x: Tensor, idx: list[int]) -> Tensor:
    """Mean activation of filter idx[i] on x[i], measured independently with a forward hook."""
    seen: list[Tensor] = []
    h = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return torch.stack([seen[0][i, f].mean() for i, f in enumerate(idx)])


def test_activation_rises_and_contract() -> None:
    model = tiny_cnn()
    before = snapshot(model)
    imgs = cnnlens.filters(model, layer="features.3", filters=[0, 5, 9], steps=30, size=32)
    assert_same_state(before, model)
    assert imgs.shape == (3, 3, 32, 32) and imgs.tensor.dtype == torch.float32 and not imgs.tensor.requires_grad
    assert imgs.filters == (0, 5, 9) and imgs.layer == "features.3"
    assert imgs.images.shape == (3, 32, 32, 3) and imgs.images.dtype == torch.uint8
    # tensor is the picture ready to show (in [0, 1], the uint8 copy's values); inputs are what the model was fed
    assert float(imgs.tensor.min()) >= 0.0 and float(imgs.tensor.max()) <= 1.0
    assert torch.equal((imgs.tensor * 255).round().to(torch.uint8).permute(0, 2, 3, 1), imgs.images)
    assert imgs.inputs.shape == (3, 3, 32, 32) and float(imgs.inputs.abs().max()) > 1.0
    layer = model.features[3]
    gained = filter_mean(model, layer, imgs.inputs, imgs.filters)
    started = filter_mean(model, layer, imgs.start, imgs.filters)
    assert bool((gained > started).all()), (gained, started)
    torch.testing.assert_close(imgs.activation, gained)
    torch.testing.assert_close(imgs.start_activation, started)


def test_default_layer_and_filters() -> None:
    imgs = cnnlens.filters(tiny_cnn(), steps=2, size=16)
    assert imgs.layer == "features.3"  # the middle of the two convolutions (index 2 // 2)
    assert len(set(imgs.filters)) == 4 and all(0 <= f < 16 for f in imgs.filters)


def test_seeded_and_global_rng_untouched() -> None:
    model = tiny_cnn()
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    a = cnnlens.filters(model, "features.0", [1, 2], steps=5, size=24, seed=3)
    b = cnnlens.filters(model, "features.0", [1, 2], steps=5, size=24, seed=3)
    c = cnnlens.filters(model, "features.0", [1, 2], steps=5, size=24, seed=4)
    one = cnnlens.filters(model, "features.0", [2], steps=5, size=24, seed=3)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert torch.equal(one.inputs[0], a.inputs[1])  # each filter's image depends on (seed, filter) only
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()


def test_start_is_flashtorchs_recipe() -> None:
    from flashtorch.utils import apply_transforms

    rng = np.random.default_rng([0, 7])
    noise = np.uint8(rng.uniform(150, 180, (20, 20, 3)))
    theirs = apply_transforms(noise, size=20).detach()
    ours = start_image(0, 7, 20, *IMAGENET, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Fix 8, point by point
# ------------------------------------------------------------------------------------------------


def test_fix8_filter_index_validated() -> None:
    model = tiny_cnn()  # features.3 has 16 filters
    before = snapshot(model)
    for bad, match in ((16, "filter 16 is out of range: the layer has 16 filters \\(0..15\\)"),
                       (-1, "out of range"), (1.0, "integers"), ([], "empty")):
        with pytest.raises(OptionError, match=match):
            cnnlens.filters(model, "features.3", bad if isinstance(bad, list) else [0, bad], steps=1, size=16)
    assert_same_state(before, model)
    cnnlens.filters(model, "features.3", [15], steps=1, size=16)
    from cnnlens.adapters.flashtorch import CnnlensGradientAscent

    ascent = CnnlensGradientAscent(model, model.features[3], 16)
    with pytest.raises(OptionError, match="filter 16 is out of range"):
        ascent.optimize(model.features[3], 16, torch.zeros(1, 3, 16, 16), num_iter=1)
    assert hook_count(model) == 0


def test_upstream8_off_by_one() -> None:
    ga = GradientAscent(tiny_cnn().features)
    ga._validate_filter_idx(16, 16)  # accepted: no error for an index equal to out_channels
    with pytest.raises(ValueError):
        ga._validate_filter_idx(16, 17)


def test_fix8_conv_subclass_by_name() -> None:
    model = pad_stem_cnn()
    before = snapshot(model)
    imgs = cnnlens.filters(model, "2", [0, 5], steps=20, size=24)
    assert_same_state(before, model)
    gained = filter_mean(model, model[2], imgs.inputs, [0, 5])
    started = filter_mean(model, model[2], imgs.start, [0, 5])
    assert bool((gained > started).all())


def test_upstream8_conv_subclass_rejected_and_padded_stem_never_moves() -> None:
    model = pad_stem_cnn()
    with pytest.raises(TypeError, match=r"must be nn\.modules\.conv\.Conv2d"):
        GradientAscent(model).optimize(model[2], 0, num_iter=2)
    # Even on a plain Conv2d layer, FlashTorch reads the gradient at the first 3-channel conv; that
    # conv pads its input, the shapes differ, and the gradient stays zero: the image never changes.
    plain = copy.deepcopy(model)
    plain[2] = nn.Conv2d(8, 6, 3, padding=1)
    start = start_image(0, 0, 24, *IMAGENET, torch.device("cpu"), torch.float32).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = GradientAscent(plain).optimize(plain[2], 0, input_=start, num_iter=5)
    assert torch.equal(out[-1].detach(), start.detach())


def test_fix8_leaves_model_as_found() -> None:
    model = tiny_cnn().double().train()
    model.features[2].inplace = True
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    imgs = cnnlens.filters(model, "features.3", [1], steps=3, size=16)
    assert_same_state(before, model)
    assert hook_count(model) == 0
    assert imgs.inputs.dtype == torch.float64 and next(model.parameters()).dtype == torch.float64


def test_upstream8_hooks_left_behind() -> None:
    model = tiny_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GradientAscent(model, img_size=16).optimize(model.features[3], 0, num_iter=1)
    assert hook_count(model) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fix8_model_stays_on_its_device() -> None:
    model = tiny_cnn()
    imgs = cnnlens.filters(model, "features.3", [0], steps=2, size=16)
    assert next(model.parameters()).device.type == "cpu" and imgs.inputs.device.type == "cpu"
    gpu = tiny_cnn().cuda()
    imgs = cnnlens.filters(gpu, "features.3", [0], steps=2, size=16)
    assert imgs.inputs.device.type == "cuda" and next(gpu.parameters()).device.type == "cuda"
    # FlashTorch's use_gpu=True moves the user's model to the GPU for good.
    upstream = tiny_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GradientAscent(upstream.features, img_size=16, use_gpu=True).optimize(upstream.features[3], 0, num_iter=1)
    assert next(upstream.parameters()).device.type == "cuda"


@pytest.mark.slow
def test_fix8_embedded_model_padded_conv_by_name(embedded: nn.Module) -> None:
    model = embedded
    name = "_blocks.1._expand_conv"
    assert type(dict(model.named_modules())[name]).__name__ == "Conv2dStaticSamePadding"
    before = snapshot(model)
    imgs = cnnlens.filters(model, name, [0, 7], steps=10, size=64)
    assert_same_state(before, model)
    layer = dict(model.named_modules())[name]
    assert bool((filter_mean(model, layer, imgs.inputs, [0, 7]) > filter_mean(model, layer, imgs.start, [0, 7])).all())


# ------------------------------------------------------------------------------------------------
# Errors and plotting
# ------------------------------------------------------------------------------------------------


def test_errors() -> None:
    model = tiny_cnn()
    with pytest.raises(LayerError, match=r"close matches: features\.3"):
        cnnlens.filters(model, "features.33", [0], size=16)
    with pytest.raises(LayerError, match="filter visualization needs a layer with an \\(N, C, H, W\\) output"):
        cnnlens.filters(model, "fc", [0], size=16)
    with pytest.raises(OptionError, match="steps must be an integer >= 1"):
        cnnlens.filters(model, "features.3", [0], steps=0, size=16)
    with pytest.raises(OptionError, match="lr must be a positive number"):
        cnnlens.filters(model, "features.3", [0], lr=-1, size=16)
    with pytest.raises(UnsupportedMethodError, match="backends that have it: flashtorch"):
        cnnlens.filters(model, "features.3", [0], backend="captum")


def test_plot_grid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    imgs = cnnlens.filters(tiny_cnn(), "features.3", [0, 1, 2, 3, 4], steps=2, size=16)
    out = tmp_path / "grid.png"
    fig = cnnlens.plot_filters(imgs, out, ncols=3)
    assert out.stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [f"filter {i}" for i in range(5)]
    with pytest.raises(OptionError):
        cnnlens.plot_filters(torch.zeros(2, 16, 16))


@pytest.mark.slow
def test_public_names_resolve_after_submodule_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys, cnnlens, cnnlens.activmax\n"
        "assert 'flashtorch' not in sys.modules  # the backend stays lazy\n"
        "import cnnlens.adapters.flashtorch\n"
        "assert callable(cnnlens.filters) and cnnlens.filters.__module__ == 'cnnlens.activmax'\n"
        "assert cnnlens.plot_filters is cnnlens.activmax.plot_filters\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
