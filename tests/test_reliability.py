"""Issue 7, part 1 (API): a bad-input matrix, and the odd-but-valid inputs that must work.

Every bad input raises one *specific* :class:`~cnnlens.errors.CnnlensError` subclass whose message
names what was wrong and what would be right. The same matrix runs through the CLI in
``test_reliability_cli.py``. Part 2 (untrusted pickles) is here too.

Device rule (documented in the report): the model's device wins. ``explain`` copies the inputs to
the model's device and dtype and returns ``maps``/``raw`` on the inputs' device. Without a GPU the
cross-device success case is skipped; what CI does check is that tensors without storage (the
``meta`` device), for the inputs or for the model, are refused with a clear error.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import errors as E
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn, tiny_input

# ------------------------------------------------------------------------------------------------
# Odd models used by the matrix
# ------------------------------------------------------------------------------------------------


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.net(x)
        return y, y * 2


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.net(x)
        return {"logits": y, "aux": y * 2}


class NoConv(nn.Module):
    """An MLP: no layer with a spatial output, so no CAM."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class FeatureMapOut(nn.Module):
    """Returns a feature map, not (N, classes) scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BrokenForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, "unexpected")  # type: ignore[call-arg]


class ReusedActivation(nn.Module):
    """One ReLU module called twice per forward (like EfficientNet-Lite): DeepLift cannot run."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def no_categories() -> nn.Module:
    m = tiny_cnn()
    m.cnnlens_categories = None
    return m


def on_meta() -> nn.Module:
    return tiny_cnn().to("meta")


# ------------------------------------------------------------------------------------------------
# Files used by the matrix
# ------------------------------------------------------------------------------------------------


class Sentinel:
    """Unpickling this object calls ``open(path, "w")``: it would create the sentinel file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image
    from torchvision.models import resnet18

    d = tmp_path_factory.mktemp("reliability")
    f: dict[str, Path] = {"dir": d}
    rng = np.random.default_rng(0)
    # images
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "full.jpg", quality=90)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("this is not an image\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "noimages").mkdir()
    (d / "noimages" / "notes.txt").write_text("no images here")
    Image.new("1", (9000, 9000)).save(d / "huge.png")  # 81 Mpx, a few kB on disk
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 20:, 3] = 255  # left half transparent (white after compositing), right half opaque red
    Image.fromarray(rgba).save(d / "alpha.png")
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (40, 1))  # horizontal 16-bit ramp
    Image.fromarray(ramp).save(d / "gray16.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(d / "cmyk.jpg")  # pure red in CMYK
    # models and weights
    torch.save(tiny_cnn().state_dict(), d / "tiny_state.pt")
    torch.save(resnet18(weights=None, num_classes=10).state_dict(), d / "r18_state.pt")
    (d / "junk.pt").write_bytes(b"PK\x03\x04 this is not a real archive")
    f["sentinel"] = d / "SENTINEL_CREATED"
    with open(d / "evil.pkl", "wb") as fh:
        pickle.dump(Sentinel(f["sentinel"]), fh)
    torch.save({"weight": torch.zeros(2), "payload": Sentinel(f["sentinel"])}, d / "evil.pt")
    assert not f["sentinel"].exists(), "writing the pickles must not create the sentinel"
    (d / "hub").mkdir()  # an empty torch hub cache
    return f


# ------------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: what to call, which error it must raise, and words its message must contain."""

    id: str
    call: Callable[[dict[str, Path]], Any]
    error: type[E.CnnlensError]
    words: tuple[str, ...]


def _x(n: int = 2, size: int = 32) -> torch.Tensor:
    return tiny_input(n=n, size=size)


def _explain(x: Any, method: str = "gradcam", model: nn.Module | None = None, **kw: Any) -> Any:
    return cnnlens.explain(model if model is not None else tiny_cnn(), x, method=method, **kw)


def _with(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x[0, 1, 3, 4] = value
    return x


# fmt: off
CASES: list[Case] = [
    # -- tensors -----------------------------------------------------------------------------------
    Case("rank2", lambda f: _explain(torch.randn(3, 32)), E.InputError, ("4 dimensions", "(N, C, H, W)")),
    Case("rank3-single-image", lambda f: _explain(torch.randn(3, 32, 32)), E.InputError, ("single image", "unsqueeze(0)")),
    Case("rank5", lambda f: _explain(torch.randn(1, 1, 3, 32, 32)), E.InputError, ("4 dimensions", "got 5")),
    Case("1-channel", lambda f: _explain(torch.randn(2, 1, 32, 32)), E.InputError, ("1 channels", "expects 3")),
    Case("4-channel", lambda f: _explain(torch.randn(2, 4, 32, 32)), E.InputError, ("4 channels", "expects 3")),
    Case("uint8", lambda f: _explain(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), E.InputError, ("integer dtype", "torch.uint8", "float tensor")),
    Case("int64", lambda f: _explain(torch.zeros(2, 3, 32, 32, dtype=torch.long)), E.InputError, ("integer dtype", "float tensor")),
    Case("bool", lambda f: _explain(torch.zeros(2, 3, 32, 32, dtype=torch.bool)), E.InputError, ("boolean dtype", "float tensor")),
    Case("complex", lambda f: _explain(torch.zeros(2, 3, 32, 32, dtype=torch.cfloat)), E.InputError, ("complex dtype", "float tensor")),
    Case("nan", lambda f: _explain(_with(_x(), float("nan"))), E.InputError, ("NaN", "finite")),
    Case("inf", lambda f: _explain(_with(_x(), float("-inf"))), E.InputError, ("Inf", "finite")),
    Case("empty-batch", lambda f: _explain(torch.empty(0, 3, 32, 32)), E.InputError, ("empty batch", "at least one image")),
    Case("zero-height", lambda f: _explain(torch.empty(1, 3, 0, 32)), E.InputError, ("zero-size", "0x32", "H, W >= 1")),
    Case("zero-width", lambda f: _explain(torch.empty(1, 3, 32, 0)), E.InputError, ("zero-size", "32x0")),
    # 5000x5000 as a broadcast view: the refusal must come before any copy of 300 MB
    Case("gigantic", lambda f: _explain(torch.zeros(1, 3, 1, 1).expand(1, 3, 5000, 5000)), E.InputError, ("5000x5000", "4096x4096", "resize")),
    Case("gigantic-strip", lambda f: _explain(torch.zeros(1, 3, 1, 1).expand(1, 3, 800, 30000)), E.InputError, ("800x30000", "resize")),
    Case("numpy-array", lambda f: _explain(_x().numpy()), E.InputError, ("torch.Tensor", "ndarray", "load_images")),
    Case("list", lambda f: _explain([[0.0]]), E.InputError, ("torch.Tensor", "list")),
    Case("meta-input", lambda f: _explain(_x().to("meta")), E.InputError, ("meta", "'cpu'")),
    Case("meta-model", lambda f: _explain(_x(), model=on_meta()), E.ModelError, ("meta", "load its weights")),
    # -- model and weights -------------------------------------------------------------------------
    Case("not-a-module", lambda f: cnnlens.Explainer("resnet18", "gradcam"), E.ModelError, ("torch.nn.Module", "str")),
    Case("tuple-output", lambda f: _explain(_x(), model=TupleOut()), E.ModelError, ("tuple of 2", "output=")),
    Case("dict-output", lambda f: _explain(_x(), "saliency", model=DictOut()), E.ModelError, ("dict with keys 'logits', 'aux'", "output=")),
    Case("output-bad-key", lambda f: cnnlens.Explainer(DictOut(), "saliency", output="logit").explain(_x()), E.ModelError, ("output='logit'", "'logits'")),
    Case("output-bad-index", lambda f: cnnlens.Explainer(TupleOut(), "saliency", output=5).explain(_x()), E.ModelError, ("output=5", "tuple of 2")),
    Case("feature-map-output", lambda f: _explain(_x(), "saliency", model=FeatureMapOut()), E.ModelError, ("class scores", "(N=1, classes)")),
    Case("forward-raises", lambda f: _explain(_x(), "saliency", model=BrokenForward()), E.ModelError, ("forward pass failed", "TypeError")),
    Case("no-conv-cam-pgc", lambda f: _explain(_x(), "gradcam", model=NoConv(), backend="pytorch-grad-cam"), E.LayerError, ("spatial", "convolutional", "saliency")),
    Case("no-conv-cam-captum", lambda f: _explain(_x(), "gradcam", model=NoConv(), backend="captum"), E.LayerError, ("spatial", "convolutional")),
    Case("deeplift-reused-module", lambda f: _explain(_x(), "deeplift", model=ReusedActivation(), backend="captum", target=0), E.ModelError, ("more than once", "integrated_gradients")),
    Case("unknown-model", lambda f: cnnlens.load_model("resnet19"), E.ModelError, ("unknown model 'resnet19'", "resnet18")),
    Case("unknown-weights", lambda f: cnnlens.load_model("resnet18", weights="IMAGENET9K"), E.ModelError, ("unknown weights 'IMAGENET9K'", "IMAGENET1K_V1", "None")),
    Case("weights-not-cached", lambda f: _load_offline(f, "resnet18"), E.WeightsUnavailableError, ("not in the torch hub cache", "weights=None")),
    Case("state-dict-wrong-shapes", lambda f: cnnlens.load_model(f["dir"] / "tiny_state.pt", arch="resnet18"), E.ModelError, ("does not fit architecture 'resnet18'", "fc.weight", "--arch")),
    Case("state-dict-wrong-keys", lambda f: cnnlens.load_model(f["dir"] / "r18_state.pt", arch="resnet34"), E.ModelError, ("does not fit architecture 'resnet34'", "missing keys", "--arch")),
    Case("state-dict-no-arch", lambda f: cnnlens.load_model(f["dir"] / "tiny_state.pt"), E.ModelError, ("state dict", "arch=")),
    Case("model-file-missing", lambda f: cnnlens.load_model(f["dir"] / "nope.pt"), E.ModelError, ("nope.pt", "does not exist")),
    Case("model-file-junk", lambda f: cnnlens.load_model(f["dir"] / "junk.pt"), E.ModelError, ("could not read", "state dict or TorchScript")),
    Case("bad-device", lambda f: cnnlens.load_model("resnet18", weights=None, device="gpu"), E.ModelError, ("invalid device 'gpu'", "'cpu'")),
    Case("bad-callable", lambda f: cnnlens.load_model("no_such_module_xyz:build"), E.ModelError, ("could not import", "no_such_module_xyz")),
    # -- untrusted files (part 2): the sentinel is checked in test_pickle_never_runs ------------------
    Case("pickle-payload", lambda f: cnnlens.load_model(f["dir"] / "evil.pkl"), E.UnsafeFileError, ("refused", "arbitrary code", "weights_only=True")),
    Case("pickle-in-torch-save", lambda f: cnnlens.load_model(f["dir"] / "evil.pt", arch="resnet18"), E.UnsafeFileError, ("refused", "arbitrary code", "state_dict")),
    # -- method, backend and options -----------------------------------------------------------------
    Case("unknown-method", lambda f: _explain(_x(), "gradcan"), E.UnknownMethodError, ("unknown method 'gradcan'", "gradcam")),
    Case("method-not-a-string", lambda f: _explain(_x(), 3), E.UnknownMethodError, ("unknown method '3'", "methods")),
    Case("method-backend-lacks", lambda f: _explain(_x(), "scorecam", backend="captum"), E.UnsupportedMethodError, ("'captum' has no method 'scorecam'", "pytorch-grad-cam")),
    Case("method-backend-lacks-2", lambda f: _explain(_x(), "integrated_gradients", backend="pytorch-grad-cam"), E.UnsupportedMethodError, ("no method 'integrated_gradients'", "captum")),
    Case("backend-typo", lambda f: _explain(_x(), "gradcam", backend="captun"), E.BackendUnavailableError, ("unknown backend 'captun'", "captum")),
    Case("option-misspelled", lambda f: _explain(_x(), "integrated_gradients", backend="captum", nsteps=8), E.OptionError, ("unknown option 'nsteps'", "n_steps", "valid options")),
    Case("option-of-other-method", lambda f: _explain(_x(), "gradcam", backend="pytorch-grad-cam", sliding_window=8), E.OptionError, ("sliding_window", "aug_smooth", "eigen_smooth")),
    Case("seed-on-deterministic", lambda f: _explain(_x(), "saliency", backend="captum", seed=1), E.OptionError, ("unknown option 'seed'", "saliency")),
    Case("n_steps=0", lambda f: _explain(_x(), "integrated_gradients", backend="captum", n_steps=0), E.OptionError, ("n_steps", "0", "positive integer")),
    Case("n_steps=2.5", lambda f: _explain(_x(), "integrated_gradients", backend="captum", n_steps=2.5), E.OptionError, ("n_steps", "2.5", "positive integer")),
    Case("stdevs<0-smoothgrad", lambda f: _explain(_x(), "smoothgrad", backend="captum", stdevs=-0.1), E.OptionError, ("stdevs", "-0.1", ">= 0")),
    Case("stdevs<0-gradient_shap", lambda f: _explain(_x(), "gradient_shap", backend="captum", stdevs=-1), E.OptionError, ("stdevs", ">= 0")),
    Case("stdevs=nan", lambda f: _explain(_x(), "vargrad", backend="captum", stdevs=float("nan")), E.OptionError, ("stdevs", "nan")),
    Case("window>image", lambda f: _explain(_x(), "occlusion", backend="captum", sliding_window=64), E.OptionError, ("64x64", "32x32", "no larger than the image")),
    Case("window-tall>image", lambda f: _explain(_x(), "occlusion", backend="captum", sliding_window=(40, 4)), E.OptionError, ("40x4", "32x32")),
    Case("window=0", lambda f: _explain(_x(), "occlusion", backend="captum", sliding_window=0), E.OptionError, ("sliding_window", "int >= 1")),
    Case("feature_grid>image", lambda f: _explain(_x(), "feature_ablation", backend="captum", feature_grid=64), E.OptionError, ("feature_grid 64", "32x32")),
    Case("seed-not-int", lambda f: _explain(_x(), "smoothgrad", backend="captum", seed="a"), E.OptionError, ("seed", "integer")),
    Case("bool-option-not-bool", lambda f: _explain(_x(), "gradcam", backend="pytorch-grad-cam", aug_smooth="yes"), E.OptionError, ("aug_smooth", "True or False")),
    Case("bad-reduce", lambda f: _explain(_x(), "saliency", backend="captum", reduce="median"), E.OptionError, ("reduce='median'", "abs_max")),
    # -- layers -------------------------------------------------------------------------------------
    Case("unknown-layer", lambda f: _explain(_x(), layer="feature.3"), E.LayerError, ("'feature.3' not found", "close matches", "features.3")),
    Case("layer-wrong-type", lambda f: _explain(_x(), layer=3), E.LayerError, ("module, a dotted name or None", "int")),
    Case("layer-foreign-module", lambda f: _explain(_x(), layer=nn.Conv2d(3, 3, 3)), E.LayerError, ("not part of the model",)),
    Case("layer-not-spatial-pgc", lambda f: _explain(_x(), layer="fc", backend="pytorch-grad-cam"), E.LayerError, ("'fc'", "(N, C, H, W)", "spatial layers include")),
    Case("layer-not-spatial-captum", lambda f: _explain(_x(), layer="fc", backend="captum"), E.LayerError, ("'fc'", "(N, C, H, W)")),
    # -- targets ------------------------------------------------------------------------------------
    Case("target-out-of-range", lambda f: _explain(_x(), target=99), E.TargetError, ("99", "5 classes", "0..4")),
    Case("target-negative", lambda f: _explain(_x(), target=-1), E.TargetError, ("-1", "out of range")),
    Case("targets-too-many", lambda f: _explain(_x(), target=[0, 1, 2], backend="pytorch-grad-cam"), E.TargetError, ("3 targets for 2 images", "one target per image")),
    Case("targets-too-few", lambda f: _explain(_x(), target=[1], backend="pytorch-grad-cam"), E.TargetError, ("1 targets for 2 images", "truncate")),
    Case("targets-tensor-wrong-length", lambda f: _explain(_x(), target=torch.tensor([0, 1, 2])), E.TargetError, ("3 targets for 2 images",)),
    Case("target-tensor-2d", lambda f: _explain(_x(), target=torch.zeros(2, 2, dtype=torch.long)), E.TargetError, ("0-D or 1-D", "(2, 2)")),
    Case("target-float", lambda f: _explain(_x(), target=1.5), E.TargetError, ("float", "an int, a class name")),
    Case("target-float-tensor", lambda f: _explain(_x(), target=torch.tensor([0.5, 1.7])), E.TargetError, ("integer class indices", "float32")),
    Case("target-list-with-float", lambda f: _explain(_x(), target=[0, 1.5]), E.TargetError, ("1.5", "integer class index")),
    Case("target-bool", lambda f: _explain(_x(), target=True), E.TargetError, ("bool",)),
    Case("unknown-class-name", lambda f: _explain(_x(), target="clas1"), E.TargetError, ("unknown class name 'clas1'", "class1")),
    Case("class-name-without-categories", lambda f: _explain(_x(), target="cat", model=no_categories()), E.TargetError, ("class name", "categories=")),
    # -- files --------------------------------------------------------------------------------------
    Case("image-missing", lambda f: cnnlens.load_images(f["dir"] / "missing.jpg"), E.ImageLoadError, ("missing.jpg", "does not exist")),
    Case("folder-without-images", lambda f: cnnlens.load_images(f["dir"] / "noimages"), E.ImageLoadError, ("contains no images", ".jpg")),
    Case("truncated-jpeg", lambda f: cnnlens.load_images(f["dir"] / "truncated.jpg"), E.ImageLoadError, ("truncated.jpg", "truncated or corrupt")),
    Case("text-named-png", lambda f: cnnlens.load_images(f["dir"] / "text.png"), E.ImageLoadError, ("text.png", "not a readable image", "JPEG, PNG")),
    Case("empty-file", lambda f: cnnlens.load_images(f["dir"] / "empty.jpg"), E.ImageLoadError, ("empty.jpg", "not a readable image")),
    Case("huge-image-file", lambda f: cnnlens.load_images(f["dir"] / "huge.png"), E.ImageLoadError, ("9000x9000", "downscale")),
    Case("glob-no-match", lambda f: cnnlens.load_images(str(f["dir"] / "*.gif")), E.ImageLoadError, ("matches no image files",)),
    Case("no-sources", lambda f: cnnlens.load_images([]), E.ImageLoadError, ("no images given", "folder")),
    Case("unknown-demo-image", lambda f: cnnlens.demo_images(names=["dog"]), E.ImageLoadError, ("dog", "chelsea")),
]
# fmt: on


def _load_offline(f: dict[str, Path], name: str) -> nn.Module:
    """Load pretrained weights with an empty hub cache and CNNLENS_OFFLINE set (conftest sets it)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(f["dir"] / "hub"))
    try:
        return cnnlens.load_model(name, weights="DEFAULT")
    finally:
        torch.hub.set_dir(old)


def test_matrix_size() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    # every error class a user can provoke with bad input appears at least once
    used = {c.error for c in CASES}
    for cls in (E.InputError, E.ModelError, E.LayerError, E.TargetError, E.OptionError, E.UnknownMethodError,
                E.UnsupportedMethodError, E.BackendUnavailableError, E.ImageLoadError, E.UnsafeFileError,
                E.WeightsUnavailableError):
        assert cls in used, cls


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(E.CnnlensError) as info:
            case.call(files)
    err = info.value
    # the *specific* class, not merely some CnnlensError (a subclass of the intended one would be fine)
    assert isinstance(err, case.error), f"{case.id}: expected {case.error.__name__}, got {type(err).__name__}: {err}"
    msg = str(err)
    assert "\n" not in msg.strip(), f"{case.id}: message must be one line: {msg!r}"
    for w in case.words:
        assert w in msg, f"{case.id}: {w!r} not in message: {msg}"


@pytest.mark.bad_input("api")
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_never_runs(files: dict[str, Path]) -> None:
    """Part 2: both pickles are refused and their payload (create a file) never runs."""
    sentinel = files["sentinel"]
    for name in ("evil.pkl", "evil.pt"):
        with pytest.raises(E.UnsafeFileError):
            cnnlens.load_model(files["dir"] / name, arch="resnet18")
        assert not sentinel.exists(), f"unpickling {name} ran code"
    # the payload is real: a plain pickle.load does create the sentinel (so the test can fail)
    with open(files["dir"] / "evil.pkl", "rb") as fh:
        pickle.load(fh)
    assert sentinel.exists()
    sentinel.unlink()


def test_models_py_only_loads_with_weights_only() -> None:
    """Every torch.load in the package passes weights_only=True."""
    import re

    root = Path(cnnlens.__file__).parent
    calls = []
    for py in root.rglob("*.py"):
        for m in re.finditer(r"torch\.load\((.*?)\)\n", py.read_text(), flags=re.S):
            calls.append((py.name, m.group(1)))
    assert calls, "expected at least one torch.load call"
    for name, args in calls:
        assert "weights_only=True" in args, f"{name}: torch.load({args}) without weights_only=True"


# ------------------------------------------------------------------------------------------------
# Odd but valid inputs: they must work
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method,backend", [("gradcam", "pytorch-grad-cam"), ("saliency", "captum")])
def test_other_float_dtypes_are_cast_to_the_model_dtype(dtype: torch.dtype, method: str, backend: str) -> None:
    model, x = tiny_cnn(), _x()
    ref = cnnlens.explain(model, x, method=method, backend=backend, target=1)
    e = cnnlens.explain(model, x.to(dtype), method=method, backend=backend, target=1)
    assert e.maps.dtype == torch.float32 and e.maps.shape == (2, 32, 32)
    assert torch.isfinite(e.maps).all() and e.maps.min() >= 0 and e.maps.max() <= 1
    # the model ran in float32 on the up-cast input: close to the float32 result
    assert torch.corrcoef(torch.stack([ref.maps.flatten(), e.maps.flatten()]))[0, 1] > 0.9
    assert next(model.parameters()).dtype == torch.float32


def test_channels_last_works_and_matches() -> None:
    model, x = tiny_cnn(), _x()
    ref = cnnlens.explain(model, x, method="gradcam", backend="captum", target=1)
    e = cnnlens.explain(model, x.contiguous(memory_format=torch.channels_last), method="gradcam",
                        backend="captum", target=1)
    torch.testing.assert_close(e.maps, ref.maps, atol=1e-5, rtol=1e-4)


def test_input_is_not_modified() -> None:
    model, x = tiny_cnn(), _x().requires_grad_(True)
    before = x.detach().clone()
    e = cnnlens.explain(model, x, method="saliency", backend="captum", target=0)
    assert x.grad is None and torch.equal(x.detach(), before) and e.maps.shape == (2, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the model on cuda, the input on cpu")
def test_model_on_other_device_than_input() -> None:
    model = tiny_cnn().cuda()
    x = _x()
    e = cnnlens.explain(model, x, method="gradcam", backend="captum", target=1)
    assert e.maps.device == x.device and e.raw.device == x.device
    ref = cnnlens.explain(tiny_cnn(), x, method="gradcam", backend="captum", target=1)
    torch.testing.assert_close(e.maps, ref.maps, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("method,backend", [("gradcam", "pytorch-grad-cam"), ("gradcam", "captum"),
                                            ("saliency", "captum")])
@pytest.mark.parametrize("model_cls,output", [(TupleOut, 0), (DictOut, "logits")])
def test_tuple_or_dict_output_works_with_output(model_cls: type[nn.Module], output: Any, method: str,
                                                backend: str) -> None:
    model, x = model_cls(), _x()
    e = cnnlens.Explainer(model, method, backend=backend, output=output).explain(x, target=None)
    plain = cnnlens.explain(model.net, x, method=method, backend=backend)
    # same scores, same layer (auto layer names are relative to the user's model), same maps
    torch.testing.assert_close(e.maps, plain.maps)
    assert torch.equal(e.targets, plain.targets)
    if method == "gradcam":
        assert e.layer == "net." + plain.layer


def test_train_mode_model_comes_back_in_train_mode() -> None:
    model = tiny_cnn().train()
    before = snapshot(model)
    e = cnnlens.explain(model, _x(), method="gradcam", backend="pytorch-grad-cam", target=1)
    assert model.training and all(m.training for m in model.modules())
    assert_same_state(before, model)  # BatchNorm running statistics included
    # the call itself ran in eval mode: same maps as the same model in eval mode
    ref = cnnlens.explain(tiny_cnn().eval(), _x(), method="gradcam", backend="pytorch-grad-cam", target=1)
    torch.testing.assert_close(e.maps, ref.maps)


def test_image_with_alpha(files: dict[str, Path]) -> None:
    x = cnnlens.load_images(files["dir"] / "alpha.png", size=32)
    img = x.images[0].int()  # (H, W, 3) display copy
    assert x.shape == (1, 3, 32, 32)
    # transparent half composited on white, opaque half stays red
    assert (img[:, :12] >= 250).all()
    assert (img[:, 20:, 0] >= 250).all() and (img[:, 20:, 1:] <= 5).all()
    e = cnnlens.explain(tiny_cnn(), x, method="saliency", backend="captum")
    assert torch.isfinite(e.maps).all()


def test_16bit_png(files: dict[str, Path]) -> None:
    x = cnnlens.load_images(files["dir"] / "gray16.png", size=32)
    img = x.images[0].int()
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x.tensor).all()
    row = img[16, :, 0]
    # the ramp spans the range, stays gray, and increases left to right (no 8-bit wrap-around)
    assert row[0] < 40 and row[-1] > 215
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert (row[1:] >= row[:-1]).all()
    e = cnnlens.explain(tiny_cnn(), x, method="gradcam", backend="captum")
    assert torch.isfinite(e.maps).all()


def test_cmyk_jpeg(files: dict[str, Path]) -> None:
    x = cnnlens.load_images(files["dir"] / "cmyk.jpg", size=32)
    r, g, b = x.images[0].int().float().mean(dim=(0, 1)).tolist()
    assert x.shape == (1, 3, 32, 32)
    assert r > 230 and g < 30 and b < 30, (r, g, b)  # C=0 M=255 Y=255 K=0 is red
    e = cnnlens.explain(tiny_cnn(), x, method="gradcam", backend="pytorch-grad-cam")
    assert torch.isfinite(e.maps).all()


def test_largest_allowed_tensor_is_not_refused() -> None:
    """The refusal rule is exactly "more than 4096x4096 pixels": a 4096x4096 view passes the check."""
    from cnnlens._resolve import MAX_PIXELS, check_input

    assert MAX_PIXELS == 4096 * 4096
    model = tiny_cnn()
    x = torch.zeros(1, 3, 1, 1).expand(1, 3, 4096, 4096)
    assert check_input(x, model).shape == (1, 3, 4096, 4096)
    with pytest.raises(E.InputError):
        check_input(torch.zeros(1, 3, 1, 1).expand(1, 3, 4096, 4097), model)


@pytest.mark.parametrize("layer", [None, "features.3", "module"])
def test_layer_swapped_between_calls_is_followed(layer: Any) -> None:
    """An Explainer resolves its layer once per input shape and reuses it while the model still holds
    that module under that name; a module the user swaps in between calls must be the one explained."""
    model, x = tiny_cnn(), tiny_input(n=2, size=32)
    ex = cnnlens.Explainer(model, "gradcam", "captum", layer=model.features[3] if layer == "module" else layer)
    first = ex.explain(x, target=1)
    name = first.layer
    new = copy.deepcopy(model.get_submodule(name))
    with torch.no_grad():
        for p in new.parameters():
            p.normal_()
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, new)
    fresh = cnnlens.Explainer(model, "gradcam", "captum", layer=None if layer is None else name)
    if layer == "module":  # the module object given is no longer part of the model
        with pytest.raises(E.LayerError, match="not part of the model"):
            ex.explain(x, target=1)
        return
    again, want = ex.explain(x, target=1), fresh.explain(x, target=1)
    assert torch.equal(again.raw, want.raw) and not torch.equal(again.raw, first.raw)


def test_finite_input_whose_sum_overflows_is_accepted():
    """The NaN/Inf check reads one sum; a sum that overflows on finite pixels takes the exact check."""
    from cnnlens import _resolve

    big = torch.full((2, 3, 8, 8), 3e38)
    assert not torch.isfinite(_resolve.finite_flag(big))
    _resolve.check_finite(big)  # every pixel finite: accepted
    _resolve.check_finite(big, _resolve.finite_flag(big))
    with pytest.raises(E.InputError, match="NaN or Inf"):
        _resolve.check_finite(_with(big, float("nan")))
    with pytest.raises(E.InputError, match="NaN or Inf"):
        _resolve.check_finite(_with(_x(), float("inf")), _resolve.finite_flag(_with(_x(), float("inf"))))
