"""The study engine: plan a suite into independent cells, run the ones not yet finished, store them.

A cell is a pure function of its spec (model, image batch, method, backend, options, measure
settings) and its key is a hash of that spec. Cells never share state through the process: the
only thing a cell reads from another is what the store holds (the agreement cells read the maps
the explain cells wrote), so the same cells can run in several processes or machines against one
store. In one process they run in dependency order: explain, agreement, cross-method, sanity, speed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import platform
import sqlite3
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens._files import output_error, writable
from cnnlens.bench import metrics as M
from cnnlens.bench import speed as S
from cnnlens.bench.store import Row, Store, sqlite_error
from cnnlens.bench.suite import BASELINE_BACKEND, Suite, _match, load_suite
from cnnlens.errors import CnnlensError, ModelError, OutputError, OutputExistsError
from cnnlens.outputs import among_inputs

KINDS = ("explain", "agreement", "crossmethod", "sanity", "speed")


@dataclass
class Cell:
    kind: str
    spec: dict[str, Any]
    deps: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        blob = json.dumps({"kind": self.kind, **self.spec}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


class Shard:
    """One shard's pixels, read on demand: the batch on the cell's device, targets and records."""

    def __init__(self, ids: list[str], x: Tensor, targets: list[int], records: list[Any]) -> None:
        self.ids = ids
        self.x = x
        self.targets = targets
        self.records = records


class PixelCache:
    """The last shards' normalised pixels, by image id, so a shard's many cells read its files once.

    It holds at most ``capacity`` images (two shards by default): memory stays flat however many
    images the study has.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.items: dict[tuple[str, str], Tensor] = {}

    def get(self, model_id: str, model: nn.Module, size: int | None, records: list[Any]) -> Tensor:
        from cnnlens.bench.data import load_pixels

        missing = [r for r in records if (model_id, r.id) not in self.items]
        if missing:
            _displays, x = load_pixels(missing, model, size)
            self.put(model_id, [r.id for r in missing], x)
        out = torch.stack([self.items[(model_id, r.id)] for r in records])
        keep = {(model_id, r.id) for r in records}
        while len(self.items) > max(self.capacity, len(keep)):
            old = next(k for k in self.items if k not in keep)
            del self.items[old]
        return out

    def put(self, model_id: str, ids: list[str], x: Tensor) -> None:
        """Keep these images' pixels (copies: a row must not hold its whole batch's memory)."""
        for iid, xi in zip(ids, x, strict=True):
            self.items[(model_id, iid)] = xi.clone()


@dataclass
class Context:
    """What one cell sees: the model, the cell's image records and targets, and (on the driver) the store.

    Pixels are not part of it: :meth:`shard` reads the cell's images on demand (through a small
    cache), so no process ever holds the study's images at once.
    """

    suite: Suite
    model_id: str
    model: nn.Module | None
    layer: str | None
    device: torch.device
    records: dict[str, Any]
    targets: dict[str, int]
    store: Store | None = None
    image_size: int | None = None
    pixels: PixelCache | None = None
    #: Study metadata the cell found (sanity stages, memory probe); the driver writes it.
    meta: dict[str, Any] = field(default_factory=dict)
    #: Seconds spent inside ``explain()`` and the metric calls (the engine overhead is the rest).
    compute: float = 0.0

    def shard(self, ids: list[str]) -> Shard:
        if self.model is None:
            raise CnnlensError("this cell needs the model, but it runs where none is loaded")
        recs = [self.records[i] for i in ids]
        cache = self.pixels if self.pixels is not None else PixelCache(len(ids))
        x = cache.get(self.model_id, self.model, self.image_size, recs)
        return Shard(ids, x.to(self.device), [int(self.targets[i]) for i in ids], recs)


def image_seed(suite_seed: int, image_id: str) -> int:
    return (suite_seed * 1_000_003 + int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16)) % 2**31


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def shard_size(suite: Suite) -> int:
    """Images per shard (``[images] shard``; older suites call it ``batch``)."""
    return int(getattr(suite.images, "shard", None) or suite.images.batch)


def shards_of(image_ids: list[str], size: int, positions: dict[str, int] | None = None) -> list[list[str]]:
    """Cut the study's images into shards of ``size``, by position (``position // size``).

    Positions come from the store when a study is resumed: images already there keep their shard,
    new ones are placed after them, so adding images to a study adds shards and leaves the
    finished ones (and their cell keys) untouched.
    """
    pos = positions if positions is not None else {iid: i for i, iid in enumerate(image_ids)}
    groups: dict[int, list[str]] = {}
    for iid in sorted(image_ids, key=lambda i: pos[i]):
        groups.setdefault(pos[iid] // size, []).append(iid)
    return [groups[k] for k in sorted(groups)]


def plan(suite: Suite, model_id: str, image_ids: list[str], positions: dict[str, int] | None = None) -> list[Cell]:
    """Every cell of one model, in a runnable (streaming) order.

    Shard by shard: the shard's images cell (targets and display copies), its explain cells, then
    the agreement and cross-method cells that compare them; then sanity and speed. A cell's
    ``deps`` are the cells whose output it reads, so any engine may run it once they are done.
    """
    pairs = suite.pairs()
    if positions is not None:
        image_ids = sorted(image_ids, key=lambda i: positions[i])
    batches = shards_of(image_ids, shard_size(suite), positions)
    faith = asdict(suite.faithfulness) if suite.faithfulness.enabled else None
    road_ids = image_ids[:suite.faithfulness.road_images] if faith else []
    n_faith = suite.faithfulness.images or len(image_ids)
    faith_ids = set(image_ids[:n_faith]) if faith else set()
    limit = {m: set(image_ids[:n]) for m, n in suite.methods.max_images.items()}

    def allowed(m: str, ids: list[str]) -> list[str]:
        return [i for i in ids if m not in limit or i in limit[m]]

    by_method: dict[str, list[str]] = {}
    for m, b in pairs:
        if b != BASELINE_BACKEND:
            by_method.setdefault(m, []).append(b)
    multi = {m for m, bs in by_method.items() if len(bs) > 1}
    cells: list[Cell] = []
    shard_cell: dict[str, str] = {}
    for all_ids in batches:
        images = Cell("images", {"model": model_id, "images": all_ids})
        cells.append(images)
        shard_cell.update(dict.fromkeys(all_ids, images.key))
        explain_key: dict[tuple[str, str], str] = {}
        for m, b in pairs:
            ids = allowed(m, all_ids)
            if not ids:
                continue
            espec = {
                "model": model_id, "images": ids, "method": m, "backend": b,
                "options": suite.options_for(m, b), "seed": suite.seed, "faith": faith,
                "faith_images": [i for i in ids if i in faith_ids],
                "road": [i for i in ids if i in road_ids], "localization": suite.localization.enabled,
                "keep_raw": m in multi,
            }
            if suite.quantus is not None:  # only then: a suite without [quantus] keeps its cell keys
                espec["quantus"] = asdict(suite.quantus)
                espec["quantus_images"] = [i for i in ids if i in image_ids[:suite.quantus.images]]
            c = Cell("explain", espec, deps=[images.key])
            explain_key[(m, b)] = c.key
            cells.append(c)
        if not suite.agreement.enabled:
            continue
        for m in sorted(multi):
            ids = allowed(m, all_ids)
            if not ids:
                continue
            bs = by_method[m]
            for i in range(len(bs)):
                for j in range(i + 1, len(bs)):
                    a, b = sorted((bs[i], bs[j]))
                    cells.append(Cell("agreement", {
                        "model": model_id, "images": ids, "method": m, "backends": [a, b],
                        "topk": list(suite.agreement.topk)},
                        deps=[explain_key[(m, a)], explain_key[(m, b)]]))
        if suite.agreement.within_backend:
            for b in sorted({b for _m, b in pairs if b != BASELINE_BACKEND}):
                ms = [m for m, bb in pairs if bb == b and allowed(m, all_ids)]
                if len(ms) > 1:
                    cells.append(Cell("crossmethod", {"model": model_id, "images": all_ids, "backend": b,
                                                      "methods": ms},
                                      deps=[explain_key[(m, b)] for m in ms]))

    def needs(ids: list[str]) -> list[str]:
        return list(dict.fromkeys(shard_cell[i] for i in ids))

    if suite.sanity.enabled:
        for m, b in pairs:
            ids = allowed(m, image_ids[:suite.sanity.images])
            if not ids or b == BASELINE_BACKEND or not _match(m, suite.sanity.include) or \
                    _match(m, suite.sanity.exclude, default=False):
                continue
            cells.append(Cell("sanity", {"model": model_id, "images": ids, "method": m, "backend": b,
                                         "options": suite.options_for(m, b), "seed": suite.seed,
                                         "max_steps": suite.sanity.max_steps}, deps=needs(ids)))
    if suite.speed.enabled:
        for m, b in pairs:
            if b == BASELINE_BACKEND or not _match(m, suite.speed.include) or \
                    _match(m, suite.speed.exclude, default=False):
                continue
            is_slow = _match(m, suite.speed.slow, default=False)
            sizes = [min(suite.speed.batch_sizes)] if is_slow else list(suite.speed.batch_sizes)
            for bs in sizes:
                cells.append(Cell("speed", {"model": model_id, "method": m, "backend": b,
                                            "options": suite.options_for(m, b), "seed": suite.seed,
                                            "batch_size": bs,
                                            "repeats": suite.speed.slow_repeats if is_slow else suite.speed.repeats,
                                            "warmup": 0 if is_slow else suite.speed.warmup,
                                            "images": image_ids[:bs]}, deps=needs(image_ids[:bs])))
    return cells


# --------------------------------------------------------------------------------------------
# Cell runners: each returns (rows, artifacts) or raises.
# --------------------------------------------------------------------------------------------

Artifact = tuple[str, str, str, str, str, np.ndarray]


def _explainer(ctx: Context, method: str, backend: str, options: dict[str, Any], seed: int) -> Any:
    from cnnlens.explainer import Explainer
    from cnnlens.registry import REGISTRY

    opts = dict(options)
    if "seed" in REGISTRY[(method, backend)].all_options():
        opts.setdefault("seed", seed)
    return Explainer(ctx.model, method, backend, layer=ctx.layer, **opts)


def _maps_for(ctx: Context, spec: dict[str, Any], x: Tensor, targets: list[int]) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(N, H, W) maps, raw attributions and seconds for one batch."""
    m, b = spec["method"], spec["backend"]
    if b == BASELINE_BACKEND:
        h, w = x.shape[-2:]
        maps = np.stack([M.baseline_map(m, h, w, image_seed(spec["seed"], i)) for i in spec["images"]])
        return maps, None, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = _explainer(ctx, m, b, spec["options"], spec["seed"])
        e = ex.explain(x, target=torch.as_tensor(targets, device=x.device))
    return e.maps.float().cpu().numpy(), e.raw.float().cpu().numpy(), float(e.seconds)


def run_images(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    """Read one shard, fix each image's target and keep its display copy (the store's image rows).

    The target is the record's own when its source fixes it (pasted canvases), its label when the
    study explains labels, else the model's top-1 class on the image.
    """
    from cnnlens.bench.data import load_pixels, predict

    recs = [ctx.records[i] for i in spec["images"]]
    displays, x = load_pixels(recs, ctx.model, ctx.image_size)
    if ctx.pixels is not None:  # the shard's explain cells, if they run here, need not decode it again
        ctx.pixels.put(ctx.model_id, list(spec["images"]), x)
    by_label = getattr(ctx.suite, "target", "predicted") == "label"

    def fixed(r: Any) -> int | None:
        if r.target is not None:
            return int(r.target)
        label = getattr(r, "label", None)
        return int(label) if by_label and label is not None else None

    free = [j for j, r in enumerate(recs) if fixed(r) is None]
    pred = dict(zip(free, predict(ctx.model, [displays[j] for j in free]), strict=True)) if free else {}
    cats = getattr(ctx.model, "cnnlens_categories", None)
    rows = []
    for j, (r, d) in enumerate(zip(recs, displays, strict=True)):
        t = fixed(r)
        t = pred[j] if t is None else t
        rows.append((r.id, r.source, t, cats[t] if cats and t < len(cats) else str(t), r.box, _png(d)))
    ctx.meta["images"] = rows
    return [], []


def run_explain(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    mid, m, b = ctx.model_id, spec["method"], spec["backend"]
    sh = ctx.shard(spec["images"])
    x, targets = sh.x, sh.targets
    idx = spec["images"]
    t0 = time.perf_counter()
    maps, raw, seconds = _maps_for(ctx, spec, x, targets)
    rows: list[Row] = []
    arts: list[Artifact] = []
    for j, iid in enumerate(spec["images"]):
        arts.append((mid, iid, m, b, "map", maps[j].astype(np.float16)))
        if spec["keep_raw"] and raw is not None:
            arts.append((mid, iid, m, b, "raw", raw[j].astype(np.float32)))
        if b != BASELINE_BACKEND:
            rows.append((mid, iid, m, b, "explain.seconds", seconds / len(idx), 0))
    faith = spec["faith"]
    fids = [j for j, iid in enumerate(spec["images"]) if iid in spec["faith_images"]]
    if faith and fids:
        mt = torch.from_numpy(maps[fids]).to(x.device)
        drop_, inc_ = M.average_drop_increase(ctx.model, x[fids], mt, [targets[j] for j in fids])
        drop = dict(zip(fids, drop_, strict=True))
        inc = dict(zip(fids, inc_, strict=True))
        toolkit = _toolkit_metrics(ctx, spec, x, maps, targets, fids)  # Captum's and pytorch-grad-cam's own
        for j, iid in enumerate(spec["images"]):
            if j not in drop:
                continue
            xi, t, sal = x[j], targets[j], maps[j]
            blurred = M.gaussian_blur(xi[None], faith["blur_kernel"], faith["blur_sigma"])[0]
            curves = {
                "deletion_zero": M.perturbation_curve(ctx.model, xi, sal, t, torch.zeros_like(xi), "deletion",
                                                      faith["steps"], faith["forward_batch"]),
                "deletion_blur": M.perturbation_curve(ctx.model, xi, sal, t, blurred, "deletion",
                                                      faith["steps"], faith["forward_batch"]),
                "insertion_blur": M.perturbation_curve(ctx.model, xi, sal, t, blurred, "insertion",
                                                       faith["steps"], faith["forward_batch"]),
            }
            for name, curve in curves.items():
                rows.append((mid, iid, m, b, f"{name}.auc", M.auc(curve), 1))
                rows.extend((mid, iid, m, b, f"{name}.curve@{k:03d}", float(v), 1) for k, v in enumerate(curve))
            rows.append((mid, iid, m, b, "avg_drop", float(drop[j]), 1))
            rows.append((mid, iid, m, b, "increase_conf", float(inc[j]), 1))
            if iid in spec["road"] and faith["road_percentiles"]:
                road = M.road_scores(ctx.model, xi, sal, t, faith["road_percentiles"],
                                     seed=image_seed(spec["seed"], iid))
                for k, v in road.items():
                    rows.append((mid, iid, m, b, f"road.{k}", v, 1))
                morf = np.mean([v for k, v in road.items() if k.startswith("morf")])
                lerf = np.mean([v for k, v in road.items() if k.startswith("lerf")])
                rows.append((mid, iid, m, b, "road.morf", float(morf), 1))
                rows.append((mid, iid, m, b, "road.lerf", float(lerf), 1))
                rows.append((mid, iid, m, b, "road.combined", float((lerf - morf) / 2), 1))
            rows.extend((mid, iid, m, b, k, v, 1) for k, v in toolkit.get(j, {}).items())
    if spec["localization"]:
        from cnnlens.bench.data import region_of

        for j, iid in enumerate(spec["images"]):
            box = region_of(ctx.records[iid], ctx.model, ctx.image_size)  # the mask, else every box
            if box is not None:
                rows.append((mid, iid, m, b, "pointing.hit", M.pointing_hit(maps[j], box), 1))
                rows.append((mid, iid, m, b, "pointing.energy", M.energy_pointing(maps[j], box), 1))
    if spec.get("quantus") and spec["quantus_images"]:
        from cnnlens.bench.quantus_metrics import study_rows

        rows.extend(study_rows(ctx, spec, x, maps, targets))
    ctx.compute += time.perf_counter() - t0
    return rows, arts


def _toolkit_metrics(ctx: Context, spec: dict[str, Any], x: Tensor, maps: np.ndarray, targets: list[int],
                     fids: list[int]) -> dict[int, dict[str, float]]:
    """The toolkits' own metrics the suite asks for (``[faithfulness]`` infidelity, sensitivity,
    confidence_change, arcc), per image index of the batch: each the defining toolkit's function.

    Sensitivity and ARCC re-explain perturbed inputs with the cell's own Explainer; the baseline
    maps have none, so they get infidelity and the confidence change only.
    """
    faith, m, b = spec["faith"], spec["method"], spec["backend"]
    out: dict[int, dict[str, float]] = {j: {} for j in fids}
    if faith.get("confidence_change"):
        cc = M.pgc_confidence_change(ctx.model, x[fids], torch.from_numpy(maps[fids]).to(x.device),
                                     [targets[j] for j in fids])
        for name, values in cc.items():
            for j, v in zip(fids, values, strict=True):
                out[j][f"pgc.{name}"] = float(v)
    explain: M.ExplainFn | None = None
    if b != BASELINE_BACKEND and (faith.get("sensitivity") or faith.get("arcc")):
        ex = _explainer(ctx, m, b, spec["options"], spec["seed"])

        def explain(xb: Tensor, tb: Any) -> Tensor:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ex.explain(xb, target=torch.as_tensor(list(tb), device=xb.device)).maps

    for j in fids:
        iid = spec["images"][j]
        seed = image_seed(spec["seed"], iid)
        if faith.get("infidelity"):
            out[j]["captum.infidelity"] = M.captum_infidelity(
                ctx.model, x[j], maps[j], targets[j], n_perturb_samples=faith["perturb_samples"],
                stdev=faith["infidelity_stdev"], seed=seed)
        if explain is not None and faith.get("sensitivity"):
            out[j]["captum.sensitivity_max"] = M.captum_sensitivity_max(
                explain, x[j], targets[j], n_perturb_samples=faith["perturb_samples"],
                perturb_radius=faith["perturb_radius"], seed=seed)
        if explain is not None and faith.get("arcc") and iid in spec["road"]:
            out[j]["pgc.arcc"] = M.pgc_arcc(ctx.model, x[j], maps[j], targets[j], explain,
                                            percentiles=faith["arcc_percentiles"], seed=seed)
    return out


def run_agreement(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    mid, m = ctx.model_id, spec["method"]
    a, b = spec["backends"]
    rows: list[Row] = []
    for iid in spec["images"]:
        ma = ctx.store.artifact(mid, iid, m, a, "map")
        mb = ctx.store.artifact(mid, iid, m, b, "map")
        if ma is None or mb is None:
            raise CnnlensError(f"maps of {m} for image {iid} are missing from the store")
        t0 = time.perf_counter()
        res = M.agreement(ma.astype(np.float32), mb.astype(np.float32), spec["topk"])
        ctx.compute += time.perf_counter() - t0
        ra = ctx.store.artifact(mid, iid, m, a, "raw")
        rb = ctx.store.artifact(mid, iid, m, b, "raw")
        if ra is not None and rb is not None:
            t0 = time.perf_counter()
            res["raw_maxabs"], res["raw_maxabs_rel"] = M.raw_difference(ra, rb)
            ctx.compute += time.perf_counter() - t0
        rows.extend((mid, iid, m, f"{a}|{b}", f"agree.{k}", v, 1) for k, v in res.items())
    return rows, []


def run_crossmethod(ctx: Context, spec: dict[str, Any], ok: set[str]) -> tuple[list[Row], list[Artifact]]:
    mid, b = ctx.model_id, spec["backend"]
    rows: list[Row] = []
    for iid in spec["images"]:
        maps = {m: ctx.store.artifact(mid, iid, m, b, "map") for m in spec["methods"] if m in ok}
        maps = {m: v.astype(np.float32) for m, v in maps.items() if v is not None}
        names = list(maps)
        t0 = time.perf_counter()
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                p, q = names[i], names[j]
                rows.append((mid, iid, f"{p}|{q}", b, "cross.spearman", M.spearman(maps[p], maps[q]), 1))
                rows.append((mid, iid, f"{p}|{q}", b, "cross.ssim", M.ssim(maps[p], maps[q]), 1))
        ctx.compute += time.perf_counter() - t0
    return rows, []


def randomization_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parameterised layers from the output back to the input, containers expanded one level.

    Sequential and ModuleList containers are opened, so EfficientNet's blocks are stages of their own.
    """
    out: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                visit(full + ".", child)
            elif any(True for _ in child.parameters()):
                out.append((full, child))

    visit("", model)
    return out[::-1]


def sanity_steps(n_stages: int, max_steps: int) -> list[int]:
    """Cumulative stage counts at which to measure: evenly spaced, always ending with all stages."""
    if n_stages <= max_steps:
        return list(range(1, n_stages + 1))
    return sorted({round(float(v)) for v in np.linspace(1, n_stages, max_steps)})


def run_sanity(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    """Cascading randomization (Adebayo et al. 2018), top layer first, re-initialised by each layer's
    own ``reset_parameters`` under a fixed seed (BatchNorm layers become identities)."""
    from cnnlens.explainer import Explainer
    from cnnlens.registry import REGISTRY

    mid, m, b = ctx.model_id, spec["method"], spec["backend"]
    sh = ctx.shard(spec["images"])
    x = sh.x
    t = torch.as_tensor(sh.targets, device=x.device)
    t0 = time.perf_counter()
    opts = dict(spec["options"])
    if "seed" in REGISTRY[(m, b)].all_options():
        opts.setdefault("seed", spec["seed"])
    net = copy.deepcopy(ctx.model)

    def maps_of(model: nn.Module) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = Explainer(model, m, b, layer=ctx.layer, **opts).explain(x, target=t)
        return e.maps.float().cpu().numpy()

    base = maps_of(net)
    stages = randomization_stages(net)
    steps = sanity_steps(len(stages), spec["max_steps"])
    rows: list[Row] = []
    done = 0
    for k, upto in enumerate(steps, start=1):
        for si in range(done, upto):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(spec["seed"] * 7919 + si)
                for sub in stages[si][1].modules():
                    if hasattr(sub, "reset_parameters"):
                        sub.reset_parameters()
        done = upto
        new = maps_of(net)
        for j, iid in enumerate(spec["images"]):
            rows.append((mid, iid, m, b, f"sanity.spearman@{k:02d}", M.spearman(np.abs(base[j]), np.abs(new[j])), 1))
            rows.append((mid, iid, m, b, f"sanity.ssim@{k:02d}", M.ssim(base[j], new[j]), 1))
    labels = [stages[u - 1][0] for u in steps]
    ctx.meta[f"sanity_steps:{mid}"] = labels
    ctx.compute += time.perf_counter() - t0
    return rows, []


def run_speed(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    from cnnlens.registry import REGISTRY

    mid, m, b, bs = ctx.model_id, spec["method"], spec["backend"], spec["batch_size"]
    sh = ctx.shard(spec["images"])
    reps = -(-bs // len(sh.ids))
    x = sh.x.repeat(reps, 1, 1, 1)[:bs].contiguous()
    t = torch.as_tensor((sh.targets * reps)[:bs], device=x.device)
    t0 = time.perf_counter()
    ex = _explainer(ctx, m, b, spec["options"], spec["seed"])
    seconds: list[float] = []
    layer_name: list[str | None] = []

    def call() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = ex.explain(x, target=t)
        seconds.append(e.seconds)
        layer_name.append(e.layer)

    for _ in range(spec["warmup"]):
        call()
    seconds.clear()
    with S.PeakMemory(ctx.device) as mem:
        walls = S.time_it(call, ctx.device, spec["repeats"], 0)
    stats = S.summarize(seconds, bs)
    layer = ctx.model.get_submodule(layer_name[-1]) if layer_name and layer_name[-1] else None
    impl = REGISTRY[(m, b)]
    unit, n = S.limit_of(m, impl.spec.kind, impl.validate_options(dict(ex.options)), x, layer, ctx.model)
    with S.no_param_grad(ctx.model):
        fns = S.unit_fns(ctx.model, x, t, layer)
        unit_time = float(np.median(S.time_it(fns[unit], ctx.device, spec["repeats"], 1))) / bs
    limit = n * unit_time
    sfx = f"@bs{bs}"
    rows: list[Row] = [
        (mid, "*", m, b, f"speed.latency_median{sfx}", stats["latency_median"], 0),
        (mid, "*", m, b, f"speed.latency_iqr{sfx}", stats["latency_iqr"], 0),
        (mid, "*", m, b, f"speed.throughput{sfx}", stats["throughput"], 0),
        (mid, "*", m, b, f"speed.wall_median{sfx}", float(np.median(walls)) / bs, 0),
        (mid, "*", m, b, f"speed.peak_mem_mb{sfx}", mem.peak / 2**20, 0),
        (mid, "*", m, b, f"speed.limit_seconds{sfx}", limit, 0),
        (mid, "*", m, b, f"speed.ratio_to_limit{sfx}", stats["latency_median"] / limit if limit > 0 else None, 0),
        (mid, "*", m, b, f"speed.limit_n.{unit}{sfx}", float(n), 1),
    ]
    ctx.meta[f"memory_probe:{ctx.device.type}"] = mem.how
    ctx.compute += time.perf_counter() - t0
    return rows, []


# --------------------------------------------------------------------------------------------
# Study
# --------------------------------------------------------------------------------------------


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{'+dirty' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(suite: Suite, device: torch.device) -> dict[str, Any]:
    from importlib import metadata

    def ver(d: str) -> str:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            return "not installed"

    pkgs = ["cnnlens", "torch", "torchvision", "grad-cam", "captum", "flashtorch", "torchcam", "zennit", "ray",
            "numpy", "scipy", "scikit-image", "efficientnet-lite-pytorch"]
    meta: dict[str, Any] = {
        "suite": suite.to_dict(), "suite_name": suite.name, "suite_digest": suite.digest(),
        "suite_source": suite.source, "device": str(device), "versions": {p: ver(p) for p in pkgs},
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "git_revision": _git_revision(), "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def db_path(out: Path, suite: Suite) -> Path:
    return out / f"{suite.name}.sqlite"


#: Cells the driver runs itself: they compare maps that other cells wrote to the store (only the
#: driver reads the store) and cost little next to the explanations.
DRIVER_KINDS = ("agreement", "crossmethod")

RUNNERS: dict[str, Callable[[Context, dict[str, Any]], tuple[list[Row], list[Artifact]]]] = {
    "images": run_images, "explain": run_explain, "sanity": run_sanity, "speed": run_speed,
}

ENGINES = ("local", "ray")

#: Seconds between two progress lines where no progress bar is drawn (a log, a pipe).
PROGRESS_EVERY = 30.0


@dataclass
class Outcome:
    """What running a cell gave, wherever it ran; only the driver turns it into store rows."""

    status: str
    error: str | None
    rows: list[Row]
    arts: list[Artifact]
    meta: dict[str, Any]
    seconds: float
    compute: float
    #: (host, pid) of the process that ran the cell.
    where: tuple[str, int] | None = None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


class Worker:
    """Runs the cells that need a model, for any engine: in the driver (``local``) or in a Ray actor.

    It loads each model once (the last two are kept) and reads pixels through a cache of two
    shards, so it can run any number of cells, of any shard, in any order, with flat memory.

    Args:
        suite: The validated suite (the models it names are loaded from it).
        device: ``"cpu"`` or ``"cuda"`` (in a Ray actor, the GPU Ray assigned to it).
        threads: torch CPU threads (0: leave torch's setting).
    """

    def __init__(self, suite: Suite, device: str | torch.device, threads: int = 0) -> None:
        self.suite = suite
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(threads)
        self.models: dict[str, nn.Module] = {}
        self.pixels = PixelCache(2 * shard_size(suite))

    def ready(self) -> int:
        """This worker's process id; a Ray actor's answer proves that its start-up finished."""
        import os

        return os.getpid()

    def model(self, model_id: str) -> nn.Module:
        from cnnlens.models import load_model

        if model_id in self.models:
            self.models[model_id] = self.models.pop(model_id)  # most recently used last
            return self.models[model_id]
        ms = next(m for m in self.suite.models if m.id == model_id)
        # Seeded: a model with random weights (``weights = "none"``) is the same in every process
        # and every run, so workers and resumes compute with one model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.suite.seed)
            net = load_model(ms.spec, weights=ms.weights, device=self.device)
        self.models[model_id] = net
        while len(self.models) > 2:
            del self.models[next(iter(self.models))]
        return net

    def run(self, kind: str, spec: dict[str, Any], records: list[Any], targets: dict[str, int]) -> Outcome:
        """Run one cell; a failing method is the cell's result (``status="error"``), not a crash."""
        t0 = time.perf_counter()
        ms = next(m for m in self.suite.models if m.id == spec["model"])
        ctx = Context(self.suite, ms.id, None, ms.layer, self.device, {r.id: r for r in records}, dict(targets),
                      image_size=ms.image_size, pixels=self.pixels)
        try:
            ctx.model = self.model(ms.id)
            rows, arts = RUNNERS[kind](ctx, spec)
            status, error = "done", None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a failing method is a result of the study, not a crash
            status, error, rows, arts = "error", _error_text(exc), [], []
            ctx.meta.pop("images", None)
        return Outcome(status, error, rows, arts, ctx.meta, time.perf_counter() - t0, ctx.compute, _where())


def _where() -> tuple[str, int]:
    """(host, pid) of the process running a cell; in a Ray actor the host names its Ray node too
    (``host (ray node 1a2b3c4d5e6f)``), which tells apart two nodes of one machine."""
    import os
    import socket
    import sys

    host = socket.gethostname()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        if ctx.get_actor_id() is not None:
            host += f" (ray node {ctx.get_node_id()[:12]})"
    return host, os.getpid()


class LocalExecutor:
    """Runs each cell at once in this process (the ``local`` engine)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.done: list[tuple[int, Outcome]] = []

    def free(self) -> bool:
        return not self.done

    def busy(self) -> bool:
        return bool(self.done)

    def submit(self, i: int, kind: str, spec: dict[str, Any], records: list[Any], targets: dict[str, int]) -> None:
        self.done.append((i, self.worker.run(kind, spec, records, targets)))

    def poll(self) -> list[tuple[int, Outcome]]:
        out, self.done = self.done, []
        return out

    def close(self) -> None:
        pass


def run(
    suite: str | Path,
    device: str = "cpu",
    out: Path | str = "bench-out",
    overwrite: bool = False,
    progress: bool = True,
    max_cells: int | None = None,
    engine: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    retry: bool = True,
    threads: int | None = None,
) -> Path:
    """Run (or resume) a study and return its SQLite file.

    Images are read shard by shard (``[images] shard``), on demand, so memory does not grow with
    the number of images; the driver (this process) alone writes the store.

    Args:
        suite: ``"smoke"``, ``"standard"``, ``"gpu"`` or a path to a suite TOML file. It is fully
            validated before any work starts (:class:`~cnnlens.errors.SuiteError`).
        device: ``"cpu"`` or ``"cuda"``.
        out: Output folder; the store is ``OUT/<study name>.sqlite``. Running again with the same
            folder resumes: finished cells are skipped, and images added to the suite (or to its
            folders) only add shards. A folder holding a *different* suite's study is refused
            unless ``overwrite=True``, which deletes that study file (and nothing else) and starts
            fresh.
        overwrite: Start fresh instead of resuming.
        retry: On a resume, run again the cells that failed (``error``) or were skipped because an
            input failed (a worker that died, an image unreadable for a moment); ``False`` keeps
            them as they are (CLI: ``--no-retry``). :func:`failures` lists what failed.
        threads: torch CPU threads for this run (each Ray worker's with ``engine="ray"``), over the
            suite's ``[study] threads``; not part of the study, so a resume may change it (CLI:
            ``--threads``). On a busy machine 1 or 2 threads are often several times faster.
        progress: Say how many cells will run and a rough time first, then show a progress bar (tqdm)
            on a terminal, or elsewhere (a log, a pipe) print a line every 30 s and at the end.
        max_cells: Stop after running this many new cells (the study stays resumable).
        engine: ``"local"`` (this process) or ``"ray"`` (long-lived Ray actors, each loading a
            model once and running many cells; needs ``pip install -e '.[ray]'``).
        workers: Ray actors (default: one per CPU of the local Ray, or of the joined cluster).
        address: ``None`` starts a local Ray on this machine (loopback only) and stops it
            afterwards; ``"auto"`` or ``"ray://host:port"`` joins a running cluster.
        gpus_per_worker: GPUs each Ray actor asks for when ``device="cuda"`` (fractions share a
            card; default: the cluster's GPUs divided among the workers, at most 1).

    Returns:
        The path of the study's SQLite file.

    Raises:
        SuiteError: The suite is malformed or names something that does not exist.
        StoreError: ``OUT/<study name>.sqlite`` is corrupt or another program's database.
        OutputError: The folder is read-only or the disk fills up; every finished cell is kept
            (SQLite commits each cell whole), so the same call resumes once there is room.
        OptionError: An unknown engine, or workers/address/gpus_per_worker without Ray.
        BackendUnavailableError: ``engine="ray"`` but Ray is not installed.
    """
    from cnnlens.errors import OptionError

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise OptionError(f"threads must be a whole number >= 1 (torch CPU threads), got {threads!r}")
    s = load_suite(suite)
    if engine not in ENGINES:
        raise OptionError(f"unknown engine '{engine}'{_match_hint(engine, ENGINES)}; use 'local' or 'ray'")
    if engine == "local" and (workers not in (None, 1) or address is not None or gpus_per_worker is not None):
        raise OptionError("workers, address and gpus_per_worker need engine='ray' (CLI: --engine ray)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise OptionError(f"workers must be a whole number >= 1, got {workers!r}")
    if gpus_per_worker is not None and not (0 < float(gpus_per_worker) <= 8):
        raise OptionError(f"gpus_per_worker must be > 0 and <= 8 (fractions share a GPU), got {gpus_per_worker!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"invalid device '{device}': use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and engine == "local" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device '{device}' is not supported by the benchmark; use 'cpu' or 'cuda'")
    if engine == "ray":
        from cnnlens.bench.ray_engine import require_ray

        require_ray()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a folder; choose a folder path")
    if not writable(out):
        raise OutputError(f"study folder '{out}' cannot be written (read-only media or no permission); "
                               "choose a writable folder (--out)")
    path = db_path(out, s)
    # Every model's images are listed first: a bad dataset is refused before the study file is created,
    # opened or (with overwrite) deleted.
    prepared = _prepare(s, dev, engine)
    # The one output rule (cnnlens.outputs): the study never goes in or below a folder of its images.
    why = among_inputs(out, [r.path for recs in prepared[1].values() for r in recs if r.path], folder=True)
    if why:
        raise OutputExistsError(f"study folder '{out}' {why}; choose a folder outside the suite's image folders (--out)")
    if overwrite:
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise output_error(p, exc, "study database", "--out") from None
    store = Store(path, s.name)
    how = {"engine": engine, "workers": workers, "address": address, "gpus_per_worker": gpus_per_worker,
           "retry": bool(retry), "threads": threads}
    try:
        _resume(s, dev, store, progress, max_cells, how, prepared)
    except sqlite3.Error as exc:
        raise sqlite_error(path, exc, writing=True) from None
    finally:
        store.close()
    return path


def failures(db: str | Path) -> list[tuple[str, str, int]]:
    """The study's cells that did not finish well, grouped: (status, reason, number of cells).

    ``status`` is ``error`` (the cell failed) or ``skipped`` (an input it needs failed); the
    reason is the stored message with image names and numbers kept, so one cause is one group.
    Largest groups first.
    """
    from cnnlens.bench.store import read_table

    cells = read_table(db, "cells")
    bad = cells[cells.status != "done"]
    if bad.empty:
        return []
    groups = bad.groupby(["status", bad.error.fillna("no reason recorded")]).size()
    out = [(str(st), str(why), int(n)) for (st, why), n in groups.items()]
    return sorted(out, key=lambda t: (t[0] != "error", -t[2], t[1]))


def failure_report(db: str | Path, again: str, groups: int = 5) -> list[str]:
    """Lines that say how many cells failed, why (the largest ``groups`` causes) and how to retry.

    ``again`` is the command that resumes the study (it retries failed and skipped cells). Empty
    when every cell is done.
    """
    found = failures(db)
    if not found:
        return []
    n_err = sum(n for st, _w, n in found if st == "error")
    n_skip = sum(n for st, _w, n in found if st == "skipped")
    lines = [f"{n_err} cells failed and {n_skip} were skipped because an input of theirs failed; "
             "their results are missing from the study:"]
    for st, why, n in found[:groups]:
        lines.append(f"  {n:>5} {st}: {why[:300]}")
    if len(found) > groups:
        rest = sum(n for _s, _w, n in found[groups:])
        lines.append(f"  {rest:>5} more, for {len(found) - groups} other reasons (the study's cells table has each)")
    lines.append(f"retry them (finished cells are kept): {again}")
    return lines


def _match_hint(word: str, choices: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(str(word), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def study_digest(s: Suite) -> str:
    """A hash of the study without its image list: the same study with images added is resumed.

    The shard size stays in it (it decides every cell's images).
    """
    d = s.to_dict()
    d["images"] = {"shard": shard_size(s)}
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: What :func:`_prepare` gives the run: the local worker, records, model digests, pass seconds.
Prepared = tuple["Worker | None", dict[str, list[Any]], dict[str, str], dict[str, float]]


def _pass_seconds(model: nn.Module, size: int | None) -> float:
    """Seconds of one forward and backward pass of one image (the best of two), for the estimate."""
    from cnnlens.bench.data import _sizes

    _resize, crop = _sizes(model, size)
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, crop, crop, device=p.device if p is not None else "cpu", requires_grad=True)
    best = float("inf")
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            model(x).sum().backward()
            best = min(best, time.perf_counter() - t0)
    except Exception:  # an estimate only: a model this cannot run fails in its cells with a clear error
        return 0.0
    finally:
        model.zero_grad(set_to_none=True)
    return best


#: Option names whose values multiply a method's passes (their product is the estimate's factor).
_PASSES = ("n_steps", "nt_samples", "n_samples", "num_samples", "num_scales")


def estimate_seconds(s: Suite, cells: list[Cell], pass_seconds: dict[str, float]) -> float:
    """A rough guess of the cells' seconds from one measured pass: explanations cost their passes
    (the product of their sample and step options), the faithfulness measures their forwards."""
    f = s.faithfulness
    total = 0.0
    for c in cells:
        t = pass_seconds.get(c.spec.get("model", ""), 0.0)
        n = len(c.spec.get("images", []))
        opts = c.spec.get("options") or {}
        passes = float(np.prod([float(v) for k, v in opts.items() if k in _PASSES and isinstance(v, int | float)]))
        if c.kind == "images":
            total += n * t / 2
        elif c.kind == "explain":
            total += n * t * passes
            faith = c.spec.get("faith")
            if faith:
                forwards = 3 * (f.steps + 1) + 2 + (f.perturb_samples if f.infidelity else 0)
                total += len(c.spec["faith_images"]) * forwards * t / 2
                total += len(c.spec["road"]) * 2 * len(f.road_percentiles) * t / 2
        elif c.kind == "sanity":
            total += n * t * passes * (c.spec["max_steps"] + 1)
        elif c.kind == "speed":
            total += (c.spec["repeats"] + c.spec["warmup"]) * c.spec["batch_size"] * t * passes * 2
    return total


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two suites' dicts (the image list left out)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix.rstrip(".")] if json.dumps(old, default=str) != json.dumps(new, default=str) and prefix else []
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k == "images":
            continue
        out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
    return out


def _prepare(s: Suite, dev: torch.device, engine: str) -> Prepared:
    """The local engine's worker (None on Ray), each model's image records, in study order, each
    model's :func:`model_digest` and the seconds of one forward and backward pass of one image.

    Each model is loaded here to map the dataset's labels and to keep the pasted objects it
    recognises; the local engine keeps its worker (and so its models) for the cells.

    Raises:
        SuiteError: A bad dataset (see :func:`cnnlens.bench.datasets.records`).
    """
    from cnnlens.bench.data import collect_images

    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        local = Worker(s, dev) if engine == "local" else None
        planner = local if local is not None else \
            Worker(s, dev if dev.type != "cuda" or torch.cuda.is_available() else torch.device("cpu"))
        records: dict[str, list[Any]] = {}
        digests: dict[str, str] = {}
        costs: dict[str, float] = {}
        for ms in s.models:
            net = planner.model(ms.id)
            digests[ms.id] = model_digest(net)
            records[ms.id] = collect_images(s.images, net, ms.image_size, s.target)
            costs[ms.id] = _pass_seconds(net, ms.image_size)
        if local is None:
            planner.models.clear()
    finally:
        torch.set_num_threads(threads)
    return local, records, digests, costs


def _resume(s: Suite, dev: torch.device, store: Store, progress: bool, max_cells: int | None,
            how: dict[str, Any], prepared: Prepared) -> None:
    """Check that the store holds this suite's study (or none), record the run, run the pending cells."""
    path = store.path
    known = store.meta()
    old = known.get("study_digest")
    if (old is not None and old != study_digest(s)) or \
            (old is None and known.get("suite_digest") not in (None, s.digest())):
        differ = _changed_keys(known.get("suite"), s.to_dict())
        what = f" (changed: {', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''})" if differ else ""
        raise OutputExistsError(
            f"'{path}' holds a study of a different version of suite '{s.name}'{what}; results of the old and the new "
            "settings would mix: pass overwrite=True (CLI: --overwrite) to start fresh, or choose another --out folder"
        )
    for ms in s.models:  # before anything is written: a study of other weights is refused untouched
        check_model(store, known, ms, prepared[2][ms.id])
    threads = torch.get_num_threads()
    want = how.get("threads") or s.threads  # --threads over [study] threads; neither is part of the study
    if want:
        torch.set_num_threads(want)
    try:
        _record_and_run(s, dev, store, progress, max_cells, how, prepared)
    finally:
        torch.set_num_threads(threads)


def _record_and_run(s: Suite, dev: torch.device, store: Store, progress: bool, max_cells: int | None,
                    how: dict[str, Any], prepared: Prepared) -> None:
    meta = run_metadata(s, dev)
    store.set_meta(meta)  # the first run's metadata stays; later runs add their own entry
    # the suite itself is the latest run's: it may list more images than the first one
    store.set_meta({"suite": meta["suite"], "suite_digest": meta["suite_digest"], "study_digest": study_digest(s)},
                   replace=True)
    store.set_meta({f"run:{int(time.time())}": {**{k: meta[k] for k in ("git_revision", "versions", "device")},
                                                "engine": how}})
    _run_study(s, dev, store, progress, max_cells, how, prepared)


def model_digest(model: nn.Module) -> str:
    """A hash of the model's weights and buffers (names, types, shapes, values) and of its class."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, Tensor):
            continue
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def check_model(store: Store, planned: dict[str, Any], ms: Any, digest: str) -> None:
    """Refuse to resume a study whose model now has other weights (a replaced model file, other
    weights, changed code); record the model's digest on the study's first run."""
    key = f"model_digest:{ms.id}"
    old = planned.get(key)
    if old is not None and old != digest:
        raise OutputExistsError(
            f"'{store.path}' holds a study of model '{ms.id}' ({ms.spec}) with other weights than the model "
            "loads now (its file or weights changed since the study began); results of two models would mix: "
            "pass overwrite=True (CLI: --overwrite) to start afresh, or choose another --out folder")
    if old is None:
        store.set_meta({key: digest}, replace=True)


def image_digest(record: Any) -> str | None:
    """A hash of what an image's cells read: the file's bytes (or the generated pixels), the mirror
    flag, the mask's bytes, the boxes, the label and a fixed target. None when the file cannot be
    read now (its cells will fail and be retried)."""
    h = hashlib.sha256()
    try:
        for p in (record.path, record.mask_path):
            if p is not None:
                with open(p, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    except OSError:
        return None
    for arr in (record.display, record.mask):
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    h.update(json.dumps([record.flip, record.boxes, record.label, record.target], default=str).encode())
    return h.hexdigest()[:20]


def invalidate_changed(store: Store, planned: dict[str, Any], model_id: str, records: list[Any]) -> list[str]:
    """Delete the cells of images whose content changed since the study last saw them (one line on
    stderr names them), and record every image's digest; returns the changed images' ids."""
    import sys

    key = f"content:{model_id}"
    old: dict[str, str | None] = planned.get(key, {})
    new = {r.id: image_digest(r) for r in records}
    changed = sorted(i for i, d in new.items() if d is not None and old.get(i) not in (None, d))
    if changed:
        n = store.invalidate(model_id, set(changed))
        names = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        print(f"cnnlens: {len(changed)} images of model '{model_id}' changed since the study last ran ({names}); "
              f"their {n} cells run again", file=sys.stderr, flush=True)
    store.set_meta({key: {**old, **{i: d for i, d in new.items() if d is not None}}}, replace=True)
    return changed


def _positions(records: list[Any], known: dict[str, int], size: int) -> dict[str, int]:
    """Each image's position: the stored one when the study already has it; new images after them,
    from the next shard boundary on (so they never join a finished shard)."""
    nxt = -(-(max(known.values()) + 1) // size) * size if known else 0
    pos: dict[str, int] = {}
    for r in records:
        if r.id in pos:
            continue
        if r.id in known:
            pos[r.id] = known[r.id]
        else:
            pos[r.id] = nxt
            nxt += 1
    return pos


def _run_study(s: Suite, dev: torch.device, store: Store, progress: bool, max_cells: int | None,
               how: dict[str, Any], prepared: Prepared) -> bool:
    """Plan every model's cells (records from :func:`_prepare`), then run the pending ones as their
    inputs become ready.

    Returns False when ``max_cells`` stopped the study early.
    """
    import heapq

    size = shard_size(s)
    local, listed, _digests, costs = prepared
    cells: list[Cell] = []
    records: dict[str, dict[str, Any]] = {}
    positions: dict[str, dict[str, int]] = {}
    targets: dict[str, dict[str, int]] = {}
    planned = store.meta()
    for ms in s.models:
        recs = listed[ms.id]
        records[ms.id] = {r.id: r for r in recs}
        invalidate_changed(store, planned, ms.id, recs)
        # The plan's positions are kept too: images whose shard failed have no image row yet, and
        # must keep their place when it is retried (the first images decide ROAD, sanity and speed).
        known = {**planned.get(f"positions:{ms.id}", {}), **store.positions(ms.id)}
        positions[ms.id] = _positions(recs, known, size)
        store.set_meta({f"positions:{ms.id}": positions[ms.id]}, replace=True)
        targets[ms.id] = store.targets(ms.id)
        cells.extend(plan(s, ms.id, list(positions[ms.id]), positions[ms.id]))

    seen: set[str] = set()
    cells = [c for c in cells if not (c.key in seen or seen.add(c.key))]
    status = dict(store.finished())
    redo: set[str] = set()
    if how.get("retry", True):  # failed and skipped cells run again (the store replaces their rows)
        status = {k: v for k, v in status.items() if v == "done"}
        for c in cells:  # dependency order: a cross-method cell that compared fewer methods runs again too
            if c.key in status and any(d not in status for d in c.deps):
                del status[c.key]
                redo.add(c.key)
    pending = [i for i, c in enumerate(cells) if c.key not in status]
    waiting = {i: sum(1 for d in cells[i].deps if d not in status) for i in pending}
    dependents: dict[str, list[int]] = {}
    for i in pending:
        for d in cells[i].deps:
            if d not in status:
                dependents.setdefault(d, []).append(i)
    ready = [i for i in pending if waiting[i] == 0]
    heapq.heapify(ready)

    import sys

    from tqdm.auto import tqdm

    def say(line: str) -> None:  # stdout: stderr keeps the one-line error contract
        print(f"{s.name}: {line}", file=sys.stdout, flush=True)

    if progress and pending:
        kinds: dict[str, int] = {}
        for i in pending:
            kinds[cells[i].kind] = kinds.get(cells[i].kind, 0) + 1
        guess = estimate_seconds(s, [cells[i] for i in pending], costs)
        say(f"{len(pending)} cells to run ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
            f"{len(cells) - len(pending)} already done; roughly {_duration(guess)} on this machine's speed now "
            "(a guess from one timed forward pass)")
    # disable=None: tqdm draws only on a terminal, so logs and pipes get no carriage-return frames;
    # there a line every PROGRESS_EVERY seconds says how far the study is.
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), disable=None if progress else True,
               desc=s.name, unit="cell", mininterval=0.5)
    lines = progress and bar.disable
    t_start = time.perf_counter()
    explained = [0]
    ran = [0, 0]  # cells finished this run, of them failed or skipped
    last = [t_start]

    def report_line(final: bool = False) -> None:
        now = time.perf_counter()
        if not lines or not pending or (not final and now - last[0] < PROGRESS_EVERY):
            return
        last[0] = now
        left = len(pending) - ran[0]
        eta = f", about {_duration((now - t_start) / ran[0] * left)} left" if ran[0] and left else ""
        say(f"{ran[0]}/{len(pending)} cells ({100 * ran[0] // len(pending)}%), {ran[1]} failed or skipped, "
            f"{explained[0] / max(now - t_start, 1e-9):.2f} img/s{eta}")

    def finish(i: int, o: Outcome) -> None:
        c = cells[i]
        img_rows = o.meta.pop("images", None)
        mid = c.spec["model"]
        images = None
        if img_rows is not None:
            pos = positions[mid]
            images = [(mid, iid, pos[iid], src, t, label, box, png) for iid, src, t, label, box, png in img_rows]
            targets[mid].update({iid: int(t) for iid, _s, t, *_ in img_rows})
        store.write_cell(c.key, c.kind, c.spec, o.status, o.rows, o.arts, o.error, o.seconds,
                         images=images, meta=o.meta, compute=o.compute, where=o.where, replace=c.key in redo)
        status[c.key] = o.status
        if c.kind == "explain":
            explained[0] += len(c.spec["images"])
        for j in dependents.pop(c.key, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
        bar.update(1)
        rate = explained[0] / max(time.perf_counter() - t_start, 1e-9)
        bar.set_postfix_str(f"{rate:.1f} img/s", refresh=False)
        ran[0] += 1
        ran[1] += o.status != "done"
        report_line()

    def on_driver(c: Cell) -> Outcome | None:
        """Cells that run here: store comparisons, and cells whose inputs failed (skipped)."""
        dep_status = [status.get(d) for d in c.deps]
        if c.kind != "crossmethod" and any(st != "done" for st in dep_status):
            why = "a compared explanation failed or is missing" if c.kind == "agreement" else \
                "its images could not be read (see the shard's images cell)"
            return Outcome("skipped", why, [], [], {}, 0.0, 0.0)
        if c.kind not in DRIVER_KINDS:
            return None
        ctx = Context(s, c.spec["model"], None, None, dev, {}, {}, store)
        t0 = time.perf_counter()
        try:
            if c.kind == "crossmethod":
                ok = {m for m, d in zip(c.spec["methods"], dep_status, strict=True) if d == "done"}
                rows, arts = run_crossmethod(ctx, c.spec, ok)
            else:
                rows, arts = run_agreement(ctx, c.spec)
            st, err = "done", None
        except (KeyboardInterrupt, SystemExit, sqlite3.Error):
            raise  # a store failure (full disk) stops the study; it is not the method's result
        except Exception as exc:
            st, err, rows, arts = "error", _error_text(exc), [], []
        return Outcome(st, err, rows, arts, ctx.meta, time.perf_counter() - t0, ctx.compute)

    if local is not None:
        executor: Any = LocalExecutor(local)
    else:
        from cnnlens.bench.ray_engine import RayExecutor

        executor = RayExecutor(s, dev, workers=how["workers"], address=how["address"],
                               gpus_per_worker=how["gpus_per_worker"], threads=how.get("threads"))
    started = 0
    try:
        while ready or executor.busy():
            while ready and (max_cells is None or started < max_cells) and executor.free():
                i = heapq.heappop(ready)
                c = cells[i]
                started += 1
                o = on_driver(c)
                if o is not None:
                    finish(i, o)
                    continue
                mid = c.spec["model"]
                recs = [records[mid][iid] for iid in c.spec["images"]]
                tg = {iid: targets[mid][iid] for iid in c.spec["images"] if iid in targets[mid]}
                executor.submit(i, c.kind, c.spec, recs, tg)
            if max_cells is not None and started >= max_cells and not executor.busy():
                break
            for i, o in executor.poll():
                finish(i, o)
    finally:
        bar.close()
        executor.close()
    report_line(final=True)
    return max_cells is None or started < max_cells
