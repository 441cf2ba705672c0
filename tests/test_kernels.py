"""cnnlens.kernels: a convolution's weights as tiles (the tutorial's first section)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlens
from cnnlens.errors import LayerError, ModelError, OptionError
from cnnlens.testing import tiny_cnn


@pytest.fixture(scope="module")
def vgg11():
    return cnnlens.load_model("vgg11", weights=None)


def test_vgg11_first_layer_gives_64_rgb_tiles(vgg11):
    k = cnnlens.kernels(vgg11, "features.0")
    assert k.mode == "rgb" and k.rgb
    assert tuple(k.tiles.shape) == (64, 3, 3, 3)  # (filters, kh, kw, RGB)
    assert len(k) == 64
    # per-filter min-max: every tile spans exactly [0, 1]
    flat = k.tiles.reshape(64, -1)
    assert torch.allclose(flat.amin(1), torch.zeros(64)) and torch.allclose(flat.amax(1), torch.ones(64))
    # the tiles are the weights, rearranged: filter 5's red channel is weight[5, 0]
    w = vgg11.features[0].weight.detach()[5]
    expected = (w - w.min()) / (w.max() - w.min())
    assert torch.allclose(k.tiles[5], expected.permute(1, 2, 0), atol=1e-6)


def test_vgg11_features3_gives_128_filters(vgg11):
    """The tutorial's example: vgg11's second conv has 128 filters over 64 inputs."""
    k = cnnlens.kernels(vgg11, "features.3")
    assert k.mode == "mean" and tuple(k.tiles.shape) == (128, 3, 3)
    assert tuple(k.weight.shape) == (128, 64, 3, 3)
    assert torch.allclose(k.tiles[7], _minmax(vgg11.features[3].weight.detach()[7].mean(0)), atol=1e-6)
    one = cnnlens.kernels(vgg11, "features.3", mode="channel", channel=63)
    assert one.channel == 63 and torch.allclose(one.tiles[0], _minmax(vgg11.features[3].weight.detach()[0, 63]))


def _minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


def test_layer_normalization_keeps_magnitudes(vgg11):
    k = cnnlens.kernels(vgg11, "features.3", normalize="layer")
    assert float(k.tiles.min()) == pytest.approx(0.0) and float(k.tiles.max()) == pytest.approx(1.0)
    per_filter = k.tiles.reshape(128, -1)
    # with one range for the layer, most filters do not span [0, 1] on their own
    assert int(((per_filter.amax(1) - per_filter.amin(1)) < 0.99).sum()) > 64


def test_kernel_grid_png_has_expected_size(vgg11, tmp_path):
    out = tmp_path / "k.png"
    fig = cnnlens.kernels(vgg11, "features.3").plot(out)
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = fig.get_size_inches() * 100
        assert im.size[0] == 800 and abs(im.size[1] - h) <= 1 and w == 800
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 50  # tiles, not a blank canvas


def test_resnet_and_embedded_first_convs(resnet18_random, embedded):
    assert tuple(cnnlens.kernels(resnet18_random, "conv1").tiles.shape) == (64, 7, 7, 3)
    k = cnnlens.kernels(embedded)  # the first Conv2d by default
    assert k.layer == "_conv_stem" and tuple(k.tiles.shape) == (32, 3, 3, 3)
    deep = cnnlens.kernels(resnet18_random, "layer4.1.conv2")
    assert tuple(deep.tiles.shape) == (512, 3, 3)


def test_depthwise_conv_has_one_input_per_filter(embedded):
    k = cnnlens.kernels(embedded, "_blocks.1._depthwise_conv")
    assert k.mode == "mean" and k.tiles.dim() == 3


def test_kernels_do_not_touch_the_model(vgg11):
    before = vgg11.features[0].weight.detach().clone()
    k = cnnlens.kernels(vgg11, "features.0")
    k.tiles.fill_(0)
    k.weight.fill_(0)
    assert torch.equal(vgg11.features[0].weight, before)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_accepts_a_module_and_torchscript():
    model = tiny_cnn()
    assert cnnlens.kernels(model, model.features[3]).layer == "features.3"
    scripted = torch.jit.script(model)
    k = cnnlens.kernels(scripted, "features.0")
    assert tuple(k.tiles.shape) == (8, 3, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"layer": "features.2"}, LayerError, ["ReLU", "not a Conv2d", "features.0"]),
        ({"layer": "featurs.3"}, LayerError, ["not found", "features.3"]),
        ({"layer": "features.3", "mode": "rgb"}, OptionError, ["3 input channels", "mode='mean'"]),
        ({"layer": "features.3", "mode": "channel", "channel": 8}, OptionError, ["out of range", "0..7"]),
        ({"mode": "colour"}, OptionError, ["unknown mode", "rgb"]),
        ({"normalize": "global"}, OptionError, ["filter", "layer"]),
        ({"layer": 3}, LayerError, ["dotted name"]),
    ],
)
def test_bad_arguments_say_what_would_be_right(kwargs, error, words):
    with pytest.raises(error) as info:
        cnnlens.kernels(tiny_cnn(), **kwargs)
    for w in words:
        assert w in str(info.value)


def test_model_without_conv():
    with pytest.raises(LayerError, match="no Conv2d"):
        cnnlens.kernels(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(ModelError):
        cnnlens.kernels("resnet18")  # type: ignore[arg-type]


def test_repr_png():
    data = cnnlens.kernels(tiny_cnn())._repr_png_()
    assert Image.open(io.BytesIO(data)).format == "PNG"
