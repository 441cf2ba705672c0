"""The lint rules in pyproject.toml hold on the package, the tests and the benchmark scripts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is part of the test extra: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "cnnlens", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_install_form_everywhere():
    """cnnlens is installed from its checkout: every install line says ``pip install -e '.[extra]'``
    (``pip install 'cnnlens[...]'`` fails, cnnlens is not on PyPI; a bare toolkit skips the version cap)."""
    import re

    bad = re.compile(r"pip install '?cnnlens\[|pip install '?(torchcam|zennit|ray|gradio)\b")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in [ROOT / "README.md", *sorted((ROOT / "cnnlens").rglob("*.py")), *sorted((ROOT / "docs").rglob("*.md"))]
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bad.search(line)]
    assert not hits, "\n".join(hits)


def test_the_readme_states_the_shard_default_the_code_has():
    """The README's ``[images] shard`` default is the suite schema's (it once said 64 where the code had 4)."""
    import re

    from cnnlens.bench.suite import ImagesSpec

    default = ImagesSpec.__pydantic_fields__["batch"].default
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = set(re.findall(r"`\[images\] shard`, default (\d+)", readme)) | set(
        re.findall(r"shard = \d+\s+# images read and explained at a time \(default (\d+)", readme))
    assert said == {str(default)}, said
