"""The study engine end to end: the smoke suite, resume, the store's guarantees and the report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from bench_helpers import assert_no_duplicates, deterministic_table

import cnnlens.bench as bench
from cnnlens import registry
from cnnlens.bench.engine import plan
from cnnlens.bench.reporting import SECTIONS
from cnnlens.bench.suite import BASELINES, load_suite
from cnnlens.errors import CnnlensError, OutputExistsError

# --------------------------------------------------------------------------------------------
# The smoke suite, once per module
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    return bench.run("smoke", out=out, progress=False)


def test_smoke_runs_every_registry_pair(smoke_db):
    cells = bench.read_table(smoke_db, "cells")
    suite = load_suite("smoke")
    n_images = len(bench.read_table(smoke_db, "images"))
    planned = plan(suite, "tiny_cnn", [f"x{i}" for i in range(n_images)])
    assert len(cells) == len(planned)  # the study is complete
    assert set(cells.status) <= {"done", "error", "skipped"}
    res = bench.read_results(smoke_db)
    ran = set(zip(res.method, res.backend, strict=True))
    specs = cells.spec.map(json.loads)
    cell_pair = list(zip(specs.map(lambda d: d.get("method")), specs.map(lambda d: d.get("backend")), strict=True))
    for pair in registry.REGISTRY:
        if pair not in ran:  # a failing pair must say why, as a recorded error
            mine = cells[pd.Series([p == pair for p in cell_pair], index=cells.index) & (cells.kind == "explain")]
            assert len(mine) and (mine.status == "error").all() and mine.error.str.len().gt(0).all(), pair
    explain = cells[cells.kind == "explain"]
    assert (explain.status == "done").mean() > 0.8, explain[explain.status != "done"][["spec", "error"]]
    for b in BASELINES:
        assert (b, "baseline") in ran


def test_smoke_has_every_measure(smoke_db):
    res = bench.read_results(smoke_db)
    metrics = set(res.metric)
    for needed in ("agree.pearson", "agree.spearman", "agree.ssim", "agree.iou_top5", "agree.iou_top10",
                   "agree.raw_maxabs", "cross.spearman", "deletion_zero.auc", "deletion_blur.auc",
                   "insertion_blur.auc", "avg_drop", "increase_conf", "road.morf", "road.lerf", "road.combined",
                   "pointing.hit", "pointing.energy", "sanity.spearman@01", "sanity.ssim@01",
                   "speed.latency_median@bs2", "speed.latency_iqr@bs2", "speed.throughput@bs2",
                   "speed.peak_mem_mb@bs2", "speed.ratio_to_limit@bs2", "explain.seconds"):
        assert needed in metrics, needed
    # identical toolkits agree with themselves: guided backprop from pytorch-grad-cam and Captum
    # run the same rule on this all-nn.ReLU model
    gb = res[(res.method == "guided_backprop") & (res.backend == "captum|pytorch-grad-cam")
             & (res.metric == "agree.spearman")]
    assert len(gb) and (gb.value > 0.99).all()
    # probabilities and AUCs are in range
    auc = res[res.metric.str.endswith(".auc")].value
    assert auc.between(0, 1).all()
    # every image has a target and a display copy
    imgs = bench.read_table(smoke_db, "images")
    assert imgs.png.map(len).gt(100).all()


def test_export_csv(smoke_db, tmp_path):
    path = bench.export_csv(smoke_db, tmp_path / "r.csv")
    df = pd.read_csv(path)
    assert len(df) == len(bench.read_results(smoke_db))
    assert {"model", "image", "method", "backend", "metric", "value", "deterministic"} <= set(df.columns)


def test_report_has_every_section(smoke_db, tmp_path):
    md, page = bench.report(smoke_db, tmp_path / "rep")
    assert md.name == "report.md" and page.name == "report.html"
    text, html = md.read_text(), page.read_text()
    for title in SECTIONS:
        assert f"## {title}" in text, title
        assert f">{title}</h2>" in html, title
    for fig in ("agreement.png", "curves_captum.png", "sanity_captum.png", "speed_bs2.png", "grid_000_chelsea.jpg",
                "localization.png"):
        assert f"figures/{fig}" in text
        assert (md.parent / "figures" / fig).stat().st_size > 1000
    # self-contained: every image is embedded, none is linked
    srcs = re.findall(r"<img[^>]*src='([^']*)'", html)
    assert len(srcs) >= 6 and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pytorch-grad-cam's `DropInConfidence` does not divide" in text
    assert "deletion_zero" in text and "deletion_blur" in text and "insertion_blur" in text


# --------------------------------------------------------------------------------------------
# Resume and the store
# --------------------------------------------------------------------------------------------


def test_resume_after_k_cells_gives_the_same_table(mini_suite, tmp_path):
    full = bench.run(mini_suite, out=tmp_path / "full", progress=False)
    n_cells = len(bench.read_table(full, "cells"))
    part = tmp_path / "part"
    db = bench.run(mini_suite, out=part, progress=False, max_cells=7)
    assert len(bench.read_table(db, "cells")) == 7
    db = bench.run(mini_suite, out=part, progress=False, max_cells=5)
    assert len(bench.read_table(db, "cells")) == 12
    db = bench.run(mini_suite, out=part, progress=False)
    cells = bench.read_table(db, "cells")
    assert len(cells) == n_cells
    pd.testing.assert_frame_equal(deterministic_table(db), deterministic_table(full))
    assert_no_duplicates(db)
    # a finished study is a no-op to rerun, and still the same
    before = bench.read_results(db)
    bench.run(mini_suite, out=part, progress=False)
    pd.testing.assert_frame_equal(bench.read_results(db), before)


@pytest.mark.bad_input("engine")
def test_other_suite_in_same_out_is_refused(mini_suite, tmp_path):
    out = tmp_path / "o"
    bench.run(mini_suite, out=out, progress=False, max_cells=1)
    mini_suite.write_text(mini_suite.read_text().replace("seed = 3", "seed = 4"))
    with pytest.raises(OutputExistsError, match=r"changed: seed\).*overwrite"):
        bench.run(mini_suite, out=out, progress=False, max_cells=1)
    db = bench.run(mini_suite, out=out, progress=False, max_cells=1, overwrite=True)
    assert len(bench.read_table(db, "cells")) == 1


@pytest.mark.bad_input("engine")
def test_read_helpers_refuse_non_studies(tmp_path):
    with pytest.raises(CnnlensError, match="does not exist"):
        bench.read_results(tmp_path / "nope.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    with pytest.raises(CnnlensError):
        bench.read_results(junk)


def test_cell_keys_are_deterministic(mini_suite):
    s = load_suite(mini_suite)
    a = [c.key for c in plan(s, "tiny", ["a", "b"])]
    b = [c.key for c in plan(load_suite(mini_suite), "tiny", ["a", "b"])]
    assert a == b and len(set(a)) == len(a)
