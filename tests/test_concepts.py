"""cnnlens.concepts: pytorch-grad-cam's Deep Feature Factorization as its own verb."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from pytorch_grad_cam import DeepFeatureFactorization

import cnnlens
from cnnlens.errors import OptionError
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input


@pytest.fixture(autouse=True)
def _quiet_nmf():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Maximum number of iterations")  # scikit-learn's NMF on noise
        yield


def test_matches_deep_feature_factorization_called_directly():
    model, x = tiny_cnn(), tiny_input(n=3, size=32)
    before = snapshot(model)
    c = cnnlens.concepts(model, x, n_components=3)
    assert_same_state(before, model)
    assert c.maps.shape == (3, 3, 32, 32) and c.concepts.shape == (3, 16, 3) and c.scores.shape == (3, 3, 5)
    assert (c.layer, c.head) == ("features", "fc")
    for i in range(3):  # pytorch-grad-cam's documented call, one image at a time
        dff = DeepFeatureFactorization(model=model, target_layer=model.features, computation_on_concepts=model.fc)
        concepts, maps, scores = dff(x[i : i + 1], 3)
        np.testing.assert_allclose(c.maps[i].numpy(), maps[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(c.concepts[i].numpy(), concepts, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(c.scores[i].numpy(), scores, rtol=1e-5, atol=1e-6)
    alone = cnnlens.concepts(model, x[1:2], n_components=3)  # no neighbour changes an image's concepts
    assert torch.equal(alone.maps[0], c.maps[1])
    assert cnnlens.concepts(model, x, n_components=3, head=False).scores is None
    assert cnnlens.concepts(model, x[:1], n_components=2)._repr_png_()[:4] == b"\x89PNG"


def test_vision_transformer_layer_and_reshape():
    torch.manual_seed(0)
    vit = tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                                num_classes=10).eval()
    c = cnnlens.concepts(vit, tiny_input(n=1, size=32), n_components=2)
    assert c.layer == "encoder.layers.encoder_layer_1.ln_1" and c.head == "heads.head"
    assert c.maps.shape == (1, 2, 32, 32) and c.concepts.shape == (1, 32, 2)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_n_components(bad):
    with pytest.raises(OptionError, match="n_components"):
        cnnlens.concepts(tiny_cnn(), tiny_input(n=1), n_components=bad)
