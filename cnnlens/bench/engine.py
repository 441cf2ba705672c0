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


@dataclass
class Context:
    """What the cells of one model share: loaded once per process, rebuilt identically anywhere."""

    suite: Suite
    model_id: str
    model: nn.Module
    layer: str | None
    device: torch.device
    images: list[Any]
    x: Tensor
    targets: list[int]
    index: dict[str, int]
    store: Store


def image_seed(suite_seed: int, image_id: str) -> int:
    return (suite_seed * 1_000_003 + int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16)) % 2**31


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def plan(suite: Suite, model_id: str, image_ids: list[str]) -> list[Cell]:
    """Every cell of one model, in a runnable order."""
    pairs = suite.pairs()
    batch = suite.images.batch
    batches = [image_ids[i:i + batch] for i in range(0, len(image_ids), batch)]
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
    explain_key: dict[tuple[str, str, int], str] = {}
    for bi, all_ids in enumerate(batches):
        for m, b in pairs:
            ids = allowed(m, all_ids)
            if not ids:
                continue
            c = Cell("explain", {
                "model": model_id, "images": ids, "method": m, "backend": b,
                "options": suite.options_for(m, b), "seed": suite.seed, "faith": faith,
                "faith_images": [i for i in ids if i in faith_ids],
                "road": [i for i in ids if i in road_ids], "localization": suite.localization.enabled,
                "keep_raw": m in multi,
            })
            explain_key[(m, b, bi)] = c.key
            cells.append(c)
    if suite.agreement.enabled:
        for bi, all_ids in enumerate(batches):
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
                            deps=[explain_key[(m, a, bi)], explain_key[(m, b, bi)]]))
        if suite.agreement.within_backend:
            for bi, ids in enumerate(batches):
                for b in sorted({b for _m, b in pairs if b != BASELINE_BACKEND}):
                    ms = [m for m, bb in pairs if bb == b and allowed(m, ids)]
                    if len(ms) > 1:
                        cells.append(Cell("crossmethod", {"model": model_id, "images": ids, "backend": b,
                                                          "methods": ms},
                                          deps=[explain_key[(m, b, bi)] for m in ms]))
    if suite.sanity.enabled:
        for m, b in pairs:
            ids = allowed(m, image_ids[:suite.sanity.images])
            if not ids or b == BASELINE_BACKEND or not _match(m, suite.sanity.include) or \
                    _match(m, suite.sanity.exclude, default=False):
                continue
            cells.append(Cell("sanity", {"model": model_id, "images": ids, "method": m, "backend": b,
                                         "options": suite.options_for(m, b), "seed": suite.seed,
                                         "max_steps": suite.sanity.max_steps}))
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
                                            "images": image_ids[:bs]}))
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


def run_explain(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    mid, m, b = ctx.model_id, spec["method"], spec["backend"]
    idx = [ctx.index[i] for i in spec["images"]]
    x = ctx.x[idx]
    targets = [ctx.targets[i] for i in idx]
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
        for j, iid in enumerate(spec["images"]):
            box = ctx.images[ctx.index[iid]].box
            if box is not None:
                rows.append((mid, iid, m, b, "pointing.hit", M.pointing_hit(maps[j], box), 1))
                rows.append((mid, iid, m, b, "pointing.energy", M.energy_pointing(maps[j], box), 1))
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
        res = M.agreement(ma.astype(np.float32), mb.astype(np.float32), spec["topk"])
        ra = ctx.store.artifact(mid, iid, m, a, "raw")
        rb = ctx.store.artifact(mid, iid, m, b, "raw")
        if ra is not None and rb is not None:
            res["raw_maxabs"], res["raw_maxabs_rel"] = M.raw_difference(ra, rb)
        rows.extend((mid, iid, m, f"{a}|{b}", f"agree.{k}", v, 1) for k, v in res.items())
    return rows, []


def run_crossmethod(ctx: Context, spec: dict[str, Any], ok: set[str]) -> tuple[list[Row], list[Artifact]]:
    mid, b = ctx.model_id, spec["backend"]
    rows: list[Row] = []
    for iid in spec["images"]:
        maps = {m: ctx.store.artifact(mid, iid, m, b, "map") for m in spec["methods"] if m in ok}
        maps = {m: v.astype(np.float32) for m, v in maps.items() if v is not None}
        names = list(maps)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                p, q = names[i], names[j]
                rows.append((mid, iid, f"{p}|{q}", b, "cross.spearman", M.spearman(maps[p], maps[q]), 1))
                rows.append((mid, iid, f"{p}|{q}", b, "cross.ssim", M.ssim(maps[p], maps[q]), 1))
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
    idx = [ctx.index[i] for i in spec["images"]]
    x = ctx.x[idx]
    t = torch.as_tensor([ctx.targets[i] for i in idx], device=x.device)
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
    ctx.store.set_meta({f"sanity_steps:{mid}": labels})
    return rows, []


def run_speed(ctx: Context, spec: dict[str, Any]) -> tuple[list[Row], list[Artifact]]:
    from cnnlens.registry import REGISTRY

    mid, m, b, bs = ctx.model_id, spec["method"], spec["backend"], spec["batch_size"]
    reps = -(-bs // len(ctx.images))
    x = ctx.x.repeat(reps, 1, 1, 1)[:bs].contiguous()
    t = torch.as_tensor((ctx.targets * reps)[:bs], device=x.device)
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
    ctx.store.set_meta({f"memory_probe:{ctx.device.type}": mem.how})
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

    pkgs = ["cnnlens", "torch", "torchvision", "grad-cam", "captum", "flashtorch", "numpy", "scipy",
            "scikit-image", "efficientnet-lite-pytorch"]
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


def run(
    suite: str | Path,
    device: str = "cpu",
    out: Path | str = "bench-out",
    overwrite: bool = False,
    progress: bool = True,
    max_cells: int | None = None,
) -> Path:
    """Run (or resume) a study and return its SQLite file.

    Args:
        suite: ``"smoke"``, ``"standard"``, ``"gpu"`` or a path to a suite TOML file. It is fully
            validated before any work starts (:class:`~cnnlens.errors.SuiteError`).
        device: ``"cpu"`` or ``"cuda"``.
        out: Output folder; the store is ``OUT/<study name>.sqlite``. Running again with the same
            folder resumes: finished cells are skipped. A folder holding a *different* suite's
            study is refused unless ``overwrite=True``, which deletes that study file (and nothing
            else) and starts fresh.
        overwrite: Start fresh instead of resuming.
        progress: Show a progress bar (tqdm).
        max_cells: Stop after running this many new cells (the study stays resumable).

    Returns:
        The path of the study's SQLite file.

    Raises:
        SuiteError: The suite is malformed or names something that does not exist.
        StoreError: ``OUT/<study name>.sqlite`` is corrupt or another program's database.
        OutputError: The folder is read-only or the disk fills up; every finished cell is kept
            (SQLite commits each cell whole), so the same call resumes once there is room.
    """
    s = load_suite(suite)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"invalid device '{device}': use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device '{device}' is not supported by the benchmark; use 'cpu' or 'cuda'")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a folder; choose a folder path")
    if not writable(out):
        raise OutputError(f"study folder '{out}' cannot be written (read-only media or no permission); "
                               "choose a writable folder (--out)")
    path = db_path(out, s)
    if overwrite:
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise output_error(p, exc, "study database", "--out") from None
    store = Store(path, s.name)
    try:
        _resume(s, dev, store, progress, max_cells)
    except sqlite3.Error as exc:
        raise sqlite_error(path, exc, writing=True) from None
    finally:
        store.close()
    return path


def _resume(s: Suite, dev: torch.device, store: Store, progress: bool, max_cells: int | None) -> None:
    """Check that the store holds this suite's study (or none), record the run, run the pending cells."""
    path = store.path
    old = store.meta().get("suite_digest")
    if old is not None and old != s.digest():
        raise OutputExistsError(
            f"'{path}' holds a study of a different version of suite '{s.name}'; pass overwrite=True "
            "(CLI: --overwrite) to start fresh, or choose another --out folder"
        )
    meta = run_metadata(s, dev)
    store.set_meta(meta)  # the first run's metadata stays; later runs add their own entry
    store.set_meta({f"run:{int(time.time())}": {k: meta[k] for k in ("git_revision", "versions", "device")}})
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        _run_study(s, dev, store, progress, max_cells)
    finally:
        torch.set_num_threads(threads)


def _run_study(s: Suite, dev: torch.device, store: Store, progress: bool, max_cells: int | None) -> None:
    from cnnlens.bench.data import build_images
    from cnnlens.models import load_model

    budget = [max_cells if max_cells is not None else -1]
    for ms in s.models:
        model = load_model(ms.spec, weights=ms.weights, device=dev)
        items, x, targets = build_images(s.images, model, ms.image_size)
        cats = getattr(model, "cnnlens_categories", None)
        store.put_images(ms.id, [
            (im.id, i, im.source, t, cats[t] if cats and t < len(cats) else str(t), im.box, _png(im.display))
            for i, (im, t) in enumerate(zip(items, targets, strict=True))
        ])
        ctx = Context(s, ms.id, model, ms.layer, dev, items, x.to(dev), targets,
                      {im.id: i for i, im in enumerate(items)}, store)
        cells = plan(s, ms.id, [im.id for im in items])
        if not _run_cells(ctx, cells, progress, budget):
            return


def _run_cells(ctx: Context, cells: list[Cell], progress: bool, budget: list[int]) -> bool:
    from tqdm.auto import tqdm

    finished = ctx.store.finished()
    pending = [c for c in cells if c.key not in finished]
    runners: dict[str, Callable[..., tuple[list[Row], list[Artifact]]]] = {
        "explain": run_explain, "agreement": run_agreement, "sanity": run_sanity, "speed": run_speed,
    }
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), disable=not progress,
               desc=f"{ctx.suite.name}:{ctx.model_id}", unit="cell")
    try:
        for cell in pending:
            if budget[0] == 0:
                return False
            bar.set_postfix_str(f"{cell.kind} {cell.spec.get('method', cell.spec.get('backend', ''))}"[:40])
            t0 = time.perf_counter()
            dep_status = [ctx.store.status(d) for d in cell.deps]
            status, error, rows, arts = "done", None, [], []
            if cell.kind == "agreement" and any(st != "done" for st in dep_status):
                status, error = "skipped", "a compared explanation failed or is missing"
            else:
                try:
                    if cell.kind == "crossmethod":
                        ok = {c for c, d in zip(cell.spec["methods"], dep_status, strict=True) if d == "done"}
                        rows, arts = run_crossmethod(ctx, cell.spec, ok)
                    else:
                        rows, arts = runners[cell.kind](ctx, cell.spec)
                except (KeyboardInterrupt, SystemExit, sqlite3.Error):
                    raise  # a store failure (full disk) stops the study; it is not the method's result
                except Exception as exc:  # a failing method is a result of the study, not a crash
                    status, error = "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                    rows, arts = [], []
            ctx.store.write_cell(cell.key, cell.kind, cell.spec, status, rows, arts, error,
                                 time.perf_counter() - t0)
            bar.update(1)
            if budget[0] > 0:
                budget[0] -= 1
    finally:
        bar.close()
    return True
