"""Speed and memory of a study at scale: streaming memory, engine overhead, Ray against local.

Four measurements, each study run in a fresh subprocess (so memory and imports start equal):

* ``memory``: peak RSS (``VmHWM``) of a study of ``--small`` and of ``--large`` generated images
  (same shard size, a small random-weight model, cheap methods), optionally also with another
  checkout of cnnlens (``--compare-root``, e.g. the engine before streaming);
* ``overhead``: a study's wall time on ``--engine local`` against the sum of its cells' compute
  (the seconds inside ``explain()`` and the metric calls, which the engine records per cell);
* ``ray``: the same study on ``--engine ray`` with 1 and 2 workers, joining a Ray started once
  for the benchmark (its start-up is timed on its own), interleaved with local runs;
* ``costs``: per-cell costs the scaling estimate needs: decoding a shard, writing a cell's rows and
  maps to SQLite, and the bytes of maps a cell returns to the driver.

Runs are interleaved (local, ray-1, ray-2, rotating the order each round) and repeated; medians
are reported. The machine's load average is printed with each round.

Usage:
    python benchmarks/study_scale.py memory --small 200 --large 2000 --shard 64 [--compare-root DIR]
    python benchmarks/study_scale.py speed --images 12 --rounds 3
    python benchmarks/study_scale.py costs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEMORY_SUITE = """
[study]
name = "scale_mem"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = {size}

[images]
files = ["{glob}"]
batch = {shard}

[methods]
include = ["gradcam"]

[faithfulness]
enabled = false

[sanity]
enabled = false

[speed]
enabled = false
"""

SPEED_SUITE = """
[study]
name = "scale_speed"
seed = 1
threads = 1

[[models]]
id = "lite0"
spec = "efficientnet_lite0"
weights = "none"
image_size = {size}

[images]
files = ["{glob}"]
batch = {shard}

[methods]
include = ["gradcam", "saliency", "integrated_gradients"]

[methods.options]
integrated_gradients = {{ n_steps = 8 }}

[faithfulness]
steps = 8
images = {faith}
road_percentiles = [50]
road_images = 0

[sanity]
enabled = false

[speed]
enabled = false
"""

CHILD = r"""
import json, os, shutil, sys, tempfile, time
t0, w0 = time.perf_counter(), time.time()
import cnnlens.bench as bench
kw = json.loads(sys.argv[1])

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024

study_peak = None
if kw.pop("warm", False):
    # A 1-shard study of the same suite first, in a scratch folder: every lazy import and the
    # allocator's first growth happen there, then the peak is reset (Linux clear_refs 5), so the
    # measured peak is the study's own.
    tmp = tempfile.mkdtemp()
    bench.run(kw["suite"], out=tmp, progress=False, max_cells=2)
    shutil.rmtree(tmp)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base_rss = status("VmRSS")
    t0, w0 = time.perf_counter(), time.time()
db = bench.run(kw.pop("suite"), out=kw.pop("out"), progress=False, **kw)
wall = time.perf_counter() - t0
hwm = status("VmHWM")
cells = bench.read_table(db, "cells")
code = bench.__file__
# from the first cell's start to the last cell's end: the study's running phase, without the
# start-up (imports, model loading, listing the images, planning)
first = float((cells.finished - cells.seconds).min())
print(json.dumps({"code": code, "wall": wall, "startup": first - w0, "running": float(cells.finished.max()) - first,
                  "peak_rss_mb": hwm, "rss_before_mb": locals().get("base_rss"),
                  "cells": len(cells),
                  "cell_seconds": float(cells.seconds.sum()), "compute": float(cells.compute.fillna(0).sum())
                  if "compute" in cells else 0.0,
                  "by_kind": cells.groupby("kind").seconds.sum().to_dict(),
                  "compute_by_kind": cells.groupby("kind").compute.sum().to_dict() if "compute" in cells else {}}))
"""


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def pictures(folder: Path, n: int, side: int = 128) -> None:
    """``n`` smooth random pictures (small PNGs), generated once per folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"im{i:05d}.png"
        if path.is_file():
            continue
        rng = np.random.default_rng(i)
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        tmp = path.with_suffix(".tmp.png")  # a killed run leaves no truncated picture behind
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(tmp)
        tmp.replace(path)


def study(kwargs: dict, root: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root or ROOT)}
    # cwd too: ``python -c`` puts the working folder first on sys.path, before PYTHONPATH
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kwargs)], capture_output=True, text=True, env=env,
                       cwd=str(root or ROOT), timeout=3600)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def cmd_memory(a: argparse.Namespace) -> None:
    work = Path(a.work)
    print(f"# memory: {a.small} vs {a.large} images, shard {a.shard}, image_size {a.size}; load {load()}")
    roots = [("this checkout", ROOT)] + ([("compare", Path(a.compare_root))] if a.compare_root else [])
    rows = []
    for n in (a.small, a.large):
        pictures(work / f"pics{n}", n)
    for rep in range(a.rounds):
        for label, root in roots:
            for n in (a.small, a.large) if rep % 2 == 0 else (a.large, a.small):
                suite = work / f"mem{n}.toml"
                suite.write_text(MEMORY_SUITE.format(size=a.size, glob=work / f"pics{n}" / "*.png", shard=a.shard))
                with tempfile.TemporaryDirectory(dir=work) as out:
                    res = study({"suite": str(suite), "out": out, "warm": True}, root)
                assert res["code"].startswith(str(root)), (res["code"], root)
                growth = res["peak_rss_mb"] - res["rss_before_mb"]
                rows.append((label, n, res["peak_rss_mb"], res["wall"], res["cells"], growth))
                print(f"{label:14s} {n:5d} images: peak RSS {res['peak_rss_mb']:.0f} MB (RSS before the study "
                      f"{res['rss_before_mb']:.0f} MB, study adds {growth:.0f} MB), {res['wall']:.1f} s, "
                      f"{res['cells']} cells (load {load()})", flush=True)
    print("\n| code | images | peak RSS (MB, median) | peak - RSS before the study (MB) | wall (s, median) |")
    print("|---|---:|---:|---:|---:|")
    for label, _root in roots:
        for n in (a.small, a.large):
            sel = [r for r in rows if r[0] == label and r[1] == n]
            print(f"| {label} | {n} | {statistics.median(r[2] for r in sel):.0f} | "
                  f"{statistics.median(r[5] for r in sel):.0f} | {statistics.median(r[3] for r in sel):.1f} |")
    for label, _root in roots:
        small = statistics.median(r[2] for r in rows if r[0] == label and r[1] == a.small)
        large = statistics.median(r[2] for r in rows if r[0] == label and r[1] == a.large)
        print(f"{label}: {a.large}-image peak / {a.small}-image peak = {large / small:.3f}")


def cmd_speed(a: argparse.Namespace) -> None:
    from cnnlens.bench.ray_engine import start_local_ray

    work = Path(a.work)
    pictures(work / f"speed{a.images}", a.images, side=256)
    suite = work / "speed.toml"
    suite.write_text(SPEED_SUITE.format(size=a.size, glob=work / f"speed{a.images}" / "*.png", shard=a.shard,
                                        faith=a.faith))
    # Ray's own start-up, timed apart (a study without --address pays it once)
    starts = []
    for _ in range(a.ray_starts):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", "from cnnlens.bench.ray_engine import start_local_ray; "
                            "import ray; start_local_ray(2); ray.shutdown()"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
        starts.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr[-2000:]
    print(f"# ray start+shutdown (subprocess, incl. imports): {', '.join(f'{s:.1f}' for s in starts)} s")
    import ray

    address = start_local_ray(2)
    configs = [("local", {}), ("ray-1", {"engine": "ray", "workers": 1, "address": address}),
               ("ray-2", {"engine": "ray", "workers": 2, "address": address})]
    res: dict[str, list[dict]] = {c: [] for c, _ in configs}
    try:
        for rep in range(a.rounds):
            order = configs[rep % 3:] + configs[:rep % 3]
            for name, kw in order:
                with tempfile.TemporaryDirectory(dir=work) as out:
                    r = study({"suite": str(suite), "out": out, **kw})
                res[name].append(r)
                print(f"round {rep} {name:6s}: wall {r['wall']:.1f} s, cells {r['cells']}, cell seconds "
                      f"{r['cell_seconds']:.1f}, compute {r['compute']:.1f} (load {load()})", flush=True)
    finally:
        ray.shutdown()

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in res[name])

    print("\n| engine | wall (s) | start-up (s) | running phase (s) | sum of cell wall (s) | sum of compute (s) | "
          "running / compute |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _ in configs:
        print(f"| {name} | {med(name, 'wall'):.1f} | {med(name, 'startup'):.1f} | {med(name, 'running'):.1f} | "
              f"{med(name, 'cell_seconds'):.1f} | {med(name, 'compute'):.1f} | "
              f"{statistics.median(r['running'] / r['compute'] for r in res[name]):.3f} |")
    ratio = statistics.median(r1["wall"] / r0["wall"] for r0, r1 in zip(res["local"], res["ray-1"], strict=True))
    ratio2 = statistics.median(r2["wall"] / r1["wall"] for r1, r2 in zip(res["ray-1"], res["ray-2"], strict=True))
    print(f"\nengine overhead (local, running phase): running / compute - 1 = "
          f"{statistics.median(r['running'] / r['compute'] - 1 for r in res['local']):.3f}; "
          f"whole process: wall / compute - 1 = {statistics.median(r['wall'] / r['compute'] - 1 for r in res['local']):.3f}")
    rr = statistics.median(r1["running"] / r0["running"] for r0, r1 in zip(res["local"], res["ray-1"], strict=True))
    rr2 = statistics.median(r2["running"] / r1["running"] for r1, r2 in zip(res["ray-1"], res["ray-2"], strict=True))
    print(f"running phase: ray 1 worker / local {rr:.3f}; ray 2 workers / ray 1 worker {rr2:.3f}")
    print(f"ray 1 worker / local (per round, median): {ratio:.3f}")
    print(f"ray 2 workers / ray 1 worker (per round, median): {ratio2:.3f}")
    last = res["local"][-1]
    print("local, seconds by cell kind (last round):", json.dumps({k: round(v, 2) for k, v in last["by_kind"].items()}))
    print("local, compute by cell kind (last round):",
          json.dumps({k: round(v or 0, 2) for k, v in last["compute_by_kind"].items()}))


def cmd_costs(a: argparse.Namespace) -> None:
    """Costs of the steps that do not scale with workers: decoding, the SQLite writer, map transfer."""
    import numpy as np

    from cnnlens.bench.data import BenchImage, load_pixels
    from cnnlens.bench.store import Store
    from cnnlens.images import demo_paths
    from cnnlens.models import load_model

    model = load_model("efficientnet_lite0", weights=None)
    paths = [str(p) for p in demo_paths()] * 16
    recs = [BenchImage(f"i{k}", "file", path=p) for k, p in enumerate(paths[:64])]
    times = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        load_pixels(recs, model, 224)
        times.append(time.perf_counter() - t)
    decode = statistics.median(times) / len(recs)
    print(f"decode+resize+normalise of a demo JPEG to 224x224: {decode * 1e3:.1f} ms/image (median of {a.rounds}; "
          f"load {load()})")
    n = 64
    maps = [("m", f"i{k}", "gradcam", "captum", "map", np.random.rand(224, 224).astype(np.float16)) for k in range(n)]
    rows = [("m", f"i{k}", "gradcam", "captum", f"metric{j}", 0.5, 1) for k in range(n) for j in range(40)]
    with tempfile.TemporaryDirectory(dir=a.work) as d:
        st = Store(Path(d) / "w.sqlite", "w")
        times = []
        for r in range(a.rounds * 4):
            t = time.perf_counter()
            st.write_cell(f"c{r}", "explain", {"r": r}, "done", rows, maps, None, 0.0)
            times.append(time.perf_counter() - t)
        st.close()
    w = statistics.median(times)
    mb = n * 224 * 224 * 2 / 2**20
    print(f"SQLite write of one explain cell (64 images: 64 float16 224x224 maps = {mb:.1f} MB, {len(rows)} rows): "
          f"{w * 1e3:.0f} ms -> {1 / w:.1f} cells/s, {n / w:.0f} images/s per method for one writer")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--small", type=int, default=200)
    m.add_argument("--large", type=int, default=2000)
    m.add_argument("--shard", type=int, default=64)
    m.add_argument("--size", type=int, default=96)
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--compare-root", default=None, help="another cnnlens checkout to measure the same way")
    s = sub.add_parser("speed")
    s.add_argument("--images", type=int, default=12)
    s.add_argument("--shard", type=int, default=4)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--faith", type=int, default=4, help="images with faithfulness measures")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--ray-starts", type=int, default=2, help="times to time a local Ray's start-up")
    c = sub.add_parser("costs")
    c.add_argument("--rounds", type=int, default=5)
    for q in (m, s, c):
        q.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cnnlens-study-scale"))
    a = p.parse_args()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    {"memory": cmd_memory, "speed": cmd_speed, "costs": cmd_costs}[a.cmd](a)


if __name__ == "__main__":
    main()
