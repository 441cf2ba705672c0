"""Shared fixtures: tiny models for breadth, the embedded model for truth. Nothing downloads."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import torch

os.environ.setdefault("CNNLENS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# No plain progress lines in tests (their own test turns them on): on a slow machine a progress line
# printed before an error would break the one-line-error contract the CLI tests check.
os.environ.setdefault("CNNLENS_PROGRESS_EVERY", "3600")


@pytest.fixture(scope="session")
def embedded():
    import cnnlens

    return cnnlens.load_model()


@pytest.fixture(scope="session")
def demo(embedded):
    import cnnlens

    return cnnlens.demo_images(embedded).tensor


@pytest.fixture(scope="session")
def cat(embedded):
    import cnnlens

    return cnnlens.demo_images(embedded, names=["chelsea"]).tensor


@pytest.fixture()
def tiny():
    from cnnlens.testing import tiny_cnn

    return tiny_cnn()


@pytest.fixture()
def tiny_x():
    from cnnlens.testing import tiny_input

    return tiny_input(n=2, size=32)


@pytest.fixture(scope="session")
def resnet18_random():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


# --------------------------------------------------------------------------------------------
# Bad-input tables, counted: every case is a test marked ``@pytest.mark.bad_input("AREA")``
# --------------------------------------------------------------------------------------------

#: The areas a bad-input case belongs to; the end of a run prints how many cases each has.
BAD_INPUT_AREAS = ("api", "cli", "datasets", "engine", "app")
_BAD_INPUT = pytest.StashKey[Counter]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Count the collected bad-input cases by area; an unknown or missing area stops the run."""
    counts: Counter = Counter()
    for item in session.items:
        mark = item.get_closest_marker("bad_input")
        if mark is None:
            continue
        area = mark.args[0] if mark.args else mark.kwargs.get("area")
        if area not in BAD_INPUT_AREAS:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.bad_input needs one area of "
                                    f"{', '.join(BAD_INPUT_AREAS)}; got {area!r}")
        counts[area] += 1
    session.config.stash[_BAD_INPUT] = counts


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the number of collected bad-input cases by area and in total."""
    counts = config.stash.get(_BAD_INPUT, None)
    if not counts:
        return
    terminalreporter.write_sep("-", "bad-input cases collected")
    parts = [f"{area} {counts[area]}" for area in BAD_INPUT_AREAS]
    terminalreporter.write_line(f"bad-input cases: {', '.join(parts)}; total {sum(counts.values())}")
