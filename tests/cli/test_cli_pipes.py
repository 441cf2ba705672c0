"""What ``cnnlens`` prints into pipes and files: whole names, plain text, JSON that parses; and its help.

Real pipes and files need a real process (``python -m cnnlens``): typer's CliRunner is never a
terminal, so it cannot show the difference between a terminal and a pipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlens
from cnnlens import registry
from cnnlens.testing import run_cli as run

TINY = ["--model", "cnnlens.testing:tiny_cnn"]
COMMANDS = ["explain", "compare", "demo", "kernels", "features", "filters", "methods", "layers", "bench", "report",
            "serve"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # A narrow terminal width, as a pipe in a small window reports: nothing may be cut to fit it.
    env["COLUMNS"] = "50"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cnnlens.__file__).parents[1]), env.get("PYTHONPATH", "")])
    env.pop("CNNLENS_DEBUG", None)
    return env


def _cnnlens(*args: str, stdout: object = subprocess.PIPE, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlens", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=_env(), cwd=cwd, timeout=600)


def _tokens(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_methods_into_a_pipe_names_every_method_and_backend_whole():
    proc = _cnnlens("methods")  # stdout is a pipe, as in `cnnlens methods | cat`
    assert proc.returncode == 0, proc.stderr
    lines = _tokens(proc.stdout)
    header = next(t for t in lines if t and t[0] == "method")
    for b in registry.BACKENDS:
        assert b in header, (b, header)
    firsts = {t[0] for t in lines if t}
    for info in cnnlens.methods():
        assert info.method in firsts, info.method
    assert "\x1b[" not in proc.stdout  # no colour codes in a pipe
    # Each method's row marks exactly the backends that have it.
    for m in {i.method for i in cnnlens.methods()}:
        row = next(t for t in lines if t and t[0] == m)
        marks = row[1 : 1 + len(registry.BACKENDS)]
        have = {i.backend for i in cnnlens.methods() if i.method == m}
        assert [mk != "·" for mk in marks] == [b in have for b in registry.BACKENDS], (m, row)


def test_layers_into_a_file_names_every_layer_whole(tmp_path):
    from cnnlens.layer_list import list_layers
    from cnnlens.models import load_model

    out = tmp_path / "layers.txt"
    with out.open("w") as f:
        proc = _cnnlens("layers", "--model", "resnet50", "--weights", "none", stdout=f)
    assert proc.returncode == 0, proc.stderr
    lines = _tokens(out.read_text(encoding="utf-8"))
    rows, default = list_layers(load_model("resnet50", weights=None))
    by_name = {t[1]: t for t in lines if len(t) >= 4 and t[0].isdigit()}
    for r in rows:
        assert r.name in by_name, r.name
        assert by_name[r.name][2] == r.type
        assert by_name[r.name][3] == ("x".join(map(str, r.shape)) if r.shape else "(not")
    assert "default" in " ".join(by_name[default])


def test_methods_json_is_the_registry():
    result = run("methods", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {(r["method"], r["backend"]) for r in data["methods"]} == {(i.method, i.backend) for i in cnnlens.methods()}
    row = next(r for r in data["methods"] if (r["method"], r["backend"]) == ("integrated_gradients", "captum"))
    assert row["options"]["n_steps"] == 50 and row["kind"] == "pixel"
    assert set(data["backends"]) == set(registry.BACKENDS)


def test_layers_json_is_layer_list():
    from cnnlens.layer_list import list_layers
    from cnnlens.testing import tiny_cnn

    result = run("layers", *TINY, "--size", "32", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows, default = list_layers(tiny_cnn(), size=32)
    assert [r["name"] for r in data["layers"]] == [r.name for r in rows]
    assert [tuple(r["shape"]) if r["shape"] else None for r in data["layers"]] == [r.shape for r in rows]
    assert data["default_layer"] == default and data["input"] == [1, 3, 32, 32]
    assert all("reshape" in r for r in data["layers"])


def test_explain_json_is_a_summary(tmp_path):
    from PIL import Image

    (tmp_path / "in").mkdir()
    img = tmp_path / "in" / "wide.png"
    Image.new("RGB", (64, 30), (200, 40, 40)).save(img)
    out = tmp_path / "grid.png"
    result = run("explain", img, *TINY, "--size", "32", "-m", "gradcam,saliency", "-b", "captum", "--out", out,
                 "--save", tmp_path / "saved", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert data["files"]["grid"] == str(out) and out.is_file()
    assert [Path(p).name for p in data["files"]["saved"]] == ["gradcam__captum", "saliency__captum"]
    assert all(Path(p).is_dir() for p in data["files"]["saved"])
    (image,) = data["images"]
    assert image["image"] == "wide" and image["class"].startswith("class") and 0.0 < image["score"] <= 1.0
    assert [(e["method"], e["backend"]) for e in data["explanations"]] == [("gradcam", "captum"), ("saliency", "captum")]
    assert all(e["seconds"] >= 0.0 for e in data["explanations"])


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_flags_as_flags(command):
    result = run(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output, result.output
    if command in ("explain", "report", "kernels"):
        line = next(ln for ln in result.output.splitlines() if "--overwrite" in ln)
        assert "<" not in line, line


def test_a_value_after_a_flag_is_explained(tmp_path):
    from cnnlens.testing import one_line_error

    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    one_line_error(run("explain", img, "--overwrite", "true", *TINY), "'true' is not an image", "take no value")


def test_python_dash_m_cnnlens(tmp_path):
    proc = _cnnlens("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "explain" in proc.stdout and "bench" in proc.stdout
    proc = _cnnlens("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cnnlens {cnnlens.__version__}"


def test_cli_is_a_package_of_command_modules():
    import importlib

    from cnnlens.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"cnnlens.cli.{name}")
        assert module.__file__ and Path(module.__file__).parent.name == "cli"


def _photo(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    (folder / "in").mkdir(parents=True)
    p = folder / "in" / "a.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(p)
    return p


def test_long_work_prints_progress_lines_outside_a_terminal(tmp_path, monkeypatch) -> None:
    """In a pipe or a log there is no bar, but long work still says how far it is (plain lines)."""
    from cnnlens.cli import _common

    monkeypatch.setattr(_common, "PLAIN_PROGRESS_EVERY", 0.0)
    r = run("explain", _photo(tmp_path), *TINY, "-m", "gradcam,saliency", "-b", "captum", "--out", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("explaining: ")]
    assert lines and lines[-1].startswith("explaining: 2/2 after") and lines[-1].endswith("(done)"), r.stderr


def test_short_work_prints_no_progress_lines(tmp_path) -> None:
    r = run("explain", _photo(tmp_path), *TINY, "-m", "gradcam", "-b", "captum", "--out", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    assert "explaining:" not in r.stderr


@pytest.mark.parametrize("command", ["explain", "compare", "demo"])
def test_threads_option_sets_torch_threads(command, tmp_path, monkeypatch) -> None:
    """``--threads N`` is torch's intra-op thread count for the command's work."""
    import torch

    from cnnlens import jobs

    seen: list[int] = []
    real = jobs.explain_all

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(jobs, "explain_all", spy)
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    args = ["--out", tmp_path / "g.png", "--threads", want]
    if command != "demo":
        args = [_photo(tmp_path), *TINY, *(["-b", "captum"] if command == "explain" else []), *args]
    try:
        r = run(command, *args)
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    assert seen == [want]


def test_compare_prints_how_far_the_backends_agree(tmp_path) -> None:
    """``compare`` prints the agreement of each pair of backends per image (the app shows it too)."""
    r = run("compare", _photo(tmp_path), *TINY, "-m", "gradcam", "--out", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert "agreement between backends" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if "pytorch-grad-cam vs captum" in ln)
    assert line.split()[-4:] == ["1.000"] * 4  # Grad-CAM: the same maps from both toolkits
    j = run("compare", _photo(tmp_path / "j"), *TINY, "-m", "gradcam", "--out", tmp_path / "c2.png", "--json")
    rows = json.loads(j.stdout)["agreement"]
    assert {r["backends"] for r in rows} >= {"pytorch-grad-cam vs captum"}
    assert all(set(r) == {"method", "backends", "image", "pearson", "spearman", "ssim", "iou_top5"} for r in rows)
