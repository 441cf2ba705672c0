"""The study report: ``report.md`` (with PNGs next to it) and a self-contained ``report.html``.

Both are rendered from one list of sections (text, tables, figures), so they always hold the same
content. Tables are written by a small formatter here because pandas' ``to_markdown`` needs the
optional ``tabulate`` package; the HTML embeds every PNG as base64 so it can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SECTIONS = ("Summary", "Agreement", "Faithfulness", "Localization", "Sanity", "Speed", "Image x method grid",
            "Failures", "Run")

SUBSTRATES = {
    "deletion_zero": "deletion, removed pixels set to 0 in the model's input space, i.e. to the normalisation mean (mid-gray for the embedded "
                     "model, whose mean and std are 0.5)",
    "deletion_blur": "deletion, removed pixels replaced by the blurred image (Gaussian, kernel 11, sigma 5)",
    "insertion_blur": "insertion, starting from the blurred image and restoring original pixels",
}


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)  # ("text", str) | ("table", df) | ("figure", name)

    def text(self, s: str) -> None:
        self.blocks.append(("text", s))

    def table(self, df: Any, floatfmt: str = ".3f") -> None:
        self.blocks.append(("table", (df, floatfmt)))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", (name, caption)))


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _fmt(v: Any, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v)


def md_table(df: Any, floatfmt: str = ".3f") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, floatfmt).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def html_table(df: Any, floatfmt: str = ".3f") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v, floatfmt))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig: Any, dpi: int = 90) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Data access
# --------------------------------------------------------------------------------------------


def _load(db: Path) -> dict[str, Any]:
    import sqlite3

    from cnnlens.bench.store import _query, open_existing, sqlite_error

    conn = open_existing(db)
    try:
        res = _query(db, conn, "SELECT model, image, method, backend, metric, value FROM results")
        cells = _query(db, conn, "SELECT cell, kind, spec, status, error, seconds, finished FROM cells")
        images = _query(db, conn, "SELECT model, image, position, source, target, label, box, png FROM images "
                        "ORDER BY model, position")
        try:
            return _load_rest(db, conn, res, cells, images)
        except sqlite3.Error as exc:
            raise sqlite_error(db, exc, writing=False) from None
    finally:
        conn.close()


def _load_rest(db: Path, conn: Any, res: Any, cells: Any, images: Any) -> dict[str, Any]:
    from cnnlens.bench.store import _array_from

    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}
    arts = {}
    for model, image, method, backend, data in conn.execute(
            "SELECT model, image, method, backend, data FROM artifacts WHERE name = 'map'"):
        arts[(model, image, method, backend)] = data
    raw_shapes = {}
    for method, backend, data in conn.execute(
            "SELECT method, backend, data FROM artifacts WHERE name = 'raw' GROUP BY method, backend"):
        raw_shapes[(method, backend)] = "x".join(str(v) for v in _array_from(data).shape)
    return {"res": res, "cells": cells, "meta": meta, "images": images, "maps": arts, "raw_shapes": raw_shapes}


def _mean_by(res: Any, prefix: str, keys: tuple[str, ...] = ("method", "backend")) -> Any:
    sub = res[res.metric.str.startswith(prefix)]
    return sub.groupby([*keys, "metric"], sort=False)["value"].mean().unstack("metric")


def _label(method: str, backend: str) -> str:
    return f"{method} [{backend}]"


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _agreement(d: dict[str, Any], figs: dict[str, bytes]) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sec = Section("Agreement")
    res = d["res"]
    ag = res[res.metric.str.startswith("agree.")]
    if ag.empty:
        sec.text("No agreement rows: no method has two backends in this study, or its agreement cells have not "
                 "run yet.")
    else:
        sec.text("The same method from different toolkits, compared per image on the contract maps "
                 "((H, W) in [0, 1] after cnnlens' shared post-processing): Pearson and Spearman correlation, SSIM "
                 "(scikit-image, data range 1), IoU of the top 5% and 10% pixels, and the largest absolute "
                 "difference of the maps (`maps_maxabs`; maps are stored as float16, so about 1e-3 is the "
                 "resolution) and of `raw` where both raw attributions have the same shape (relative: divided by "
                 "the larger max |raw|; `-` where the shapes differ, listed in the last column). Means over "
                 "images; 1.0 (correlations, SSIM, IoU) and 0 (differences) mean identical.")
        tab = ag.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
        tab.columns = [c.replace("agree.", "") for c in tab.columns]
        order = [c for c in ("pearson", "spearman", "ssim", "iou_top5", "iou_top10", "maps_maxabs", "raw_maxabs",
                             "raw_maxabs_rel") if c in tab.columns]
        tab = tab[order].reset_index().rename(columns={"backend": "backends"})
        shapes = d["raw_shapes"]
        tab["raw shapes"] = [" vs ".join(str(shapes.get((m, b), "?")) for b in pair.split("|"))
                             for m, pair in zip(tab.method, tab.backends, strict=True)]
        sec.table(tab, ".3g")
        heat = tab.set_index(tab["method"] + ": " + tab["backends"].str.replace("|", " vs ", regex=False))
        cols = [c for c in ("pearson", "spearman", "ssim", "iou_top5", "iou_top10") if c in heat.columns]
        vals = heat[cols].to_numpy(dtype=float)
        fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 4, 0.45 * len(heat) + 1.5))
        im = ax.imshow(vals, vmin=-1 if np.nanmin(vals) < 0 else 0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(heat)), heat.index)
        for (i, j), v in np.ndenumerate(vals):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if not np.isnan(v) and v < 0.6 else "black", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.03)
        ax.set_title("Same method, different backends (mean over images)")
        figs["agreement.png"] = _png(fig)
        sec.figure("agreement.png", "Backend agreement per method")
    cross = res[res.metric == "cross.spearman"]
    for backend, sub in cross.groupby("backend"):
        pairs = sub.groupby("method")["value"].mean()
        names = sorted({p for m in pairs.index for p in m.split("|")})
        mat = np.full((len(names), len(names)), np.nan)
        for m, v in pairs.items():
            a, b = m.split("|")
            i, j = names.index(a), names.index(b)
            mat[i, j] = mat[j, i] = v
        np.fill_diagonal(mat, 1.0)
        fig, ax = plt.subplots(figsize=(0.42 * len(names) + 3, 0.42 * len(names) + 2))
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
        if len(names) <= 20:
            for (i, j), v in np.ndenumerate(mat):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.03)
        ax.set_title(f"Method x method Spearman within {backend}")
        name = f"agreement_methods_{backend}.png"
        figs[name] = _png(fig)
        sec.figure(name, f"Method x method agreement (mean Spearman over images) within {backend}")
    return sec


def _faithfulness(d: dict[str, Any], figs: dict[str, bytes]) -> tuple[Section, Any]:
    import matplotlib.pyplot as plt

    sec = Section("Faithfulness")
    res = d["res"]
    keys = ["deletion_zero.auc", "deletion_blur.auc", "insertion_blur.auc", "avg_drop", "increase_conf",
            "road.morf", "road.lerf", "road.combined"]
    sub = res[res.metric.isin(keys)]
    if sub.empty:
        sec.text("Faithfulness was not measured in this study.")
        return sec, None
    tab = sub.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
    tab = tab[[k for k in keys if k in tab.columns]]
    counts = sub[sub.metric == "avg_drop"].groupby(["method", "backend"])["image"].nunique()
    tab.insert(0, "images", counts.reindex(tab.index).fillna(0).astype(int))
    if "increase_conf" in tab.columns:
        tab["increase_conf"] = tab["increase_conf"] * 100
    tab = tab.sort_values("deletion_blur.auc" if "deletion_blur.auc" in tab.columns else tab.columns[0])
    tab = tab.reset_index()
    sec.text(
        "Deletion and insertion (Petsiuk et al. 2018): the target's softmax probability as pixels are removed "
        "(or restored) most-salient first, in equal steps, all steps of an image in one batch; AUC by the "
        "trapezoid rule. Lower deletion AUC and higher insertion AUC are better. Substrates:\n\n"
        + "\n".join(f"- `{k}`: {v}" for k, v in SUBSTRATES.items())
        + "\n\nAverage Drop (%) and Increase in Confidence (%) follow Chattopadhyay et al. 2018: the explanation "
        "map multiplies the input (in the model's input space, as pytorch-grad-cam's `multiply_tensor_with_cam`), "
        "drop = 100 * max(0, Y - O) / Y, divided by the base score Y as in the paper; pytorch-grad-cam's "
        "`DropInConfidence` does not divide by Y, so its numbers are not comparable to these. "
        "ROAD (Rong et al. 2022) uses pytorch-grad-cam's `NoisyLinearImputer` with cnnlens' own rank-based "
        "removal of exactly p% of the pixels (pytorch-grad-cam's percentile threshold removes more than p% when a "
        "map has ties); `road.morf` (lower is better) and `road.lerf` (higher is better) are the target "
        "probabilities after imputation averaged over the percentiles, `road.combined` = (lerf - morf) / 2. "
        "Ties in a ranking are broken by one fixed random permutation shared by all methods.\n\n"
        "`images` counts the images each row averages over; a method run on fewer images (`max_images` in "
        "the suite) is not directly comparable to the others.\n\n"
        "Baselines (backend `baseline`): `random_pixel` (i.i.d. noise per pixel), `random_smooth` (noise on a "
        "1/32 grid upsampled, the resolution of a CAM) and `center_gaussian`. Read every number against them."
    )
    sec.table(tab, ".3f")
    trap = _trap_text(res)
    if trap:
        sec.text(trap)
    curves = res[res.metric.str.contains(r"\.curve@", regex=True)]
    if not curves.empty:
        means = {}
        for sub_name in SUBSTRATES:
            c = curves[curves.metric.str.startswith(sub_name + ".curve@")].copy()
            c["step"] = c.metric.str.split("@").str[1].astype(int)
            means[sub_name] = c.groupby(["method", "backend", "step"])["value"].mean().unstack("step")
        backends = sorted({b for m in means.values() for (_x, b) in m.index if b != "baseline"})
        n_img = curves[curves.metric.str.startswith("deletion_blur.curve@")].groupby(["method", "backend"])[
            "image"].nunique()
        fig, axes = plt.subplots(len(backends), 3, figsize=(18, 4.5 * len(backends)), sharey=True, squeeze=False)
        for r, backend in enumerate(backends):
            for ax, sub_name in zip(axes[r], SUBSTRATES, strict=True):
                mean = means[sub_name]
                n = mean.shape[1] - 1
                xs = np.arange(n + 1) / n
                part = [(m, row) for (m, b), row in mean.iterrows() if b == backend]
                cmap = plt.get_cmap("tab20" if len(part) > 10 else "tab10")
                full = int(n_img.max()) if len(n_img) else 0
                for k, (m, row) in enumerate(part):
                    k_img = int(n_img.get((m, backend), full))
                    ax.plot(xs, row.values, color=cmap(k % cmap.N), lw=1.2,
                            ls="-" if k_img == full else ":", label=m if k_img == full else f"{m} ({k_img} img)")
                for (m, b), row in mean.iterrows():
                    if b == "baseline":
                        ax.plot(xs, row.values, "k", ls={"random_pixel": ":", "random_smooth": "--"}.get(m, "-."),
                                lw=2, label=f"{m} (baseline)")
                ax.set_title(f"{backend}: {sub_name.replace('_', ' ')}", fontsize=9)
                if r == len(backends) - 1:
                    ax.set_xlabel("fraction of pixels " + ("inserted" if "insertion" in sub_name else "deleted"))
            axes[r, 0].set_ylabel("target probability (mean)")
            axes[r, -1].legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
        figs["curves.png"] = _png(fig)
        sec.figure("curves.png", "Deletion and insertion curves (baselines in black)")
    return sec, tab


def _trap_text(res: Any) -> str:
    """The pixel-noise trap, in this study's numbers (every claim is computed, not assumed)."""
    keys = ["deletion_zero.auc", "deletion_blur.auc", "road.combined"]
    t = res[res.metric.isin(keys)].groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
    if ("random_pixel", "baseline") not in t.index or ("random_smooth", "baseline") not in t.index:
        return ""
    cams = [i for i in t.index if i[0] == "gradcam"]
    if not cams:
        return ""
    g = cams[0]
    rp, rs, gc = t.loc[("random_pixel", "baseline")], t.loc[("random_smooth", "baseline")], t.loc[g]
    out = [
        f"**The pixel-noise trap, in this study's numbers** (means over the faithfulness images). With the zero "
        f"substrate the pixel-noise random map scores a deletion AUC of {rp['deletion_zero.auc']:.3f} against "
        f"Grad-CAM [{g[1]}]'s {gc['deletion_zero.auc']:.3f}"
        + (" - the random map looks *more* faithful. " if rp["deletion_zero.auc"] < gc["deletion_zero.auc"] else ". ")
        + "Scattered deleted pixels destroy the image's statistics and the model collapses through artifacts, "
        "not through lost evidence (the point of the ROAD paper)."
    ]
    blur_txt = (f"With the blurred substrate pixel noise scores {rp['deletion_blur.auc']:.3f}, the smooth random "
                f"map {rs['deletion_blur.auc']:.3f} and Grad-CAM {gc['deletion_blur.auc']:.3f}: ")
    def vs(a: float, b: float) -> str:  # lower deletion AUC is better
        return "ties with" if abs(a - b) < 5e-4 else ("beats" if a < b else "does not beat")

    if rp["deletion_blur.auc"] < gc["deletion_blur.auc"] - 5e-4:
        blur_txt += ("blurring reduces the artifact but does not remove it on this model - scattered blurred "
                     "pixels still erase fine texture - so pixel noise still 'wins'. ")
    else:
        blur_txt += f"with blurred pixels Grad-CAM {vs(gc['deletion_blur.auc'], rp['deletion_blur.auc'])} pixel noise. "
    blur_txt += (f"Grad-CAM {vs(gc['deletion_blur.auc'], rs['deletion_blur.auc'])} the smooth random map, the fair "
                 "chance level for a map at a CAM's resolution.")
    out.append(blur_txt)
    if "road.combined" in t.columns and not np.isnan(rp.get("road.combined", np.nan)):
        out.append(f"ROAD's noisy linear imputation (combined score over its image subset, higher is better): pixel noise "
                   f"{rp['road.combined']:.3f}, smooth random {rs['road.combined']:.3f}, Grad-CAM "
                   f"{gc['road.combined']:.3f}.")
    out.append("Read deletion numbers with the blurred substrate, against the smooth random baseline, and next "
               "to ROAD.")
    return " ".join(out)


def _localization(d: dict[str, Any], figs: dict[str, bytes]) -> Section:
    import matplotlib.pyplot as plt

    sec = Section("Localization")
    res = d["res"]
    sub = res[res.metric.isin(["pointing.hit", "pointing.energy"])]
    if sub.empty:
        sec.text("No image with a known object box in this study.")
        return sec
    n = sub[sub.metric == "pointing.hit"].image.nunique()
    tab = sub.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric").reset_index()
    tab = tab.sort_values("pointing.energy", ascending=False)
    sec.text(f"{n} canvases with an object pasted at a known position and scale, kept only when the model still "
             "classifies it as the object. Pointing game: the map's maximum falls inside the object's box "
             "(no tolerance margin); energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the "
             "map's mass inside the box. Chance for energy is the box's share of the canvas. Caveat: on a flat "
             "gray canvas, methods that multiply by (input - baseline) with a zero baseline (input x gradient, "
             "integrated gradients, GradientSHAP) are near zero on the background by construction, because the "
             "gray (124/255) is almost the normalisation mean; their energy there measures the canvas, not the "
             "method. Textured backgrounds avoid this, when the model recognises objects on them.")
    sec.table(tab, ".3f")
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(tab) + 1.5))
    labels = [_label(m, b) for m, b in zip(tab.method, tab.backend, strict=True)]
    ax.barh(range(len(tab)), tab["pointing.energy"], color=["k" if b == "baseline" else "tab:blue" for b in tab.backend])
    ax.set_yticks(range(len(tab)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("energy inside the box (mean)")
    figs["localization.png"] = _png(fig)
    sec.figure("localization.png", "Energy-based pointing game (baselines in black)")
    return sec


def _sanity(d: dict[str, Any], figs: dict[str, bytes]) -> Section:
    import matplotlib.pyplot as plt

    sec = Section("Sanity")
    res = d["res"]
    sub = res[res.metric.str.startswith("sanity.")].copy()
    if sub.empty:
        sec.text("The sanity check was not run in this study.")
        return sec
    sub["measure"] = sub.metric.str.split("@").str[0].str.replace("sanity.", "", regex=False)
    sub["step"] = sub.metric.str.split("@").str[1].astype(int)
    steps = next((v for k, v in d["meta"].items() if k.startswith("sanity_steps:")), None)
    sec.text("Cascading model-parameter randomization (Adebayo et al. 2018): layers are re-initialised from the "
             "output back to the input, cumulatively (each layer's own `reset_parameters` under a fixed seed; "
             "BatchNorm layers become identities), and each method's map is compared with the map of the trained "
             "model: Spearman correlation of absolute values and SSIM. A method that passes drops towards 0 as "
             "soon as the top layers are randomized; one that stays high explains the input, not the model."
             + (f" Steps (last layer randomized at each): {', '.join(f'{i + 1}: `{s}`' for i, s in enumerate(steps))}."
                if steps else ""))
    mean = sub.groupby(["method", "backend", "measure", "step"])["value"].mean().unstack("step")
    last = mean.columns.max()
    tab = mean[[1, last]].unstack("measure")
    tab.columns = [f"{meas} after step {st}" for st, meas in tab.columns]
    tab = tab.reset_index()
    sort_col = f"spearman after step {last}"
    if sort_col in tab.columns:
        tab = tab.sort_values(sort_col)
    sec.table(tab, ".3f")
    backends = sorted({b for (_m, b, _ms) in mean.index})
    fig, axes = plt.subplots(2, len(backends), figsize=(6.5 * len(backends), 9), sharey=True, squeeze=False)
    labels = ["trained"] + [(steps[i] if steps and i < len(steps) else str(i + 1)) for i in range(last)]
    for col, backend in enumerate(backends):
        for row, meas in enumerate(("spearman", "ssim")):
            ax = axes[row, col]
            part = [(m, vals) for (m, b, ms), vals in mean.iterrows() if b == backend and ms == meas]
            cmap = plt.get_cmap("tab20" if len(part) > 10 else "tab10")
            for k, (m, vals) in enumerate(part):
                ys = np.concatenate([[1.0], vals.values.astype(float)])
                ax.plot(range(len(ys)), ys, marker="o", ms=3, color=cmap(k % cmap.N),
                        ls="-" if k < cmap.N else "--", label=m)
            ax.set_xticks(range(last + 1), labels, rotation=45, ha="right", fontsize=7)
            ax.axhline(0, color="gray", lw=0.5)
            ax.set_title(f"{backend}: {meas} with the trained model's map", fontsize=9)
            if row == 0:
                ax.legend(fontsize=6, loc="lower left")
    figs["sanity.png"] = _png(fig)
    sec.figure("sanity.png", "Cascading randomization curves")
    return sec


def _speed(d: dict[str, Any], figs: dict[str, bytes]) -> Section:
    import matplotlib.pyplot as plt

    sec = Section("Speed")
    res = d["res"]
    sub = res[res.metric.str.startswith("speed.")].copy()
    if sub.empty:
        sec.text("Speed was not measured in this study.")
        return sec
    sub["bs"] = sub.metric.str.split("@bs").str[1].astype(int)
    sub["what"] = sub.metric.str.split("@").str[0].str.replace("speed.", "", regex=False)
    units = sub[sub.what.str.startswith("limit_n.")].copy()
    units["unit"] = units.what.str.split(".").str[1]
    tab = sub[~sub.what.str.startswith("limit_n.")].pivot_table(index=["method", "backend", "bs"], columns="what",
                                                                 values="value").reset_index()
    lim = units.set_index(["method", "backend", "bs"])[["unit", "value"]].rename(columns={"value": "limit_n"})
    tab = tab.join(lim, on=["method", "backend", "bs"])
    tab["latency_ms"] = tab["latency_median"] * 1000
    tab["iqr_ms"] = tab["latency_iqr"] * 1000
    tab["limit_ms"] = tab["limit_seconds"] * 1000
    tab["call_ms"] = tab["wall_median"] * 1000
    cols = ["method", "backend", "bs", "latency_ms", "iqr_ms", "call_ms", "throughput", "peak_mem_mb", "unit",
            "limit_n", "limit_ms", "ratio_to_limit"]
    tab = tab[cols].sort_values(["bs", "latency_ms"])
    how = next((v for k, v in d["meta"].items() if k.startswith("memory_probe:")), "")
    sec.text("Per (method, backend, batch size): median and IQR of the backend call's latency per image "
             "(after warm-up; on CUDA after `torch.cuda.synchronize`), throughput in images/s and peak extra "
             f"memory during the timed calls ({how}). The limit is measured in the same run on the same batch: "
             "`forward` for forward-only methods, `grad_layer` (forward + gradient to the CAM layer) for gradient "
             "CAMs, `grad_input` (forward + gradient to the input) for gradient methods, times n for methods that "
             "evaluate the model n times (samples, steps, windows, channels). ratio = latency / limit; 1.0 would "
             "be a perfect implementation; below 1 happens when a method batches its n internal forwards more "
             "efficiently than the limit's unit, which runs at the study's batch size. `call_ms` is the whole `Explainer.explain` call per image (cnnlens' "
             "checks, target resolution and post-processing included). Peak memory is the RSS above the resident "
             "set before the timed calls: 0 when the call fits in memory the allocator already holds. Slow "
             "perturbation methods are timed at the smallest batch size only.")
    sec.table(tab, ".3g")
    for bs, part in tab.groupby("bs"):
        part = part.sort_values("latency_ms")
        fig, ax = plt.subplots(figsize=(11, 0.3 * len(part) + 1.5))
        labels = [_label(m, b) for m, b in zip(part.method, part.backend, strict=True)]
        ax.barh(range(len(part)), part.latency_ms, color="tab:orange", label="latency per image")
        ax.barh(range(len(part)), part.limit_ms, color="tab:blue", alpha=0.6, height=0.4, label="compute limit")
        for i, (v, r) in enumerate(zip(part.latency_ms, part.ratio_to_limit, strict=True)):
            ax.text(v, i, f" {r:.1f}x" if r == r else "", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_yticks(range(len(part)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms per image (log)")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"Latency and ratio to the compute limit, batch size {bs}")
        name = f"speed_bs{bs}.png"
        figs[name] = _png(fig)
        sec.figure(name, f"Speed bars, batch size {bs}")
    return sec


def _grid(d: dict[str, Any], figs: dict[str, bytes], max_images: int = 8) -> Section:
    import matplotlib.pyplot as plt
    from PIL import Image

    from cnnlens.bench.store import _array_from

    sec = Section("Image x method grid")
    maps = d["maps"]
    if not maps:
        sec.text("No maps were stored.")
        return sec
    imgs = d["images"]
    model = imgs.model.iloc[0]
    imgs = imgs[imgs.model == model].head(max_images)
    pairs = list(dict.fromkeys((m, b) for (mo, _i, m, b) in maps if mo == model))
    sec.text(f"Each stored map over its image for the first {len(imgs)} images of model `{model}` "
             "(jet colour map, alpha 0.5, each map scaled to its 99th percentile so sparse pixel maps stay visible; "
             "the box is the ground truth of pasted canvases; an empty cell is a method run on fewer images "
             "or one that failed).")
    fig, axes = plt.subplots(len(imgs), len(pairs) + 1, figsize=(1.1 * (len(pairs) + 1), 1.2 * len(imgs)),
                             squeeze=False)
    for r, row in enumerate(imgs.itertuples(index=False)):
        disp = np.asarray(Image.open(io.BytesIO(row.png)).convert("RGB"))
        axes[r, 0].imshow(disp)
        axes[r, 0].set_ylabel(f"{row.image}\n{row.label}", fontsize=5, rotation=0, ha="right", va="center")
        box = json.loads(row.box) if row.box else None
        for c, (m, b) in enumerate(pairs, start=1):
            ax = axes[r, c]
            blob = maps.get((model, row.image, m, b))
            if blob is not None:
                ax.imshow(disp)
                sal = _array_from(blob).astype(np.float32)
                top = float(np.percentile(sal, 99))  # sparse pixel maps are invisible when scaled by their max
                ax.imshow(np.clip(sal / top, 0, 1) if top > 0 else sal, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if box:
                x0, y0, x1, y1 = box
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=0.6))
            if r == 0:
                ax.set_title(f"{m}\n[{b}]", fontsize=5, rotation=90, va="bottom")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.subplots_adjust(wspace=0.02, hspace=0.02)
    figs["grid.png"] = _png(fig, dpi=56)
    sec.figure("grid.png", "Image x method grid")
    return sec


def _failures(d: dict[str, Any]) -> Section:
    import pandas as pd

    sec = Section("Failures")
    cells = d["cells"]
    bad = cells[cells.status != "done"]
    if bad.empty:
        sec.text("Every cell finished.")
        return sec
    rows = []
    for r in bad.itertuples(index=False):
        spec = json.loads(r.spec)
        rows.append({"kind": r.kind, "method": spec.get("method", ""),
                     "backend": spec.get("backend", "|".join(spec.get("backends", []))),
                     "status": r.status, "error": (r.error or "")[:160]})
    df = pd.DataFrame(rows).drop_duplicates(["kind", "method", "backend", "error"])
    sec.text(f"{len(bad)} of {len(cells)} cells did not produce results (a failing method is a result, not a "
             "crash; the same error repeats for each image batch and batch size and is listed once):")
    sec.table(df)
    return sec


def _run(d: dict[str, Any]) -> Section:
    sec = Section("Run")
    meta = d["meta"]
    cells = d["cells"]
    keep = {k: meta.get(k) for k in ("suite_name", "suite_digest", "device", "git_revision", "python", "platform",
                                     "processor", "torch_threads", "gpu") if k in meta}
    keep["versions"] = meta.get("versions")
    if not cells.empty:
        keep["cells"] = len(cells)
        keep["cell_seconds_total"] = round(float(cells.seconds.sum()), 1)
        keep["wall_seconds_first_to_last_cell"] = round(float(cells.finished.max() - cells.finished.min()), 1)
    runs = {k: v for k, v in meta.items() if k.startswith("run:")}
    keep["invocations"] = len(runs)
    sec.text("```json\n" + json.dumps(keep, indent=1, default=str) + "\n```")
    return sec


def _summary(d: dict[str, Any], faith: Any) -> Section:
    sec = Section("Summary")
    res = d["res"]
    lines = []
    ag = res[res.metric == "agree.spearman"]
    if not ag.empty:
        g = ag.groupby(["method", "backend"])["value"].mean().sort_values()
        m, b = g.index[0]
        lines.append(f"Least agreeing backends: {m} {b.replace('|', ' vs ')} (mean Spearman {g.iloc[0]:.3f}); "
                     f"most agreeing: {g.index[-1][0]} {g.index[-1][1].replace('|', ' vs ')} ({g.iloc[-1]:.3f}).")
    if faith is not None and "deletion_blur.auc" in faith.columns:
        real = faith[faith.backend != "baseline"]
        base = faith[faith.backend == "baseline"].set_index("method")
        best = real.sort_values("deletion_blur.auc").iloc[0]
        txt = f"Best deletion AUC (blurred substrate): {best.method} [{best.backend}] {best['deletion_blur.auc']:.3f}"
        if "random_smooth" in base.index:
            txt += f" (smooth random baseline {base.loc['random_smooth', 'deletion_blur.auc']:.3f})"
            worse = real[real["deletion_blur.auc"] >= base.loc["random_smooth", "deletion_blur.auc"]]
            txt += f"; {len(worse)} of {len(real)} method/backend pairs do not beat it"
        lines.append(txt + ".")
        if "insertion_blur.auc" in faith.columns:
            bi = real.sort_values("insertion_blur.auc", ascending=False).iloc[0]
            lines.append(f"Best insertion AUC: {bi.method} [{bi.backend}] {bi['insertion_blur.auc']:.3f}.")
    s = res[res.metric.str.startswith("sanity.spearman@")]
    if not s.empty and s.value.notna().any():
        last = s.metric.max()
        fin = s[s.metric == last].groupby(["method", "backend"])["value"].mean().dropna().sort_values()
        lines.append(f"Sanity (Spearman with the trained map after full randomization): most sensitive "
                     f"{fin.index[0][0]} [{fin.index[0][1]}] {fin.iloc[0]:.3f}; least sensitive "
                     f"{fin.index[-1][0]} [{fin.index[-1][1]}] {fin.iloc[-1]:.3f}.")
    sp = res[res.metric == "speed.ratio_to_limit@bs1"]
    if not sp.empty and sp.value.notna().any():
        g = sp.groupby(["method", "backend"])["value"].mean().dropna().sort_values()
        lines.append(f"Closest to its compute limit at batch size 1: {g.index[0][0]} [{g.index[0][1]}] "
                     f"({g.iloc[0]:.2f}x); furthest: {g.index[-1][0]} [{g.index[-1][1]}] ({g.iloc[-1]:.1f}x).")
    sec.text("\n".join(f"- {line}" for line in lines) if lines else "No results yet.")
    return sec


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def build_sections(db: Path) -> tuple[list[Section], dict[str, bytes], dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    d = _load(db)
    figs: dict[str, bytes] = {}
    faith_sec, faith_tab = _faithfulness(d, figs)
    sections = [_summary(d, faith_tab), _agreement(d, figs), faith_sec, _localization(d, figs), _sanity(d, figs),
                _speed(d, figs), _grid(d, figs), _failures(d), _run(d)]
    return sections, figs, d["meta"]


def render_md(sections: list[Section], title: str, fig_dir: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, val in s.blocks:
            if kind == "text":
                out += [val, ""]
            elif kind == "table":
                out += [md_table(*val), ""]
            else:
                name, cap = val
                out += [f"![{cap}]({fig_dir}/{name})", ""]
    return "\n".join(out)


def _md_inline(s: str) -> str:
    import re

    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _text_html(s: str) -> str:
    if s.startswith("```"):
        body = s.strip("`").split("\n", 1)[1] if "\n" in s else s
        return f"<pre>{html.escape(body.rstrip('`'))}</pre>"
    parts = []
    for para in s.split("\n\n"):
        lines = para.split("\n")
        if all(line.startswith("- ") for line in lines):
            parts.append("<ul>" + "".join(f"<li>{_md_inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            parts.append(f"<p>{_md_inline(para)}</p>")
    return "".join(parts)


def render_html(sections: list[Section], title: str, figs: dict[str, bytes]) -> str:
    css = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
           "text-align:right}th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}"
           "figcaption{color:#555;font-size:13px}pre{background:#f6f6f6;padding:1em;overflow:auto}")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    out.append("<nav>" + " | ".join(f"<a href='#{s.title.replace(' ', '-')}'>{s.title}</a>" for s in sections)
               + "</nav>")
    for s in sections:
        out.append(f"<h2 id='{s.title.replace(' ', '-')}'>{html.escape(s.title)}</h2>")
        for kind, val in s.blocks:
            if kind == "text":
                out.append(_text_html(val))
            elif kind == "table":
                out.append(html_table(*val))
            else:
                name, cap = val
                b64 = base64.b64encode(figs[name]).decode()
                out.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                           f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    out.append("</body></html>")
    return "".join(out)


def write_report(db: Path | str, out_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` (figures in ``figures/``) and a self-contained ``report.html``.

    Every file is written to a temporary name and renamed when complete, so a full disk or a
    read-only folder leaves the previous report (or none), never a truncated file.

    Args:
        db: The study's SQLite file (read-only media are fine).
        out_dir: Where to write (default: the database's folder). Existing report files there are
            replaced; nothing else is touched.

    Returns:
        (path of report.md, path of report.html).

    Raises:
        StoreError: ``db`` is missing, corrupt or not a cnnlens study.
        OutputError: The output folder is read-only or the disk is full.
    """
    from cnnlens._files import ensure_folder, write_atomic

    db = Path(db)
    out = Path(out_dir) if out_dir is not None else db.parent
    sections, figs, meta = build_sections(db)
    title = f"cnnlens benchmark: {meta.get('suite_name', db.stem)}"
    fig_dir = out / "figures"
    ensure_folder(fig_dir, "report folder", "--out")
    for name, data in figs.items():
        write_atomic(fig_dir / name, data, "figure", "--out")
    md = write_atomic(out / "report.md", render_md(sections, title, "figures"), "report", "--out")
    page = write_atomic(out / "report.html", render_html(sections, title, figs), "report", "--out")
    return md, page
