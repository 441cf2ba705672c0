"""Quantus (Hedström et al., JMLR 2023; PyPI ``quantus``, the ``quantus`` extra) as a metrics backend.

Every value is computed by the Quantus metric class of that name, called the way Quantus documents
(``metric(model=..., x_batch=..., y_batch=..., a_batch=..., s_batch=..., explain_func=...,
device=..., batch_size=...)``); this module only chooses small, documented settings, hands Quantus
cnnlens' maps and reads one number per image out of what the class returns. A value is stored as
``quantus.<Class>`` (``quantus.PixelFlipping``), so the metric's name says which library computed it
(:func:`library`).

Where a metric re-explains (robustness, randomisation, the axiomatic input-invariance test), its
``explain_func`` is cnnlens' :class:`~cnnlens.explainer.Explainer` of the same (method, backend,
options) on the model Quantus passes in (MPRT passes its randomised copies), so Quantus re-explains
with the toolkit's own code. The maps handed to Quantus are cnnlens' contract maps ((H, W) in
[0, 1], one channel), the same maps every other measure of the study scores.

Three of Quantus' metrics are left out. IROF: Quantus 0.6.0 computes its area with ``np.trapz``,
which NumPy 2.4 removed. ROAD: Quantus 0.6.0 ranks the attribution broadcast to
every channel (C x H x W indices) but imputes pixels of one channel (H x W), so on RGB images it
indexes past the image and fails. SensitivityN: it correlates attribution sums and output drops *across the
images of a batch*, so an image's value would depend on its batch neighbours.

Randomness (FaithfulnessCorrelation's subsets, the sensitivity noise, RandomLogit's class) comes from NumPy's and torch's global generators; :func:`compute` seeds both (torch's forked) before
each metric, so a value is reproducible and a direct Quantus call seeded the same way gives the same
number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: Prefix of every metric name this backend stores.
PREFIX = "quantus."


@dataclass(frozen=True)
class QuantusMetric:
    """One Quantus metric as cnnlens runs it."""

    cls: str  # the class name in ``quantus``
    family: str  # Quantus' family: faithfulness, robustness, localisation, complexity, randomisation, axiomatic
    direction: int  # +1: higher is better, -1: lower is better
    settings: dict[str, Any] = field(default_factory=dict)  # small defaults, overridable from the suite
    explains: bool = False  # needs an explain_func (re-explains perturbed inputs or models)
    needs_mask: bool = False  # localisation: needs the object's mask (s_batch)
    reduce: str = "value"  # how one image's output becomes one number (see _per_image)
    doc: str = ""


_M = QuantusMetric
#: The metrics a suite may name (``[quantus] metrics``), with the settings a study uses unless it overrides them.
METRICS: dict[str, QuantusMetric] = {m.cls: m for m in (
    # faithfulness
    _M("PixelFlipping", "faithfulness", -1, {"features_in_step": 64, "perturb_baseline": "black"}, reduce="auc",
       doc="AUC of the class score as pixels are flipped in saliency order (lower: faithful)"),
    _M("RegionPerturbation", "faithfulness", -1, {"patch_size": 8, "regions_evaluation": 8, "order": "morf"},
       reduce="auc", doc="AUC of the score as MoRF patches are perturbed (lower: faithful)"),
    _M("FaithfulnessCorrelation", "faithfulness", 1, {"nr_runs": 10, "subset_size": 64, "return_aggregate": False},
       doc="Pearson of attribution sums and score drops over random subsets"),
    _M("MonotonicityCorrelation", "faithfulness", 1, {"nr_samples": 3, "features_in_step": 64},
       doc="Spearman of attributions and score variance as features are perturbed"),
    _M("Selectivity", "faithfulness", -1, {"patch_size": 8}, reduce="auc",
       doc="AUC of the score as the most relevant patches are removed (lower: faithful)"),
    _M("Infidelity", "faithfulness", -1, {"perturb_patch_sizes": [8], "n_perturb_samples": 3},
       doc="expected squared error between attribution-weighted and real output change"),
    # robustness
    _M("MaxSensitivity", "robustness", -1, {"nr_samples": 3, "lower_bound": 0.2}, explains=True,
       doc="largest change of the explanation under small input noise"),
    _M("AvgSensitivity", "robustness", -1, {"nr_samples": 3, "lower_bound": 0.2}, explains=True,
       doc="mean change of the explanation under small input noise"),
    _M("RelativeInputStability", "robustness", -1, {"nr_samples": 3}, explains=True,
       doc="largest relative change of the explanation over relative input change"),
    # localisation
    _M("PointingGame", "localisation", 1, {}, needs_mask=True, doc="1 if the map's maximum lies in the object"),
    _M("AttributionLocalisation", "localisation", 1, {}, needs_mask=True,
       doc="share of positive attribution inside the object"),
    _M("TopKIntersection", "localisation", 1, {"k": 64}, needs_mask=True,
       doc="share of the top-k pixels inside the object"),
    _M("RelevanceMassAccuracy", "localisation", 1, {}, needs_mask=True,
       doc="share of relevance mass inside the object"),
    _M("RelevanceRankAccuracy", "localisation", 1, {}, needs_mask=True,
       doc="share of the object's size top-ranked pixels inside it"),
    # complexity
    _M("Sparseness", "complexity", 1, {}, doc="Gini index of the attributions (higher: sparser)"),
    _M("Complexity", "complexity", -1, {}, doc="entropy of the attributions (lower: simpler)"),
    # randomisation
    _M("MPRT", "randomisation", -1, {"layer_order": "bottom_up", "return_last_correlation": True}, explains=True,
       doc="Spearman of the map and the fully randomised model's map (lower: sensitive to the weights)"),
    _M("EfficientMPRT", "randomisation", 1, {"layer_order": "bottom_up"}, explains=True,
       doc="relative rise of the map's entropy as layers are randomised"),
    _M("RandomLogit", "randomisation", -1, {}, explains=True,
       doc="SSIM of the map with the map of a random other class (lower: class sensitive)"),
    # axiomatic
    _M("Completeness", "axiomatic", 1, {}, reduce="bool", doc="attributions sum to the output change (1: holds)"),
    _M("InputInvariance", "axiomatic", 1, {"input_shift": -1}, explains=True, reduce="bool",
       doc="the explanation of a shifted input and model is unchanged (1: holds)"),
)}

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiomatic")


def direction(metric: str) -> int | None:
    """+1 / -1 for a stored ``quantus.<Class>`` metric (higher / lower is better), else None."""
    if metric.startswith(PREFIX) and metric[len(PREFIX):] in METRICS:
        return METRICS[metric[len(PREFIX):]].direction
    return None


def library(metric: str) -> str:
    """Which library computed a stored metric value, from its name."""
    if metric.startswith(PREFIX):
        return "quantus"
    if metric.startswith("captum."):
        return "captum"
    if metric.startswith("pgc."):
        return "pytorch-grad-cam"
    return "cnnlens"


def require() -> Any:
    """Import Quantus, or raise the one error that says how to install it."""
    from cnnlens.errors import SuiteError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantus
    except ImportError:
        raise SuiteError("the [quantus] section needs Quantus: pip install -e '.[quantus]'") from None
    return quantus


def settings_for(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``quantus.<name>(...)``: the defaults above, the suite's overrides,
    and Quantus' quiet switches."""
    out = {**METRICS[name].settings, **(overrides or {})}
    out.update(disable_warnings=True, display_progressbar=False)
    return out


def make_explain_func(method: str, backend: str, layer: str | None = None,
                      options: dict[str, Any] | None = None) -> Callable:
    """An ``explain_func`` for Quantus: cnnlens' Explainer of (method, backend, options) on the model
    Quantus passes (MPRT passes randomised copies; ``layer`` is a module path, so it names the same
    layer in a copy), returning (N, 1, H, W) contract maps as NumPy."""
    opts = dict(options or {})

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: Any, **_kwargs: Any) -> np.ndarray:
        from cnnlens.explainer import Explainer

        dev = next(model.parameters()).device
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=dev)
        t = torch.as_tensor(np.asarray(targets).reshape(-1).astype(np.int64), device=dev)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = Explainer(model, method, backend, layer=layer, **opts).explain(x, target=t)
        return e.maps.float().cpu().numpy()[:, None]

    return explain_func


def _per_image(spec: QuantusMetric, out: Any) -> np.ndarray:
    """One number per image from what a Quantus class returned."""
    if spec.reduce == "auc":
        # Quantus' own helpers.utils.calculate_auc (trapezoid, dx = 1) calls np.trapz, which NumPy 2.4
        # removed; np.trapezoid is the same rule.
        return np.array([float(np.trapezoid(np.asarray(c, np.float64), dx=1)) for c in out], np.float64)
    if spec.reduce == "bool":
        return np.asarray(out, np.float64).reshape(-1)
    if isinstance(out, dict):  # MPRT without return_last_correlation: {layer: [per image]}; the last is all random
        out = list(out.values())[-1]
    return np.asarray(out, np.float64).reshape(-1)


def call(name: str, model: nn.Module, x: Tensor, targets: Sequence[int], maps: np.ndarray,
         masks: np.ndarray | None = None, explain_func: Callable | None = None,
         overrides: dict[str, Any] | None = None, batch_size: int = 64) -> Any:
    """Call ``quantus.<name>`` once, as documented, and return what it returned."""
    quantus = require()
    spec = METRICS[name]
    metric = getattr(quantus, name)(**settings_for(name, overrides))
    kwargs: dict[str, Any] = {}
    if spec.explains:
        kwargs["explain_func"] = explain_func
        kwargs["explain_func_kwargs"] = {}
    x_np = x.detach().float().cpu().numpy()
    a = np.asarray(maps, np.float32)[:, None]
    s = None if masks is None else np.asarray(masks, np.float32)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=model, x_batch=x_np, y_batch=np.asarray(targets, np.int64), a_batch=a, s_batch=s,
                     device=str(x.device), batch_size=batch_size, channel_first=True, softmax=True, **kwargs)
    return out


def compute(name: str, model: nn.Module, x: Tensor, targets: Sequence[int], maps: np.ndarray,
            masks: np.ndarray | None = None, explain_func: Callable | None = None,
            overrides: dict[str, Any] | None = None, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """One value per image of ``quantus.<name>`` on (x, targets, maps), NumPy's and torch's RNGs seeded.

    Args:
        x: (N, C, H, W) images in the model's input space.
        maps: (N, H, W) maps (cnnlens' contract maps).
        masks: (N, H, W) bool object masks, for the localisation metrics.
        explain_func: :func:`make_explain_func` of the maps' (method, backend), for the metrics that re-explain.
        overrides: Quantus keyword arguments replacing this module's defaults.

    Raises:
        SuiteError: Quantus is not installed, or the metric needs masks or an explanation it was not given.
    """
    from cnnlens.errors import SuiteError

    spec = METRICS[name]
    if spec.needs_mask and masks is None:
        raise SuiteError(f"quantus.{name} needs the object's box or mask; the images have none")
    if spec.explains and explain_func is None:
        raise SuiteError(f"quantus.{name} re-explains its inputs; it needs the method's explain function")
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            np.random.seed(seed)
            torch.manual_seed(seed)
            out = call(name, model, x, targets, maps, masks, explain_func, overrides, batch_size)
    finally:
        np.random.set_state(state)
    return _per_image(spec, out)



def study_rows(ctx: Any, spec: dict[str, Any], x: Tensor, maps: np.ndarray, targets: list[int]) -> list[Any]:
    """The ``[quantus]`` metrics of one explain cell, as result rows: each metric called on one image
    at a time (so no value depends on the image's batch neighbours), seeded per image.

    A metric that fails on an image (a model Quantus cannot handle, say) stores no value for it
    and its error goes into the study's metadata under ``quantus.error:<model>|<method>|<backend>|<metric>``,
    which the report lists; the cell's other results are kept.
    """
    from cnnlens.bench.data import region_of
    from cnnlens.bench.engine import image_seed
    from cnnlens.bench.metrics import region_mask
    from cnnlens.bench.suite import BASELINE_BACKEND
    from cnnlens.registry import REGISTRY

    q = spec["quantus"]
    mid, m, b = ctx.model_id, spec["method"], spec["backend"]
    explain_func = None
    if b != BASELINE_BACKEND:
        opts = dict(spec["options"])
        if "seed" in REGISTRY[(m, b)].all_options():
            opts.setdefault("seed", spec["seed"])
        explain_func = make_explain_func(m, b, ctx.layer, opts)
    rows = []
    n_classes = None
    for j, iid in enumerate(spec["images"]):
        if iid not in spec["quantus_images"]:
            continue
        region = region_of(ctx.records[iid], ctx.model, ctx.image_size)
        mask = None if region is None else region_mask(maps[j].shape, region)[None]
        for name in q["metrics"]:
            mt = METRICS[name]
            if (mt.explains and explain_func is None) or (mt.needs_mask and mask is None):
                continue  # a baseline map has no method to re-explain; an image without a box has no mask
            overrides = dict(q["settings"].get(name, {}))
            if name == "RandomLogit" and "num_classes" not in overrides:
                if n_classes is None:
                    with torch.no_grad():
                        n_classes = int(ctx.model(x[:1]).shape[-1])
                overrides["num_classes"] = n_classes
            try:
                v = compute(name, ctx.model, x[j:j + 1], [targets[j]], maps[j:j + 1], mask, explain_func,
                            overrides, seed=image_seed(spec["seed"], iid), batch_size=q["batch_size"])
                value = float(v[0])
            except Exception as exc:  # recorded, and the other metrics go on
                ctx.meta[f"quantus.error:{mid}|{m}|{b}|{name}"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                continue
            rows.append((mid, iid, m, b, PREFIX + name, value if np.isfinite(value) else None, 1))
    return rows
