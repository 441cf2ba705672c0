"""Shared by the browser tests: find Playwright and Debian's chromium, or skip (fail in CI)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    for p in CHROMIUM_CANDIDATES:
        if os.path.exists(p):
            return p
    return shutil.which("chromium")


def require_browser_stack(packages: tuple[str, ...] = ("gradio", "playwright")) -> str:
    """Path of the chromium binary; skips when the stack is missing, unless CI requires it."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    chromium = chromium_path()
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if missing:
        reason = "browser tests need " + ", ".join(missing)
        if os.environ.get("CNNLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (CNNLENS_REQUIRE_BROWSER=1: CI must run them)")
        pytest.skip(reason)
    assert chromium is not None
    return chromium
