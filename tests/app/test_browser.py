"""The web app in a real browser: Debian's chromium driven by Playwright, on loopback only.

Every request the page makes is recorded; all must go to the local server (no CDN, no analytics).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from browser import require_browser_stack
from conftest import free_port

from cnnlens.testing import tiny_cnn

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_browser_stack()


@pytest.fixture(scope="module")
def server(chromium: str, study_db: Path, tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from cnnlens.app import serve

    port = free_port()
    demo, url = serve(tiny_model, study_db, "127.0.0.1", port, name="tiny_cnn", block=False, quiet=True,
                      export_dir=tmp_path_factory.mktemp("exports"))
    try:
        assert url.startswith(f"http://127.0.0.1:{port}")
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[tuple[Any, list[str]]]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 1600})
    requests: list[str] = []
    ctx.on("request", lambda r: requests.append(r.url))
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server)
    pg.wait_for_selector("#run")
    try:
        yield pg, requests
    finally:
        ctx.close()


def _local_only(requests: list[str], server: str) -> None:
    assert requests, "the page made no request at all"
    origin = server.rstrip("/")
    foreign = [u for u in requests if not (u.startswith(origin) or u.startswith(("data:", "blob:")))]
    assert not foreign, f"the page loaded from outside the local server: {foreign[:5]}"


def _wait_text(pg: Any, selector: str, text: str) -> str:
    """Wait until the element's rendered text contains ``text``; return that text."""
    pg.wait_for_function("([s, t]) => { const e = document.querySelector(s); return !!e && e.innerText.includes(t); }",
                         arg=[selector, text])
    return str(pg.locator(selector).inner_text())


def _upload(pg: Any, path: Path) -> None:
    pg.locator("#upload input[type=file]").set_input_files(str(path))


def test_explore_gradcam_on_two_backends(page: tuple[Any, list[str]], server: str, photo_png: Path) -> None:
    pg, requests = page
    _upload(pg, photo_png)
    pg.wait_for_selector("#status >> text=Loaded")
    pg.wait_for_function("() => (document.querySelector('#top5').innerText.match(/0\\.\\d+/g) || []).length >= 5")
    pg.click("#run")
    pg.wait_for_selector("#status >> text=Done: 2 call(s)")
    assert pg.locator("#grid img").count() == 2
    captions = pg.locator("#grid").inner_text()
    assert "pytorch-grad-cam" in captions and "captum" in captions
    agreement = _wait_text(pg, "#agreement", "pytorch-grad-cam | captum").split("pytorch-grad-cam | captum", 1)[1]
    numbers = [float(v) for v in re.findall(r"-?\d+\.\d+|\b[01]\b", agreement)]
    assert numbers and all(-1.0 <= v <= 1.0 for v in numbers)
    pg.click("#export")
    pg.wait_for_selector("#status >> text=Exported")
    _local_only(requests, server)


@pytest.mark.bad_input("app")
def test_text_upload_shows_error_and_server_keeps_running(page: tuple[Any, list[str]], server: str,
                                                          photo_png: Path, tmp_path: Path) -> None:
    pg, requests = page
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not an image\n")
    _upload(pg, txt)
    pg.wait_for_selector("#status >> text=not a readable image")
    assert "Error" in pg.locator("#status").inner_text()
    pg.locator("#upload button[aria-label='Clear']").first.click()
    _upload(pg, photo_png)
    pg.wait_for_selector("#status >> text=Loaded")
    _local_only(requests, server)


@pytest.mark.bad_input("app")
def test_unknown_class_name_shows_error(page: tuple[Any, list[str]]) -> None:
    pg, _ = page
    pg.fill("#class-search textarea, #class-search input", "zzqqxx")
    pg.press("#class-search textarea, #class-search input", "Enter")
    pg.wait_for_selector("#status >> text=no class name contains 'zzqqxx'")


def test_study_browser(page: tuple[Any, list[str]], server: str) -> None:
    """The study given at start is open when the page appears: no click on Open."""
    pg, requests = page
    pg.get_by_role("tab", name="Study").click()
    pg.wait_for_selector("#study-status >> text=appstudy")
    _wait_text(pg, "#study-agreement", "pytorch-grad-cam")
    deadline = time.monotonic() + 30
    while pg.locator("#study-grid img").count() < 3 and time.monotonic() < deadline:
        pg.wait_for_timeout(200)
    assert pg.locator("#study-grid img").count() >= 3
    pg.locator("#f-methods label", has_text="saliency").click()
    pg.wait_for_function(
        "() => !document.querySelector('#study-agreement').innerText.includes('gradcam')")
    assert "saliency" in pg.locator("#study-agreement").inner_text()
    _local_only(requests, server)


@pytest.mark.parametrize("route", ["gradio_api/file=/etc/passwd", "gradio_api/file=../../../../../etc/passwd",
                                   "file=/etc/passwd", "gradio_api/file=%2Fetc%2Fpasswd"])
def test_file_routes_serve_nothing_outside_the_app(server: str, route: str) -> None:
    try:
        with urllib.request.urlopen(server + route, timeout=30) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        assert exc.code in (403, 404)
        return
    assert b"root:" not in body


@pytest.mark.bad_input("app")
def test_huge_image_is_refused_before_decoding(page: tuple[Any, list[str]], tmp_path: Path) -> None:
    from test_workbench import _png_header

    pg, _ = page
    _upload(pg, _png_header(tmp_path / "huge.png", 20000, 20000))
    _wait_text(pg, "#status", "downscale it first")


class _SlowCNN(torch.nn.Module):
    """The tiny CNN with a forward pass that takes 0.25 s: runs long enough to cancel, on any machine."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(num_classes=5, seed=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.25)
        return self.net(x)


def test_cancel_stops_a_run_between_calls(browser: Any, photo_png: Path, tmp_path: Path) -> None:
    from cnnlens.app import serve

    demo, url = serve(_SlowCNN(), None, "127.0.0.1", free_port(), block=False, quiet=True, export_dir=tmp_path)
    try:
        pg = browser.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(url)
        pg.wait_for_selector("#run")
        _upload(pg, photo_png)
        pg.wait_for_selector("#status >> text=Loaded")
        for m in ("integrated_gradients", "saliency"):
            pg.locator("#methods label", has_text=m).first.click()
        pg.locator("#backends label", has_text="pytorch-grad-cam").click()  # captum only: 3 cells
        # 12 forward passes of 0.25 s: about 3 s for the second cell, so Cancel lands during it.
        pg.locator("#options .cm-content").fill('{"integrated_gradients": {"n_steps": 12, "internal_batch_size": 1}}')
        pg.click("#run")
        pg.wait_for_selector("#status >> text=1/3 done")
        pg.click("#cancel")
        _wait_text(pg, "#status", "Cancelled")
        pg.wait_for_timeout(6000)  # the run would have finished by now had it not been cancelled
        assert "Cancelled" in pg.locator("#status").inner_text()
        assert pg.locator("#grid img").count() == 1
        pg.close()
    finally:
        demo.close()
