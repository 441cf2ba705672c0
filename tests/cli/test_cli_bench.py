"""``cnnlens bench`` and ``cnnlens report`` from the command line: what they say, what they refuse,
and what they leave in the study folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import cnnlens
from cnnlens.testing import one_line_error, tiny_suite
from cnnlens.testing import run_cli as run

#: A study of a few seconds on the tiny CNN.
TINY = """
[study]
name = "tiny"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
demo = ["chelsea"]
batch = 1

[methods]
include = ["saliency"]
baselines = false

[faithfulness]
steps = 2
road_percentiles = []

[sanity]
enabled = false

[speed]
enabled = false
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("suite") / "tiny.toml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def study(tmp_path_factory, suite) -> Path:
    """A finished study folder, written by the library."""
    import cnnlens.bench as bench

    out = tmp_path_factory.mktemp("study")
    bench.run(suite, out=out, progress=False)
    return out


def _copy(study: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(study, to)
    return to


def test_report_accepts_the_study_folder_and_refuses_to_clobber(study, tmp_path):
    folder = _copy(study, tmp_path / "st")
    result = run("report", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
    # SQLite's write-ahead files are folded back: the study is one file again.
    from cnnlens.outputs import REPORT_OUTPUTS

    assert sorted(p.name for p in folder.iterdir()) == sorted([*REPORT_OUTPUTS, "tiny.sqlite"])
    before = (folder / "report.html").read_bytes()
    one_line_error(run("report", folder), "already holds a report", "--overwrite")
    assert (folder / "report.html").read_bytes() == before
    result = run("report", folder / "tiny.sqlite", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not list(folder.glob("*-wal")) and not list(folder.glob("*-shm"))


def test_report_never_writes_into_a_folder_of_pictures(study, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "holiday.jpg")
    one_line_error(run("report", study / "tiny.sqlite", "--out", photos), "holds pictures", "holiday.jpg")
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.jpg"]


def test_report_of_a_folder_without_a_study(tmp_path):
    one_line_error(run("report", tmp_path), "no study database", "cnnlens bench")


def test_bench_ends_by_saying_how_to_get_the_report(study, suite, tmp_path):
    folder = _copy(study, tmp_path / "st")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(cnnlens.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    # A real pipe for stdout and stderr: no progress frames, and the next step on stdout.
    proc = subprocess.run([sys.executable, "-m", "cnnlens", "bench", "--suite", str(suite), "--out", str(folder)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"cnnlens report {folder}" in proc.stdout
    assert "\r" not in proc.stderr and "\r" not in proc.stdout


def test_bench_report_writes_the_report_and_refuses_to_clobber_it(study, suite, tmp_path):
    folder = _copy(study, tmp_path / "st")  # finished: the rerun resumes with nothing left to do
    result = run("bench", "--suite", suite, "--out", folder, "--report", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").is_file()
    assert not list(folder.glob("*-wal")) and not list(folder.glob("*-shm"))
    one_line_error(run("bench", "--suite", suite, "--out", folder, "--report"), "already holds a report",
                   "cnnlens report")


def test_ctrl_c_says_a_rerun_resumes(suite, tmp_path, monkeypatch):
    import cnnlens.bench as bench

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    result = run("bench", "--suite", suite, "--out", tmp_path / "st")
    assert result.exit_code == 130
    (line,) = result.stderr.strip().splitlines()
    assert "resumes" in line and f"--out {tmp_path / 'st'}" in line


def test_the_benchmark_needs_nothing_beyond_the_core_install():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(cnnlens.__file__).parents[1] / "pyproject.toml").read_text())
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in pyproject["project"]["dependencies"]}
    assert {"pandas", "psutil"} <= core


def test_a_missing_benchmark_module_is_named_with_its_install_line(study, monkeypatch):
    from cnnlens import jobs

    monkeypatch.setattr(jobs, "BENCH_NEEDS", (("cnnlens_no_such_module", "no-such-module>=1"),))
    one_line_error(run("report", study), "pip install 'no-such-module>=1'")


def test_threads_option_sets_the_studys_torch_threads(tmp_path, monkeypatch):
    """``bench --threads N`` runs the study's cells with N torch threads (over ``[study] threads``), and a
    resume with another value is the same study."""
    import torch

    from cnnlens.bench import engine

    seen: list[int] = []
    real = engine.run_explain

    def spy(ctx, spec):
        seen.append(torch.get_num_threads())
        return real(ctx, spec)

    monkeypatch.setitem(engine.RUNNERS, "explain", spy)
    suite = tmp_path / "t.toml"
    suite.write_text(tiny_suite("threads"))
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    r = run("bench", "--suite", suite, "--out", tmp_path / "o", "--threads", want, "--no-progress")
    assert r.exit_code == 0, r.output
    assert seen and set(seen) == {want}
    assert torch.get_num_threads() == before  # given back afterwards
    r2 = run("bench", "--suite", suite, "--out", tmp_path / "o", "--threads", 1, "--no-progress")
    assert r2.exit_code == 0, r2.output


@pytest.mark.bad_input("cli")
@pytest.mark.parametrize("where", ["photos/study", "photos"], ids=["below", "in"])
def test_a_study_never_goes_among_the_suites_images(tmp_path, where):
    """``bench --out`` in or below a folder that holds the suite's images is one line, and nothing is written."""
    import numpy as np

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(photos / "a.png")
    suite = tmp_path / "s.toml"
    suite.write_text(tiny_suite("threads", f'files = ["{photos / "*.png"}"]'))
    out = tmp_path / where
    one_line_error(run("bench", "--suite", suite, "--out", out, "--no-progress"), "photos")
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"]
