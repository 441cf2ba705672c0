"""No silent wrong results: NaN or infinite scores are one clear error before any map, on every
pair; a constant map from any pair and any layer carries a warning naming its likely cause, said once
per cause in a run over several backends, in the words of the interface used."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cnnlens
from cnnlens import registry
from cnnlens._resolve import Caveat, warning_lines
from cnnlens.adapters.base import Adapter
from cnnlens.errors import CnnlensWarning, ModelError
from cnnlens.testing import nan_cnn, one_line_error, run_cli, tiny_cnn, tiny_input, zero_head_cnn

PAIRS = sorted((m, b) for (m, b) in registry.REGISTRY if registry.BACKENDS[b].installed)
IDS = [f"{m}-{b}" for m, b in PAIRS]
#: Options that keep the slow pairs quick on a 32x32 input.
QUICK = {"n_steps": 4, "nt_samples": 2}
#: Methods whose maps are made from the target score's gradient: constant when every class scores alike.
FROM_THE_SCORE = {"saliency", "gradcam", "integrated_gradients", "lrp", "smoothgrad", "occlusion"}


def _quick(method: str, backend: str) -> dict:
    accepted = registry.REGISTRY[(method, backend)].all_options()
    return {k: v for k, v in QUICK.items() if k in accepted}


def _explain(model: nn.Module, x: torch.Tensor, method: str, backend: str, **kw) -> cnnlens.Explanation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method, backend=backend, **{**_quick(method, backend), **kw})


@pytest.fixture()
def no_backend_call(monkeypatch) -> list[str]:
    """Records every backend call: a refusal "before any map" leaves it empty."""
    calls: list[str] = []
    real = Adapter.run

    def run(self, *a, **k):
        calls.append(f"{self.method}/{self.impl.backend}")
        return real(self, *a, **k)

    monkeypatch.setattr(Adapter, "run", run)
    return calls


# ------------------------------------------------------------------------------------------------
# NaN / Inf scores
# ------------------------------------------------------------------------------------------------


@pytest.mark.bad_input("api")
@pytest.mark.parametrize(("method", "backend"), PAIRS, ids=IDS)
@pytest.mark.parametrize("target", [None, 1], ids=["predicted", "given"])
def test_nan_scores_are_one_clear_error_before_any_map(method, backend, target, no_backend_call) -> None:
    """argmax(NaN) is class 0, and FlashTorch, zennit and Captum's integrated gradients then returned
    all-zero maps without a word."""
    with pytest.raises(ModelError, match="NaN or Inf") as info:
        _explain(nan_cnn(), tiny_input(n=2, size=32), method, backend, target=target)
    assert "fc.bias" in str(info.value) and "every image" in str(info.value)
    assert no_backend_call == []


class _Overflows(nn.Module):
    """Finite weights; the score of an image whose mean pixel is positive overflows to Inf."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.where(x.mean(dim=(1, 2, 3)) > 0, torch.tensor(1e38), torch.tensor(1.0))
        return self.net(x) * scale[:, None] * 10.0


@pytest.mark.bad_input("api")
@pytest.mark.parametrize(("method", "backend"), [("saliency", "captum"), ("gradcam", "pytorch-grad-cam"),
                                                 ("integrated_gradients", "zennit")])
def test_a_score_that_overflows_for_one_image_is_one_clear_error(method, backend) -> None:
    """Image 0's scores are finite (the probe passes) and image 1's overflow: the error names image 1."""
    x = torch.stack([-torch.ones(3, 32, 32), torch.ones(3, 32, 32)]) * 0.5 + tiny_input(n=2, size=32) * 0.1
    with pytest.raises(ModelError, match="NaN or Inf for image 1") as info:
        _explain(_Overflows().eval(), x, method, backend, target=0)
    assert "forward pass" in str(info.value)


# ------------------------------------------------------------------------------------------------
# Constant maps
# ------------------------------------------------------------------------------------------------


@pytest.mark.bad_input("api")
@pytest.mark.parametrize(("method", "backend"), PAIRS, ids=IDS)
def test_a_zero_head_gives_a_constant_map_warning_on_every_pair(method, backend) -> None:
    """A classifier head at its zero initialisation scores every class alike: every map made from the
    target score is constant, and says so, with that cause; maps made without it (EigenCAM, Score-CAM's
    softmax weights, all equal here) vary and carry no such warning."""
    e = _explain(zero_head_cnn(), tiny_input(n=2, size=32), method, backend, target=1)
    flat = [w for w in e.warnings if "constant map" in w]
    if float(e.maps.amax(dim=(1, 2)).min()) > 0:
        assert method not in FROM_THE_SCORE and not flat
        return
    assert len(flat) == 1 and "same score" in flat[0] and "every image" in flat[0], e.warnings


def _dead_after_features_2() -> nn.Module:
    """tiny_cnn whose ReLU at ``features.2`` is dead (every input below zero): the maps at that layer
    and every pixel attribution are constant, while the classes' scores still differ."""
    model = tiny_cnn()
    with torch.no_grad():
        model.features[1].bias.fill_(-1e4)
    return model


@pytest.mark.bad_input("api")
@pytest.mark.parametrize(("method", "backend", "layer"), [
    ("gradcam", "pytorch-grad-cam", "features.2"),
    ("scorecam", "pytorch-grad-cam", "features.2"),
    ("gradcam", "captum", None),
    ("saliency", "captum", None),
    ("integrated_gradients", "zennit", None),
], ids=["gradcam-explicit-layer", "scorecam-explicit-layer", "gradcam-auto-layer", "saliency", "ig-zennit"])
def test_constant_maps_warn_for_an_explicit_layer_and_pixel_methods_too(method, backend, layer) -> None:
    model, x = _dead_after_features_2(), tiny_input(n=2, size=32)
    with pytest.warns(CnnlensWarning, match="constant map") as record:
        e = cnnlens.explain(model, x, method, backend=backend, layer=layer, target=1, **_quick(method, backend))
    assert len([r for r in record if "constant map" in str(r.message)]) == 1
    (w,) = e.warnings
    assert isinstance(w, Caveat) and "every image" in w
    if registry.REGISTRY[(method, backend)].spec.kind == "cam":
        named = "layer 'features.2'" if layer else "the automatically chosen layer"
        assert named in w and "try layer= one of" in w and "--layer" not in w
        assert "try --layer with one of" in w.words(cli=True) and "layer=" not in w.words(cli=True)
    else:
        assert f"under {method}" in w


def test_a_chunked_explanation_names_its_constant_images_once_by_batch_index() -> None:
    model = zero_head_cnn()
    e = cnnlens.Explainer(model, "saliency", backend="captum").explain(tiny_input(n=5, size=32), 1, chunk_size=2)
    (w,) = e.warnings
    assert "every image" in w and w.images == (0, 1, 2, 3, 4)


def test_warning_lines_say_each_cause_once() -> None:
    a = Caveat("gradcam", "captum", "why; try layer= x", "why; try --layer with x", [0, 1], 2)
    b = Caveat("gradcam", "torchcam", "why; try layer= x", "why; try --layer with x", [0, 1], 2)
    c = Caveat("saliency", "captum", "other", None, [1], 2)
    lines = warning_lines([a, b, c, "plain note", "plain note"], cli=True)
    assert lines == ["gradcam (captum, torchcam) gave a constant map for every image, which shows nothing: "
                     "why; try --layer with x",
                     "saliency (captum) gave a constant map for image 1, which shows nothing: other", "plain note"]
    import pickle

    assert pickle.loads(pickle.dumps(a)).words(cli=True) == a.words(cli=True)


@pytest.fixture()
def photo(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(folder / "a.png")
    return folder / "a.png"


@pytest.mark.bad_input("cli")
def test_cli_compare_says_a_constant_map_cause_once_in_its_own_words(photo, tmp_path) -> None:
    out = tmp_path / "grid.png"
    r = run_cli("compare", photo, "--model", "cnnlens.testing:zero_head_cnn", "--method", "gradcam",
                "--out", out, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["warnings"]
    assert len(got) == 1 and got[0].startswith("gradcam (pytorch-grad-cam, captum, torchcam) gave a constant map")
    r = run_cli("compare", photo, "--model", "cnnlens.testing:tiny_cnn", "--method", "gradcam", "--layer",
                "features.0", "--out", tmp_path / "g2.png", "--overwrite")
    assert r.exit_code == 0 and "constant map" not in r.output  # a layer whose map varies: nothing to say


@pytest.mark.bad_input("cli")
def test_cli_nan_scores_are_one_line(photo, tmp_path) -> None:
    r = run_cli("explain", photo, "--model", "cnnlens.testing:nan_cnn", "-m", "gradcam,saliency",
                "--out", tmp_path / "grid.png")
    one_line_error(r, "NaN or Inf", "fc.bias")


def test_the_picture_marks_a_constant_map() -> None:
    from cnnlens import plot

    x = tiny_input(n=1, size=32)
    flat = _explain(zero_head_cnn(), x, "saliency", "captum", target=1)
    fine = _explain(tiny_cnn(), x, "saliency", "captum", target=1)
    fig = plot.comparison_grid([flat, fine], x)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("constant map" in t for t in titles) == 1
