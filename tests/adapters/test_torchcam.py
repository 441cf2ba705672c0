"""The torchcam adapter: laziness, hooks and model state, error translation, and agreement with
pytorch-grad-cam on the embedded EfficientNet-Lite0 (the measured differences explained).

The conformance, direct-call, batch-independence and guard tables cover every torchcam pair already
(they loop over the registry); this file tests what is specific to torchcam.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cnnlens
from cnnlens import _post, registry
from cnnlens.adapters.base import FROZEN_PARAMS
from cnnlens.errors import BackendUnavailableError, LayerError, OptionError
from cnnlens.testing import assert_same_state, hook_count, snapshot, tiny_cnn, tiny_input

tc_core = pytest.importorskip("torchcam.methods.core")

TORCHCAM = [r.method for r in registry.methods(backend="torchcam")]
#: Methods pytorch-grad-cam also has, compared on the embedded model.
SHARED = ["gradcam", "xgradcam", "layercam"]


def pearson(a: Tensor, b: Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def explain(model: nn.Module, x: Tensor, method: str, backend: str = "torchcam", **kw: object) -> cnnlens.Explanation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method, backend=backend, **kw)


# ------------------------------------------------------------------------------------------------
# Lazy, and polite when missing
# ------------------------------------------------------------------------------------------------


def test_cnnlens_imports_no_torchcam_until_a_torchcam_pair_runs() -> None:
    code = (
        "import sys, cnnlens\n"
        "from cnnlens.testing import tiny_cnn, tiny_input\n"
        "rows = cnnlens.methods(backend='torchcam'); cnnlens.registry.resolve('gradcam', 'torchcam')\n"
        "assert rows and 'torchcam' not in sys.modules, 'listing or resolving imported torchcam'\n"
        "cnnlens.explain(tiny_cnn(), tiny_input(), 'gradcam', backend='pytorch-grad-cam', target=0)\n"
        "assert 'torchcam' not in sys.modules, 'another backend imported torchcam'\n"
        "cnnlens.explain(tiny_cnn(), tiny_input(), 'gradcam', backend='torchcam', target=0)\n"
        "assert 'torchcam' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_missing_torchcam_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.Backend, "installed", property(lambda self: self.id != "torchcam"))
    with pytest.raises(BackendUnavailableError, match=r"pip install -e '\.\[torchcam\]'"):
        cnnlens.Explainer(tiny_cnn(), "sscam", backend="torchcam")
    with pytest.raises(BackendUnavailableError, match=r"needs the package 'torchcam'"):
        cnnlens.Explainer(tiny_cnn(), "cam")  # only torchcam has it
    assert cnnlens.Explainer(tiny_cnn(), "gradcam").backend != "torchcam"  # the others still work


def test_methods_table_names_torchcams_conventions() -> None:
    rows = {r.method: r for r in cnnlens.methods(backend="torchcam")}
    assert set(rows) == set(registry.TORCHCAM_CAMS)
    assert all("normalized=False" in r.notes for r in rows.values())
    assert "after torchcam's ReLU" in rows["gradcam"].notes
    assert "no-op" in rows["gradcam_plusplus"].notes
    assert rows["sscam"].stochastic and rows["smoothgradcam_plusplus"].stochastic and not rows["iscam"].stochastic
    assert registry.backends_for("gradcam")[-1] == "torchcam"  # after flashtorch in PREFERENCE


# ------------------------------------------------------------------------------------------------
# Hooks and model state
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", TORCHCAM)
def test_torchcams_context_manager_removes_its_hooks_even_when_the_model_raises(method: str,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_cnn()
    model.features[4].train()
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    removed = {"n": 0}
    remove = tc_core._CAM.remove_hooks

    def counting_remove(self: object) -> None:
        removed["n"] += 1
        remove(self)

    monkeypatch.setattr(tc_core._CAM, "remove_hooks", counting_remove)
    calls = {"n": 0}

    def boom(_m: nn.Module, _i: object, _o: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:  # the probe and the prediction pass, then torchcam's own forward
            raise RuntimeError("boom")

    h = model.features[2].register_forward_hook(boom)
    before = snapshot(model)
    with pytest.raises(cnnlens.CnnlensError, match="boom"):
        explain(model, tiny_input(), method)
    assert removed["n"] >= 1, "torchcam's extractor was not left through its context manager"
    assert_same_state(before, model)
    h.remove()
    assert hook_count(model) == 0
    assert model.features[4].training and not model.features[3].training
    explain(model, tiny_input(), method, target=0)  # the model still works
    assert_same_state({**before, "hooks": 0}, model)


@pytest.mark.parametrize("method", ["scorecam", "smoothgradcam_plusplus", "gradcam"])
def test_a_model_in_train_mode_is_explained_in_eval_mode_and_left_in_train_mode(method: str) -> None:
    x = tiny_input(n=2)
    expected = explain(tiny_cnn(), x, method, target=[1, 2], seed=0) if method == "smoothgradcam_plusplus" else \
        explain(tiny_cnn(), x, method, target=[1, 2])
    model = tiny_cnn().train()
    kw = {"seed": 0} if method == "smoothgradcam_plusplus" else {}
    e = explain(model, x, method, target=[1, 2], **kw)
    assert all(m.training for m in model.modules())
    torch.testing.assert_close(e.maps, expected.maps)


@pytest.mark.parametrize("method", ["gradcam", "gradcam_plusplus", "finercam", "cam"])
def test_frozen_parameters_change_nothing_in_torchcams_result(method: str) -> None:
    """With shortcuts the guard freezes the parameters and the input copy carries the graph; without,
    the parameters do: torchcam's result is the same, and only the first run names the freezing."""
    x = tiny_input(n=2)
    a = explain(tiny_cnn(), x, method, target=[1, 3])
    b = explain(tiny_cnn(), x, method, target=[1, 3], shortcuts=False)
    torch.testing.assert_close(a.raw, b.raw)
    assert FROZEN_PARAMS in a.provenance.driven and FROZEN_PARAMS not in b.provenance.driven
    assert a.provenance.substitutions == b.provenance.substitutions == ()


# ------------------------------------------------------------------------------------------------
# Errors, translated at the boundary
# ------------------------------------------------------------------------------------------------


class SideBranch(nn.Module):
    """tiny_cnn with a layer that runs but does not feed the scores."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.side = nn.Conv2d(16, 4, 1)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        f = self.net.features(x)
        self.seen[:] = [self.side(f)]  # computed, never used for the scores
        return self.net.fc(torch.flatten(self.net.pool(f), 1))


@pytest.mark.parametrize("method", ["gradcam", "layercam", "finercam"])
def test_a_layer_the_scores_do_not_depend_on_is_a_layer_error(method: str) -> None:
    model = SideBranch().eval()
    before = snapshot(model)
    with pytest.raises(LayerError, match="does not depend on the layer") as info:
        explain(model, tiny_input(), method, layer="side", target=0)
    assert "torchcam" in str(info.value) and info.value.__cause__ is not None
    assert_same_state(before, model)


def test_cam_refuses_a_layer_that_does_not_feed_the_classifier() -> None:
    with pytest.raises(LayerError, match=r"take 16 inputs, and the layer gives output \(2, 8, 32, 32\)"):
        explain(tiny_cnn(), tiny_input(), "cam", layer="features.2", target=0)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_cnn()
        self.head = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def test_cam_needs_the_classifier_layer_named_when_there_are_several() -> None:
    model = TwoHeads().eval()
    with pytest.raises(LayerError, match=r"2 nn.Linear layers \(body.fc, head\).*fc_layer="):
        explain(model, tiny_input(), "cam", target=0)
    with pytest.raises(LayerError, match=r"fc_layer 'body.f' not found.*body.fc"):
        explain(model, tiny_input(), "cam", target=0, fc_layer="body.f")
    with pytest.raises(OptionError, match="is a Conv2d"):
        explain(model, tiny_input(), "cam", target=0, fc_layer="body.features.0")
    e = explain(model, tiny_input(), "cam", target=0, fc_layer="body.fc")
    direct = explain(model.body, tiny_input(), "cam", target=0)  # the same weights, found by torchcam's rule
    torch.testing.assert_close(e.raw, direct.raw)
    with pytest.raises(OptionError, match="fc_layer"):
        explain(model, tiny_input(), "cam", target=0, fc_layer=3)


def test_finercam_base_method_is_checked() -> None:
    with pytest.raises(OptionError, match="'gradcam' or 'gradcam_plusplus' or 'layercam'"):
        cnnlens.Explainer(tiny_cnn(), "finercam", backend="torchcam", base_method="scorecam")
    a = explain(tiny_cnn(), tiny_input(), "finercam", target=0, base_method="layercam")
    b = explain(tiny_cnn(), tiny_input(), "finercam", target=0)
    assert not torch.equal(a.raw, b.raw)


# ------------------------------------------------------------------------------------------------
# Agreement with pytorch-grad-cam on the embedded model, differences explained
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", SHARED)
def test_same_cam_as_pytorch_grad_cam_on_the_embedded_model(method: str, embedded: nn.Module, demo: Tensor) -> None:
    """Same layer, same targets: torchcam's raw CAM is pytorch-grad-cam's after a ReLU, to float
    precision. torchcam applies that ReLU before cnnlens's resize and pytorch-grad-cam's raw gets it
    after, which is all that separates the maps (measured Pearson per image on the four demo photos,
    whole-image fit: gradcam 0.975 to 0.994; xgradcam 0.989 to 0.998; layercam 1.0). The exact checks
    are the raw and the contract on relu(pgc raw); the Pearson floor only catches a gross change."""
    a = explain(embedded, demo, method, "pytorch-grad-cam")
    b = explain(embedded, demo, method, "torchcam")
    assert a.layer == b.layer == "_bn1" and torch.equal(a.targets, b.targets)
    relu_pgc = torch.relu(a.raw)
    assert float((b.raw - relu_pgc).abs().max()) <= 1e-5 * float(relu_pgc.abs().max())
    # what remains is the order of ReLU and resize: cnnlens's contract on relu(pgc raw) gives torchcam's maps
    torch.testing.assert_close(b.maps, _post.to_maps(relu_pgc, "cam", tuple(demo.shape[2:])), atol=1e-4, rtol=1e-4)
    per_image = [pearson(a.maps[i], b.maps[i]) for i in range(len(demo))]
    assert min(per_image) >= 0.95, per_image


def _layer_act_grad(model: nn.Module, x: Tensor, layer: nn.Module, target: int) -> tuple[Tensor, Tensor]:
    """The layer's activation and the target score's gradient there, by plain autograd."""
    store: dict[str, Tensor] = {}
    h = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        scores = model(x)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(scores[0, target], store["a"])
    return store["a"].detach(), g


@pytest.mark.slow
def test_gradcam_plusplus_difference_is_torchcams_no_op_alpha(embedded: nn.Module, cat: Tensor) -> None:
    """torchcam 0.5's Grad-CAM++ divides ``alpha[idx][mask]`` in place, which divides a copy made by
    the boolean index and leaves alpha as grad**2: its channel weights are sum(grad**2 * relu(grad)),
    while pytorch-grad-cam's follow the paper's alpha. Both are checked against their formula here;
    the maps differ accordingly (measured Pearson per demo photo: 0.80, 0.96, 0.93, 0.56)."""
    a = explain(embedded, cat, "gradcam_plusplus", "pytorch-grad-cam")
    b = explain(embedded, cat, "gradcam_plusplus", "torchcam")
    act, grad = _layer_act_grad(embedded, cat, embedded._bn1, int(a.targets[0]))
    act, grad = act.double(), grad.double()
    torchcam_w = (grad.pow(2) * grad.relu()).sum(dim=(2, 3))
    torchcam_cam = torch.relu((torchcam_w[:, :, None, None] * act).sum(1))
    g2, g3 = grad.pow(2), grad.pow(3)
    alpha = torch.where(grad != 0, g2 / (2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6), 0.0)
    paper_w = (grad.relu() * alpha).sum(dim=(2, 3))
    paper_cam = (paper_w[:, :, None, None] * act).sum(1)
    torch.testing.assert_close(b.raw.double(), torchcam_cam, rtol=1e-4, atol=1e-4 * float(torchcam_cam.abs().max()))
    torch.testing.assert_close(a.raw.double(), paper_cam, rtol=1e-4, atol=1e-4 * float(paper_cam.abs().max()))
    assert pearson(torch.relu(paper_cam), torchcam_cam) < 0.99  # a real difference, not float noise


def _score_cam_recipe(model: nn.Module, x: Tensor, act: Tensor, target: int, torchcam: bool) -> Tensor:
    """Score-CAM by hand, one image, as each toolkit builds its masks (read from their sources).

    torchcam: each activation map min-max normalised, then upsampled (bilinear, align_corners=False);
    weights softmax(score(masked) - score(input)); the CAM after a ReLU. pytorch-grad-cam: each map
    upsampled (``UpsamplingBilinear2d``, align_corners=True), then min-max normalised; weights
    softmax(score(masked)) (the same softmax: the subtraction is one constant per image); no ReLU.
    """
    a = act[0]
    lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
    if torchcam:
        masks = F.interpolate(((a - lo) / (hi - lo + 1e-8))[:, None], x.shape[2:], mode="bilinear", align_corners=False)
    else:
        up = F.interpolate(a[:, None], x.shape[2:], mode="bilinear", align_corners=True)
        ulo, uhi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        masks = (up - ulo) / (uhi - ulo + 1e-8)
    with torch.no_grad():
        scores = model(masks * x)[:, target]
    cam = (torch.softmax(scores, 0)[:, None, None] * a).sum(0, keepdim=True)
    return torch.relu(cam) if torchcam else cam


def test_scorecam_difference_is_how_each_builds_its_masks() -> None:
    """Each backend's Score-CAM is its own mask recipe (checked on the tiny model, where a masked
    forward per channel is cheap); the recipes differ in where they normalise and how they
    upsample, and so do the maps."""
    model, x = tiny_cnn(), tiny_input(n=1)
    with torch.no_grad():
        model.fc.weight.mul_(20)  # scores on a real classifier's scale: softmax weights that are not uniform
    a = explain(model, x, "scorecam", "pytorch-grad-cam", target=1)
    b = explain(model, x, "scorecam", "torchcam", target=1)
    store: dict[str, Tensor] = {}
    h = model.features.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    torch.testing.assert_close(b.raw, _score_cam_recipe(model, x, store["a"], 1, torchcam=True))
    torch.testing.assert_close(a.raw, _score_cam_recipe(model, x, store["a"], 1, torchcam=False))
    assert float((torch.relu(a.raw) - b.raw).abs().max()) > 1e-3 * float(b.raw.abs().max())


@pytest.mark.slow
def test_scorecam_agrees_on_the_embedded_model(embedded: nn.Module, cat: Tensor) -> None:
    """Score-CAM on a block with 192 channels (at '_bn1' 1280 masked forwards per image take
    minutes, and both backends give an all-zero map there: its Score-CAM is negative everywhere).
    The masks, not the order of ReLU and resize, make the difference, and how much depends on the
    image: measured Pearson of the maps 0.982 on the centre-cropped cat (asserted here), 0.818 on
    the whole photo resized (``fit="whole"``, the default)."""
    import cnnlens

    cat = cnnlens.demo_images(embedded, names=["chelsea"], fit="crop").tensor
    a = explain(embedded, cat, "scorecam", "pytorch-grad-cam", layer="_blocks.14")
    b = explain(embedded, cat, "scorecam", "torchcam", layer="_blocks.14")
    assert torch.equal(a.targets, b.targets)
    assert pearson(a.maps, b.maps) >= 0.97


# ------------------------------------------------------------------------------------------------
# Token layers (vision transformers)
# ------------------------------------------------------------------------------------------------


def small_vit() -> nn.Module:
    """A torchvision ViT small enough for a unit test, its head given random weights (torchvision
    initialises it to zero, and every gradient CAM would be zero)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("method", ["gradcam", "layercam", "scorecam"])
def test_token_layers_get_torchcams_reshape_transform_or_a_clear_refusal(method: str) -> None:
    """With cnnlens.reshape (and the torchcam pairs taking ``reshape=``), a token layer's CAM is
    torchcam's own, through its ``reshape_transform``: pytorch-grad-cam's after a ReLU. Without, the
    token layer is refused with a LayerError that says why, never a 1-D or silent map."""
    model, x = small_vit(), tiny_input(n=2)
    layer = "encoder.layers.encoder_layer_1.ln_1"
    before = snapshot(model)
    if "reshape" not in registry.REGISTRY[(method, "torchcam")].options:
        with pytest.raises(LayerError, match=r"\(N, C, H, W\)"):
            explain(model, x, method, layer=layer, target=[1, 2])
        assert_same_state(before, model)
        return
    a = explain(model, x, method, "pytorch-grad-cam", layer=layer, target=[1, 2])
    b = explain(model, x, method, layer=layer, target=[1, 2])
    assert_same_state(before, model)
    assert b.raw.shape == (2, 4, 4) and float(b.raw.amax()) > 0
    if method == "scorecam":  # the masks differ (test_scorecam_difference_is_how_each_builds_its_masks): the recipe
        from cnnlens import reshape  # type: ignore[attr-defined]  # wt-vit's module, present when the pairs take reshape=

        fn = reshape.for_layer(model, layer)
        store: dict[str, Tensor] = {}
        h = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
        for i, t in enumerate([1, 2]):
            with torch.no_grad():
                model(x[i : i + 1])
            expected = _score_cam_recipe(model, x[i : i + 1], fn(store["a"]).detach(), t, torchcam=True)
            torch.testing.assert_close(b.raw[i : i + 1], expected)
        h.remove()
    else:
        torch.testing.assert_close(b.raw, torch.relu(a.raw), rtol=1e-4, atol=1e-5 * float(a.raw.abs().max()))
