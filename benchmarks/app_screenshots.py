"""Take the README's screenshots of the web app (docs/images/app_explore.png, app_study.png).

Runs the app on 127.0.0.1 with the embedded EfficientNet-Lite0, drives Debian's chromium with
Playwright: the demo cat with Grad-CAM, guided backprop and saliency on every backend that has
them; then the Study tab on a small study of the tiny CNN built here with :func:`cnnlens.bench.run`.

Run: ``python benchmarks/app_screenshots.py [--out docs/images]`` (needs ``cnnlens[app]`` and chromium).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path

STUDY = """
[study]
name = "tiny-demo"
seed = 0
threads = 1

[[models]]
id = "tiny_cnn"
spec = "cnnlens.testing:tiny_cnn"
image_size = 64

[images]
demo = ["chelsea", "coffee", "rocket"]
batch = 1

[methods]
include = ["gradcam", "saliency", "guided_backprop"]

[faithfulness]
steps = 8
road_percentiles = [50]
road_images = 1

[sanity]
images = 1
max_steps = 3

[speed]
batch_sizes = [1]
repeats = 2
warmup = 1
"""


def bottom(pg: object, selector: str) -> float:
    """Page y of an element's bottom edge (plus a margin), whatever the scroll position."""
    js = "(s) => document.querySelector(s).getBoundingClientRect().bottom + window.scrollY + 16"
    return float(pg.evaluate(js, selector))  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    a = ap.parse_args()
    import cnnlens.bench as bench
    from cnnlens.app import serve

    with tempfile.TemporaryDirectory() as d:
        suite = Path(d) / "study.toml"
        suite.write_text(STUDY)
        db = bench.run(suite, out=Path(d) / "study", progress=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo, url = serve(None, db, "127.0.0.1", port, block=False, quiet=True)
        try:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                pg = b.new_page(viewport={"width": 1400, "height": 1000})
                pg.set_default_timeout(180_000)
                pg.goto(url)
                pg.wait_for_selector("#run")
                pg.locator("#demo input").click()
                pg.get_by_role("option", name="chelsea").click()
                pg.wait_for_selector("#status >> text=Loaded")
                for m in ("guided_backprop", "saliency"):
                    pg.locator("#methods label", has_text=m).first.click()
                pg.locator("#backends label", has_text="flashtorch").click()
                pg.click("#run")
                pg.wait_for_selector("#status >> text=Done: 7 call(s)")
                pg.wait_for_timeout(1500)
                a.out.mkdir(parents=True, exist_ok=True)
                clip = {"x": 0, "y": 0, "width": 1400, "height": bottom(pg, "#timings")}
                pg.screenshot(path=str(a.out / "app_explore.png"), full_page=True, clip=clip)
                pg.get_by_role("tab", name="Study").click()
                pg.click("#study-open")
                pg.wait_for_selector("#study-status >> text=tiny-demo")
                pg.wait_for_timeout(2500)
                clip = {"x": 0, "y": 0, "width": 1400, "height": bottom(pg, "#study-speed")}
                pg.screenshot(path=str(a.out / "app_study.png"), full_page=True, clip=clip)
                b.close()
        finally:
            demo.close()
    from PIL import Image

    for name in ("app_explore.png", "app_study.png"):  # a 256-colour palette keeps the repository small
        with Image.open(a.out / name) as im:
            im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(a.out / name, optimize=True)
    print(f"wrote {a.out / 'app_explore.png'} and {a.out / 'app_study.png'}")


if __name__ == "__main__":
    main()
