"""The bad-input tables are counted: the end of a pytest run prints their size by area and in total."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_run_reports_the_bad_input_cases_by_area():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    m = re.search(r"bad-input cases: api (\d+), cli (\d+), datasets (\d+), engine (\d+), app (\d+); total (\d+)",
                  done.stdout)
    assert m, done.stdout[-2000:]
    *areas, total = map(int, m.groups())
    assert sum(areas) == total and all(n > 0 for n in areas)
    assert total >= 300
    # The count is the marked cases, one per parametrized case.
    marked = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "-m", "bad_input", "tests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert f"{total}/" in marked.stdout.splitlines()[-1] or f"{total} tests" in marked.stdout.splitlines()[-1]
