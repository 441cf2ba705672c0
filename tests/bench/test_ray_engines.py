"""The same study on every engine: the embedded EfficientNet-Lite0 (real weights) on a dozen images,
every deterministic measure, on the local engine, on Ray with one worker and on Ray with two. No
``[study] threads``: the engines run with different torch thread counts, which change the maps in
their 7th digit; the rankings behind deletion, insertion, ROAD, top-k IoU and the pointing game must
not turn that noise into different values (relative 1e-5).

Small on purpose (64 px, few steps and samples, no speed cells): three studies in minutes on two cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnlens.bench as bench

SUITE = """
[study]
name = "engines"
seed = 0

[[models]]
id = "efficientnet_lite0"
spec = "efficientnet_lite0"
image_size = 64

[images]
demo = ["chelsea", "coffee", "rocket", "astronaut"]
skimage = ["motorcycle_left", "camera", "clock_motion", "coins", "horse", "color"]
shard = 4

[images.paste]
objects = ["cat", "espresso"]
scales = [0.5]
positions = [[0.35, 0.35]]
keep = "all"
max = 2

[methods]
include = ["gradcam", "saliency"]
backends = ["pytorch-grad-cam", "captum"]
baselines = false

[methods.max_images]
saliency = 4

[faithfulness]
steps = 4
road_percentiles = [50]
road_images = 4
perturb_samples = 2

[sanity]
images = 1
max_steps = 2

[speed]
enabled = false
"""


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _table(db: Path):
    return bench.read_results(db, deterministic_only=True).drop(columns=["cell", "study", "deterministic"])


def _far_apart(a, b) -> tuple[int, float, list[str]]:
    """Values differing beyond relative 1e-5 (absolute 1e-7 near zero), the largest relative
    difference, and where the first few are."""
    key = ["model", "image", "method", "backend", "metric"]
    m = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][key]
    va, vb = m.value_a.to_numpy(float), m.value_b.to_numpy(float)
    same_nan = np.isnan(va) & np.isnan(vb)
    diff = np.where(same_nan, 0.0, np.abs(va - vb))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.maximum(np.abs(va), np.abs(vb))
    bad = diff > 1e-5 * scale + 1e-7
    rel = np.where(diff == 0, 0.0, diff / np.where(scale > 0, scale, 1.0))
    where = [" ".join(map(str, r)) for r in m[bad][["image", "method", "backend", "metric"]].head(5).to_numpy()]
    return int(bad.sum()), float(rel.max()), where


@pytest.mark.skipif(not _has_ray(), reason="Ray is not installed (pip install -e '.[ray]')")
def test_local_ray1_and_ray2_give_the_same_values_on_the_embedded_model(tmp_path):
    import ray

    from cnnlens.bench.ray_engine import start_local_ray

    suite = tmp_path / "engines.toml"
    suite.write_text(SUITE)
    local = _table(bench.run(suite, out=tmp_path / "local", progress=False))
    assert len(local) > 1000 and {"deletion_blur.auc", "insertion_blur.auc", "road.combined", "agree.iou_top5",
                                  "pointing.hit", "sanity.spearman@01", "agree.pearson"} <= set(local.metric)
    start_local_ray(2)
    try:
        for workers in (1, 2):
            other = _table(bench.run(suite, out=tmp_path / f"ray{workers}", progress=False, engine="ray",
                                     workers=workers))
            n, worst, where = _far_apart(local, other)
            print(f"local vs Ray x{workers}: {len(local)} values, {n} beyond relative 1e-5, largest relative "
                  f"difference {worst:.3e}")
            assert n == 0, f"Ray x{workers}: {n} of {len(local)} values differ (largest relative {worst:.2e}): {where}"
    finally:
        ray.shutdown()
