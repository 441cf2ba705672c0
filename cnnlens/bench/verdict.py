"""How sure a study's answer to "which method is most faithful here?" is: intervals, tests and rankings.

Every function takes the study's per-image results (the ``results`` table as a DataFrame: model,
image, method, backend, metric, value) and works per model:

* :func:`intervals`: the mean of each (method, backend, metric) over images with a 95 % bootstrap
  interval (``scipy.stats.bootstrap``, percentile method, fixed seed). The percentile interval stays
  inside the range a mean can take (the "basic" interval of a hit rate of 0s and 1s can go below 0)
  and can be worked out by hand, which the tests do.
* :func:`paired_tests` and :func:`groups`: Wilcoxon signed-rank tests over the images two methods
  share (``scipy.stats.wilcoxon``), Holm-corrected across the comparisons made (:func:`holm`: a
  dozen lines, so statsmodels need not become a dependency), and the groups of methods the tests
  cannot tell apart. Fewer than :data:`MIN_TEST_IMAGES` shared images: no test.
* :func:`aggregate_ranks`: a LATEC-style aggregate (Klein et al., NeurIPS 2024) across metrics: each
  metric's method means are median-standardised (minus the median over methods, divided by their
  interquartile range) with the metric's direction (:data:`DIRECTIONS`) so that higher is better,
  averaged over metrics, and ranked (1 = best); the rank's 95 % interval comes from resampling the
  images (the same images for every method and metric, so the comparison stays paired).
* :func:`kendall_matrix`: Kendall's tau (``scipy.stats.kendalltau``) between the method rankings
  each pair of metrics gives, directions respected (+1: the metrics order the methods the same way).
* :func:`rank_stability`: with several models, each method's aggregate rank per model and its spread.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Metric -> +1 where a higher value is better, -1 where a lower one is. Only these metrics enter
#: the tests and rankings (agreement, timing and curve points are not quality scores of a method).
DIRECTIONS: dict[str, int] = {
    "deletion_zero.auc": -1,  # the score falls fast when the most salient pixels go
    "deletion_blur.auc": -1,
    "insertion_blur.auc": 1,  # the score rises fast when they come back
    "avg_drop": -1,  # Average Drop: the map alone keeps the score
    "increase_conf": 1,
    "road.morf": -1,  # ROAD: removing the most relevant pixels hurts
    "road.lerf": 1,  # ... and removing the least relevant does not
    "road.combined": 1,  # (lerf - morf) / 2
    "captum.infidelity": -1,
    "captum.sensitivity_max": -1,
    "pgc.confidence_change": 1,
    "pgc.drop_in_confidence": -1,
    "pgc.increase_in_confidence": 1,
    "pgc.arcc": 1,
    "pointing.hit": 1,
    "pointing.energy": 1,
}

#: Fewest paired images a Wilcoxon test is run on; fewer and the study says so instead of testing.
MIN_TEST_IMAGES = 10
#: Family-wise error rate of the Holm-corrected tests, and the intervals' confidence level.
ALPHA = 0.05
LEVEL = 0.95
SEED = 0
N_RESAMPLES = 2000


def direction(metric: str) -> int | None:
    """+1 (higher is better), -1 (lower is better) or None (not a quality score)."""
    if metric in DIRECTIONS:
        return DIRECTIONS[metric]
    try:
        from cnnlens.bench.quantus_metrics import direction as qdir
    except ImportError:  # the Quantus backend module is optional
        return None
    return qdir(metric)


def label(method: str, backend: str) -> str:
    return f"{method} [{backend}]"


# --------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------


def bootstrap_ci(values: Any, *, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                 level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of the mean of ``values`` (NaNs dropped).

    One value (or none) has no interval: (nan, nan). Equal values give the degenerate interval
    (v, v) (SciPy warns and returns NaN there, but every resample's mean is v).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed), vectorized=True)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def _batched_ci(values: list[np.ndarray], seed: int, n_resamples: int, level: float) -> np.ndarray:
    """:func:`bootstrap_ci` of many samples: those of one size in one ``scipy.stats.bootstrap`` call
    (it resamples every row with the same indices, so each row's interval equals its own call's)."""
    from scipy import stats

    out = np.full((len(values), 2), np.nan)
    by_size: dict[int, list[int]] = {}
    for i, x in enumerate(values):
        if x.size >= 2:
            by_size.setdefault(int(x.size), []).append(i)
    for rows in by_size.values():
        for start in range(0, len(rows), 2000):  # bound the (rows, resamples, n) temporary
            part = rows[start:start + 2000]
            data = np.stack([values[i] for i in part])
            res = stats.bootstrap((data,), np.mean, n_resamples=n_resamples, confidence_level=level,
                                  method="percentile", rng=np.random.default_rng(seed), vectorized=True, axis=-1)
            out[part, 0] = res.confidence_interval.low
            out[part, 1] = res.confidence_interval.high
    return out


def intervals(res: Any, *, seed: int = SEED, n_resamples: int = N_RESAMPLES, metrics: Any = None,
              level: float = LEVEL) -> Any:
    """Mean, 95 % bootstrap interval (:func:`bootstrap_ci`) and image count per (model, method,
    backend, metric). NaN values are dropped; one value has no interval.

    Args:
        res: Per-image results (model, image, method, backend, metric, value).
        metrics: Keep these metrics (default: every metric with a direction); ``"all"``: every metric.
    """
    import pandas as pd

    cols = ["model", "method", "backend", "metric", "mean", "ci_low", "ci_high", "n"]
    if isinstance(metrics, str) and metrics == "all":
        keep = np.ones(len(res), bool)
    elif metrics is not None:
        keep = res.metric.isin(list(metrics)).to_numpy()
    else:
        keep = res.metric.map(direction).notna().to_numpy()
    sub = res[keep & res.value.notna().to_numpy()]
    keys, samples = [], []
    for key, g in sub.groupby(["model", "method", "backend", "metric"], sort=True):
        keys.append(key)
        samples.append(g.value.to_numpy(dtype=np.float64))
    if not keys:
        return pd.DataFrame(columns=cols)
    ci = _batched_ci(samples, seed, n_resamples, level)
    out = pd.DataFrame(keys, columns=cols[:4])
    out["mean"] = [float(x.mean()) for x in samples]
    out["ci_low"], out["ci_high"] = ci[:, 0], ci[:, 1]
    out["n"] = [int(x.size) for x in samples]
    return out


# --------------------------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------------------------


def holm(p: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; NaNs, i.e. tests not made, stay NaN and do not count).

    The i-th smallest of m p-values is multiplied by (m - i), running maxima keep the order, and the
    result is capped at 1; a hypothesis is rejected at family-wise level alpha when its adjusted
    p-value is <= alpha.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def wilcoxon_p(a: Any, b: Any) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN pairs dropped) and the pairs used.

    Fewer than :data:`MIN_TEST_IMAGES` pairs: NaN (no test). All differences zero: 1.0 (the samples
    are identical, nothing tells them apart).
    """
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int(d.size)
    if n < MIN_TEST_IMAGES:
        return math.nan, n
    if not np.any(d != 0):
        return 1.0, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "exact p-value unavailable with ties": SciPy falls back to the normal one
        return float(stats.wilcoxon(d).pvalue), n


def paired_tests(wide: Any) -> Any:
    """Wilcoxon signed-rank tests of every pair of columns of ``wide`` (rows: images, columns:
    methods), Holm-corrected over the tests made. Columns: a, b, n, p, p_holm."""
    import pandas as pd

    cols = list(wide.columns)
    rows = []
    arr = wide.to_numpy(dtype=np.float64)
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            p, n = wilcoxon_p(arr[:, i], arr[:, j])
            rows.append((cols[i], cols[j], n, p))
    out = pd.DataFrame(rows, columns=["a", "b", "n", "p"])
    out["p_holm"] = holm(out.p.to_numpy()) if len(out) else []
    return out


def groups(order: list[str], tests: Any, alpha: float = ALPHA) -> list[list[str]]:
    """Split ``order`` (best first) into groups the tests cannot tell apart.

    Greedy: the best remaining method leads a group, which takes every remaining method whose
    Holm-adjusted p-value against the leader is above ``alpha`` or that was not tested (too few
    images); then the next best remaining leads the next group.
    """
    p: dict[frozenset[str], float] = {}
    for r in tests.itertuples(index=False):
        p[frozenset((r.a, r.b))] = r.p_holm
    left = list(order)
    out = []
    while left:
        lead = left[0]
        g = [lead] + [m for m in left[1:] if not p.get(frozenset((lead, m)), math.nan) <= alpha]
        out.append(g)
        left = [m for m in left if m not in g]
    return out


# --------------------------------------------------------------------------------------------
# Aggregate ranks
# --------------------------------------------------------------------------------------------


def _standardise(means: np.ndarray, sign: int) -> np.ndarray:
    """Median-standardise method means along the last axis (NaN-aware): sign * (m - median) / IQR.

    A metric whose methods' IQR is 0 (every method alike) is scaled by its mean absolute deviation
    from the median instead, and contributes 0 when that is 0 too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (a resample without this metric)
        med = np.nanmedian(means, axis=-1, keepdims=True)
        q75, q25 = np.nanpercentile(means, [75, 25], axis=-1, keepdims=True)
        scale = q75 - q25
        mad = np.nanmean(np.abs(means - med), axis=-1, keepdims=True)
    scale = np.where(scale > 0, scale, mad)
    z = np.where(scale > 0, (means - med) / np.where(scale > 0, scale, 1.0), 0.0)
    return sign * np.where(np.isnan(means), np.nan, z)


def _ranks(score: np.ndarray) -> np.ndarray:
    """Rank 1 = highest score along the last axis (ties share the mean rank; NaN stays NaN)."""
    from scipy import stats

    return stats.rankdata(-score, axis=-1, nan_policy="omit")


@dataclass
class Cube:
    """One model's quality scores: per metric, an (images x labels) array (NaN where not measured)."""

    images: list[str]
    labels: list[str]
    metrics: list[str]
    values: np.ndarray  # (metrics, images, labels)
    signs: np.ndarray  # (metrics,)

    def wide(self, metric: str) -> Any:
        import pandas as pd

        return pd.DataFrame(self.values[self.metrics.index(metric)], index=self.images, columns=self.labels)


def cube(res: Any, model: str, metrics: Any = None) -> Cube:
    """Arrange ``model``'s quality scores (every metric with a direction, or ``metrics``) as a :class:`Cube`."""
    sub = res[(res.model == model)]
    keep = sub.metric.isin(list(metrics)) if metrics is not None else sub.metric.map(direction).notna()
    sub = sub[keep].copy()
    sub["label"] = [label(m, b) for m, b in zip(sub.method, sub.backend, strict=True)]
    names = sorted(sub.metric.unique())
    images = sorted(sub.image.unique())
    labels = sorted(sub.label.unique())
    vals = np.full((len(names), len(images), len(labels)), np.nan)
    if len(sub):
        mi = sub.metric.map({m: i for i, m in enumerate(names)}).to_numpy()
        ii = sub.image.map({m: i for i, m in enumerate(images)}).to_numpy()
        li = sub.label.map({m: i for i, m in enumerate(labels)}).to_numpy()
        vals[mi, ii, li] = sub.value.to_numpy(dtype=np.float64)
    signs = np.array([direction(m) for m in names], dtype=np.float64)
    return Cube(images, labels, names, vals, signs)


def _aggregate(means: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Aggregate score per label from (..., metrics, labels) means over images: each metric
    median-standardised with its sign, then the mean over metrics."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        z = np.stack([_standardise(means[..., k, :], int(signs[k])) for k in range(means.shape[-2])], axis=-2)
        return np.nanmean(z, axis=-2)


def _means(values: np.ndarray) -> np.ndarray:
    """NaN-aware mean over the images axis of (metrics, images, labels) values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def aggregate_ranks(c: Cube, *, seed: int = SEED, n_resamples: int = 1000, level: float = LEVEL) -> Any:
    """The aggregate score and rank of each label with a bootstrap interval of the rank over images.

    Columns: label, score, rank, rank_low, rank_high, metrics (how many metrics the label has),
    images (on how many images it has a score), metric_rank_mean and metric_rank_sd (its rank under each metric alone: a large sd means the
    metrics disagree about it), sorted best first.
    """
    import pandas as pd

    if not c.labels or not c.metrics:
        return pd.DataFrame(columns=["label", "score", "rank", "rank_low", "rank_high", "metrics", "images",
                                     "metric_rank_mean", "metric_rank_sd"])
    means = _means(c.values)  # (metrics, labels)
    score = _aggregate(means, c.signs)
    rank = _ranks(score)
    rng = np.random.default_rng(seed)
    n_img = len(c.images)
    lo = hi = np.full(len(c.labels), np.nan)
    if n_img >= 2:
        idx = rng.integers(0, n_img, size=(n_resamples, n_img))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # per metric, the means over each resample's images: (resamples, metrics, labels)
            bmeans = np.stack([np.nanmean(c.values[k][idx], axis=1) for k in range(len(c.metrics))], axis=1)
        boot = _aggregate(bmeans, c.signs)  # (resamples, labels)
        branks = _ranks(boot)
        q = (1 - level) / 2 * 100
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanpercentile(branks, [q, 100 - q], axis=0)
    per_metric = np.stack([_ranks(c.signs[k] * means[k]) for k in range(len(c.metrics))])
    out = pd.DataFrame({
        "label": c.labels, "score": score, "rank": rank, "rank_low": lo, "rank_high": hi,
        "metrics": np.isfinite(means).sum(0), "images": np.isfinite(c.values).any(0).sum(0),
        "metric_rank_mean": np.nanmean(per_metric, 0),
        "metric_rank_sd": np.nanstd(per_metric, 0),
    })
    return out.sort_values(["rank", "label"]).reset_index(drop=True)


def per_image_aggregate(c: Cube) -> Any:
    """Per image, each label's median-standardised score averaged over the metrics (the metric's
    median and IQR over the labels' means, as in :func:`aggregate_ranks`): what the aggregate tests compare."""
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(c.values, axis=1)
        z = []
        for k in range(len(c.metrics)):
            m = means[k]
            med = np.nanmedian(m)
            q75, q25 = np.nanpercentile(m, [75, 25])
            scale = q75 - q25
            if not scale > 0:
                scale = np.nanmean(np.abs(m - med))
            z.append(c.signs[k] * (c.values[k] - med) / scale if scale > 0 else np.where(np.isnan(c.values[k]),
                                                                                        np.nan, 0.0))
        agg = np.nanmean(np.stack(z), axis=0) if z else np.full((len(c.images), len(c.labels)), np.nan)
    return pd.DataFrame(agg, index=c.images, columns=c.labels)


def kendall_matrix(c: Cube) -> Any:
    """Kendall's tau between every two metrics' rankings of the labels (direction-signed means;
    NaN where fewer than 3 labels have both metrics or a ranking is constant)."""
    import pandas as pd
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = c.signs[:, None] * np.nanmean(c.values, axis=1)
    k = len(c.metrics)
    mat = np.full((k, k), np.nan)
    n = np.zeros((k, k), int)
    for i in range(k):
        for j in range(k):
            ok = np.isfinite(means[i]) & np.isfinite(means[j])
            n[i, j] = int(ok.sum())
            if ok.sum() < 3 or np.ptp(means[i][ok]) == 0 or np.ptp(means[j][ok]) == 0:
                continue
            mat[i, j] = stats.kendalltau(means[i][ok], means[j][ok]).statistic
    out = pd.DataFrame(mat, index=c.metrics, columns=c.metrics)
    out.attrs["labels"] = n  # how many labels each tau ranks
    return out


def rank_stability(ranks: dict[str, Any]) -> Any:
    """Per label, its aggregate rank under each model (``ranks``: model -> :func:`aggregate_ranks`
    table), the range of those ranks and the models it was ranked on; sorted by mean rank."""
    import pandas as pd

    if not ranks:
        return pd.DataFrame(columns=["label", "models", "rank_min", "rank_max", "rank_range"])
    wide = pd.concat({m: t.set_index("label")["rank"] for m, t in ranks.items()}, axis=1)
    out = wide.copy()
    out["models"] = wide.notna().sum(axis=1)
    out["rank_min"] = wide.min(axis=1)
    out["rank_max"] = wide.max(axis=1)
    out["rank_range"] = out.rank_max - out.rank_min
    out["mean_rank"] = wide.mean(axis=1)
    return out.sort_values(["mean_rank"]).drop(columns="mean_rank").reset_index(names="label")


# --------------------------------------------------------------------------------------------
# The verdict of a study
# --------------------------------------------------------------------------------------------


@dataclass
class ModelVerdict:
    model: str
    images: int  # images with at least one quality score
    ranks: Any  # aggregate_ranks
    tests: Any  # paired_tests on the per-image aggregate
    groups: list[list[str]]  # indistinguishable groups, best first ([] without tests)
    tested: bool  # False: too few images for a test
    kendall: Any  # kendall_matrix
    leaders: Any  # per metric: best label, its mean and interval, the group tied with it, images


@dataclass
class Verdict:
    models: list[ModelVerdict] = field(default_factory=list)
    intervals: Any = None
    stability: Any = None


def _leaders(c: Cube, iv: Any, model: str) -> Any:
    """Per metric: the best label among those scored on the metric's every image, its interval, how
    many of those labels the tests (best vs each, Holm over those comparisons) cannot tell from it."""
    import pandas as pd

    rows = []
    ivm = iv[iv.model == model].copy()
    ivm["label"] = [label(m, b) for m, b in zip(ivm.method, ivm.backend, strict=True)]
    for k, metric in enumerate(c.metrics):
        wide = c.wide(metric).dropna(axis=0, how="all")
        counts = wide.notna().sum()
        # Claims compare like with like: a method capped to fewer images (max_images) is left out.
        wide = wide.loc[:, counts[counts == counts.max()].index] if len(counts) else wide
        if wide.shape[1] == 0 or counts.max() == 0:
            continue
        means = wide.mean() * c.signs[k]
        order = list(means.sort_values(ascending=False, kind="stable").index)
        best, rest = order[0], order[1:]
        ps = [wilcoxon_p(wide[best].to_numpy(), wide[m].to_numpy())[0] for m in rest]
        adj = holm(ps) if ps else np.array([])
        tested = bool(np.isfinite(adj).any())
        r = ivm[(ivm.label == best) & (ivm.metric == metric)]
        rows.append({
            "metric": metric, "better": "higher" if c.signs[k] > 0 else "lower", "best": best,
            "mean": float(r["mean"].iloc[0]) if len(r) else math.nan,
            "ci_low": float(r.ci_low.iloc[0]) if len(r) else math.nan,
            "ci_high": float(r.ci_high.iloc[0]) if len(r) else math.nan,
            "images": int(counts.max()),
            "tied_with_best": sum(1 for p in adj if not p <= ALPHA) if tested else math.nan,
            "compared": len(rest),
        })
    return pd.DataFrame(rows)


def verdict(res: Any, *, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> Verdict:
    """The verdict of a study's per-image results: intervals, aggregate ranks, tests, groups,
    metric disagreement and rank stability (see the module docstring)."""
    iv = intervals(res, seed=seed, n_resamples=n_resamples)
    out = Verdict(intervals=iv)
    ranks = {}
    for model in sorted(iv.model.unique()):
        c = cube(res, model)
        rk = aggregate_ranks(c, seed=seed)
        ranks[model] = rk
        agg = per_image_aggregate(c)
        tests = paired_tests(agg)
        tested = bool(tests.p.notna().any())
        order = list(rk.label)
        out.models.append(ModelVerdict(
            model=model, images=len(c.images), ranks=rk, tests=tests,
            groups=groups(order, tests) if tested else [], tested=tested,
            kendall=kendall_matrix(c), leaders=_leaders(c, iv, model)))
    out.stability = rank_stability(ranks) if len(ranks) > 1 else None
    return out


def disagreeing_pairs(kendall: Any, n: int = 3) -> list[tuple[str, str, float, int]]:
    """The ``n`` metric pairs whose rankings agree least (lowest Kendall's tau), lowest first, with
    the number of (method, backend) pairs each tau ranks (3 allow only -1, -1/3, 1/3 and 1)."""
    k = kendall.to_numpy()
    counts = kendall.attrs.get("labels", np.zeros(k.shape, int))
    names = list(kendall.columns)
    pairs = [(names[i], names[j], float(k[i, j]), int(counts[i, j])) for i in range(len(names))
             for j in range(i + 1, len(names)) if np.isfinite(k[i, j])]
    if any(p[3] >= 4 for p in pairs):  # a tau over 3 pairs is too coarse to headline when finer ones exist
        pairs = [p for p in pairs if p[3] >= 4]
    return sorted(pairs, key=lambda t: (t[2], -t[3]))[:n]


def tables(vd: Verdict) -> dict[str, Any]:
    """The verdict as flat tables (every model, every row), named as the report writes them."""
    import pandas as pd

    def cat(frames: dict[str, Any]) -> Any:
        frames = {m: f for m, f in frames.items() if f is not None and len(f)}
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, names=["model", "_"]).reset_index(level="_", drop=True).reset_index()

    kendall = {m.model: m.kendall.rename_axis("metric").reset_index() for m in vd.models}
    tests = {}
    for m in vd.models:
        t = m.tests.copy()
        group = {lab: k + 1 for k, g in enumerate(m.groups) for lab in g}
        t["same_group"] = [group.get(a) == group.get(b) if group else None for a, b in zip(t.a, t.b, strict=True)]
        tests[m.model] = t
    ranks = {}
    for m in vd.models:
        r = m.ranks.copy()
        group = {lab: k + 1 for k, g in enumerate(m.groups) for lab in g}
        r["group"] = [group.get(lab) for lab in r.label]
        ranks[m.model] = r
    return {
        "verdict_ranks.csv": cat(ranks),
        "verdict_tests.csv": cat(tests),
        "verdict_leaders.csv": cat({m.model: m.leaders for m in vd.models}),
        "verdict_kendall.csv": cat(kendall),
        "verdict_intervals.csv": vd.intervals if vd.intervals is not None else pd.DataFrame(),
    }
