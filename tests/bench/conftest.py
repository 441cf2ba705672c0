from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import MINI_SUITE


@pytest.fixture
def mini_suite(tmp_path: Path) -> Path:
    p = tmp_path / "mini.toml"
    p.write_text(MINI_SUITE)
    return p
