"""The ``cnnlens`` command line, driven through typer's CliRunner (and once as a real process).

Tiny models keep this fast: ``--model cnnlens.testing:tiny_cnn`` builds the test network from code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cnnlens import cli
from cnnlens.images import DATA
from cnnlens.registry import BACKENDS, backends_for
from cnnlens.testing import one_line_error
from cnnlens.testing import run_cli as run

TINY = ["--model", "cnnlens.testing:tiny_cnn"]
COMMANDS = ["explain", "compare", "demo", "kernels", "features", "filters", "methods", "layers", "bench", "report"]






@pytest.fixture()
def photos(tmp_path) -> list[Path]:
    """Two photos in a folder of their own (no output may land among them)."""
    paths = []
    (tmp_path / "photos").mkdir()
    for name in ("chelsea", "coffee"):
        dst = tmp_path / "photos" / f"{name}.jpg"
        shutil.copy(DATA / f"{name}.jpg", dst)
        paths.append(dst)
    return paths


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_answers_help(command):
    result = run(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command is None:
        assert all(c in result.output for c in COMMANDS)


def test_explain_draws_every_existing_pair(photos, tmp_path):
    out = tmp_path / "grid.png"
    result = run("explain", *photos, *TINY, "--size", "32", "--methods", "gradcam,saliency",
                 "--backends", "pytorch-grad-cam,captum", "--out", out)
    assert result.exit_code == 0, result.output
    # gradcam on both backends, saliency on Captum only: 1 input + 3 columns, 2 rows
    assert png_size(out) == (4 * 200, round((2 * 2.0 + 0.45 + 0.35) * 100))
    assert "chelsea" in result.stdout and "coffee" in result.stdout
    for pair in ("gradcam", "pytorch-grad-cam", "captum", "saliency"):
        assert pair in result.stdout
    assert f"wrote 3 explanation(s) of 2 image(s): {out}" in result.stdout.replace("\n", "")
    assert "Warning" not in result.output  # toolkit warnings are not sprayed over the terminal


def test_explain_never_clobbers(photos, tmp_path):
    out = tmp_path / "grid.png"
    out.write_bytes(b"precious")
    one_line_error(run("explain", photos[0], *TINY, "--size", "32", "--out", out), "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    before = photos[0].read_bytes()
    one_line_error(run("explain", *photos, *TINY, "--out", photos[0], "--overwrite"), "input images")
    assert photos[0].read_bytes() == before
    result = run("explain", photos[0], *TINY, "--size", "32", "--out", out, "--overwrite", "-m", "gradcam", "-b", "captum")
    assert result.exit_code == 0, result.output
    assert png_size(out)[0] == 400


def test_explain_save_folder_rule(photos, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    (save / "mine.txt").write_text("keep")
    args = ["explain", photos[0], *TINY, "--size", "32", "-m", "gradcam", "-b", "captum", "--out", tmp_path / "g.png"]
    one_line_error(run(*args, "--save", save), "not empty")
    result = run(*args, "--save", save, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (save / "gradcam__captum" / "manifest.json").is_file() and (save / "mine.txt").read_text() == "keep"
    one_line_error(run(*args, "--save", photos[0].parent, "--overwrite"), "holds input images")


def test_explain_targets_and_options(photos, tmp_path):
    result = run("explain", *photos, *TINY, "--size", "32", "-m", "integrated_gradients", "-o", "n_steps=4",
                 "--target", "class1,3", "--batch-size", "1", "--out", tmp_path / "ig.png")
    assert result.exit_code == 0, result.output
    # one image per backend call, one target per image, joined back into one column
    assert "class1 (1)" in result.stdout and "class3 (3)" in result.stdout
    columns = 1 + sum(BACKENDS[b].installed for b in backends_for("integrated_gradients"))  # the image, each backend
    assert png_size(tmp_path / "ig.png") == (columns * 200, round((2 * 2.0 + 0.45 + 0.35) * 100))
    one_line_error(run("explain", photos[0], *TINY, "-m", "gradcam", "-o", "n_steps=4", "--out", tmp_path / "x.png"),
                   "unknown option(s) n_steps", "valid options: aug_smooth")
    one_line_error(run("explain", photos[0], *TINY, "--target", "klass1", "--out", tmp_path / "x.png"),
                   "unknown class name 'klass1'", "class1")


def test_compare_uses_every_backend_with_the_method(photos, tmp_path):
    out = tmp_path / "cmp.png"
    result = run("compare", photos[0], *TINY, "--size", "32", "--method", "guided_backprop", "--out", out)
    assert result.exit_code == 0, result.output
    have = [b for b in backends_for("guided_backprop") if BACKENDS[b].installed]
    assert {"pytorch-grad-cam", "captum", "flashtorch"} <= set(have)
    for backend in have:
        assert backend in result.stdout
    assert png_size(out)[0] == (1 + len(have)) * 200  # the image, then each backend


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["explain", "missing.jpg"], ["image file 'missing.jpg' does not exist"]),
        (["explain", "{photo}", "-m", "gradcm"], ["unknown method 'gradcm'", "gradcam"]),
        (["explain", "{photo}", "-b", "captun"], ["unknown backend 'captun'", "captum"]),
        (["explain", "{photo}", "-m", "gradcam", "-b", "flashtorch"], ["no installed backend", "pytorch-grad-cam"]),
        (["explain", "{photo}", *TINY, "--layer", "featurs.3"], ["layer 'featurs.3' not found", "features.3"]),
        (["explain", "{photo}", "--model", "resnt50"], ["unknown model 'resnt50'", "resnet50"]),
        (["explain", "{photo}", "--model", "resnet18", "--weights", "IMAGENET9K"], ["unknown weights"]),
        (["explain", "{photo}", "--out", "grid.gif"], ["suffix", ".png"]),
        (["explain", "{photo}", "-o", "n_steps"], ["key=value"]),
        (["kernels", *TINY, "--layer", "features.2"], ["not a Conv2d", "features.0"]),
        (["kernels", *TINY, "--mode", "rgb", "--layer", "features.3"], ["3 input channels"]),
        (["features", "{photo}", *TINY, "--layers", "fc"], ["not an (N, C, H, W)"]),
        (["filters", *TINY, "--filters", "0,99"], ["filter 99 is out of range"]),
        (["filters", *TINY, "--filters", "a,b"], ["comma-separated integers"]),
        (["layers", "--model", "missing/model.pt"], ["does not exist"]),
        (["methods", "--backend", "captun"], ["unknown backend"]),
        (["methods", "nothing*"], ["no method matches"]),
        (["report", "no.db"], []),
        (["explain", "{photo}", "--bogus"], ["No such option", "--bogus"]),
        (["explain"], ["Missing argument"]),
        (["nonsense"], ["No such command"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(photos, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{photo}", str(photos[0])) for a in args]
    one_line_error(run(*args), *words)


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("cnnlens ")


def test_debug_shows_the_traceback(photos):
    result = run("explain", "missing.jpg", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "ImageLoadError" in result.stderr
    assert run("--debug", "explain", "missing.jpg").exit_code == 2


def test_kernels_command(tmp_path):
    out = tmp_path / "k.png"
    result = run("kernels", *TINY, "--layer", "features.3", "--out", out, "--dpi", "50")
    assert result.exit_code == 0, result.output
    assert "16 kernels of features.3 (mean)" in result.stdout
    assert png_size(out)[0] == 400
    one_line_error(run("kernels", *TINY, "--out", out), "already exists")


def test_features_command(photos, tmp_path):
    out = tmp_path / "fm.png"
    result = run("features", *photos, *TINY, "--size", "32", "--layers", "features.0,features.3", "--top", "4",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert "features.0 (8, 32, 32)" in result.stdout and "features.3 (16, 16, 16)" in result.stdout
    # 2 images x 2 layers x 1 row, 1 image column + 4 channels
    assert png_size(out) == (round(5 * 1.25 * 100), round((4 * 1.25 + 0.3) * 100))
    default = run("features", photos[0], *TINY, "--size", "32", "--out", tmp_path / "fm2.png")
    assert default.exit_code == 0 and "features.0" in default.stdout


def test_filters_command(tmp_path):
    pytest.importorskip("cnnlens.activmax")
    out = tmp_path / "f.png"
    result = run("filters", *TINY, "--layer", "features.3", "--filters", "0,5", "--steps", "2", "--size", "32",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 filter image(s) of features.3" in result.stdout and png_size(out)[0] > 0


def test_methods_and_layers(tmp_path):
    result = run("methods")
    assert result.exit_code == 0
    assert "gradcam" in result.stdout and "integrated_gradients" in result.stdout and "captum" in result.stdout
    result = run("methods", "*cam*", "--backend", "captum")
    assert result.exit_code == 0 and "gradcam" in result.stdout and "hirescam" not in result.stdout
    result = run("layers", *TINY, "--size", "32")
    assert result.exit_code == 0, result.output
    assert "features.3" in result.stdout and "1x16x16x16" in result.stdout and "default CAM layer" in result.stdout


def test_layers_of_resnet50_without_weights():
    result = run("layers", "--model", "resnet50", "--weights", "none", "--pattern", "layer4*")
    assert result.exit_code == 0, result.output
    assert "1x2048x7x7" in result.stdout and "layer4.2.conv3" in result.stdout


def test_demo_runs_and_refuses_to_clobber(tmp_path, monkeypatch):
    # The full demo (five pairs) takes a minute on two cores; one pair proves the wiring.
    monkeypatch.setattr(cli.explain, "DEMO_PAIRS", (("gradcam", "captum", {}),))
    out = tmp_path / "demo" / "grid.png"
    result = run("demo", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Egyptian cat" in result.stdout and "espresso" in result.stdout
    assert png_size(out) == (2 * 200, round((4 * 2.0 + 0.45 + 0.35) * 100))
    one_line_error(run("demo", "--out", out), "already exists")


def test_as_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cnnlens.cli", "explain", str(tmp_path / "none.png")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"cnnlens: error: image file '{tmp_path / 'none.png'}' does not exist"]
    assert proc.stdout == ""


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize(("where", "words"), [
    ("--out {photos}/grid.png", ["would land in", "chelsea.jpg", "--out"]),
    ("--out {photos}/results/grid.png", ["would land below", "--out"]),
    ("--save {photos}/overlays", ["would land below", "--save"]),
    ("--save {photos}", ["holds input images", "--save"]),
], ids=["out-in-the-photo-folder", "out-below-it", "save-below-it", "save-into-it"])
def test_no_output_lands_among_the_input_images(photos, tmp_path, where, words):
    """A picture written among the photos is read as a photo by the next run over that folder
    (``cnnlens explain 'photos/*.png'``): one rule for every output, before any work."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    option, path = where.replace("{photos}", str(photos[0].parent)).split(" ")
    extra = ["--out", tmp_path.parent / f"{tmp_path.name}-grid.png"] if option == "--save" else []
    one_line_error(run("explain", photos[0], *TINY, "--size", "32", option, path, *extra, "--overwrite"), *words)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.bad_input("cli")
def test_bench_refuses_a_study_folder_of_pictures(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "holiday.jpg")
    one_line_error(run("bench", "--suite", "smoke", "--out", photos), "holds pictures", "holiday.jpg", "--out")
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.jpg"]


@pytest.mark.bad_input("cli")
def test_a_1x1_picture_is_explained_and_drawn(tmp_path):
    """Its map at the picture's own size is (1, 1); it was squeezed to a scalar and refused."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "dot.png")
    result = run("explain", folder / "dot.png", *TINY, "--size", "32", "-m", "gradcam,saliency", "-b", "captum",
                 "--out", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "g.png")[0] == 3 * 200
