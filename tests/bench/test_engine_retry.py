"""Failed cells on the local engine: a study says what failed and exits non-zero, and a rerun retries
failed and skipped cells (``--no-retry`` keeps them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from bench_helpers import assert_no_duplicates, deterministic_table

import cnnlens.bench as bench
from cnnlens.cli.bench import EXIT_CELLS_FAILED
from cnnlens.images import demo_paths
from cnnlens.testing import run_cli

SUITE = """
[study]
name = "flaky"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
files = ["{folder}/*.jpg"]
batch = 1

[methods]
include = ["saliency", "gradcam"]
baselines = false

[faithfulness]
steps = 2
road_percentiles = []

[sanity]
enabled = false

[speed]
enabled = false
"""


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of two photos and a suite over it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        shutil.copyfile(demo_paths([name])[0], folder / f"{name}.jpg")
    suite = tmp_path / "flaky.toml"
    suite.write_text(SUITE.format(folder=folder.as_posix()))
    return folder, suite


@pytest.mark.bad_input("engine")
def test_an_image_unreadable_for_a_moment_is_retried_by_the_rerun(photos, tmp_path):
    folder, suite = photos
    good = (folder / "coffee.jpg").read_bytes()
    fresh = bench.run(suite, out=tmp_path / "fresh", progress=False)
    assert set(bench.read_table(fresh, "cells").status) == {"done"}

    (folder / "coffee.jpg").write_bytes(good[:200])  # cut short while being copied, say
    out = tmp_path / "study"
    result = run_cli("bench", "--suite", suite, "--out", out, "--no-progress")
    assert result.exit_code == EXIT_CELLS_FAILED, result.output
    cells = bench.read_table(out / "flaky.sqlite", "cells")
    counts = cells.status.value_counts()
    assert counts["error"] == 1 and counts["skipped"] > 0 and counts["done"] > 0, counts
    (bad,) = cells[cells.status == "error"].itertuples()
    assert bad.kind == "images" and "coffee" in bad.spec, bad
    err = result.stderr
    assert f"1 cells failed and {counts['skipped']} were skipped" in err, err
    assert "coffee" in err and "retry them" in err and f"--out {out}" in err, err

    # --no-retry keeps them as they are (not run again: the same rows, the same finishing times)
    result = run_cli("bench", "--suite", suite, "--out", out, "--no-progress", "--no-retry")
    assert result.exit_code == EXIT_CELLS_FAILED, result.output
    again = bench.read_table(out / "flaky.sqlite", "cells")
    pd.testing.assert_frame_equal(again.sort_values("cell").reset_index(drop=True),
                                  cells.sort_values("cell").reset_index(drop=True))

    (folder / "coffee.jpg").write_bytes(good)  # fixed
    result = run_cli("bench", "--suite", suite, "--out", out, "--no-progress")  # the plain rerun retries
    assert result.exit_code == 0, result.output
    assert "failed" not in result.stderr
    db = out / "flaky.sqlite"
    assert set(bench.read_table(db, "cells").status) == {"done"}
    assert bench.failures(db) == []
    assert_no_duplicates(db)
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(fresh))


# --------------------------------------------------------------------------------------------
# A resume never mixes two setups: images keyed by content, the model by its weights
# --------------------------------------------------------------------------------------------


@pytest.mark.bad_input("engine")
def test_a_photo_replaced_before_the_resume_has_its_cells_rerun(photos, tmp_path, capfd):
    folder, suite = photos
    out = tmp_path / "study"
    db = bench.run(suite, out=out, progress=False, max_cells=6)  # interrupted, chelsea's and coffee's cells done
    assert (bench.read_table(db, "cells").status == "done").sum() == 6
    shutil.copyfile(demo_paths(["rocket"])[0], folder / "coffee.jpg")  # another photo under the same name
    capfd.readouterr()
    db = bench.run(suite, out=out, progress=False)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if "changed" in ln]
    assert len(lines) == 1 and "file-coffee" in lines[0] and "file-chelsea" not in lines[0], lines
    fresh = bench.run(suite, out=tmp_path / "fresh", progress=False)
    assert_no_duplicates(db)
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(fresh))
    pd.testing.assert_frame_equal(bench.read_table(db, "images").drop(columns=["position"]),
                                  bench.read_table(fresh, "images").drop(columns=["position"]))
    # unchanged files: a rerun says nothing and changes nothing
    before = bench.read_results(db)
    capfd.readouterr()
    bench.run(suite, out=out, progress=False)
    assert "changed" not in capfd.readouterr().err
    pd.testing.assert_frame_equal(bench.read_results(db), before)


@pytest.mark.bad_input("engine")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices
def test_a_replaced_model_file_is_refused_on_resume(photos, tmp_path):
    import torch

    from cnnlens.errors import OutputExistsError
    from cnnlens.testing import tiny_cnn

    _folder, suite = photos
    model_file = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(tiny_cnn(seed=0)), model_file)
    suite.write_text(suite.read_text().replace('spec = "cnnlens.testing:tiny_cnn"', f'spec = "{model_file.as_posix()}"'))
    out = tmp_path / "study"
    db = bench.run(suite, out=out, progress=False, max_cells=3)
    torch.jit.save(torch.jit.script(tiny_cnn(seed=1)), model_file)  # retrained, saved under the same name
    with pytest.raises(OutputExistsError, match=r"model 'tiny'.*other weights.*--overwrite"):
        bench.run(suite, out=out, progress=False)
    assert len(bench.read_table(db, "cells")) == 3  # nothing was added to the study
    db = bench.run(suite, out=out, progress=False, overwrite=True)  # the new model's study, from the start
    assert len(bench.read_table(db, "cells")) > 3


# --------------------------------------------------------------------------------------------
# Progress outside a terminal, and the estimate before the study starts
# --------------------------------------------------------------------------------------------


def test_bench_in_a_pipe_prints_an_estimate_and_progress_lines(photos, tmp_path, monkeypatch):
    import cnnlens.bench.engine as engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY", 0.0)  # a line per cell instead of one per 30 s
    _folder, suite = photos
    result = run_cli("bench", "--suite", suite, "--out", tmp_path / "o")  # CliRunner: not a terminal
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    total = len(bench.read_table(tmp_path / "o" / "flaky.sqlite", "cells"))
    first = next(ln for ln in out if "cells to run" in ln)
    assert first.startswith(f"flaky: {total} cells to run (") and "roughly" in first, first
    steps = [ln for ln in out if "%)" in ln]
    assert len(steps) >= total and steps[-1].startswith(f"flaky: {total}/{total} cells (100%)"), out
    assert "\r" not in result.output
    # --no-progress: quiet
    result = run_cli("bench", "--suite", suite, "--out", tmp_path / "q", "--no-progress")
    assert "cells to run" not in result.stdout and "%)" not in result.stdout


def test_the_estimate_grows_with_the_work(photos):
    from cnnlens.bench.engine import estimate_seconds, plan
    from cnnlens.bench.suite import load_suite

    _folder, suite = photos
    s = load_suite(suite)
    one = estimate_seconds(s, plan(s, "tiny", ["a"]), {"tiny": 0.01})
    two = estimate_seconds(s, plan(s, "tiny", ["a", "b"]), {"tiny": 0.01})
    assert 0 < one < two
    assert estimate_seconds(s, plan(s, "tiny", ["a"]), {"tiny": 0.02}) == pytest.approx(2 * one)
