"""The report's first section: which methods the study's metrics favour, and how sure that is.

The numbers come from :mod:`cnnlens.bench.verdict` (bootstrap intervals, Wilcoxon-Holm groups,
LATEC-style aggregate ranks, Kendall's tau between metrics); this module words them and draws the
ranks-with-intervals plot.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cnnlens.bench import verdict as V
from cnnlens.bench.reporting import figures as F
from cnnlens.bench.reporting import tables as T
from cnnlens.bench.reporting.data import Study
from cnnlens.bench.reporting.render import Section

#: The verdict's tables the report writes next to itself (every row, every model).
CSV_FILES = ("verdict_ranks.csv", "verdict_tests.csv", "verdict_leaders.csv", "verdict_kendall.csv",
             "verdict_intervals.csv")

#: Most (method, backend) rows in the verdict's rank table and plot (the best ones; the CSV has all).
TOP = 20


def ranks_figure(ranks: Any, model: str, top: int = TOP) -> bytes:
    """Aggregate rank (dot) and its 95 % bootstrap interval (bar) per (method, backend), best at the top."""
    base = ranks.label.str.endswith("[baseline]")
    part = ranks[(ranks.index < top) | base]  # the best, and the baselines as a yardstick
    fig = F._figure(9, 0.28 * len(part) + 1.4)
    ax = fig.subplots()
    ys = np.arange(len(part))
    base = part.label.str.endswith("[baseline]").to_numpy()
    lo = (part["rank"] - part.rank_low).clip(lower=0).to_numpy(dtype=float)
    hi = (part.rank_high - part["rank"]).clip(lower=0).to_numpy(dtype=float)
    for sel, colour, name in ((~base, "tab:blue", "method"), (base, "tab:gray", "baseline map")):
        if sel.any():
            ax.errorbar(part["rank"].to_numpy(dtype=float)[sel], ys[sel], xerr=np.nan_to_num(np.vstack([lo, hi])[:, sel]),
                        fmt="o", color=colour, ecolor=colour, capsize=3, ms=5, label=name)
    ax.set_yticks(ys, list(part.label), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("aggregate rank across metrics (1 = best); bar: 95 % bootstrap interval over images", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)  # the best sit at the top left, the worst at the bottom right
    ax.set_title(f"{model}: aggregate rank with interval (best {min(top, len(ranks))} of {len(ranks)}, and the baselines)", fontsize=10)
    return F.png(fig)


def _interval(lo: float, hi: float, fmt: str = ".3g") -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval (one image)"
    return f"95 % interval {lo:{fmt}} to {hi:{fmt}}"


def _rank_interval(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval"
    return f"{lo:.0f}-{hi:.0f}" if lo != hi else f"{lo:.0f}"


def verdict(st: Study, figs: dict[str, bytes]) -> Section:
    sec = Section("Verdict")
    vd = V.verdict(st.res)
    for name, frame in V.tables(vd).items():
        figs[name] = frame.to_csv(index=False).encode()
    if not vd.models:
        sec.text("No quality scores yet (faithfulness, localization or the toolkits' metrics): nothing to rank. "
                 "The sections below show what the study has measured.")
        return sec
    untrained = set(T.untrained_models(st.meta))
    sec.text("Which method does this study's evidence favour, and how sure is that? Each metric's method means are "
             "median-standardised (minus the median over methods, divided by their interquartile range), signed so "
             "that higher is better, and averaged over the metrics: the aggregate score (LATEC's scheme, Klein et al. "
             "2024). The rank's 95 % interval comes from resampling the images (1000 bootstrap resamples, seed 0). "
             "Paired Wilcoxon signed-rank tests over images, Holm-corrected over the comparisons made, split the "
             "methods into groups the data cannot tell apart (a test needs at least "
             f"{V.MIN_TEST_IMAGES} images both methods were scored on). Baseline maps (random, centred) are ranked "
             "with the methods as a yardstick.")
    for mv in vd.models:
        if mv.model in untrained:
            sec.note(f"{mv.model} has random, untrained weights: this verdict proves the machinery and says nothing "
                     "about the methods.")
        rk = mv.ranks
        real = rk[~rk.label.str.endswith("[baseline]")]
        # Claims compare like with like: pairs capped to fewer images (max_images) are ranked, not named best.
        full = real[real.images == real.images.max()] if len(real) else real
        lines = []
        if len(full) < len(real):
            lines.append(f"{len(real) - len(full)} (method, backend) pairs were scored on fewer images than the others "
                         "(the suite's max_images); they are ranked below but not named best.")
        if len(full):
            best = full.iloc[0]
            lines.append(f"**{mv.model}**: best by aggregate rank across {int(best.metrics)} metrics on "
                         f"{int(best.images)} images: {best.label} (rank {best['rank']:.0f}, 95 % interval "
                         f"{_rank_interval(best.rank_low, best.rank_high)} of {len(rk)}); then "
                         + ", ".join(f"{r.label} ({r.rank:.0f}, {_rank_interval(r.rank_low, r.rank_high)})"
                                     for r in full.iloc[1:4].itertuples(index=False)) + ".")
        if not mv.tested:
            n = int(mv.tests.n.max()) if len(mv.tests) else 0
            lines.append(f"Too few images for a test: the methods share scores on at most {n} images, and a "
                         f"Wilcoxon test needs {V.MIN_TEST_IMAGES}; no method is claimed better than another.")
        else:
            g0 = mv.groups[0]
            made = int(mv.tests.p.notna().sum())
            lines.append(f"Indistinguishable from the best (per-image aggregate score, {made} Wilcoxon tests, Holm, "
                         f"family-wise 5 %): {len(g0)} of {len(rk)} (method, backend) pairs"
                         + (f": {', '.join(g0[:8])}{' ...' if len(g0) > 8 else ''}" if len(g0) > 1 else
                            " (the best stands alone)")
                         + f"; {len(mv.groups)} group{'s' if len(mv.groups) != 1 else ''} in all.")
        worst = V.disagreeing_pairs(mv.kendall, 3)
        if worst:
            lines.append("Metrics that disagree most (Kendall's tau of their method rankings): "
                         + "; ".join(f"{a} vs {b} ({t:+.2f} over {n} pairs)" for a, b, t, n in worst) + ".")
        split = real.sort_values("metric_rank_sd", ascending=False).head(3)
        if len(split) and len(mv.ranks) > 2:
            lines.append("Methods the metrics disagree about most (spread of their per-metric ranks): "
                         + ", ".join(f"{r.label} (sd {r.metric_rank_sd:.1f} ranks)"
                                     for r in split.itertuples(index=False)) + ".")
        sec.text("\n".join(f"- {line}" for line in lines))
        tab = rk.head(TOP).copy()
        tab["rank 95 % interval"] = [_rank_interval(a, b) for a, b in zip(tab.rank_low, tab.rank_high, strict=True)]
        tab = tab[["label", "rank", "rank 95 % interval", "score", "metrics", "images", "metric_rank_sd"]].rename(
            columns={"label": "method [backend]", "score": "aggregate score",
                     "metric_rank_sd": "sd of per-metric ranks"})
        sec.text(f"Aggregate ranks on {mv.model} (best {len(tab)} of {len(rk)}; every row in the CSV export):")
        sec.table(tab, ".3g", blank="no interval: the pair has a score on fewer than 2 images.")
        name = f"verdict_ranks_{mv.model}.png"
        figs[name] = ranks_figure(rk, mv.model)
        sec.figure(name, f"{mv.model}: aggregate rank with its 95 % bootstrap interval")
        if len(mv.leaders):
            lead = mv.leaders.copy()
            lead["tied with best"] = [("too few images" if not math.isfinite(t) else f"{int(t)} of {int(c)}")
                                      for t, c in zip(lead.tied_with_best, lead.compared, strict=True)]
            lead = lead[["metric", "better", "best", "mean", "ci_low", "ci_high", "images", "tied with best"]]
            sec.text("Per metric, the best (method, backend) among those scored on all of the metric's images, its "
                     "mean with the 95 % bootstrap interval, and how many others the tests (best vs each, Holm) "
                     "cannot tell from it:")
            sec.table(lead, ".3g", blank="no interval: the metric was measured on one image.")
    errors = sorted((k.split(":", 1)[1], v) for k, v in st.meta.items() if k.startswith("quantus.error:"))
    if errors:
        sec.note(f"{len(errors)} Quantus metric run{'s' if len(errors) != 1 else ''} failed and stored no value: "
                 + "; ".join(f"{k.replace('|', ' ')}: {v}" for k, v in errors[:10])
                 + (" ..." if len(errors) > 10 else ""))
    if vd.stability is not None:
        sec.text("Rank stability across models (aggregate rank per model; a large range means the verdict does not "
                 "carry over from one model to another):")
        sec.table(vd.stability.head(TOP), ".3g", blank="the pair was not run on that model.")
    return sec


def metric_seconds(st: Study) -> Any:
    """Per (method, backend): seconds per image of its explain cells spent explaining (the
    ``explain.seconds`` rows) and the rest, which is the measures (curves, ROAD, the toolkits' and
    Quantus' metrics) and the cells' bookkeeping. None when no explain cell recorded its time."""
    import json

    import pandas as pd

    cells = st.cells[(st.cells.kind == "explain") & (st.cells.status == "done") & st.cells.seconds.notna()]
    if cells.empty:
        return None
    rows: dict[tuple[str, str], list[float]] = {}
    for r in cells.itertuples(index=False):
        spec = json.loads(r.spec)
        acc = rows.setdefault((spec.get("method", ""), spec.get("backend", "")), [0.0, 0.0])
        acc[0] += float(r.seconds)
        acc[1] += len(spec.get("images", []))
    ex = st.res[st.res.metric == "explain.seconds"].groupby(["method", "backend"])["value"].sum()
    out = []
    for (m, b), (secs, n) in sorted(rows.items()):
        explain = float(ex.get((m, b), 0.0))
        quantus = int(((st.res.method == m) & (st.res.backend == b) & st.res.metric.str.startswith("quantus.")).sum())
        out.append({"method": m, "backend": b, "images": int(n), "explain s/image": explain / n if n else math.nan,
                    "measures s/image": (secs - explain) / n if n else math.nan, "Quantus values": quantus})
    return pd.DataFrame(out).sort_values("measures s/image", ascending=False).reset_index(drop=True)


def add_metric_seconds(sec: Section, st: Study) -> None:
    """Append the measures' time to the Speed section."""
    tab = metric_seconds(st)
    if tab is None:
        return
    sec.text("Metrics' time: per (method, backend), the seconds per image its explain cells spent explaining and "
             "the rest of each cell, which is the measures computed on the maps (deletion and insertion curves, "
             "Average Drop, ROAD, the toolkits' own metrics and the `[quantus]` metrics, one image at a time). "
             "`benchmarks/metrics_speed.py` times the metrics two libraries share side by side.")
    sec.table(tab, ".3g")
