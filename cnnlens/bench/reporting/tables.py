"""The report's numbers: pandas tables computed from a :class:`~cnnlens.bench.reporting.data.Study`.

No prose and no figures here: each function returns a DataFrame (or plain values) that the
sections module words and the figures module draws.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cnnlens.bench.reporting.data import Study, error_line

FAITH_KEYS = ("deletion_zero.auc", "deletion_blur.auc", "insertion_blur.auc", "avg_drop", "increase_conf",
              "road.morf", "road.lerf", "road.combined")
#: The toolkits' own metrics, each computed by the toolkit that defines it.
TOOLKIT_KEYS = ("captum.infidelity", "captum.sensitivity_max", "pgc.confidence_change", "pgc.drop_in_confidence",
                "pgc.increase_in_confidence", "pgc.arcc")
AGREE_KEYS = ("pearson", "spearman", "ssim", "iou_top5", "iou_top10", "maps_maxabs", "raw_maxabs", "raw_maxabs_rel")
SUBSTRATE_NAMES = ("deletion_zero", "deletion_blur", "insertion_blur")


def label(method: str, backend: str) -> str:
    return f"{method} [{backend}]"


def untrained_models(meta: dict[str, Any]) -> list[str]:
    """Models of the study whose weights are random: ``weights = "none"`` or cnnlens' test models."""
    out = []
    for m in (meta.get("suite") or {}).get("models", []):
        spec = str(m.get("spec", ""))
        if m.get("weights") in (None, "none") or spec.startswith("cnnlens.testing:"):
            out.append(str(m.get("id", spec)))
    return out


def agreement(st: Study) -> Any:
    """Mean backend-agreement measures per (method, backend pair), with the raw shapes compared."""
    res = st.res
    ag = res[res.metric.str.startswith("agree.")]
    if ag.empty:
        return None
    tab = ag.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
    tab.columns = [c.replace("agree.", "") for c in tab.columns]
    tab = tab[[c for c in AGREE_KEYS if c in tab.columns]].reset_index().rename(columns={"backend": "backends"})
    tab["images"] = [int(ag[(ag.method == m) & (ag.backend == b)].image.nunique())
                     for m, b in zip(tab.method, tab.backends, strict=True)]
    tab["raw shapes"] = [" vs ".join(str(st.raw_shapes.get((m, b), "?")) for b in pair.split("|"))
                         for m, pair in zip(tab.method, tab.backends, strict=True)]
    tab["backends"] = tab["backends"].str.replace("|", " vs ", regex=False)
    return tab.sort_values(["method", "backends"]).reset_index(drop=True)


def cross_method(st: Study) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per backend: the method names and their mean Spearman matrix (NaN where not compared)."""
    res = st.res
    cross = res[res.metric == "cross.spearman"]
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for backend, sub in cross.groupby("backend"):
        pairs = sub.groupby("method")["value"].mean()
        names = sorted({p for m in pairs.index for p in m.split("|")})
        mat = np.full((len(names), len(names)), np.nan)
        for m, v in pairs.items():
            a, b = m.split("|")
            i, j = names.index(a), names.index(b)
            mat[i, j] = mat[j, i] = v
        np.fill_diagonal(mat, 1.0)
        out[str(backend)] = (names, mat)
    return out


def faithfulness(st: Study) -> Any:
    """Mean faithfulness measures per (method, backend), sorted by the blurred deletion AUC."""
    res = st.res
    sub = res[res.metric.isin(FAITH_KEYS)]
    if sub.empty:
        return None
    tab = sub.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
    tab = tab[[k for k in FAITH_KEYS if k in tab.columns]]
    counts = sub[sub.metric == "avg_drop"].groupby(["method", "backend"])["image"].nunique()
    tab.insert(0, "images", counts.reindex(tab.index).fillna(0).astype(int))
    if "increase_conf" in tab.columns:
        tab["increase_conf"] = tab["increase_conf"] * 100
    tab = tab.sort_values("deletion_blur.auc" if "deletion_blur.auc" in tab.columns else tab.columns[0])
    return tab.reset_index()


def toolkit_metrics(st: Study) -> Any:
    """Mean of each toolkit-defined metric per (method, backend), with the images it covers."""
    res = st.res
    sub = res[res.metric.isin(TOOLKIT_KEYS)]
    if sub.empty:
        return None
    tab = sub.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric")
    tab = tab[[k for k in TOOLKIT_KEYS if k in tab.columns]]
    tab.insert(0, "images", sub.groupby(["method", "backend"])["image"].nunique().reindex(tab.index).astype(int))
    sort = "captum.infidelity" if "captum.infidelity" in tab.columns else tab.columns[1]
    return tab.sort_values(sort).reset_index()


def curves(st: Study) -> tuple[dict[str, Any], Any]:
    """Per substrate, the mean curve per (method, backend) (columns: step), and images per pair."""
    res = st.res
    cur = res[res.metric.str.contains(r"\.curve@", regex=True)]
    if cur.empty:
        return {}, None
    means = {}
    for name in SUBSTRATE_NAMES:
        c = cur[cur.metric.str.startswith(name + ".curve@")].copy()
        if c.empty:
            continue
        c["step"] = c.metric.str.split("@").str[1].astype(int)
        means[name] = c.groupby(["method", "backend", "step"])["value"].mean().unstack("step")
    n_img = cur[cur.metric.str.startswith("deletion_blur.curve@")].groupby(["method", "backend"])["image"].nunique()
    return means, n_img


def localization(st: Study) -> tuple[Any, int]:
    """Pointing-game hit rate and energy per (method, backend), and the number of images with boxes."""
    res = st.res
    sub = res[res.metric.isin(["pointing.hit", "pointing.energy"])]
    if sub.empty:
        return None, 0
    n = int(sub[sub.metric == "pointing.hit"].image.nunique())
    tab = sub.groupby(["method", "backend", "metric"])["value"].mean().unstack("metric").reset_index()
    return tab.sort_values("pointing.energy", ascending=False).reset_index(drop=True), n


def sanity(st: Study) -> tuple[Any, Any, list[str] | None]:
    """The sanity table (first and last step), the mean curves, and the randomized layer per step."""
    res = st.res
    sub = res[res.metric.str.startswith("sanity.")].copy()
    if sub.empty:
        return None, None, None
    sub["measure"] = sub.metric.str.split("@").str[0].str.replace("sanity.", "", regex=False)
    sub["step"] = sub.metric.str.split("@").str[1].astype(int)
    steps = next((v for k, v in st.meta.items() if k.startswith("sanity_steps:")), None)
    mean = sub.groupby(["method", "backend", "measure", "step"])["value"].mean().unstack("step")
    last = mean.columns.max()
    tab = mean[[1, last]].unstack("measure")
    tab.columns = [f"{meas} after step {s}" for s, meas in tab.columns]
    tab = tab.reset_index()
    sort_col = f"spearman after step {last}"
    if sort_col in tab.columns:
        tab = tab.sort_values(sort_col)
    return tab.reset_index(drop=True), mean, steps


def speed(st: Study) -> Any:
    """Latency, throughput, memory and ratio to the compute limit per (method, backend, batch size)."""
    res = st.res
    sub = res[res.metric.str.startswith("speed.")].copy()
    if sub.empty:
        return None
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
    return tab[[c for c in cols if c in tab.columns]].sort_values(["bs", "latency_ms"]).reset_index(drop=True)


def failures(st: Study) -> tuple[Any, int, int]:
    """Cells that did not finish, one row per distinct (kind, method, backend, error)."""
    import pandas as pd

    cells = st.cells
    bad = cells[cells.status != "done"]
    rows = []
    for r in bad.itertuples(index=False):
        spec = json.loads(r.spec)
        rows.append({"kind": r.kind, "method": spec.get("method", ""),
                     "backend": spec.get("backend", "|".join(spec.get("backends", []))),
                     "status": r.status, "error": error_line(r.error)[:200]})
    df = pd.DataFrame(rows, columns=["kind", "method", "backend", "status", "error"])
    return df.drop_duplicates(["kind", "method", "backend", "error"]).reset_index(drop=True), len(bad), len(cells)


def cell_status(st: Study, kind: str) -> dict[tuple[str, str], tuple[str, str]]:
    """Per (method, backend): the worst status of its cells of one kind and the first error."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for r in st.cells[st.cells.kind == kind].itertuples(index=False):
        spec = json.loads(r.spec)
        key = (spec.get("method", ""), spec.get("backend", ""))
        prev = out.get(key)
        if prev is None or (prev[0] == "done" and r.status != "done"):
            out[key] = (r.status, error_line(r.error)[:160])
    return out


def explained_pairs(st: Study) -> list[tuple[str, str]]:
    """Every (method, backend) that has an explain cell, in the study's order."""
    return list(dict.fromkeys((m, b) for (_mo, _i, m, b) in st.explained))


def run_info(st: Study) -> dict[str, Any]:
    meta, cells = st.meta, st.cells
    keep = {k: meta.get(k) for k in ("suite_name", "suite_digest", "device", "git_revision", "python", "platform",
                                     "processor", "torch_threads", "gpu") if k in meta}
    keep["versions"] = meta.get("versions")
    if not cells.empty:
        keep["cells"] = len(cells)
        keep["cell_seconds_total"] = round(float(cells.seconds.sum()), 1)
        keep["wall_seconds_first_to_last_cell"] = round(float(cells.finished.max() - cells.finished.min()), 1)
    keep["invocations"] = len([k for k in meta if k.startswith("run:")])
    return keep
