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


#: The measures that rank a map's pixels: float noise used to reorder them (differences up to 0.19).
RANKED = r"curve@|\.auc$|^road\.|iou_top|^pointing\.|^sanity\."


def _far_apart(a, b) -> dict[str, object]:
    """How far two studies' deterministic values are apart: all of them, and those of the measures
    that rank pixels (:data:`RANKED`)."""
    key = ["model", "image", "method", "backend", "metric"]
    m = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][key]
    va, vb = m.value_a.to_numpy(float), m.value_b.to_numpy(float)
    same_nan = np.isnan(va) & np.isnan(vb)
    diff = np.where(same_nan, 0.0, np.abs(va - vb))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.maximum(np.abs(va), np.abs(vb))
    ranked = m.metric.str.contains(RANKED).to_numpy()
    worst = int(np.argmax(np.where(ranked, diff, -1)))
    return {"values": len(m), "beyond_rel_1e-5": int((diff > 1e-5 * scale + 1e-7).sum()),
            "identical": int((diff == 0).sum()), "max_abs": float(diff.max()),
            "ranked_max_abs": float(diff[ranked].max()), "ranked_worst": " ".join(map(str, m.iloc[worst][key]))}


@pytest.mark.skipif(not _has_ray(), reason="Ray is not installed (pip install -e '.[ray]')")
def test_local_ray1_and_ray2_give_the_same_values_on_the_embedded_model(tmp_path):
    import ray

    from cnnlens.bench.ray_engine import start_local_ray

    suite = tmp_path / "engines.toml"
    suite.write_text(SUITE)
    local = _table(bench.run(suite, out=tmp_path / "local", progress=False))
    assert len(local) > 500 and {"deletion_blur.auc", "insertion_blur.auc", "road.combined", "agree.iou_top5",
                                 "pointing.hit", "sanity.spearman@01", "agree.pearson"} <= set(local.metric)
    start_local_ray(2)
    try:
        for workers in (1, 2):
            other = _table(bench.run(suite, out=tmp_path / f"ray{workers}", progress=False, engine="ray",
                                     workers=workers))
            far = _far_apart(local, other)
            print(f"local vs Ray x{workers}: {far}")
            # The ranked measures differ by the model's own float noise (its outputs under another
            # thread count, ~1e-5), not by reordered pixels; everything else by float noise too
            # (agree.maps_maxabs: a float16 step of the stored maps; Captum's infidelity).
            assert far["ranked_max_abs"] <= 1e-4, far
            assert far["max_abs"] <= 1e-2, far
    finally:
        ray.shutdown()


@pytest.mark.skipif(not _has_ray(), reason="Ray is not installed (pip install -e '.[ray]')")
def test_with_the_studys_threads_set_every_engine_gives_the_same_values(tmp_path):
    """With ``[study] threads`` set (the shipped suites set it), local, Ray x1 and Ray x2 run every cell
    with the same thread count, and every deterministic value agrees to relative 1e-5."""
    from cnnlens.bench.ray_engine import start_local_ray

    suite = tmp_path / "engines.toml"
    suite.write_text(SUITE.replace('seed = 0\n', 'seed = 0\nthreads = 1\n', 1))
    local = _table(bench.run(suite, out=tmp_path / "local", progress=False))
    start_local_ray(2)
    try:
        for workers in (1, 2):
            other = _table(bench.run(suite, out=tmp_path / f"ray{workers}", progress=False, engine="ray",
                                     workers=workers))
            far = _far_apart(local, other)
            print(f"threads = 1, local vs Ray x{workers}: {far}")
            assert far["beyond_rel_1e-5"] == 0, far
    finally:
        import ray

        ray.shutdown()
