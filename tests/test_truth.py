"""Truth on real weights: the embedded EfficientNet-Lite0 and the demo cat photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens.errors import LayerError, ModelError


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def test_cat_is_a_cat(embedded, cat):
    with torch.no_grad():
        pred = int(embedded(cat).argmax(1))
    assert 281 <= pred <= 285, embedded.cnnlens_categories[pred]


def test_gradcam_agrees_across_backends(embedded, cat):
    a = cnnlens.explain(embedded, cat, "gradcam", "pytorch-grad-cam")
    b = cnnlens.explain(embedded, cat, "gradcam", "captum")
    assert a.layer == b.layer
    assert 281 <= int(a.targets[0]) <= 285 and a.labels[0] in embedded.cnnlens_categories
    assert pearson(a.maps, b.maps) >= 0.99
    # the same algorithm on the same tensors: the raw CAMs agree to float precision
    torch.testing.assert_close(a.raw, b.raw[:, 0], atol=1e-5, rtol=1e-4)


def test_guided_backprop_agrees_on_resnet18(resnet18_random, cat):
    # The embedded model has ReLU6 only, which no toolkit guides; resnet18 has nn.ReLU.
    a = cnnlens.explain(resnet18_random, cat, "guided_backprop", "pytorch-grad-cam", target=7)
    b = cnnlens.explain(resnet18_random, cat, "guided_backprop", "captum", target=7)
    assert pearson(a.maps, b.maps) >= 0.99
    assert not a.warnings and not b.warnings


def test_guided_backprop_on_relu6_model_warns(embedded, cat):
    with pytest.warns(cnnlens.CnnlensWarning, match="no nn.ReLU"):
        e = cnnlens.explain(embedded, cat, "guided_backprop", "captum")
    assert e.warnings and "ReLU6" in e.warnings[0]


def test_deeplift_on_reused_activation_is_a_clear_error(embedded, cat):
    with pytest.raises(ModelError, match="more than once") as info:
        cnnlens.explain(embedded, cat, "deeplift", "captum")
    assert "integrated_gradients" in str(info.value)


def test_auto_layer_skips_reused_modules(embedded, cat):
    e = cnnlens.explain(embedded, cat, "gradcam", "captum")
    assert e.layer == "_bn1" and e.raw.shape[-2:] == (7, 7)
    with pytest.raises(LayerError, match="runs 2 times"):
        cnnlens.explain(embedded, cat, "gradcam", "captum", layer="_swish")


def test_class_name_target(embedded, cat):
    e = cnnlens.explain(embedded, cat, "gradcam", "captum", target="tabby")
    assert e.targets.tolist() == [embedded.cnnlens_categories.index("tabby")]
    assert e.labels == ("tabby",)
