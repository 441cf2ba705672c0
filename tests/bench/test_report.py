"""The study report as a reader sees it: rendered in headless Chromium, and the words around the numbers."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import require_browser_stack

import cnnlens.bench as bench
from cnnlens.bench.reporting import tables
from cnnlens.testing import tiny_suite

ROOT = Path(__file__).resolve().parents[2]


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("report_screenshots", ROOT / "benchmarks" / "report_screenshots.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke-report")
    db = bench.run("smoke", out=out / "study", progress=False)
    md, _page = bench.report(db, out / "report")
    return md.parent


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_browser_stack(("playwright",))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = _script().launch(p, chromium)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.slow
@pytest.mark.parametrize("width", [1400, 800])
def test_report_reads_cleanly_in_chromium(browser, smoke_report, tmp_path, width):
    shot = tmp_path / f"report_{width}.png"
    problems = _script().check_page(browser, smoke_report / "report.html", width, shot)
    assert problems == []
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_the_page_check_finds_what_a_reader_would_see(browser, tmp_path):
    """The checker itself: a broken image, content wider than the page and a script error are all reported."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><img alt='gone' src='data:image/png;base64,AAAA'>"
                    "<div style='width:3000px'>too wide</div><script>console.error('boom')</script></body></html>")
    problems = " | ".join(_script().check_page(browser, page, 800))
    assert "broken image" in problems
    assert "overflows horizontally" in problems
    assert "console error: boom" in problems


@pytest.mark.slow
def test_tables_sort_when_a_header_is_clicked(browser, smoke_report):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        pg = ctx.new_page()
        pg.goto((smoke_report / "report.html").as_uri())
        table = pg.locator("h2#Speed ~ div.tw table").first
        col = [h.strip() for h in table.locator("th").all_inner_texts()].index("latency_ms")
        table.locator("th").nth(col).click()  # ascending
        table.locator("th").nth(col).click()  # descending
        cells = table.locator(f"tbody tr td:nth-child({col + 1})").all()
        values = [float(c.get_attribute("data-v") or "nan") for c in cells]
        assert len(values) > 5 and values == sorted(values, reverse=True)
    finally:
        ctx.close()


def test_untrained_models_are_said_at_the_top(smoke_report):
    text = (smoke_report / "report.md").read_text()
    summary = text.split("## Agreement")[0]
    assert "random, untrained weights" in summary and "tiny_cnn" in summary
    assert "untrained weights" in (smoke_report / "report.html").read_text().split("id='Agreement'")[0]


def test_which_models_count_as_untrained():
    meta = {"suite": {"models": [
        {"id": "lite0", "spec": "efficientnet_lite0", "weights": "DEFAULT"},
        {"id": "r50-random", "spec": "resnet50", "weights": None},
        {"id": "tiny", "spec": "cnnlens.testing:tiny_cnn", "weights": "DEFAULT"},
    ]}}
    assert tables.untrained_models(meta) == ["r50-random", "tiny"]


def test_every_blank_table_cell_is_explained(smoke_report):
    text = (smoke_report / "report.md").read_text()
    blocks = re.split(r"\n\n", text)
    for i, block in enumerate(blocks):
        if block.startswith("| ") and re.search(r"\| - (\||$)", block, re.M):
            follow = blocks[i + 1] if i + 1 < len(blocks) else ""
            assert follow.startswith("`-`: "), block.splitlines()[0]


def test_methods_left_out_of_a_section_are_named_with_the_reason(tmp_path):
    from bench_helpers import MINI_SUITE

    suite = tmp_path / "mini.toml"
    suite.write_text(MINI_SUITE.replace("max_steps = 2", 'max_steps = 2\nexclude = ["smoothgrad"]')
                     .replace("warmup = 0", 'warmup = 0\nexclude = ["integrated_gradients"]'))
    md, _ = bench.report(bench.run(suite, out=tmp_path / "s", progress=False), tmp_path / "r")
    text = md.read_text()
    sanity = text.split("## Sanity")[1].split("## Speed")[0]
    assert "Not in this section, excluded by the suite's [sanity] section" in sanity
    assert "smoothgrad [captum]" in sanity.split("Not in this section")[1]
    speed = text.split("## Speed")[1].split("## Image x method grid")[0]
    assert "integrated_gradients [captum]" in speed.split("Not in this section")[1]


def test_the_grid_is_one_legible_figure_per_image(smoke_report):
    from PIL import Image

    grids = sorted((smoke_report / "figures").glob("grid_*.jpg"))
    assert len(grids) >= 2
    for g in grids:
        w, h = Image.open(g).size
        assert w <= 1400  # shown at its own size in a 1320 px column: labels stay legible
        assert h > 300


def test_the_report_code_uses_no_pyplot():
    for f in (ROOT / "cnnlens" / "bench" / "reporting").glob("*.py"):
        src = f.read_text()
        assert not re.search(r"import matplotlib\.pyplot|from matplotlib import pyplot|matplotlib\.use\(", src), f.name


def test_a_slim_copy_rebuilds_the_same_report(smoke_report, tmp_path):
    from cnnlens.bench.reporting.publish import slim_copy

    db = next((smoke_report.parent / "study").glob("*.sqlite"))
    slim = slim_copy(db, tmp_path / "smoke-slim.sqlite")
    assert slim.stat().st_size < db.stat().st_size  # the raw attributions of all but one image per pair go
    md, _ = bench.report(slim, tmp_path / "rep")
    assert md.read_text() == (smoke_report / "report.md").read_text()
    for fig in (smoke_report / "figures").iterdir():
        assert (tmp_path / "rep" / "figures" / fig.name).read_bytes() == fig.read_bytes(), fig.name


def test_the_report_never_writes_among_the_users_pictures(smoke_report, tmp_path):
    from cnnlens.errors import OutputExistsError

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    db = next((smoke_report.parent / "study").glob("*.sqlite"))
    with pytest.raises(OutputExistsError, match="holds pictures"):
        bench.report(db, photos)
    assert sorted(p.name for p in photos.iterdir()) == ["cat.jpg"]


def test_a_cell_error_reads_back_as_text_or_nothing():
    """SQLite's NULL error of a finished cell comes back from pandas as None or NaN next to real errors."""
    from cnnlens.bench.reporting.data import error_line

    assert error_line(float("nan")) == "" and error_line(None) == ""
    assert error_line("ModelError: reuses\nTraceback ...") == "ModelError: reuses"


@pytest.mark.slow
def test_the_agreement_table_fits_a_1400_px_window(browser, smoke_report):
    """At 1400 px the agreement table is seen whole: text cells and headers wrap, the page uses the width."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto((smoke_report / "report.html").as_uri())
        widths = page.evaluate("""() => {
            const h = Array.from(document.querySelectorAll('h2')).find(e => e.textContent.trim() === 'Agreement');
            const out = [];
            for (let e = h.nextElementSibling; e && e.tagName !== 'H2'; e = e.nextElementSibling)
                if (e.classList.contains('tw')) out.push([e.scrollWidth, e.clientWidth]);
            return out;
        }""")
    finally:
        page.close()
    assert widths and all(sw <= cw + 1 for sw, cw in widths), widths


def test_the_grid_shows_every_image_of_a_small_study(tmp_path):
    """A study of 6 images shows 6 figures in its image x method grid, not the first few."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(6):
        arr = np.random.default_rng(k).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"p{k}.png")
    suite = tmp_path / "grid.toml"
    suite.write_text(tiny_suite("grid", f'files = ["{folder / "*.png"}"]'))
    db = bench.run(str(suite), out=tmp_path / "study", progress=False)
    md, _page = bench.report(db, tmp_path / "report")
    assert len(list((md.parent / "figures").glob("grid_*.jpg"))) == 6
    assert "over the first 6 of 6 images" in md.read_text()
