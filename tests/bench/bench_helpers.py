"""Helpers shared by the benchmark tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd

import cnnlens.bench as bench

#: A small study on the tiny CNN: several backends per method (agreement), baselines, every measure.
MINI_SUITE = """
[study]
name = "mini"
seed = 3
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
demo = ["chelsea", "coffee"]
batch = 1

[images.paste]
objects = ["cat"]
scales = [0.5]
positions = [[0.3, 0.3]]
keep = "all"
max = 1

[methods]
include = ["gradcam", "saliency", "guided_backprop", "smoothgrad", "integrated_gradients"]

[methods.options]
smoothgrad = { nt_samples = 3 }
integrated_gradients = { n_steps = 4 }

[faithfulness]
steps = 4
road_percentiles = [50]
road_images = 1

[sanity]
images = 1
max_steps = 2

[speed]
batch_sizes = [1]
repeats = 1
warmup = 0
"""


def deterministic_table(db: Path) -> pd.DataFrame:
    """The results that must not change between runs (timing and memory rows left out)."""
    return bench.read_results(db, deterministic_only=True).drop(columns=["cell"])


def assert_no_duplicates(db: Path) -> None:
    """No row or cell appears twice, and SQLite's own check passes."""
    conn = sqlite3.connect(db)
    try:
        dup = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM results GROUP BY study, model, image, method, "
                           "backend, metric HAVING COUNT(*) > 1)").fetchone()[0]
        dup_cells = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM cells GROUP BY study, cell "
                                 "HAVING COUNT(*) > 1)").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    assert integrity == "ok", integrity
    assert dup == 0 and dup_cells == 0, (dup, dup_cells)
