"""The web app's start time, first grid and memory over many requests, on loopback only.

1. ``cnnlens serve`` as a subprocess (default: the embedded EfficientNet-Lite0): seconds from the
   process start to the first HTTP response.
2. In Debian's chromium (Playwright; skipped if either is missing): open the page, upload a demo
   photo, click Explain with Grad-CAM on pytorch-grad-cam and Captum, and time until both result
   images are shown (the first grid, then the median of ``--grids`` more on fresh pages).
3. ``--requests`` Explain requests in one session through ``gradio_client`` (the page's own API):
   the server process's RSS at the start (after one warm-up request) and every quarter.

Run: ``python benchmarks/app_soak.py [--model SPEC] [--requests 200]`` (needs ``cnnlens[app]``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def photo(tmp: Path) -> Path:
    from PIL import Image

    from cnnlens.images import demo_paths

    out = tmp / "cat.png"
    with Image.open(demo_paths(["chelsea"])[0]) as im:
        im.convert("RGB").save(out)
    return out


def browser_grids(url: str, png: Path, n: int) -> list[float] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        return None
    times = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(n):
            pg = b.new_page()
            pg.set_default_timeout(120_000)
            pg.goto(url)
            pg.wait_for_selector("#run")
            pg.locator("#upload input[type=file]").set_input_files(str(png))
            pg.wait_for_selector("#status >> text=Loaded")
            t0 = time.perf_counter()
            pg.click("#run")
            pg.wait_for_selector("#status >> text=Done: 2 call(s)")
            pg.wait_for_function("() => document.querySelectorAll('#grid img').length === 2")
            times.append(time.perf_counter() - t0)
            pg.close()
        b.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="load_model spec (default: the embedded model)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--grids", type=int, default=3, help="browser grids after the first")
    a = ap.parse_args()
    os.environ.update({"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "cnnlens.cli", "serve", "--port", str(port)]
    if a.model:
        cmd += ["--model", a.model]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed in finally
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"cnnlens serve exited: {(tmp / 'serve.log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        r.read()
                    break
                except OSError:
                    time.sleep(0.1)
            start_s = time.perf_counter() - t0
            print(f"start to first response: {start_s:.2f} s (model: {a.model or 'embedded efficientnet_lite0'})")
            png = photo(tmp)
            grids = browser_grids(url, png, 1 + a.grids)
            if grids is None:
                print("browser grid: skipped (playwright or /usr/bin/chromium missing)")
            else:
                rest = f", then median {statistics.median(grids[1:]):.2f} s of {len(grids) - 1}" if len(grids) > 1 else ""
                print(f"browser, click to 2-backend Grad-CAM grid shown: first {grids[0]:.2f} s{rest}")
            from gradio_client import Client, handle_file

            c = Client(url, verbose=False)
            c.predict(handle_file(str(png)), "whole", api_name="/upload")

            def explain() -> None:
                c.predict(None, ["gradcam"], ["pytorch-grad-cam", "captum"], "auto", "", "positive", False,
                          api_name="/explain")

            explain()
            base = rss_mb(proc.pid)
            print(f"RSS after warm-up: {base:.1f} MB")
            t1 = time.perf_counter()
            for i in range(1, a.requests + 1):
                explain()
                if i % max(1, a.requests // 4) == 0:
                    print(f"RSS after {i} requests: {rss_mb(proc.pid):.1f} MB "
                          f"({(time.perf_counter() - t1) / i:.3f} s/request)")
            print(f"RSS growth over {a.requests} requests: {rss_mb(proc.pid) - base:+.1f} MB")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


if __name__ == "__main__":
    main()
