"""Vision transformers and modern backbones: automatic layer, reshape, constant-map warning, layers.

Random weights only (nothing is downloaded), small inputs. torchvision's ViT initialises its head
with zeros, which makes every gradient zero: the models meant to give a map get a random head
(``_live_head``); the untouched zero head is what the constant-map warning test uses.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from direct.pgc_calls import DIRECT as PGC_DIRECT
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from torch import nn

import cnnlens
from cnnlens import registry, reshape
from cnnlens.errors import CnnlensWarning, LayerError, OptionError
from cnnlens.layer_list import list_layers
from cnnlens.registry import REGISTRY
from cnnlens.testing import assert_same_state, run_cli, snapshot

SIDE = 64


def _live_head(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def tiny_vit(zero_head: bool = False) -> nn.Module:
    torch.manual_seed(0)
    m = tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    return m if zero_head else _live_head(m)


def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    return tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                               window_size=[2, 2], num_classes=10).eval()


@pytest.fixture(scope="module")
def big() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "vit_b_16": _live_head(tvm.vit_b_16(weights=None, image_size=SIDE).eval()),
        "swin_t": tvm.swin_t(weights=None).eval(),
        "convnext_tiny": tvm.convnext_tiny(weights=None).eval(),
    }


def _x(n: int = 1, side: int = SIDE) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))


def _varies(e: cnnlens.Explanation) -> bool:
    flat = e.maps.reshape(len(e), -1)
    return bool(((flat.amax(1) - flat.amin(1)) > 0).all())


AUTO = {"vit_b_16": "encoder.layers.encoder_layer_11.ln_1", "swin_t": "norm", "convnext_tiny": "features.7"}


#: Every backend whose Grad-CAM takes token layers (its registry row has the reshape option).
RESHAPE_GRADCAM = [b for b in registry.backends_for("gradcam")
                   if "reshape" in registry.REGISTRY[("gradcam", b)].options and registry.BACKENDS[b].installed]


@pytest.mark.parametrize("backend", RESHAPE_GRADCAM)
@pytest.mark.parametrize("name", list(AUTO))
def test_gradcam_auto_layer_gives_a_map(big, name, backend):
    e = cnnlens.explain(big[name], _x(), "gradcam", backend=backend, target=3)
    assert e.layer == AUTO[name]
    assert _varies(e) and not e.warnings


def test_every_cam_backend_with_gradcam_takes_token_layers():
    assert {"pytorch-grad-cam", "captum", "torchcam"} <= set(RESHAPE_GRADCAM)


@pytest.mark.parametrize("name", list(AUTO))
def test_captum_layer_gradcam_through_a_grid_view(big, name):
    """Captum's LayerGradCam has no reshape argument: it is given a view of the token / channels-
    last layer as (N, C, H, W) (cnnlens.reshape.grid_view) and then agrees with pytorch-grad-cam's
    GradCAM given the same reshape (both before ReLU: sum over channels of mean gradient x activation)."""
    x, t = _x(2), torch.tensor([3, 7])
    c = cnnlens.explain(big[name], x, "gradcam", backend="captum", target=t)
    p = cnnlens.explain(big[name], x, "gradcam", backend="pytorch-grad-cam", target=t)
    assert c.layer == p.layer == AUTO[name] and _varies(c) and not c.warnings
    np.testing.assert_allclose(c.raw[:, 0].numpy(), p.raw.numpy(), rtol=1e-4, atol=1e-5 * float(p.raw.abs().max()))
    if name != "convnext_tiny":
        assert any("view of the token" in d for d in c.provenance.driven)
        with pytest.raises(OptionError, match="preset"):  # a plain callable cannot be undone
            preset = reshape.for_layer(big[name], AUTO[name])
            cnnlens.explain(big[name], x, "gradcam", backend="captum", target=t, reshape=lambda a: preset(a))


def test_a_pair_without_reshape_gets_nchw_layers_only(monkeypatch):
    """A (method, backend) with no reshape option (a backend yet to take one) is never handed a token
    or channels-last layer: the automatic choice skips them, a named one is refused with the
    (N, C, H, W) layers that work."""
    import dataclasses

    from cnnlens import registry

    key = ("gradcam", "captum")
    monkeypatch.setitem(registry.REGISTRY, key, dataclasses.replace(registry.REGISTRY[key], options={}))
    model, x = tiny_swin(), _x(1, 32)
    e = cnnlens.explain(model, x, "gradcam", backend="captum", target=1)
    assert e.layer == "permute"
    with pytest.raises(LayerError, match=r"'norm' outputs swin-layout .*: features\.0\.0, permute"):
        cnnlens.explain(model, x, "gradcam", backend="captum", layer="norm", target=1)


@pytest.mark.parametrize(("name", "layer", "shortcuts"),
                         [("vit_b_16", AUTO["vit_b_16"], True), ("swin_t", "norm", True), ("swin_t", "norm", False)])
def test_matches_pytorch_grad_cam_called_with_reshape_transform(big, name, layer, shortcuts):
    """The early stop at the layer (shortcuts=True) and the reshape together still give what
    pytorch-grad-cam's GradCAM gives when called directly with ``reshape_transform``."""
    model, x, t = big[name], _x(2), torch.tensor([3, 7])
    e = cnnlens.explain(model, x, "gradcam", backend="pytorch-grad-cam", layer=layer, target=t, shortcuts=shortcuts)
    grid = SIDE // 16
    fn = ((lambda a: vit_reshape_transform(a, height=grid, width=grid)) if name == "vit_b_16"
          else (lambda a: a.permute(0, 3, 1, 2)))  # torchvision's Swin keeps (N, H, W, C)
    module = dict(model.named_modules())[layer]
    opts = {"aug_smooth": False, "eigen_smooth": False, "reshape": fn}
    direct = PGC_DIRECT[("gradcam", "pytorch-grad-cam")](model, x, t, module, opts)
    assert ("backward stopped" in " ".join(e.provenance.substitutions)) == shortcuts
    np.testing.assert_allclose(e.raw.numpy(), direct.numpy(), rtol=1e-5, atol=1e-5 * float(direct.abs().max()))


PGC_CAMS = sorted(m for (m, b), i in REGISTRY.items() if b == "pytorch-grad-cam" and i.spec.kind == "cam")


@pytest.mark.parametrize("method", PGC_CAMS)
@pytest.mark.parametrize("family", ["vit", "swin"])
def test_every_pytorch_grad_cam_cam_on_transformers(method, family):
    model = tiny_vit() if family == "vit" else tiny_swin()
    before = snapshot(model)
    opts = {"num_scales": 2} if method == "sess" else {}
    if method == "shapleycam":
        with pytest.raises(LayerError, match="reshape_transform"):
            cnnlens.explain(model, _x(2, 32), method, backend="pytorch-grad-cam", target=1, **opts)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CnnlensWarning)  # a random model may give a flat map somewhere
            e = cnnlens.explain(model, _x(2, 32), method, backend="pytorch-grad-cam", target=1, **opts)
        assert e.maps.shape == (2, 32, 32) and torch.isfinite(e.raw).all()
        if method != "fullgrad":
            assert e.layer == ("encoder.layers.encoder_layer_1.ln_1" if family == "vit" else "norm")
    assert_same_state(before, model)


def test_reshape_option_preset_and_callable():
    model, x = tiny_vit(), _x(2, 32)
    before = snapshot(model)
    auto = cnnlens.explain(model, x, "gradcam", backend="pytorch-grad-cam", target=2)
    preset = cnnlens.explain(model, x, "gradcam", backend="pytorch-grad-cam", target=2, reshape="vit")

    def mine(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    own = cnnlens.explain(model, x, "gradcam", backend="pytorch-grad-cam", target=2, reshape=mine)
    assert torch.equal(auto.raw, preset.raw) and torch.equal(auto.raw, own.raw)
    assert any("'mine'" in d for d in own.provenance.driven)
    assert_same_state(before, model)
    with pytest.raises(OptionError, match=r"'vitt'; expected .*preset: vit, deit"):
        cnnlens.Explainer(model, "gradcam", backend="pytorch-grad-cam", reshape="vitt")
    with pytest.raises(OptionError, match="reshape"):
        cnnlens.Explainer(model, "gradcam", backend="pytorch-grad-cam", reshape=3)
    with pytest.raises(LayerError, match="channels-last"):  # Swin's layout on ViT tokens
        cnnlens.explain(model, x, "gradcam", backend="pytorch-grad-cam", target=2, reshape="swin")


def test_constant_map_from_a_zero_head_warns_with_its_cause():
    """torchvision's own init leaves a ViT's head at zero: every class scores alike, so the map at any
    layer, the automatic one or a named one, is constant; the warning names that cause."""
    model, x = tiny_vit(zero_head=True), _x(2, 32)
    for layer in (None, "conv_proj"):
        with pytest.warns(CnnlensWarning, match="constant map"):
            e = cnnlens.explain(model, x, "gradcam", backend="pytorch-grad-cam", target=2, layer=layer)
        assert len(e.warnings) == 1 and "same score" in e.warnings[0]


def test_for_layer_by_type(big):
    swin, cnx, vit = big["swin_t"], big["convnext_tiny"], tiny_vit()
    got = {n: reshape.name_of(reshape.for_layer(m, n)) for m, ns in (
        (swin, ("features.0.0", "features.0.1", "features.7.1.mlp", "norm", "permute", "head")),
        (cnx, ("features.0.0", "features.7.2.block.0", "features.7.2.block.3", "features.7.2.block.6", "features.7")),
        (vit, ("conv_proj", "encoder.layers.encoder_layer_1.ln_1", "encoder.ln", "heads.head")),
    ) for n in ns}
    assert got == {
        "features.0.0": None, "features.0.1": "swin", "features.7.1.mlp": "swin", "norm": "swin", "permute": None,
        "head": None, "features.7.2.block.0": None, "features.7.2.block.3": "channels_last",
        "features.7.2.block.6": None, "features.7": None, "conv_proj": None,
        "encoder.layers.encoder_layer_1.ln_1": "vit", "encoder.ln": "vit", "heads.head": None,
    }
    # Type inspection, not the name: the same ViT inside a wrapper is still known.
    wrapped = nn.Sequential(vit)
    assert reshape.for_layer(wrapped, "0.encoder.layers.encoder_layer_1.ln_1") is reshape.PRESETS["vit"]


def test_layer_list_marks_token_layers():
    rows, default = list_layers(tiny_vit(), size=32)
    by = {r.name: r for r in rows}
    assert default == "encoder.layers.encoder_layer_1.ln_1"
    assert by[default].reshape == "vit" and by[default].spatial
    assert by["conv_proj"].reshape is None and by["conv_proj"].spatial
    assert by["heads.head"].reshape is None and not by["heads.head"].spatial


def test_cli_layers_shows_the_reshape():
    result = run_cli("layers", "--model", "vit_b_16", "--weights", "none", "--pattern", "encoder.layers.encoder_layer_11.*")
    assert result.exit_code == 0, result.output
    assert "reshape" in result.stdout.splitlines()[1]  # the column
    row = next(line for line in result.stdout.splitlines() if "encoder_layer_11.ln_1 " in line)
    assert "default CAM" in row and " vit " in row
    result = run_cli("layers", "--model", "vit_b_16", "--weights", "none", "--pattern", "conv_proj", "--json")
    assert result.exit_code == 0
    import json

    rows = json.loads(result.stdout)
    rows = rows["layers"] if isinstance(rows, dict) else rows
    assert [r.get("reshape") for r in rows if r["name"] == "conv_proj"] == [None]


def test_timm_models():
    timm = pytest.importorskip("timm")
    for arch, prefix in (("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
        model = timm.create_model(arch, pretrained=False, img_size=64, num_classes=10).eval()
        for p in (getattr(model, "head", None), getattr(model, "head_dist", None)):
            if isinstance(p, nn.Linear):
                nn.init.normal_(p.weight, std=0.5)
        layer = f"blocks.{len(model.blocks) - 1}.norm1"
        assert reshape.for_layer(model, layer).prefix_tokens == prefix
        e = cnnlens.explain(model, _x(), "gradcam", backend="pytorch-grad-cam", target=3)
        assert e.layer == layer and _varies(e)
    for arch, layer in (("swin_tiny_patch4_window7_224", "norm"), ("convnext_atto", "stages.3")):
        model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
        e = cnnlens.explain(model, _x(1, 224), "gradcam", backend="pytorch-grad-cam", target=3)
        assert e.layer == layer and _varies(e)
