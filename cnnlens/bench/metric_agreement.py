"""When two libraries implement one metric, do they agree? The study's shared metrics, compared.

For each metric that a study measures twice (cnnlens' or a toolkit's own, and Quantus'), per model:
the rank correlation of the (method, backend) pairs' mean scores (Spearman and Kendall: do the two
libraries order the methods alike?), and per image the Spearman correlation and the mean difference
of the two values. :data:`SHARED` says, for each, where the definitions differ, as read in the
libraries' sources (cnnlens/bench/metrics.py, Captum's ``captum.metrics``, Quantus 0.6.0's
``quantus.metrics``), since two libraries that disagree are often computing different things.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shared:
    name: str
    ours: str  # the metric name as stored by cnnlens (or a toolkit through cnnlens); "sanity.last": the last step
    theirs: str  # the Quantus metric as stored
    differ: str  # where the definitions differ


SHARED = (
    Shared("pointing game", "pointing.hit", "quantus.PointingGame",
           "cnnlens scores the first maximum pixel (row-major) and counts an all-zero map as a miss; Quantus counts "
           "a hit when any pixel tied at the maximum lies in the mask, so a flat map hits whenever the mask is "
           "non-empty; cnnlens scores boxes, Quantus the same boxes as a mask."),
    Shared("deletion / pixel flipping", "deletion_zero.auc", "quantus.PixelFlipping",
           "cnnlens deletes pixels in saliency order (ties broken by a fixed random permutation) to 0 in the model's "
           "input space and integrates the class probability over the fraction removed (AUC in [0, 1], the "
           "suite's steps); Quantus flips features_in_step pixels at a time (argsort order) to the image's minimum "
           "('black') and its AUC is a trapezoid with dx = 1 over every step (not normalised), so only the "
           "rankings are comparable."),
    Shared("model randomisation", "sanity.last", "quantus.MPRT",
           "both: Spearman correlation of the trained model's map with the fully randomised model's map (lower: the "
           "explanation depends on the weights). cnnlens re-initialises layers top-down with each layer's "
           "reset_parameters and BatchNorm as identity, and correlates |map|; Quantus 0.6.0 randomises "
           "layer by layer (bottom-up here) with its own seed, normalises the maps by their max and takes abs."),
    Shared("infidelity", "captum.infidelity", "quantus.Infidelity",
           "Captum perturbs the input with Gaussian noise (the suite's stdev) and compares the attribution-weighted "
           "noise with the output change; Quantus replaces square patches (perturb_patch_sizes) by the image's "
           "minimum and compares attribution sums over the patch with the prediction drop (mean squared error), "
           "so the scales differ by orders of magnitude."),
    Shared("ROAD", "road.morf", "quantus.ROAD",
           "not compared: Quantus 0.6.0's ROAD ranks the attribution broadcast to every channel (C x H x W indices) "
           "but imputes the pixels of one channel (H x W), so it fails on RGB images; cnnlens' ROAD removes exactly "
           "the top p % pixels and imputes them with pytorch-grad-cam's NoisyLinearImputer."),
)


def _resolve(res: Any, name: str) -> Any:
    """Rows of a stored metric; ``sanity.last`` is the last randomisation step's Spearman."""
    if name == "sanity.last":
        s = res[res.metric.str.startswith("sanity.spearman@")]
        return s[s.metric == s.metric.max()] if len(s) else s
    return res[res.metric == name]


def compare(res: Any) -> Any:
    """One row per (model, shared metric): what was compared and how far the libraries agree.

    Columns: model, metric, ours, theirs, pairs ((method, backend) pairs with both), images (shared),
    spearman_methods and kendall_methods (of the pairs' mean scores), spearman_images (over every
    (image, pair) value), mean_difference (Quantus minus ours), differ.
    """
    import pandas as pd
    from scipy import stats

    rows = []
    for model in sorted(res.model.unique()):
        sub = res[res.model == model]
        for sh in SHARED:
            a = _resolve(sub, sh.ours)
            b = _resolve(sub, sh.theirs)
            row: dict[str, Any] = {"model": model, "metric": sh.name, "ours": sh.ours, "theirs": sh.theirs,
                                   "pairs": 0, "images": 0, "spearman_methods": math.nan, "kendall_methods": math.nan,
                                   "spearman_images": math.nan, "mean_difference": math.nan, "differ": sh.differ}
            if len(a) and len(b):
                j = a.merge(b, on=["image", "method", "backend"], suffixes=("_a", "_b"))
                j = j[j.value_a.notna() & j.value_b.notna()]
                if len(j):
                    means = j.groupby(["method", "backend"])[["value_a", "value_b"]].mean()
                    row["pairs"], row["images"] = len(means), int(j.image.nunique())
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # constant input: the correlation is undefined (NaN)
                        if len(means) >= 3:
                            row["spearman_methods"] = float(stats.spearmanr(means.value_a, means.value_b).statistic)
                            row["kendall_methods"] = float(stats.kendalltau(means.value_a, means.value_b).statistic)
                        if len(j) >= 3:
                            row["spearman_images"] = float(stats.spearmanr(j.value_a, j.value_b).statistic)
                    row["mean_difference"] = float((j.value_b - j.value_a).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def per_image(res: Any, model: str, shared: Shared) -> Any:
    """The per-image values of both libraries for one shared metric (image, method, backend, ours, theirs, diff)."""
    sub = res[res.model == model]
    j = _resolve(sub, shared.ours).merge(_resolve(sub, shared.theirs), on=["image", "method", "backend"],
                                          suffixes=("_a", "_b"))
    out = j[["image", "method", "backend", "value_a", "value_b"]].rename(columns={"value_a": "ours",
                                                                                  "value_b": "theirs"})
    out["difference"] = out.theirs - out.ours
    return out.reset_index(drop=True)


def section(st: Any) -> Any:
    """The report's "Metric agreement" section."""
    from cnnlens.bench.reporting.render import Section

    sec = Section("Metric agreement")
    tab = compare(st.res)
    have = tab[tab.pairs > 0]
    if have.empty:
        sec.text("No metric was measured by two libraries in this study. Name the Quantus counterparts in a "
                 "`[quantus]` section (PointingGame, PixelFlipping, MPRT, Infidelity) to compare cnnlens' pointing "
                 "game, deletion, sanity and Captum's infidelity with Quantus'.")
        return sec
    sec.text("The same metric from two libraries, on the same maps and images: do they order the (method, backend) "
             "pairs alike (Spearman and Kendall of the pairs' means), and do they agree image by image (Spearman "
             "over every image and pair, mean difference Quantus minus ours)? Where they disagree, the last column "
             "says where the definitions differ (read in the libraries' sources).")
    show = tab.drop(columns=["differ"]).rename(columns={"spearman_methods": "Spearman (methods)",
                                                        "kendall_methods": "Kendall (methods)",
                                                        "spearman_images": "Spearman (per image)",
                                                        "mean_difference": "mean difference"})
    sec.table(show, ".3g", blank="not measured by both libraries in this study, or fewer than 3 pairs or values "
                                 "to correlate (or one side constant).")
    sec.text("\n".join(f"- **{sh.name}** (`{sh.ours}` vs `{sh.theirs}`): {sh.differ}" for sh in SHARED))
    return sec
