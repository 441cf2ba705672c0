"""Streaming studies: images read shard by shard, studies that grow by shards, export, progress off a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench_helpers import assert_no_duplicates
from PIL import Image

import cnnlens.bench as bench
import cnnlens.bench.data as data
from cnnlens.testing import one_line_error, run_cli

SUITE = """
[study]
name = "stream"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
files = ["{glob}"]
batch = 2

[methods]
include = ["gradcam"]

[faithfulness]
enabled = false

[sanity]
enabled = false

[speed]
enabled = false
"""


def _pictures(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        seed = sum(name.encode())
        arr = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{name}.png")


def _suite(tmp_path: Path, folder: Path) -> Path:
    p = tmp_path / "stream.toml"
    p.write_text(SUITE.replace("{glob}", str(folder / "*.png")))
    return p


def _cells(db: Path) -> pd.DataFrame:
    return bench.read_table(db, "cells")


def test_pixels_are_read_one_shard_at_a_time(tmp_path, monkeypatch):
    folder = tmp_path / "pics"
    _pictures(folder, [f"im{i}" for i in range(7)])
    reads: list[int] = []
    real = data.load_pixels

    def counting(records, model, size=None):
        reads.append(len(records))
        return real(records, model, size)

    monkeypatch.setattr(data, "load_pixels", counting)
    db = bench.run(_suite(tmp_path, folder), out=tmp_path / "o", progress=False)
    assert reads, "the engine never read a shard"
    assert max(reads) <= 2, reads  # never more than one shard (images.batch = 2) at once
    assert sum(reads) >= 7
    cells = _cells(db)
    assert (cells.status == "done").all(), cells[cells.status != "done"][["kind", "error"]]
    images = bench.read_table(db, "images")
    assert sorted(images.image) == sorted(f"file-im{i}" for i in range(7))
    assert images.png.map(len).gt(50).all()
    # one images cell per shard wrote the shard's targets and display copies
    assert (cells.kind == "images").sum() == 4


def test_adding_images_computes_only_the_new_shards(tmp_path):
    folder = tmp_path / "pics"
    _pictures(folder, ["a", "c", "e", "g"])
    suite = _suite(tmp_path, folder)
    db = bench.run(suite, out=tmp_path / "o", progress=False)
    before_cells = _cells(db)
    before = bench.load(db)
    # new files that sort between the old ones: a re-cut into shards would change every shard
    _pictures(folder, ["b", "d"])
    db = bench.run(suite, out=tmp_path / "o", progress=False)
    after_cells = _cells(db)
    new = after_cells[~after_cells.cell.isin(before_cells.cell)]
    per_shard = before_cells.groupby("kind").size() / 2  # the first run had two shards
    assert new.groupby("kind").size().to_dict() == per_shard.astype(int).to_dict()
    new_images = set().union(*(set(__import__("json").loads(s)["images"]) for s in new.spec))
    assert new_images == {"file-b", "file-d"}
    assert_no_duplicates(db)
    after = bench.load(db)
    old_rows = after[after.image.isin(before.image)].reset_index(drop=True)
    det = before.deterministic == 1
    pd.testing.assert_frame_equal(old_rows[old_rows.deterministic == 1].reset_index(drop=True),
                                  before[det].reset_index(drop=True))
    assert set(after.image) >= {"file-b", "file-d"}
    pos = bench.read_table(db, "images").set_index("image").position
    assert pos["file-b"] >= 4 and pos["file-d"] >= 4  # after the finished shards


def test_images_added_to_the_suite_resume_the_study(tmp_path):
    folder = tmp_path / "pics"
    _pictures(folder, ["a", "b"])
    suite = _suite(tmp_path, folder)
    db = bench.run(suite, out=tmp_path / "o", progress=False)
    n = len(_cells(db))
    other = tmp_path / "more"
    _pictures(other, ["z"])
    suite.write_text(suite.read_text().replace(f'files = ["{folder / "*.png"}"]',
                                               f'files = ["{folder / "*.png"}", "{other / "*.png"}"]'))
    db = bench.run(suite, out=tmp_path / "o", progress=False)  # not refused as another study
    assert len(_cells(db)) > n
    assert "file-z" in set(bench.read_table(db, "images").image)


def test_load_and_export(tmp_path):
    folder = tmp_path / "pics"
    _pictures(folder, ["a", "b"])
    db = bench.run(_suite(tmp_path, folder), out=tmp_path / "o", progress=False)
    df = bench.load(db)
    assert isinstance(df, pd.DataFrame) and len(df) > 0
    assert {"model", "image", "method", "backend", "metric", "value", "deterministic"} <= set(df.columns)
    csv = bench.export(db, tmp_path / "r.csv", format="csv")
    pq = bench.export(db, tmp_path / "r.parquet", format="parquet")
    want = df.drop(columns=["cell"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_parquet(pq), want)
    got = pd.read_csv(csv)
    assert len(got) == len(want) and np.allclose(got.value.fillna(-9), want.value.fillna(-9))
    # the CLI: bench export DB --format
    r = run_cli("bench", "export", str(db), "--format", "parquet", "--out", str(tmp_path / "cli.parquet"))
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "cli.parquet")) == len(want)
    r = run_cli("bench", "export", str(db), "--format", "xlsx")
    assert r.exit_code == 2
    assert "csv" in one_line_error(r) and "parquet" in one_line_error(r)


def test_progress_draws_no_frames_off_a_terminal(tmp_path):
    folder = tmp_path / "pics"
    _pictures(folder, ["a", "b", "c"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "cnnlens.bench", "--suite", str(_suite(tmp_path, folder)),
                        "--out", str(tmp_path / "o")], capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # bytes: text mode would turn carriage returns into newlines
    assert b"\r" not in r.stderr and b"cell" not in r.stderr, r.stderr[-500:]


def test_build_images_stays_a_wrapper_over_collect_and_load(tmp_path):
    from cnnlens.bench.suite import load_suite
    from cnnlens.testing import tiny_cnn

    folder = tmp_path / "pics"
    _pictures(folder, ["a", "b", "c"])
    s = load_suite(_suite(tmp_path, folder))
    model = tiny_cnn().eval()
    recs = data.collect_images(s.images, model, 32)
    assert [r.id for r in recs] == ["file-a", "file-b", "file-c"]
    assert all(r.display is None and r.path for r in recs)  # listing reads no pixels
    displays, x = data.load_pixels(recs[1:], model, 32)
    items, xa, targets = data.build_images(s.images, model, 32)
    assert x.shape == (2, 3, 32, 32) and np.array_equal(displays[0], items[1].display)
    assert xa[1:].equal(x) and len(targets) == 3


@pytest.mark.parametrize("bad", ["rey", "threads"])
def test_unknown_engine_is_one_clear_error(tmp_path, bad):
    folder = tmp_path / "pics"
    _pictures(folder, ["a"])
    r = run_cli("bench", "--suite", str(_suite(tmp_path, folder)), "--out", str(tmp_path / "o"), "--engine", bad)
    assert r.exit_code == 2
    assert "local" in one_line_error(r) and "ray" in one_line_error(r)
