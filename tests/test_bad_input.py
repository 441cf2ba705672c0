"""Issue 16, sections 3-5 (core): the bad-input matrix, the channel check on the conv that runs first,
typed results instead of attributes on tensors, chunking in the library, and outputs that a failed
write (full disk, read-only folder) never leaves half-written.

Each matrix case names the specific :class:`~cnnlens.errors.CnnlensError` subclass and words its
message must contain: what was wrong and what would be right.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens import errors as E
from cnnlens.images import DATA, Images
from cnnlens.testing import one_line_error as _one_line
from cnnlens.testing import run_cli as _cli
from cnnlens.testing import tiny_cnn, tiny_input

# ------------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------------


def _x(n: int = 2) -> torch.Tensor:
    return tiny_input(n=n, size=32)


def _explain(x: Any = None, method: str = "saliency", backend: str = "captum", model: nn.Module | None = None,
             **kw: Any) -> cnnlens.Explanation:
    return cnnlens.explain(model if model is not None else tiny_cnn(), _x() if x is None else x, method, backend, **kw)


def _pt2(tmp: Path) -> Path:
    model = tiny_cnn()
    path = tmp / "tiny.pt2"
    torch.export.save(torch.export.export(model, (_x(1),)), str(path))
    return path


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Path], Any]
    error: type[Exception]
    words: tuple[str, ...]


NAN, INF = float("nan"), float("inf")

# fmt: off
CASES: list[Case] = [
    # -- seeds: torch.manual_seed takes 64 bits; a larger int failed inside with a raw ValueError
    Case("seed-2**70", lambda t: _explain(method="smoothgrad", seed=2**70, nt_samples=2), E.OptionError, ("seed", "64-bit")),
    Case("seed-below-int64", lambda t: _explain(method="gradient_shap", seed=-(2**63) - 1), E.OptionError, ("seed", "-2**63")),
    # -- load_model: specs that are not a model
    Case("load-model-colon", lambda t: cnnlens.load_model(":"), E.ModelError, ("':'", "package.module:callable", "load_model accepts")),
    Case("load-model-builtins-open", lambda t: cnnlens.load_model("builtins:open"), E.ModelError, ("builtins:open", "without arguments", "torchvision.models:resnet18")),
    Case("load-model-conv2d-class", lambda t: cnnlens.load_model("torch.nn:Conv2d"), E.ModelError, ("torch.nn:Conv2d", "without arguments", "in_channels")),
    Case("load-model-torch-export", lambda t: cnnlens.load_model(_pt2(t)), E.ModelError, ("torch.export archive", "torch.jit.save", "load_model accepts")),
    # -- targets and inputs
    Case("target-on-meta", lambda t: _explain(target=torch.tensor([0, 1], device="meta")), E.TargetError, ("'meta'", "'cpu'")),
    Case("target-bool-tensor", lambda t: _explain(target=torch.tensor([True, False])), E.TargetError, ("torch.bool", "integer class indices", "torch.long")),
    Case("target-sparse-tensor", lambda t: _explain(target=torch.tensor([0, 1]).to_sparse()), E.TargetError, ("sparse", "dense")),
    Case("sparse-input", lambda t: _explain(_x().to_sparse()), E.InputError, ("sparse", "dense", "to_dense()")),
    Case("layer-is-the-model", lambda t: cnnlens.Explainer(m := tiny_cnn(), "gradcam", "captum", layer=m), E.LayerError, ("the model itself", "submodules", "None")),
    Case("layer-is-the-model-pgc", lambda t: cnnlens.Explainer(m := tiny_cnn(), "gradcam", "pytorch-grad-cam", layer=m), E.LayerError, ("the model itself",)),
    Case("categories-too-short", lambda t: cnnlens.Explainer(tiny_cnn(), "saliency", "captum", categories=["a", "b"]).explain(_x(), target=0), E.TargetError, ("2 names", "5 classes", "categories=None")),
    # -- non-finite option values: accepted before, and gave garbage maps
    Case("baselines=nan-ig", lambda t: _explain(method="integrated_gradients", baselines=NAN), E.OptionError, ("baselines", "nan", "finite")),
    Case("baselines=inf-ig", lambda t: _explain(method="integrated_gradients", baselines=INF), E.OptionError, ("baselines", "inf", "finite")),
    Case("baselines=-inf-occlusion", lambda t: _explain(method="occlusion", baselines=-INF), E.OptionError, ("baselines", "finite")),
    Case("baselines=nan-deeplift", lambda t: _explain(method="deeplift", baselines=NAN), E.OptionError, ("baselines", "finite")),
    Case("baselines-tensor-with-nan", lambda t: _explain(method="integrated_gradients", baselines=torch.full((1, 3, 32, 32), NAN)), E.OptionError, ("baselines", "shape (1, 3, 32, 32)", "finite values")),
    Case("baselines-array-with-inf", lambda t: _explain(method="feature_ablation", baselines=np.full((1, 3, 32, 32), np.inf)), E.OptionError, ("baselines", "finite values")),
    Case("stdevs=inf-smoothgrad", lambda t: _explain(method="smoothgrad", stdevs=INF), E.OptionError, ("stdevs", "inf", "finite number >= 0")),
    Case("stdevs=inf-gradient_shap", lambda t: _explain(method="gradient_shap", stdevs=INF), E.OptionError, ("stdevs", "finite")),
    Case("fem-k=inf", lambda t: _explain(method="fem", backend="pytorch-grad-cam", k=INF), E.OptionError, ("'k'", "inf", "finite")),
    Case("fem-k=nan", lambda t: _explain(method="fem", backend="pytorch-grad-cam", k=NAN), E.OptionError, ("'k'", "nan")),
    # -- images
    Case("load-images-device-banana", lambda t: cnnlens.load_images(DATA / "chelsea.jpg", device="banana"), E.ImageLoadError, ("invalid device 'banana'", "'cpu'")),
    Case("load-images-device-meta", lambda t: cnnlens.load_images(DATA / "chelsea.jpg", device="meta"), E.ImageLoadError, ("'meta'", "'cpu'")),
]
# fmt: on
if not torch.cuda.is_available():
    CASES.append(Case("load-images-cuda-without-gpu", lambda t: cnnlens.demo_images(device="cuda"), E.ImageLoadError,
                      ("no CUDA GPU", "device='cpu'")))


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(case: Case, tmp_path: Path) -> None:
    with pytest.raises(case.error) as info:
        case.call(tmp_path)
    assert type(info.value) is case.error, f"{type(info.value).__name__} instead of {case.error.__name__}"
    message = str(info.value)
    assert "\n" not in message
    for word in case.words:
        assert word in message, message


def test_seeds_at_the_int64_limits_run() -> None:
    for seed in (2**63 - 1, -(2**63)):
        e = _explain(method="smoothgrad", seed=seed, nt_samples=2, target=0)
        assert torch.isfinite(e.maps).all()


def test_finite_options_still_accepted() -> None:
    _explain(method="integrated_gradients", baselines=0.5, n_steps=2, target=0)
    _explain(method="integrated_gradients", baselines=torch.zeros(1, 3, 32, 32), n_steps=2, target=0)
    _explain(method="smoothgrad", stdevs=0, nt_samples=2, target=0)


@pytest.mark.bad_input("api")
def test_layer_given_as_the_model_fails_before_any_forward() -> None:
    model = tiny_cnn()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(E.LayerError):
        cnnlens.Explainer(model, "gradcam", "captum", layer=model)
    assert calls == []


@pytest.mark.bad_input("api")
def test_too_few_categories_fail_before_the_backend_runs() -> None:
    model = tiny_cnn()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(E.TargetError, match="4 names but the model has 5 classes"):
        cnnlens.Explainer(model, "integrated_gradients", "captum", categories=list("abcd"), n_steps=4).explain(_x(), 0)
    assert len(calls) == 1  # the probe that learnt the number of classes, no backend pass
    e = cnnlens.Explainer(model, "saliency", "captum", categories=list("abcde")).explain(_x(), target=4)
    assert e.labels == ("e", "e")


# ------------------------------------------------------------------------------------------------
# Mutation-catching target tests: the boundary class and a bool inside a list
# ------------------------------------------------------------------------------------------------


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("target", [5, [0, 5], torch.tensor([5, 0]), (4, 5)], ids=["int", "list", "tensor", "tuple"])
def test_target_equal_to_num_classes_is_refused(target: Any) -> None:
    with pytest.raises(E.TargetError, match="target 5 is out of range: the model has 5 classes"):
        _explain(target=target)


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("target", [[True, 0], [0, False], (True, 1)], ids=["True-0", "0-False", "tuple"])
def test_bool_inside_a_target_list_is_refused(target: Any) -> None:
    with pytest.raises(E.TargetError, match="neither an integer class index nor a class name"):
        _explain(target=target)


def test_the_last_class_is_accepted() -> None:
    assert _explain(target=4).targets.tolist() == [4, 4]
    assert _explain(target=[4, 0]).targets.tolist() == [4, 0]


# ------------------------------------------------------------------------------------------------
# The channel check uses the convolution that runs first
# ------------------------------------------------------------------------------------------------


class CoordConv(nn.Module):
    """Adds two coordinate channels before its first convolution, which therefore expects 5."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(5, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _c, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.fc(self.pool(self.body(self.stem(torch.cat([x, ys, xs], 1)))).flatten(1))


class GrayWrapper(nn.Module):
    """A 1-channel network behind an RGB-to-gray convolution declared after it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 5))
        self.to_gray = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_gray(x))


class HeadFirst(nn.Module):
    """The head (a 1x1 convolution on 16 channels) is declared before the stem."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


FIRST_RUN = {"coordconv": (CoordConv, "stem", 5), "gray-wrapper": (GrayWrapper, "to_gray", 3),
             "head-declared-first": (HeadFirst, "stem.0", 3)}


@pytest.mark.parametrize("name", list(FIRST_RUN))
@pytest.mark.parametrize(("method", "backend"), [("gradcam", "captum"), ("saliency", "captum"),
                                                 ("gradcam", "pytorch-grad-cam")])
def test_models_whose_first_conv_runs_later_are_explained(name: str, method: str, backend: str) -> None:
    torch.manual_seed(0)
    model = FIRST_RUN[name][0]().eval()
    e = cnnlens.explain(model, _x(), method, backend, target=1)
    assert e.maps.shape == (2, 32, 32) and torch.isfinite(e.maps).all() and float(e.maps.max()) > 0


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("name", ["gray-wrapper", "head-declared-first"])
def test_wrong_channels_name_the_conv_that_runs_first(name: str) -> None:
    cls, conv, expects = FIRST_RUN[name]
    model = cls().eval()
    with pytest.raises(E.InputError, match=rf"inputs have 4 channels but the model's first convolution to run "
                                           rf"\('{conv}'\) expects {expects}"):
        cnnlens.explain(model, torch.randn(2, 4, 32, 32), "saliency", "captum", target=0)


@pytest.mark.bad_input("api")
def test_coordconv_with_wrong_channels_reports_the_failed_forward() -> None:
    """The first convolution gets 4 + 2 channels: not the input's count, so cnnlens cannot tell the input
    was wrong rather than the model; the forward's own error (expects 5, got 6) is reported."""
    with pytest.raises(E.ModelError, match=r"forward pass failed.*to have 5 channels, but got 6"):
        cnnlens.explain(CoordConv().eval(), torch.randn(2, 4, 32, 32), "saliency", "captum", target=0)


@pytest.mark.bad_input("api")
def test_a_forward_failing_elsewhere_stays_a_model_error() -> None:
    class LateFailure(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(7, 5)  # wrong size: fails after the convolution

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(E.ModelError, match="forward pass failed"):
        cnnlens.explain(LateFailure(), _x(), "saliency", "captum", target=0)


# ------------------------------------------------------------------------------------------------
# A malformed auto-backend table is ignored with a warning
# ------------------------------------------------------------------------------------------------


BAD_TABLES = {
    "list": [],
    "methods-int": {"methods": 3},
    "method-row-int": {"methods": {"saliency": 3}},
    "order-string": {"methods": {"saliency": {"order": "captum"}}},
    "order-of-ints": {"methods": {"saliency": {"order": [1, 2]}}},
    "not-json": "{",
}


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("content", list(BAD_TABLES.values()), ids=list(BAD_TABLES))
def test_malformed_auto_table_is_ignored_with_a_warning(content: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlens import auto

    (tmp_path / "auto_backend.json").write_text(content if isinstance(content, str) else json.dumps(content))
    monkeypatch.setenv("CNNLENS_CACHE", str(tmp_path))
    auto._table.cache_clear()
    try:
        with pytest.warns(cnnlens.CnnlensWarning, match="ignoring the auto-backend table"):
            e = cnnlens.explain(tiny_cnn(), _x(), "saliency", backend="auto", target=0)
        assert e.backend in ("captum", "flashtorch")
        assert auto.table() == json.loads(auto.SHIPPED.read_text())  # the shipped table is used instead
    finally:
        auto._table.cache_clear()


# ------------------------------------------------------------------------------------------------
# Section 5: typed results, not attributes stuck onto tensors
# ------------------------------------------------------------------------------------------------


def test_sliced_demo_images_keep_their_pictures() -> None:
    x = cnnlens.demo_images(size=32)
    assert isinstance(x, Images) and x.names == ("chelsea", "coffee", "rocket", "astronaut")
    two = x[:2]
    assert isinstance(two, Images) and two.names == ("chelsea", "coffee") and two.shape == (2, 3, 32, 32)
    assert torch.equal(two.images, x.images[:2]) and torch.equal(two.tensor, x.tensor[:2])
    e = cnnlens.explain(tiny_cnn(), two, "saliency", "captum", target=0)
    assert e.images is not None and torch.equal(e.images, x.images[:2])
    picked = x[[3, 0]]
    assert picked.names == ("astronaut", "chelsea") and torch.equal(picked.tensor[1], x.tensor[0])
    assert x[-1].names == ("astronaut",) and len(x[-1]) == 1
    with pytest.raises(IndexError):
        x[4]


def test_a_plain_tensor_has_no_display_images() -> None:
    assert _explain(target=0).images is None


def test_filters_return_a_typed_result() -> None:
    imgs = cnnlens.filters(tiny_cnn(), "features.3", [0, 2], steps=2, size=16)
    assert isinstance(imgs, cnnlens.FilterImages) and not hasattr(imgs.tensor, "filters")
    assert imgs.filters == (0, 2) and imgs.layer == "features.3" and imgs.images.shape == (2, 16, 16, 3)
    one = imgs[1:]
    assert one.filters == (2,) and torch.equal(one.tensor, imgs.tensor[1:])
    joined = cnnlens.FilterImages.concat([imgs[:1], imgs[1:]])
    assert joined.filters == imgs.filters and torch.equal(joined.tensor, imgs.tensor)


# ------------------------------------------------------------------------------------------------
# Section 5: chunked explanations in the library
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "backend"), [("gradcam", "pytorch-grad-cam"), ("integrated_gradients", "captum")])
def test_chunked_explain_equals_one_call(method: str, backend: str) -> None:
    model = tiny_cnn()
    x = Images(_x(5), torch.zeros(5, 32, 32, 3, dtype=torch.uint8), tuple("abcde"), tuple(Path(f"{n}.png") for n in "abcde"))
    opts = {"n_steps": 4} if method == "integrated_gradients" else {}
    with cnnlens.Explainer(model, method, backend, **opts) as ex:
        whole = ex.explain(x, target=[0, 1, 2, 3, 4])
        chunked = ex.explain(x, target=[0, 1, 2, 3, 4], chunk_size=2)
        steps = [(s, e, len(part)) for s, e, part in ex.explain_chunks(x, target=1, chunk_size=2)]
    torch.testing.assert_close(chunked.maps, whole.maps)
    torch.testing.assert_close(chunked.raw, whole.raw)
    assert chunked.targets.tolist() == [0, 1, 2, 3, 4] and chunked.labels == whole.labels
    assert chunked.images is not None and chunked.images.shape[0] == 5
    assert steps == [(0, 2, 2), (2, 4, 2), (4, 5, 1)]
    one_shot = cnnlens.explain(model, x, method, backend, target=3, chunk_size=3, **opts)
    assert one_shot.targets.tolist() == [3] * 5


@pytest.mark.bad_input("api")
def test_chunked_explain_checks_every_target_before_the_first_chunk() -> None:
    model = tiny_cnn()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(E.TargetError, match="target 9 is out of range"):
        cnnlens.explain(model, _x(4), "integrated_gradients", "captum", target=[0, 1, 2, 9], chunk_size=2, n_steps=4)
    assert len(calls) == 1  # only the probe; no chunk was explained
    with pytest.raises(E.TargetError, match="3 targets for 4 images"):
        cnnlens.explain(model, _x(4), "saliency", "captum", target=[0, 1, 2], chunk_size=2)
    with pytest.raises(E.OptionError, match="chunk_size must be a positive integer"):
        cnnlens.explain(model, _x(4), "saliency", "captum", chunk_size=0)


@pytest.mark.bad_input("api")
def test_concat_refuses_parts_of_different_explainers() -> None:
    a, b = _explain(target=0), _explain(method="input_x_gradient", target=0)
    with pytest.raises(E.InputError, match="different method"):
        cnnlens.Explanation.concat([a, b])
    with pytest.raises(E.InputError, match="non-empty list"):
        cnnlens.Explanation.concat([])
    joined = cnnlens.Explanation.concat([a, a])
    assert len(joined) == 4 and joined.seconds == pytest.approx(2 * a.seconds)


# ------------------------------------------------------------------------------------------------
# Outputs: a full disk or a read-only folder gives a clear error and leaves nothing that blocks a rerun
# ------------------------------------------------------------------------------------------------


class _FullDiskFile:
    """A real file whose writes stop with ENOSPC after ``budget`` bytes, as on a full disk:
    the bytes before that land on disk (a truncated file), then the write fails."""

    def __init__(self, f: Any, budget: list[int]) -> None:
        self._f, self._budget = f, budget

    def write(self, data: Any) -> int:
        room = self._budget[0]
        if len(data) > room:
            self._f.write(data[:room])
            self._f.flush()
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= len(data)
        return int(self._f.write(data))

    def fileno(self) -> int:
        # No descriptor: encoders that would write to it directly (PIL's JPEG) go through write().
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._f)


@contextlib.contextmanager
def full_disk(folder: Path, budget: int = 2000) -> Iterator[None]:
    """Files opened for writing under ``folder`` fail with ENOSPC once ``budget`` bytes are written
    in all (Python's open is what PIL, matplotlib and pathlib write through)."""
    real_open = builtins.open
    left = [budget]
    root = str(folder.resolve())

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)).startswith(root):
            return _FullDiskFile(f, left)
        return f

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        yield


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` behaves as on a read-only mount, even for root (whom chmod does not stop):
    creating a file there fails with EROFS and ``os.access(W_OK)`` says no, as access(2) does."""
    real_open, real_access = builtins.open, os.access
    root = str(folder.resolve())

    def inside(path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if inside(file) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if inside(path) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        mp.setattr(os, "access", fake_access)
        yield


@pytest.fixture(scope="module")
def expl() -> cnnlens.Explanation:
    x = cnnlens.demo_images(names=["chelsea", "coffee", "rocket"], size=32)
    return cnnlens.explain(tiny_cnn(), x, "saliency", "captum", target=0)


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("budget", [0, 500, 5000], ids=["first-byte", "first-png", "later-file"])
def test_save_on_a_full_disk_leaves_nothing_behind(expl: cnnlens.Explanation, tmp_path: Path, budget: int) -> None:
    out = tmp_path / "run"
    with full_disk(tmp_path, budget), pytest.raises(E.OutputError, match="disk is full"):
        expl.save(out)
    assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())
    expl.save(out)  # the rerun needs no overwrite=True
    assert len(json.loads((out / "manifest.json").read_text())["files"]) == 3


@pytest.mark.bad_input("api")
def test_overwrite_on_a_full_disk_keeps_the_earlier_save(expl: cnnlens.Explanation, tmp_path: Path) -> None:
    out = expl.save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with full_disk(tmp_path, 3000), pytest.raises(E.OutputError, match="disk is full"):
        expl.save(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.bad_input("api")
def test_save_into_a_read_only_folder(expl: cnnlens.Explanation, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro), pytest.raises(E.OutputError, match="not writable"):
        expl.save(ro)
    assert list(ro.iterdir()) == []
    blocked = tmp_path / "file.txt"
    blocked.write_text("a file, not a folder")
    with pytest.raises(E.OutputError, match="a part of the path is a file"):
        expl.save(blocked / "sub")


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg", ".jpg"])
def test_figure_on_a_full_disk_leaves_no_truncated_file(expl: cnnlens.Explanation, tmp_path: Path, suffix: str) -> None:
    from cnnlens import plot

    fig = plot.comparison_grid([expl])
    out = tmp_path / f"grid{suffix}"
    with full_disk(tmp_path, 300), pytest.raises(E.OutputError, match="disk is full"):
        plot.save_figure(fig, out)
    assert list(tmp_path.iterdir()) == []






@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    dst = tmp_path / "in" / "chelsea.jpg"
    dst.parent.mkdir()
    shutil.copy(DATA / "chelsea.jpg", dst)
    return dst


TINY = ["--model", "cnnlens.testing:tiny_cnn", "--size", "32", "--target", "0"]


def test_cli_save_on_a_full_disk_then_rerun(photo: Path, tmp_path: Path) -> None:
    out, save = tmp_path / "res" / "grid.png", tmp_path / "res" / "maps"
    args = ["explain", photo, *TINY, "-m", "saliency,input_x_gradient", "-b", "captum", "--out", out, "--save", save]
    with warnings.catch_warnings(), full_disk(save, 6000):
        warnings.simplefilter("ignore")
        _one_line(_cli(*args), "could not write", "disk is full")
    assert not out.exists() and not save.exists()
    result = _cli(*args)  # no --overwrite needed
    assert result.exit_code == 0, result.output
    assert (save / "saliency__captum" / "manifest.json").is_file() and out.is_file()


def test_cli_save_to_a_read_only_folder_fails_before_the_work(photo: Path, tmp_path: Path) -> None:
    save = tmp_path / "ro"
    save.mkdir()
    out = tmp_path / "grid.png"
    with read_only(save):
        _one_line(_cli("explain", photo, *TINY, "-m", "saliency", "-b", "captum", "--out", out, "--save", save),
                  "not writable")
    assert not out.exists()


def test_cli_model_that_needs_arguments() -> None:
    _one_line(_cli("layers", "--model", "torch.nn:Conv2d"), "torch.nn:Conv2d", "without arguments")
    _one_line(_cli("layers", "--model", ":"), "package.module:callable")
