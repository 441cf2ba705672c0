"""The verdict's statistics, each against a case worked out by hand, and the report section that words them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cnnlens.bench import verdict as V


def _rows(model: str, metric: str, table: dict[str, list[float]]) -> list[tuple]:
    """Results rows from {label 'method [backend]': per-image values}."""
    out = []
    for lab, vals in table.items():
        method, backend = lab[:-1].split(" [")
        out += [(model, f"img{i:02d}", method, backend, metric, v) for i, v in enumerate(vals)]
    return out


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model", "image", "method", "backend", "metric", "value"])


def test_bootstrap_interval_of_a_hand_computed_sample():
    """Resample means of [0, 0, 0, 1] take 0 with probability (3/4)^4 = 0.316 and 0.75 or more with
    probability 4 (1/4)^3 (3/4) + (1/4)^4 = 0.051: the 2.5 % and 97.5 % percentiles are 0 and 0.75.
    (SciPy's "basic" interval gives -0.25 to 0.5 here, below any mean the sample can have.)"""
    assert V.bootstrap_ci([0, 0, 0, 1]) == (0.0, 0.75)
    assert V.bootstrap_ci([0, 1]) == (0.0, 1.0)  # means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert V.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert all(math.isnan(v) for v in V.bootstrap_ci([1.0]))
    assert V.bootstrap_ci([0, 0, 0, 1, math.nan]) == (0.0, 0.75)  # NaN is dropped, not a zero


def test_intervals_are_the_same_whether_batched_or_one_by_one():
    rng = np.random.default_rng(4)
    rows = []
    for k in range(6):
        vals = rng.normal(size=7 if k % 2 else 12)
        rows += [("m", f"i{i}", f"meth{k}", "captum", "deletion_blur.auc", v) for i, v in enumerate(vals)]
    iv = V.intervals(_frame(rows))
    assert len(iv) == 6
    for r in iv.itertuples(index=False):
        vals = [v for (_m, _i, me, _b, _k, v) in rows if me == r.method]
        assert (r.ci_low, r.ci_high) == pytest.approx(V.bootstrap_ci(vals), rel=1e-12)
        assert r.n == len(vals) and r.mean == pytest.approx(np.mean(vals))
        assert r.ci_low < r.mean < r.ci_high


def test_holm_by_hand():
    # sorted: 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(V.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(V.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    out = V.holm([0.01, math.nan, 0.02])  # a test not made does not count in m
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert math.isnan(out[1])


def test_wilcoxon_exact_p_by_hand_and_too_few_images():
    """Ten positive, distinct differences: W- = 0, whose exact two-sided p-value is 2 / 2^10."""
    a = np.arange(10, dtype=float) + 1.5
    b = np.zeros(10)
    p, n = V.wilcoxon_p(a + np.arange(10) * 0.1, b)
    assert n == 10 and p == pytest.approx(2 / 1024)
    p, n = V.wilcoxon_p(a[:9], b[:9])  # nine images: no test
    assert n == 9 and math.isnan(p)
    assert V.wilcoxon_p(a, a) == (1.0, 10)  # identical samples cannot be told apart


def test_groups_from_tests():
    tests = pd.DataFrame([("A", "B", 12, 0.5, 0.5), ("A", "C", 12, 0.001, 0.003), ("B", "C", 12, 0.2, 0.4)],
                         columns=["a", "b", "n", "p", "p_holm"])
    assert V.groups(["A", "B", "C"], tests) == [["A", "B"], ["C"]]
    tests.loc[1, "p_holm"] = math.nan  # untested: cannot be told apart
    assert V.groups(["A", "B", "C"], tests) == [["A", "B", "C"]]


def _hand_case() -> pd.DataFrame:
    """Two images, three methods. insertion_blur.auc (higher better) means 1, 2, 3; deletion_blur.auc
    (lower better) means 30, 10, 25."""
    rows = _rows("m", "insertion_blur.auc", {"a [x]": [0.0, 2.0], "b [x]": [2.0, 2.0], "c [x]": [3.0, 3.0]})
    rows += _rows("m", "deletion_blur.auc", {"a [x]": [30.0, 30.0], "b [x]": [5.0, 15.0], "c [x]": [25.0, 25.0]})
    return _frame(rows)


def test_aggregate_rank_by_hand():
    """insertion: median 2, IQR 2.5 - 1.5 = 1 -> z = -1, 0, 1. deletion: median 25, IQR 27.5 - 17.5 = 10,
    sign -1 -> z = -0.5, 1.5, 0. Aggregate: -0.75, 0.75, 0.5 -> ranks b 1, c 2, a 3."""
    c = V.cube(_hand_case(), "m")
    rk = V.aggregate_ranks(c).set_index("label")
    assert rk.loc[["a [x]", "b [x]", "c [x]"], "score"].tolist() == pytest.approx([-0.75, 0.75, 0.5])
    assert rk.loc[["b [x]", "c [x]", "a [x]"], "rank"].tolist() == [1, 2, 3]
    # per-metric ranks: insertion c, b, a; deletion b, c, a
    assert rk.loc["b [x]", "metric_rank_mean"] == pytest.approx(1.5)
    assert rk.loc["a [x]", "metric_rank_sd"] == 0
    assert (rk.rank_low <= rk["rank"]).all() and (rk["rank"] <= rk.rank_high).all()
    assert rk.loc["a [x]", "rank_high"] == 3


def test_kendall_between_metrics_by_hand():
    """Oriented means: insertion 1, 2, 3; deletion -30, -10, -25. Pairs (a, b) and (a, c) concordant,
    (b, c) discordant: tau = (2 - 1) / 3."""
    k = V.kendall_matrix(V.cube(_hand_case(), "m"))
    assert k.loc["insertion_blur.auc", "deletion_blur.auc"] == pytest.approx(1 / 3)
    assert k.loc["deletion_blur.auc", "deletion_blur.auc"] == pytest.approx(1.0)
    assert V.disagreeing_pairs(k) == [("deletion_blur.auc", "insertion_blur.auc", pytest.approx(1 / 3), 3)]


def test_rank_stability_across_models():
    r1 = pd.DataFrame({"label": ["a", "b", "c"], "rank": [1.0, 2.0, 3.0]})
    r2 = pd.DataFrame({"label": ["a", "b", "c"], "rank": [3.0, 2.0, 1.0]})
    st = V.rank_stability({"m1": r1, "m2": r2}).set_index("label")
    assert st.loc["a", "rank_range"] == 2 and st.loc["b", "rank_range"] == 0
    assert st.loc["a", "models"] == 2


def test_verdict_tests_and_groups_on_twelve_images():
    """Method 'good' beats 'bad' on every one of 12 images on both metrics; 'twin' equals 'good' up to
    noise. Groups: {good, twin} then {bad}."""
    rng = np.random.default_rng(0)
    good = rng.uniform(0.6, 0.9, 12)
    twin = good + rng.normal(0, 0.01, 12)
    bad = good - 0.5
    rows = _rows("m", "insertion_blur.auc", {"good [x]": good, "twin [y]": twin, "bad [x]": bad})
    rows += _rows("m", "pointing.energy", {"good [x]": good, "twin [y]": twin, "bad [x]": bad})
    vd = V.verdict(_frame(rows))
    mv = vd.models[0]
    assert mv.tested and mv.images == 12
    assert [sorted(g) for g in mv.groups] == [["good [x]", "twin [y]"], ["bad [x]"]]
    assert mv.ranks.label.iloc[-1] == "bad [x]"
    lead = mv.leaders.set_index("metric")
    assert lead.loc["insertion_blur.auc", "tied_with_best"] == 1 and lead.loc["insertion_blur.auc", "images"] == 12


def test_too_few_images_are_said_not_tested():
    rows = _rows("m", "insertion_blur.auc", {"a [x]": [0.1, 0.2, 0.3], "b [x]": [0.5, 0.6, 0.7]})
    mv = V.verdict(_frame(rows)).models[0]
    assert not mv.tested and mv.groups == []
    assert math.isnan(mv.leaders.tied_with_best.iloc[0])


def _study(tmp_path, n_images: int):
    """A study file holding only quality scores: 'good' beats 'bad' by 0.5 on every image."""
    from cnnlens.bench.store import Store

    rng = np.random.default_rng(1)
    good = rng.uniform(0.5, 0.9, n_images)
    rows = []
    for metric in ("insertion_blur.auc", "pointing.energy"):
        for lab, vals in {"good [captum]": good, "bad [captum]": good - 0.5,
                          "random_smooth [baseline]": good - 0.3}.items():
            method, backend = lab[:-1].split(" [")
            rows += [("tiny", f"img{i:02d}", method, backend, metric, float(v), 1) for i, v in enumerate(vals)]
    db = tmp_path / "v.sqlite"
    with Store(db, "v") as s:
        s.set_meta({"suite_name": "v"})
        s.write_cell("c1", "faithfulness", {"model": "tiny"}, "ok", rows=rows)
    return db


def test_summary_has_bootstrap_intervals(tmp_path):
    import cnnlens.bench as bench

    db = _study(tmp_path, 4)
    s = bench.summary(db).set_index(["method", "metric"])
    r = s.loc[("good", "insertion_blur.auc")]
    vals = bench.read_results(db).query("method == 'good' and metric == 'insertion_blur.auc'").value
    assert (r.ci_low, r.ci_high) == pytest.approx(V.bootstrap_ci(vals.to_numpy()), rel=1e-12)
    assert r.ci_low < r["mean"] < r.ci_high


@pytest.mark.parametrize("n_images", [12, 4])
def test_the_report_leads_with_the_verdict(tmp_path, n_images):
    import cnnlens.bench as bench

    md, page = bench.report(_study(tmp_path, n_images), tmp_path / "r")
    text = md.read_text()
    assert text.split("\n## ")[1].startswith("Verdict")
    verdict = text.split("## Verdict")[1].split("\n## ")[0]
    assert f"best by aggregate rank across 2 metrics on {n_images} images: good [captum] (rank 1" in verdict
    assert "figures/verdict_ranks_tiny.png" in verdict
    assert (md.parent / "figures" / "verdict_ranks_tiny.png").stat().st_size > 5000
    if n_images >= V.MIN_TEST_IMAGES:
        assert "Indistinguishable from the best" in verdict and "(the best stands alone); 3 groups in all" in verdict
    else:
        assert f"Too few images for a test: the methods share scores on at most {n_images} images" in verdict
        assert "too few images" in verdict  # per-metric table
    assert "id='Verdict'" in page.read_text().split("id='Summary'")[0]
    ranks = pd.read_csv(md.parent / "verdict_ranks.csv")
    assert ranks.label.tolist()[0] == "good [captum]" and len(ranks) == 3
    assert {"rank_low", "rank_high", "group"} <= set(ranks.columns)
    iv = pd.read_csv(md.parent / "verdict_intervals.csv")
    assert len(iv) == 6 and iv.ci_low.notna().all()
