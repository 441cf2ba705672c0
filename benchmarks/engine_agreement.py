"""One study on three engines: local, Ray with one worker and Ray with two; how far apart are they?

The embedded EfficientNet-Lite0 (real weights, 64 px) on a dozen images (demo photos, scikit-image
samples, two pasted-object canvases for localization), every deterministic measure in a small suite. No
``[study] threads``: each engine keeps its own thread count (the local engine torch's default, a
Ray worker the CPUs it was given), which is what changes a map in its 7th digit.

    python benchmarks/engine_agreement.py [--out DIR]

Prints, for Ray x1 and Ray x2 against local, the number of deterministic values, how many differ
by more than relative 1e-5, the largest relative and absolute differences and the metric where the
largest one is.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: The study of tests/bench/test_ray_engines.py: small (64 px, few steps, no speed cells).
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

RTOL = 1e-5


def compare(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, object]:
    """How far two studies' deterministic tables are apart (same rows required)."""
    key = ["model", "image", "method", "backend", "metric"]
    m = a.merge(b, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    only = int((m["_merge"] != "both").sum())
    m = m[m["_merge"] == "both"]
    va, vb = m.value_a.to_numpy(float), m.value_b.to_numpy(float)
    both_nan = np.isnan(va) & np.isnan(vb)
    diff = np.where(both_nan, 0.0, np.abs(va - vb))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.maximum(np.abs(va), np.abs(vb))
    rel = np.where(diff == 0, 0.0, diff / np.where(scale > 0, scale, 1.0))
    bad = diff > RTOL * scale + 1e-7
    i = int(np.argmax(rel)) if len(rel) else 0
    where = m.iloc[i][["image", "method", "backend", "metric"]].tolist() if len(rel) else []
    return {"values": len(m), "rows_in_one_only": only, "differ_beyond_1e-5": int(bad.sum()),
            "identical": int((diff == 0).sum()), "max_rel": float(rel.max()) if len(rel) else 0.0,
            "max_abs": float(diff.max()) if len(diff) else 0.0, "at": where}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for the three studies (default: a temp folder)")
    args = p.parse_args()
    import ray

    import cnnlens.bench as bench
    from cnnlens.bench.ray_engine import start_local_ray

    root = args.out or Path(tempfile.mkdtemp(prefix="engines-"))
    root.mkdir(parents=True, exist_ok=True)
    suite = root / "engines.toml"
    suite.write_text(SUITE)
    tables = {}
    t0 = time.perf_counter()
    db = bench.run(suite, out=root / "local", progress=False)
    print(f"local: {time.perf_counter() - t0:.0f} s", flush=True)
    tables["local"] = bench.read_results(db, deterministic_only=True).drop(columns=["cell", "study", "deterministic"])
    start_local_ray(2)
    try:
        for w in (1, 2):
            t0 = time.perf_counter()
            db = bench.run(suite, out=root / f"ray{w}", progress=False, engine="ray", workers=w)
            print(f"ray x{w}: {time.perf_counter() - t0:.0f} s", flush=True)
            tables[f"ray{w}"] = bench.read_results(db, deterministic_only=True).drop(
                columns=["cell", "study", "deterministic"])
    finally:
        ray.shutdown()
    for name in ("ray1", "ray2"):
        print(f"local vs {name}: {compare(tables['local'], tables[name])}")
    print(f"local vs local? see {root}")


if __name__ == "__main__":
    main()
