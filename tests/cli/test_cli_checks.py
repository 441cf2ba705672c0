"""The CLI checks everything before computing, and loads custom models with their class names and
normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens.testing import one_line_error
from cnnlens.testing import run_cli as run

TINY = ["--model", "cnnlens.testing:tiny_cnn"]


@pytest.fixture()
def image(tmp_path) -> Path:
    (tmp_path / "photos").mkdir()  # a folder of its own: no output may land among the inputs
    p = tmp_path / "photos" / "wide.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((30, 64, 3)) * 255).astype("uint8")).save(p)
    return p


@pytest.fixture()
def counted(monkeypatch) -> dict[str, int]:
    """Counts model loads and explanation calls: a bad option must be refused with both at zero."""
    import cnnlens.models
    from cnnlens.explainer import Explainer

    calls = {"load_model": 0, "explain": 0}
    real_load, real_chunks = cnnlens.models.load_model, Explainer.explain_chunks

    def load(*a, **k):
        calls["load_model"] += 1
        return real_load(*a, **k)

    def chunks(self, *a, **k):
        calls["explain"] += 1
        return real_chunks(self, *a, **k)

    monkeypatch.setattr(cnnlens.models, "load_model", load)
    monkeypatch.setattr(Explainer, "explain_chunks", chunks)
    return calls


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize(("args", "words"), [
    (("--cmap", "not_a_cmap"), ("colormap", "not_a_cmap")),
    (("--alpha", "0.5", "--cmap", "jett"), ("jett",)),
    (("--sign", "every"), ("sign", "every", "absolute, positive, negative, all")),
    (("--outlier-perc", "150", "--sign", "all"), ("outlier_perc", "150")),
    (("--reduce", "median"), ("reduce", "median", "abs_max")),
    (("--fit", "stretch"), ("fit", "stretch", "whole")),
    (("--out", "grid.gif"), ("suffix", ".gif")),
    (("--device", "mps"), ("mps", "not available", "--device cpu")),
    (("--device", "cuda:7"), ("cuda:7",)),
    (("--mean", "0.5,0.5"), ("--mean", "three")),
    (("--std", "0.5,0,0.5"), ("--std", "positive")),
], ids=["cmap", "cmap-typo", "sign", "outlier-perc", "reduce", "fit", "out-suffix", "mps", "cuda-index", "mean",
        "std"])
def test_bad_options_fail_before_any_work(image, tmp_path, monkeypatch, counted, args, words):
    monkeypatch.chdir(tmp_path)
    one_line_error(run("explain", image, *TINY, "--size", "32", "-m", "gradcam,saliency", *args), *words)
    assert counted == {"load_model": 0, "explain": 0}
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.bad_input("cli")
def test_bad_method_option_fails_before_any_explanation(image, tmp_path, counted):
    one_line_error(run("explain", image, *TINY, "--size", "32", "-m", "gradcam,integrated_gradients", "-b", "captum",
                       "-o", "n_stepz=4", "--out", tmp_path / "g.png"), "n_stepz", "n_steps")
    assert counted["explain"] == 0


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize("command", ["features", "filters", "serve"])
def test_mps_on_a_machine_without_it(command, image, tmp_path, monkeypatch):
    import torch

    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.chdir(tmp_path)
    one_line_error(run(command, *([image] if command == "features" else []), *TINY, "--device", "mps"),
                   "mps", "not available")


def test_classes_file_names_the_classes_of_a_custom_model(image, tmp_path):
    import torch
    import torchvision

    net = torchvision.models.resnet18(num_classes=10)
    weights = tmp_path / "ten.pt"
    torch.save(net.state_dict(), weights)
    names = [f"label-{chr(ord('a') + i)}" for i in range(10)]
    classes = tmp_path / "classes.txt"
    classes.write_text("# one class per line\n" + "\n".join(names) + "\n\n")
    model = ["--model", str(weights), "--arch", "resnet18"]
    result = run("explain", image, *model, "--size", "32", "-m", "gradcam", "-b", "captum", "--classes", classes,
                 "--out", tmp_path / "g.png", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["images"]
    assert row["class"] == names[row["target"]]
    # A class given by name is one of the file's.
    result = run("explain", image, *model, "--size", "32", "-m", "gradcam", "-b", "captum", "--classes", classes,
                 "--target", "label-c", "--out", tmp_path / "g2.png", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"][0]["target"] == 2
    # A wrong count is refused, naming both numbers.
    classes.write_text("\n".join(names[:7]))
    one_line_error(run("explain", image, *model, "--size", "32", "--classes", classes, "--out", tmp_path / "g3.png"),
                   "7 classes", "10 outputs")
    one_line_error(run("explain", image, *model, "--classes", tmp_path / "missing.txt"), "missing.txt")


def test_mean_and_std_are_the_model_input_normalisation(image, tmp_path):
    import dataclasses

    import torch

    from cnnlens.images import load_images
    from cnnlens.models import meta_of
    from cnnlens.testing import tiny_cnn

    def cli(*extra: str) -> tuple[int, float]:
        result = run("explain", image, *TINY, "--size", "32", "-m", "gradcam", "-b", "captum",
                     "--out", tmp_path / f"g{len(extra)}.png", "--json", *extra)
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout)["images"][0]
        return row["target"], row["score"]

    def direct(mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> tuple[int, float]:
        net = tiny_cnn()
        if mean is not None:
            net.cnnlens_meta = dataclasses.replace(meta_of(net), mean=mean, std=std)
        with torch.no_grad():
            p = net(load_images([image], net, size=32).tensor).softmax(1)[0]
        return int(p.argmax()), float(p.max())

    imagenet = direct()
    custom = direct((0.1, 0.9, 0.5), (0.05, 0.2, 0.1))
    assert custom[1] != pytest.approx(imagenet[1], rel=1e-3)
    t, p = cli()
    assert t == imagenet[0] and p == pytest.approx(imagenet[1], rel=1e-5)
    t, p = cli("--mean", "0.1,0.9,0.5", "--std", "0.05,0.2,0.1")
    assert t == custom[0] and p == pytest.approx(custom[1], rel=1e-5)


def test_sign_all_draws_a_diverging_map_and_fit_crop_is_a_choice(image, tmp_path):
    result = run("explain", image, *TINY, "--size", "32", "-m", "saliency", "-b", "captum", "--sign", "all",
                 "--reduce", "sum", "--out", tmp_path / "g.png", "--save", tmp_path / "s")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s" / "saliency__captum" / "manifest.json").read_text())
    assert "sum" in json.dumps(manifest)
    with Image.open(tmp_path / "s" / "saliency__captum" / "wide.png") as im:
        assert im.size[0] / im.size[1] == pytest.approx(64 / 30, rel=0.05)  # the photo's own aspect ratio
    result = run("explain", image, *TINY, "--size", "32", "-m", "gradcam", "-b", "captum", "--fit", "crop",
                 "--out", tmp_path / "g2.png", "--save", tmp_path / "s2")
    assert result.exit_code == 0, result.output
    assert "crop" in (tmp_path / "s2" / "gradcam__captum" / "manifest.json").read_text()
