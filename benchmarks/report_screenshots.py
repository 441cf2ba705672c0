"""Render a study's report.html in headless Chromium, check it as a reader sees it, take screenshots.

Checks at each width: no console error or uncaught exception, every <img> decoded (naturalWidth > 0),
no horizontal overflow of the page, no element wider than its box except the scrolling table
wrappers (``.tw``) and code blocks, which scroll on purpose.

    python benchmarks/report_screenshots.py benchmarks/results/standard/report.html \
        --out docs/images --widths 1400 800

writes ``report_1400.png`` and ``report_800.png`` (the top of the page: summary, agreement) and
exits 1 listing the problems if any check fails. Uses Debian's ``chromium`` through Playwright.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

#: JavaScript returning the problems a reader would see: broken images and overflowing content.
_LAYOUT_PROBLEMS = """() => {
  const out = [];
  document.querySelectorAll('img').forEach((im, i) => {
    if (!im.complete || im.naturalWidth === 0) out.push('broken image #' + i + ' (' + (im.alt || '') + ')');
  });
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1)
    out.push('page overflows horizontally: ' + doc.scrollWidth + ' px > ' + window.innerWidth + ' px');
  document.querySelectorAll('body *').forEach((el) => {
    if (el.closest('.tw, pre, nav, script, style')) return;
    const r = el.getBoundingClientRect();
    if (r.right > doc.clientWidth + 1 && r.width > 0)
      out.push('<' + el.tagName.toLowerCase() + '> sticks out to ' + Math.round(r.right) + ' px: '
               + (el.textContent || '').trim().slice(0, 60));
  });
  document.querySelectorAll('img').forEach((im, i) => {
    if (im.getBoundingClientRect().width > doc.clientWidth + 1) out.push('image #' + i + ' wider than the page');
  });
  return out;
}"""


def check_page(browser: Any, html: Path, width: int, shot: Path | None = None) -> list[str]:
    """Open ``html`` at ``width`` px; return the problems found, and save a screenshot if asked."""
    ctx = browser.new_context(viewport={"width": width, "height": 1100})
    problems: list[str] = []
    try:
        page = ctx.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        problems += page.evaluate(_LAYOUT_PROBLEMS)
        if shot is not None:
            page.screenshot(path=str(shot), full_page=False)
    finally:
        ctx.close()
    return [f"{width} px: {p}" for p in problems]


def launch(playwright: Any, chromium: str) -> Any:
    # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])


def main(argv: list[str] | None = None) -> int:
    import shutil

    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", type=Path, help="the report.html to check")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for the screenshots")
    ap.add_argument("--widths", type=int, nargs="+", default=[1400, 800])
    ap.add_argument("--prefix", default="report", help="screenshot names: PREFIX_WIDTH.png")
    a = ap.parse_args(argv)
    chromium = next((p for p in CHROMIUM if Path(p).exists()), None) or shutil.which("chromium")
    if chromium is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = launch(p, chromium)
        try:
            problems = [q for w in a.widths for q in check_page(b, a.html, w, a.out / f"{a.prefix}_{w}.png")]
        finally:
            b.close()
    for w in a.widths:
        print(f"wrote {a.out / f'{a.prefix}_{w}.png'}")
    for q in problems:
        print(q)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
