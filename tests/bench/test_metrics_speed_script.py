"""The metrics speed script runs end to end and prints one row per shared metric."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("quantus")
ROOT = Path(__file__).resolve().parents[2]


def test_metrics_speed_script_runs_on_a_tiny_model(capsys):
    spec = importlib.util.spec_from_file_location("metrics_speed", ROOT / "benchmarks" / "metrics_speed.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--model", "cnnlens.testing:tiny_cnn", "--images", "2", "--size", "32", "--reps", "1", "--steps", "4",
              "--patch", "8"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| pointing game", "| deletion", "| infidelity",
                                                 "| model randomisation"]
