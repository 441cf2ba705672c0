"""benchmarks/perf.py runs end to end and reports a ratio for every case (speed itself is not tested)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_perf_script_reports_every_ratio(tmp_path):
    out, js = tmp_path / "perf.md", tmp_path / "perf.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--models", "efficientnet_lite0", "--batch", "2",
           "--size", "64", "--reps", "1", "--groups", "gradients,many", "--methods", "guided_backprop,kernel_shap",
           "--backends", "captum", "--many-methods", "kernel_shap", "--many-reps", "1", "--many-limit-units", "2",
           "--threads", "1", "--out", str(out), "--json", str(js)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(js.read_text())["rows"]
    assert {(r["method"], r["backend"]) for r in rows} == {("guided_backprop", "captum"), ("kernel_shap", "captum")}
    for r in rows:
        assert r["limit_s"] > 0 and math.isfinite(r["cnnlens_over_limit"])
    shap = next(r for r in rows if r["method"] == "kernel_shap")
    assert shap["forwards"] == 2 * 32
    assert len(shap["times"]["limit"]) == 1
    # the replayed forwards are the ones Captum made: 2 images x 32 samples, internal batches at 64 px
    assert sum(int(b) * n for b, n in shap["own_batches"].items()) == 2 * 32
    assert math.isfinite(shap["cnnlens_over_own"])
    assert "| efficientnet_lite0 | guided_backprop | captum |" in out.read_text()


def test_gpu_helper_scripts_run_on_cpu():
    """gpu_ab.py and gpu_trace.py run on scarce lent GPU time: check here, on the CPU, that they run and
    print what their README tables quote (an A/B row per ingredient; host and device lines per case)."""
    common = ["--device", "cpu", "--models", "efficientnet_lite0", "--batch", "2", "--size", "32", "--threads", "1"]
    ab = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_ab.py"), *common, "--rounds", "1"],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert ab.returncode == 0, ab.stderr[-2000:]
    for variant in ("direct", "+ params frozen", "+ guard", "+ post-processing", "adapter in guard", "explain"):
        assert ab.stdout.count(f"| {variant} |") == 2, (variant, ab.stdout)  # saliency and gradcam
    tr = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_trace.py"), *common, "--calls", "1"],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert tr.returncode == 0, tr.stderr[-2000:]
    assert tr.stdout.count("## efficientnet_lite0") == 2
    assert tr.stdout.count("explain - direct: wall") == 2
    # the ops cnnlens adds to a Captum call are listed: the output contract's normalisation among them
    assert "aten::aminmax" in tr.stdout
