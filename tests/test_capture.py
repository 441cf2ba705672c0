"""cnnlens.capture: forward hooks that record feature maps and are always removed."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image
from torch import nn

import cnnlens
from cnnlens.errors import LayerError, OptionError
from cnnlens.featuremaps import FeatureMaps
from cnnlens.testing import hook_count, tiny_cnn, tiny_input


def test_records_inputs_and_outputs_of_each_call():
    model, x = tiny_cnn(), tiny_input(2, 32)
    with torch.no_grad():
        expected = model.features[:4](x)
    with cnnlens.capture(model, ["features.0", "features.3"]) as fm:
        model(x)
        model(x[:1])
    assert fm.layers == ["features.0", "features.3"]
    assert fm.calls("features.3") == 2 and len(fm.records("features.3")) == 2
    assert tuple(fm.output("features.0", 0).shape) == (2, 8, 32, 32)
    assert tuple(fm["features.3"].shape) == (1, 16, 16, 16)  # [] is the last call
    assert torch.allclose(fm.output("features.3", 0), expected, atol=1e-6)
    assert torch.equal(fm.input("features.0", 0), x)
    assert hook_count(model) == 0


def test_outputs_are_detached_copies_on_the_cpu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with cnnlens.capture(model, "0") as fm:
        model(x).sum().backward()
    out = fm["0"]
    assert not out.requires_grad and out.grad_fn is None and out.device.type == "cpu"
    # a view would have been clipped by the in-place ReLU that ran after the hook
    assert float(out.min()) < 0


def test_device_same_and_invalid():
    model, x = tiny_cnn(), tiny_input(1, 16)
    with cnnlens.capture(model, ["features.0"], device="same") as fm:
        model(x)
    assert fm["features.0"].device == x.device
    with pytest.raises(OptionError, match="'same'"), cnnlens.capture(model, ["features.0"], device="gpu0"):
        pass  # pragma: no cover


def test_no_hooks_left_when_forward_raises():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.conv(x)
            raise RuntimeError("forward failed after the hooked layer")

    model = Boom()
    with pytest.raises(RuntimeError, match="forward failed"), cnnlens.capture(model, ["conv"]) as fm:
        model(torch.randn(1, 3, 8, 8))
    assert hook_count(model) == 0
    assert fm.calls("conv") == 1  # what ran before the failure is kept


def test_no_hooks_left_when_a_layer_is_unknown():
    model = tiny_cnn()
    with pytest.raises(LayerError, match=r"close matches: features\.3"), cnnlens.capture(model, ["features.0", "featres.3"]):
        pass  # pragma: no cover
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("layers", "words"),
    [([], "no layers"), (["features.0", "features.0"], "named twice"), ([nn.Conv2d(1, 1, 1)], "not part of the model")],
)
def test_bad_layer_lists(layers, words):
    with pytest.raises(LayerError, match=words), cnnlens.capture(tiny_cnn(), layers):
        pass  # pragma: no cover


def test_memory_budget_keeps_the_newest_calls():
    model, x = tiny_cnn(), tiny_input(1, 16)
    one = 8 * 16 * 16 * 4  # one output of features.0, float32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cnnlens.capture(model, ["features.0"], max_bytes=2 * one, inputs=False) as fm:
            for i in range(5):
                model(x + i)
    assert fm.calls("features.0") == 5 and len(fm.records("features.0")) == 2
    assert [r.call for r in fm.records("features.0")] == [3, 4]
    assert fm.dropped == 3 and fm.nbytes <= 2 * one
    assert any("max_bytes" in str(w.message) for w in caught)
    with pytest.warns(RuntimeWarning, match="dropped 1"), cnnlens.capture(model, ["features.0"], max_bytes=10) as tight:
        model(x)
    with pytest.raises(LayerError, match="dropped"):
        tight["features.0"]
    with pytest.raises(OptionError):
        cnnlens.capture(model, ["features.0"], max_bytes=0).__enter__()


def test_top_channels_rank_by_mean_activation(resnet18_random):
    x = torch.randn(2, 3, 64, 64)
    with cnnlens.capture(resnet18_random, ["layer1", "layer4", "fc"]) as fm, torch.no_grad():
        resnet18_random(x)
    assert tuple(fm["layer1"].shape) == (2, 64, 16, 16) and tuple(fm["layer4"].shape) == (2, 512, 2, 2)
    idx, means = fm.top_channels("layer4", 5)
    assert idx.shape == (2, 5) and bool((means[:, :-1] >= means[:, 1:]).all())
    manual = fm["layer4"].mean(dim=(2, 3))
    assert torch.equal(idx[1], manual[1].topk(5).indices)
    with pytest.raises(LayerError, match="not an \\(N, C, H, W\\)"):
        fm.top_channels("fc")
    with pytest.raises(LayerError, match="was not captured"):
        fm["layer3"]
    assert hook_count(resnet18_random) == 0


def test_concat_joins_chunks():
    model, x = tiny_cnn(), tiny_input(3, 16)
    parts = []
    for i in range(3):
        with cnnlens.capture(model, ["features.3"]) as part, torch.no_grad():
            model(x[i : i + 1])
        parts.append(part)
    joined = FeatureMaps.concat(parts)
    with torch.no_grad():
        assert torch.allclose(joined["features.3"], model.features[:4](x), atol=1e-6)


def test_plot_grid_png(tmp_path):
    model, x = tiny_cnn(), tiny_input(2, 16)
    with cnnlens.capture(model, ["features.0", "features.3"]) as fm, torch.no_grad():
        model(x)
    images = (torch.rand(2, 16, 16, 3) * 255).to(torch.uint8)
    out = tmp_path / "fm.png"
    fig = fm.plot(top=4, images=images, out=out, ncols=4)
    with Image.open(out) as im:
        # 2 images x 2 layers, one row each; 1 image column + 4 channels
        assert im.size == (round(5 * 1.25 * 100), round((4 * 1.25 + 0.3) * 100))
        assert tuple(fig.get_size_inches() * 100) == pytest.approx(im.size)
