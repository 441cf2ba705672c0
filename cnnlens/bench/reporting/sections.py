"""The report's sections: the words around each table and figure, computed from the study's numbers."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from cnnlens.bench.reporting import figures as F
from cnnlens.bench.reporting import tables as T
from cnnlens.bench.reporting.data import Study
from cnnlens.bench.reporting.render import Section

SUBSTRATES = {
    "deletion_zero": "deletion, removed pixels set to 0 in the model's input space, i.e. to the normalisation mean "
                     "(mid-gray for the embedded model, whose mean and std are 0.5)",
    "deletion_blur": "deletion, removed pixels replaced by the blurred image (Gaussian, kernel 11, sigma 5)",
    "insertion_blur": "insertion, starting from the blurred image and restoring original pixels",
}

#: Most images shown in the image x method grid (one figure each, about 100 KB): a study of a few
#: dozen images shows each; a larger one its first images (the report says how many).
GRID_IMAGES = 16


def _untrained_note(st: Study) -> str:
    models = T.untrained_models(st.meta)
    if not models:
        return ""
    return (f"This study's model{'s' if len(models) > 1 else ''} ({', '.join(models)}) "
            f"{'have' if len(models) > 1 else 'has'} random, untrained weights: the study proves that every "
            "measure runs end to end, and its numbers say nothing about the methods.")


def summary(st: Study, faith: Any) -> Section:
    sec = Section("Summary")
    note = _untrained_note(st)
    if note:
        sec.note(note)
    res = st.res
    lines = []
    pairs = [p for p in T.explained_pairs(st) if p[1] != "baseline"]
    if pairs:
        n_methods = len({m for m, _b in pairs})
        n_base = len([p for p in T.explained_pairs(st) if p[1] == "baseline"])
        lines.append(f"{len(pairs)} (method, backend) pairs over {n_methods} methods, and {n_base} baseline maps, on "
                     f"{st.images.image.nunique()} images.")
    ag = res[res.metric == "agree.spearman"]
    if not ag.empty and ag.value.notna().any():
        g = ag.groupby(["method", "backend"])["value"].mean().dropna().sort_values()
        m, b = g.index[0]
        lines.append(f"Least agreeing backends: {m} {b.replace('|', ' vs ')} (mean Spearman {g.iloc[0]:.3f}); "
                     f"most agreeing: {g.index[-1][0]} {g.index[-1][1].replace('|', ' vs ')} ({g.iloc[-1]:.3f}).")
    if faith is not None and "deletion_blur.auc" in faith.columns:
        # best-of claims only among the rows that cover every faithfulness image (max_images caps some)
        real = faith[(faith.backend != "baseline") & (faith["images"] == faith["images"].max())]
        base = faith[faith.backend == "baseline"].set_index("method")
        if not real.empty:
            best = real.sort_values("deletion_blur.auc").iloc[0]
            txt = (f"Best deletion AUC (blurred substrate, pairs run on all {int(best['images'])} images): "
                   f"{best.method} [{best.backend}] "
                   f"{best['deletion_blur.auc']:.3f}")
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


def agreement(st: Study, figs: dict[str, bytes]) -> Section:
    sec = Section("Agreement")
    tab = T.agreement(st)
    if tab is None:
        sec.text("No agreement rows: no method has two backends in this study, or its agreement cells have not "
                 "run yet.")
    else:
        sec.text("The same method from different toolkits, compared per image on the contract maps "
                 "((H, W) in [0, 1] after cnnlens' shared post-processing): Pearson and Spearman correlation, SSIM "
                 "(scikit-image, data range 1), IoU of the top 5% and 10% pixels, and the largest absolute "
                 "difference of the maps (`maps_maxabs`; maps are stored as float16, so about 1e-3 is the "
                 "resolution) and of `raw` where both raw attributions have the same shape (relative: divided by "
                 "the larger max |raw|). Means over images; 1.0 (correlations, SSIM, IoU) and 0 (differences) "
                 "mean identical. Click a column header to sort.")
        sec.table(tab, ".3g", blank="the two backends' raw attributions have different shapes (last column), so "
                                    "raw values are not compared; or a correlation is undefined because the maps "
                                    "are constant (every pixel equal) on every image compared.")
        cols = [c for c in ("pearson", "spearman", "ssim", "iou_top5", "iou_top10") if c in tab.columns]
        vals = tab[cols].to_numpy(dtype=float)
        rows = [f"{m}: {b}" for m, b in zip(tab.method, tab.backends, strict=True)]
        figs["agreement.png"] = F.heatmap(vals, rows, cols, "Same method, different backends (mean over images)",
                                          vmin=-1 if np.nanmin(vals) < 0 else 0, vmax=1)
        sec.figure("agreement.png", "Backend agreement per method")
    for backend, (names, mat) in T.cross_method(st).items():
        name = f"agreement_methods_{backend}.png"
        figs[name] = F.heatmap(mat, names, names, f"Method x method Spearman within {backend}", vmin=-1, vmax=1,
                               cmap="RdBu_r", fmt="{:.1f}", annotate=len(names) <= 24)
        sec.figure(name, f"Method x method agreement (mean Spearman over images) within {backend}")
    return sec


def _trap_text(res: Any) -> str:
    """The pixel-noise trap, in this study's numbers (every claim is computed, not assumed)."""
    keys = ["deletion_zero.auc", "deletion_blur.auc", "road.combined"]
    t = res[res.metric.isin(keys)].groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
    if ("random_pixel", "baseline") not in t.index or ("random_smooth", "baseline") not in t.index:
        return ""
    cams = [i for i in t.index if i[0] == "gradcam"]
    if not cams or "deletion_blur.auc" not in t.columns or "deletion_zero.auc" not in t.columns:
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
        out.append(f"ROAD's noisy linear imputation (combined score over its image subset, higher is better): pixel "
                   f"noise {rp['road.combined']:.3f}, smooth random {rs['road.combined']:.3f}, Grad-CAM "
                   f"{gc['road.combined']:.3f}.")
    out.append("Read deletion numbers with the blurred substrate, against the smooth random baseline, and next "
               "to ROAD.")
    return " ".join(out)


def faithfulness(st: Study, figs: dict[str, bytes]) -> tuple[Section, Any]:
    sec = Section("Faithfulness")
    tab = T.faithfulness(st)
    if tab is None:
        sec.text("Faithfulness was not measured in this study.")
        return sec, None
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
    sec.table(tab, ".3f", blank="not measured for this row: ROAD runs on the suite's `road_images` only, and a "
                                "method limited by `max_images` may have none of them.")
    trap = _trap_text(st.res)
    if trap:
        sec.text(trap)
    tk = T.toolkit_metrics(st)
    if tk is not None:
        sec.text("**The toolkits' own metrics**, each computed by the toolkit that defines it (cnnlens calls it, "
                 "per image, with a seed of its own): `captum.infidelity` (Captum's `infidelity`: the squared error "
                 "between the attribution's dot product with small input perturbations and the score change they "
                 "cause; lower is better), `captum.sensitivity_max` (Captum's `sensitivity_max`: the largest change "
                 "of the explanation under small input noise; lower is better), `pgc.confidence_change`, "
                 "`pgc.drop_in_confidence` and `pgc.increase_in_confidence` (pytorch-grad-cam's "
                 "`CamMultImageConfidenceChange`, `DropInConfidence` and `IncreaseInConfidence` on the input "
                 "multiplied by the map), and `pgc.arcc` (pytorch-grad-cam's `ARCC`: the harmonic mean of the map's coherency, 1 - its complexity and its ROAD-combined score; higher is better). "
                 "The suite's `[faithfulness]` keys choose which run.")
        sec.table(tk, ".4g", blank="not computed for this row (a baseline map gets infidelity and the confidence "
                                   "change only; the suite turns the others on).")
    means, n_img = T.curves(st)
    if means:
        titles = {k: k.replace("_", " ") for k in means}
        backends = sorted({b for m in means.values() for (_x, b) in m.index if b != "baseline"})
        for backend in backends:
            name = f"curves_{backend}.png"
            figs[name] = F.curves(backend, means, n_img, titles)
            sec.figure(name, f"Deletion and insertion curves, {backend} (baselines in black)")
    return sec, tab


def localization(st: Study, figs: dict[str, bytes]) -> Section:
    sec = Section("Localization")
    tab, n = T.localization(st)
    if tab is None:
        sec.text("No image with a known object box or mask in this study.")
        return sec
    sec.text(f"{n} images with ground-truth boxes (pasted-object canvases, kept only when the model still "
             "classifies the object, or the dataset's own annotations). Pointing game: the map's maximum falls "
             "inside a box (no tolerance margin); energy-based pointing game (Wang et al. 2020, Score-CAM): the "
             "share of the map's mass inside the boxes. Chance for energy is the boxes' share of the image. "
             "Caveat: on a flat gray canvas, methods that multiply by (input - baseline) with a zero baseline "
             "(input x gradient, integrated gradients, GradientSHAP) are near zero on the background by "
             "construction, because the gray (124/255) is almost the normalisation mean; their energy there "
             "measures the canvas, not the method.")
    sec.table(tab, ".3f", blank="the map is zero everywhere on these images, so the share of its mass inside the "
                                "box is undefined.")
    labels = [T.label(m, b) for m, b in zip(tab.method, tab.backend, strict=True)]
    figs["localization.png"] = F.bars(labels, list(tab["pointing.energy"]),
                                      ["black" if b == "baseline" else "tab:blue" for b in tab.backend],
                                      "energy inside the box (mean)", "Energy-based pointing game (baselines in black)")
    sec.figure("localization.png", "Energy-based pointing game (baselines in black)")
    return sec


def _missing(st: Study, have: set[tuple[str, str]], kind: str, why_absent: str) -> str:
    """A sentence naming the explained pairs that have no row in a section, and why."""
    status = T.cell_status(st, kind)
    absent, failed = [], []
    for m, b in T.explained_pairs(st):
        if b == "baseline" or (m, b) in have:
            continue
        s = status.get((m, b))
        if s is None:
            absent.append(T.label(m, b))
        elif s[0] != "done":
            failed.append(f"{T.label(m, b)} ({s[0]}: {s[1]})" if s[1] else f"{T.label(m, b)} ({s[0]})")
    out = []
    if absent:
        out.append(f"Not in this section, {why_absent}: {', '.join(absent)}.")
    if failed:
        out.append(f"Failed here: {'; '.join(failed)}.")
    return " ".join(out)


def sanity(st: Study, figs: dict[str, bytes]) -> Section:
    sec = Section("Sanity")
    tab, mean, steps = T.sanity(st)
    if tab is None:
        sec.text("The sanity check was not run in this study.")
        return sec
    sec.text("Cascading model-parameter randomization (Adebayo et al. 2018): layers are re-initialised from the "
             "output back to the input, cumulatively (each layer's own `reset_parameters` under a fixed seed; "
             "BatchNorm layers become identities), and each method's map is compared with the map of the trained "
             "model: Spearman correlation of absolute values and SSIM. A method that passes drops towards 0 as "
             "soon as the top layers are randomized; one that stays high explains the input, not the model."
             + (f" Steps (last layer randomized at each): {', '.join(f'{i + 1}: `{s}`' for i, s in enumerate(steps))}."
                if steps else ""))
    sec.table(tab, ".3f", blank="the correlation is undefined: the map is constant (every pixel equal) after "
                                "this step.")
    have = {(m, b) for m, b in zip(tab.method, tab.backend, strict=True)}
    miss = _missing(st, have, "sanity", "excluded by the suite's [sanity] section (perturbation methods evaluate "
                                         "the model hundreds of times per map)")
    if miss:
        sec.text(miss)
    for backend in sorted({b for (_m, b, _ms) in mean.index}):
        name = f"sanity_{backend}.png"
        figs[name] = F.sanity(backend, mean, steps)
        sec.figure(name, f"Cascading randomization curves, {backend}")
    return sec


def speed(st: Study, figs: dict[str, bytes]) -> Section:
    sec = Section("Speed")
    tab = T.speed(st)
    if tab is None:
        sec.text("Speed was not measured in this study.")
        return sec
    how = next((v for k, v in st.meta.items() if k.startswith("memory_probe:")), "")
    sec.text("Per (method, backend, batch size): median and IQR of the backend call's latency per image "
             "(after warm-up; on CUDA after `torch.cuda.synchronize`), throughput in images/s and peak extra "
             f"memory during the timed calls ({how}). The limit is measured in the same run on the same batch: "
             "`forward` for forward-only methods, `grad_layer` (forward + gradient to the CAM layer) for gradient "
             "CAMs, `grad_input` (forward + gradient to the input) for gradient methods, times n for methods that "
             "evaluate the model n times (samples, steps, windows, channels). ratio = latency / limit; 1.0 would "
             "be a perfect implementation; below 1 happens when a method batches its n internal forwards more "
             "efficiently than the limit's unit, which runs at the study's batch size. `call_ms` is the whole "
             "`Explainer.explain` call per image (cnnlens' checks, target resolution and post-processing "
             "included). Peak memory is the RSS above the resident set before the timed calls: 0 when the call "
             "fits in memory the allocator already holds. Slow perturbation methods are timed at the smallest "
             "batch size only.")
    sec.table(tab, ".3g", blank="no compute limit for this method (it has no unit of work cnnlens can time "
                                "on its own), so no ratio.")
    have = {(m, b) for m, b in zip(tab.method, tab.backend, strict=True)}
    miss = _missing(st, have, "speed", "not timed by the suite's [speed] section (their explain time is in the "
                                       "Run section's cell seconds)")
    if miss:
        sec.text(miss)
    for bs, part in tab.groupby("bs"):
        name = f"speed_bs{bs}.png"
        figs[name] = F.speed(part.sort_values("latency_ms"), int(bs))
        sec.figure(name, f"Speed, batch size {bs}")
    return sec


def _reason(st: Study, key: tuple[str, str, str, str]) -> str:
    s = st.explained.get(key)
    if s is None:
        return "not run on\nthis image\n(max_images)"
    status, error = s
    if status == "done":
        return "no map\nstored"
    short = error.split(":")[0] if error else status
    return f"{status}:\n{short}"


def grid(st: Study, figs: dict[str, bytes], max_images: int = GRID_IMAGES) -> Section:
    from PIL import Image

    from cnnlens.bench.store import _array_from

    sec = Section("Image x method grid")
    if not st.maps:
        sec.text("No maps were stored.")
        return sec
    imgs = st.images
    model = imgs.model.iloc[0]
    imgs = imgs[imgs.model == model]
    # Images with at least one stored map (a slim published copy keeps maps for its first few only).
    with_maps = {i for (mo, i, _m, _b) in st.maps if mo == model}
    shown = imgs[imgs.image.isin(with_maps)].head(max_images)
    pairs = sorted({(m, b) for (mo, _i, m, b) in st.explained if mo == model},
                   key=lambda p: (p[1] == "baseline", p[0], p[1]))
    sec.text(f"Every (method, backend) over the first {len(shown)} of {len(imgs)} images of model `{model}`, one "
             "figure per image (jet colour map, alpha 0.5, each map scaled to its 99th percentile so sparse pixel "
             "maps stay visible; a white box is a ground-truth box). A grey cell says why it has no map: a method "
             "limited to fewer images by the suite, or the error it raised (the Failures section has the full "
             "message).")
    for row in shown.itertuples(index=False):
        disp = np.asarray(Image.open(io.BytesIO(row.png)).convert("RGB"))
        box = json.loads(row.box) if row.box else None
        cells = []
        for m, b in pairs:
            blob = st.maps.get((model, row.image, m, b))
            sal = _array_from(blob).astype(np.float32) if blob is not None else None
            cells.append((f"{m}\n{b}", sal, "" if sal is not None else _reason(st, (model, row.image, m, b))))
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(row.image))
        name = f"grid_{row.position:03d}_{safe}.jpg"
        figs[name] = F.image_grid(disp, box, f"{row.image}: explained for class '{row.label}'", cells)
        sec.figure(name, f"{row.image} (class '{row.label}')")
    return sec


def failures(st: Study) -> Section:
    sec = Section("Failures")
    df, n_bad, n_cells = T.failures(st)
    if df.empty:
        sec.text("Every cell finished.")
        return sec
    sec.text(f"{n_bad} of {n_cells} cells did not produce results (a failing method is a result, not a crash; the "
             "same error repeats for each image shard and batch size and is listed once):")
    sec.table(df)
    return sec


def run(st: Study) -> Section:
    sec = Section("Run")
    sec.text("```json\n" + json.dumps(T.run_info(st), indent=1, default=str) + "\n```")
    return sec
