"""The work behind the command line's commands, as plain functions the CLI sequences.

Each step either validates (and raises a :class:`~cnnlens.errors.CnnlensError` before any
computation) or computes. Long steps report progress through an optional ``progress(done, total,
what)`` callback, called before each unit of work and once at the end, so that the caller (the
CLI's progress bar, a notebook, a log) decides how progress is shown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlens.errors import (
    BackendUnavailableError,
    CnnlensError,
    ModelError,
    OptionError,
    OutputError,
    UnsupportedMethodError,
    close_matches,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from cnnlens.explainer import Explainer
    from cnnlens.explanation import Explanation
    from cnnlens.featuremaps import FeatureMaps
    from cnnlens.images import Images

#: ``progress(done, total, what)``: ``done`` units of ``total`` are finished, ``what`` runs next.
Progress = Callable[[int, int, str], None]


def _report(progress: Progress | None, done: int, total: int, what: str) -> None:
    if progress is not None:
        progress(done, total, what)


# ------------------------------------------------------------------------------------------------
# Checks made before any work
# ------------------------------------------------------------------------------------------------


def check_backend(name: str) -> None:
    """Refuse an unknown backend name, with the close matches and the list of backends."""
    from cnnlens import registry

    if name not in registry.BACKENDS:
        hint = close_matches(name, registry.BACKENDS)
        extra = f"; did you mean {hint}?" if hint else ""
        raise BackendUnavailableError(f"unknown backend '{name}'{extra}; backends: {', '.join(registry.BACKENDS)}")


def resolve_pairs(methods: Sequence[str], backends: Sequence[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """Every existing (method, backend) pair, in the order asked, and notes on what was skipped.

    Args:
        methods: Method names (each must exist).
        backends: Backend names; None means every backend, skipping those not installed (with a
            note). A backend named explicitly but not installed is an error with its install line.

    Raises:
        UnknownMethodError: A method does not exist (with close matches).
        BackendUnavailableError: A backend does not exist, or was named and is not installed.
        UnsupportedMethodError: No installed backend among those chosen has any of the methods.
    """
    from cnnlens import registry

    if not methods:
        raise OptionError("no method given; e.g. --methods gradcam,saliency (`cnnlens methods` lists them)")
    for m in methods:
        if m not in registry.METHODS:
            registry.resolve(m)  # raises UnknownMethodError with close matches
    explicit = backends is not None
    chosen = list(backends) if backends else list(registry.BACKENDS)
    for b in chosen:
        check_backend(b)
    pairs: list[tuple[str, str]] = []
    notes: list[str] = []
    for m in methods:
        for b in chosen:
            if (m, b) not in registry.REGISTRY:
                continue
            if not registry.BACKENDS[b].installed:
                if explicit:
                    registry.BACKENDS[b].require()  # raises with the install command
                notes.append(f"skipped {m} on {b}: '{registry.BACKENDS[b].pip}' is not installed")
                continue
            pairs.append((m, b))
    if not pairs:
        have = {m: ", ".join(registry.backends_for(m)) for m in methods}
        detail = "; ".join(f"{m}: {b}" for m, b in have.items())
        raise UnsupportedMethodError(
            f"no installed backend among {', '.join(chosen)} has {', '.join(methods)} (backends that have them: {detail})"
        )
    return pairs, notes


def check_picture_options(*, cmap: str | None = None, alpha: float = 0.5, sign: str | None = None,
                          outlier_perc: float | None = None, reduce: str | None = None,
                          fit: str | None = None) -> str | None:
    """Check how explanations will be computed and drawn, before any work (the library's own checks).

    Returns:
        ``sign`` in cnnlens's spelling (Captum's ``absolute_value`` read as ``absolute``), or None.

    Raises:
        OptionError: An unknown colour map, sign, reduction or fit, or an alpha or outlier
            percentile out of range.
    """
    from cnnlens import _post, plot
    from cnnlens.images import check_fit

    plot.check_style(cmap, alpha)
    if outlier_perc is not None:
        _post.check_outlier_perc(outlier_perc)
    if reduce is not None:
        _post.check_reduce(reduce)
    if fit is not None:
        check_fit(fit)
    return None if sign is None else _post.check_sign(sign)


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``; raise OptionError naming the choices otherwise."""
    if value not in choices:
        hint = close_matches(value, choices)
        extra = f"; did you mean {hint}?" if hint else ""
        raise OptionError(f"{what} must be one of {', '.join(choices)}; got '{value}'{extra}")
    return value


def check_device(device: str) -> str:
    """Refuse a torch device this machine does not have, before a model is loaded.

    Raises:
        OptionError: Not a device string torch parses, or a CUDA/MPS device that is not available.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise OptionError(f"invalid device '{device}': use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device '{device}' is not available: this torch sees no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"device '{device}' is not available: this machine has {torch.cuda.device_count()} CUDA "
                              f"GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise OptionError(f"device '{device}' is not available: MPS needs an Apple-silicon Mac with a torch built "
                              "for it; use --device cpu")
    elif dev.type != "cpu":
        raise OptionError(f"device '{device}' is not supported; use cpu, cuda, cuda:N or mps")
    return device


def read_classes(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines and ``#`` comments skipped).

    Raises:
        OptionError: The file cannot be read or names no class.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read the class-name file '{p}': {exc}") from None
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise OptionError(f"class-name file '{p}' names no class; write one class name per line")
    return names


def check_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """Refuse a mean or std that is not three numbers (one per RGB channel), or a std that is not positive."""
    for what, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != 3:
            raise OptionError(f"{what} needs three comma-separated numbers (one per RGB channel); got {len(values)}")
    if std is not None and any(not s > 0 for s in std):
        raise OptionError(f"--std values must be positive; got {','.join(map(str, std))}")


def label_model(
    model: nn.Module,
    *,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Attach class names and input normalisation to a loaded model (see :mod:`cnnlens.models`).

    Args:
        model: The model, as :func:`cnnlens.models.load_model` returned it.
        classes: One name per output class; their count must match the model's outputs.
        mean: Per-channel mean of the input normalisation (three values).
        std: Per-channel standard deviation (three positive values).

    Raises:
        OptionError: A wrong count of classes or of mean/std values, or a non-positive std.
    """
    import dataclasses

    from cnnlens import models

    meta = models.meta_of(model)
    check_normalisation(mean, std)
    changes: dict[str, Any] = {}
    if classes is not None:
        n = num_outputs(model, meta.crop)
        if n is not None and n != len(classes):
            raise OptionError(f"the class-name file names {len(classes)} classes but the model has {n} outputs")
        changes["categories"] = list(classes)
        model.cnnlens_categories = list(classes)
    if mean is not None:
        changes["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        changes["std"] = tuple(float(v) for v in std)
    if changes:
        model.cnnlens_meta = dataclasses.replace(meta, **changes)
    return model


def num_outputs(model: nn.Module, side: int) -> int | None:
    """The model's class count from a dry forward at ``side`` x ``side`` (None if the forward fails)."""
    import torch

    from cnnlens import _resolve

    x = torch.zeros(1, 3, side, side, dtype=_resolve.model_dtype(model), device=_resolve.model_device(model))
    try:
        return _resolve.probe(model, x).num_classes
    except Exception:  # the commands report a failing forward pass properly
        return None


# ------------------------------------------------------------------------------------------------
# Explanations
# ------------------------------------------------------------------------------------------------


def build_explainers(
    model: nn.Module,
    pairs: Sequence[tuple[str, str]],
    *,
    layer: str | None,
    options: dict[str, Any],
    per_pair: dict[tuple[str, str], dict[str, Any]] | None = None,
    reduce: str | None = None,
) -> list[Explainer]:
    """One :class:`~cnnlens.explainer.Explainer` per pair, so that bad options and layers fail before any work.

    Each option goes to the pairs that accept it; an option no pair accepts is an error.

    Args:
        model: The classifier.
        pairs: (method, backend) pairs.
        layer: The CAM layer (ignored by methods that take none).
        options: Method options shared by the pairs.
        per_pair: Options for one pair only (added after ``options``).
        reduce: How gradient methods reduce the colour channels (None: the explainer's default).
    """
    from cnnlens import registry
    from cnnlens.explainer import Explainer

    used: set[str] = set()
    explainers = []
    for m, b in pairs:
        impl = registry.REGISTRY[(m, b)]
        accepted = impl.all_options()
        opts = {k: v for k, v in options.items() if k in accepted}
        used.update(opts)
        opts.update((per_pair or {}).get((m, b), {}))
        extra: dict[str, Any] = {} if reduce is None else {"reduce": reduce}
        explainers.append(Explainer(model, m, b, layer=layer if impl.spec.needs_layer else None, **extra, **opts))
    unused = sorted(set(options) - used)
    if unused:
        valid = sorted({k for m, b in pairs for k in registry.REGISTRY[(m, b)].all_options()})
        hint = close_matches(unused[0], valid)
        raise OptionError(
            f"unknown option(s) {', '.join(unused)} for {', '.join(f'{m}/{b}' for m, b in pairs)}"
            f"{f' (did you mean {hint}?)' if hint else ''}; valid options: {', '.join(valid) or 'none'}"
        )
    return explainers


def warm_up(net: nn.Module, x: Tensor) -> None:
    """One untimed forward and input-gradient pass, so that one-time costs (the allocator's first
    blocks, kernel selection, lazy initialisation) do not land on whichever pair is timed first.
    Errors are left to the real calls, which report them properly."""
    import torch

    from cnnlens._guard import ModelGuard

    try:
        with ModelGuard(net), torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            out = net(xi)
            torch.autograd.grad(out.max(dim=1).values.sum(), xi)
    except Exception:  # the explainers raise the proper error for the same input
        pass


def explain_all(
    explainers: Sequence[Explainer],
    x: Images,
    *,
    target: Any = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[Explanation]:
    """Explain ``x`` with every explainer, in chunks of ``batch_size`` images (after one warm-up pass).

    Returns:
        One explanation per explainer, in order.
    """
    from cnnlens.explanation import Explanation

    n = len(x)
    chunks = -(-n // batch_size)
    total = len(explainers) * chunks
    done = 0
    _report(progress, done, total, "warming up (one untimed forward and backward)")
    if explainers:
        warm_up(explainers[0].net, x.tensor[:batch_size])
    results = []
    for ex in explainers:
        parts = []
        _report(progress, done, total, f"{ex.method} · {ex.backend} · images 1-{min(batch_size, n)} of {n}")
        # The library chunks (and checks every target before the first chunk).
        for _start, stop, part in ex.explain_chunks(x, target=target, chunk_size=batch_size):
            parts.append(part)
            done += 1
            if stop < n:
                _report(progress, done, total,
                        f"{ex.method} · {ex.backend} · images {stop + 1}-{min(stop + batch_size, n)} of {n}")
        results.append(Explanation.concat(parts))
    _report(progress, total, total, "done")
    return results


def save_all(expls: Sequence[Explanation], save: Path, overwrite: bool, **save_options: Any) -> list[Path]:
    """Each explanation into its own folder ``save/<method>__<backend>``.

    On a failed write, the folders this call created are removed (``Explanation.save`` already
    removes its own partial files), so that the rerun is not blocked.

    Args:
        expls: The explanations.
        save: The parent folder.
        overwrite: Allow writing into existing folders.
        save_options: Passed to each :meth:`~cnnlens.explanation.Explanation.save` (``sign``, ``cmap``, ...).

    Returns:
        The folders written.
    """
    from cnnlens.explanation import _previous_files

    created: list[Path] = []
    written: list[Path] = []
    try:
        for e in expls:
            folder = save / f"{e.method}__{e.backend}"
            existed = folder.exists()
            e.save(folder, overwrite=overwrite, **save_options)
            written.append(folder)
            if not existed:
                created.append(folder)
    except OutputError:
        for folder in created:
            for name in _previous_files(folder):
                (folder / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return written


def agreement(names: Sequence[str], expls: Sequence[Explanation]) -> list[dict[str, Any]]:
    """How far the backends agree, per image, for every method explained on two or more backends.

    The contract maps of each pair of backends are compared as a study compares them
    (:func:`cnnlens.bench.metrics.agreement`): Pearson and Spearman correlation, SSIM and the IoU of
    the top 5 % pixels. ``None`` where a correlation is undefined (a constant map).
    """
    from cnnlens.bench import metrics as M

    by_method: dict[str, list[Explanation]] = {}
    for e in expls:
        by_method.setdefault(e.method, []).append(e)
    rows: list[dict[str, Any]] = []
    for method, group in by_method.items():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                for k, name in enumerate(names):
                    res = M.agreement(a.maps[k].float().cpu().numpy(), b.maps[k].float().cpu().numpy(), topk=(5.0,))
                    rows.append({"method": method, "backends": f"{a.backend} vs {b.backend}", "image": str(name),
                                 **{m: res[m] for m in ("pearson", "spearman", "ssim", "iou_top5")}})
    return rows


def summary(model: nn.Module, names: Sequence[str], expls: Sequence[Explanation],
            files: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of an explain run: files, the explained class and score per image,
    seconds per pair, and the warnings (one per cause, in the command line's words)."""
    from cnnlens._resolve import warning_lines

    first = expls[0]
    images = []
    for i, name in enumerate(names):
        target = int(first.targets[i])
        images.append({
            "image": str(name),
            "target": target,
            "class": first.labels[i] if first.labels else str(target),
            "score": None if first.scores is None else float(first.scores[i]),
        })
    return {
        "model": model_name(model),
        "files": files or {},
        "images": images,
        "explanations": [{"method": e.method, "backend": e.backend, "layer": e.layer, "seconds": float(e.seconds)}
                         for e in expls],
        "agreement": agreement(names, expls),
        "warnings": warning_lines([w for e in expls for w in e.warnings], cli=True),
    }


def model_name(model: nn.Module) -> str:
    """``name (weights)`` of a loaded model, for titles and tables."""
    from cnnlens.models import meta_of

    meta = meta_of(model)
    return f"{meta.name} ({meta.weights or 'random weights'})"


# ------------------------------------------------------------------------------------------------
# Feature maps and filters
# ------------------------------------------------------------------------------------------------


def default_feature_layers(net: nn.Module, x: Tensor) -> list[str]:
    """The first conv and the last feature map: the two ends of the tutorial's progression."""
    from torch import nn

    from cnnlens import _resolve

    probe = _resolve.probe(net, x[:1])
    calls: dict[str, int] = {}
    for n, _s in probe.order:
        calls[n] = calls.get(n, 0) + 1
    # A module the model runs more than once per forward (a shared activation) has no single map.
    spatial = [n for n, s in probe.order
               if calls[n] == 1 and s is not None and len(s) == 4 and (s[2] > 1 or s[3] > 1)]
    modules = dict(net.named_modules())
    # The first convolution that runs (definition order can differ).
    first = next((n for n, _s in probe.order if isinstance(modules.get(n), nn.Conv2d) and calls[n] == 1), None)
    picked = [n for n in (first, spatial[-1] if spatial else None) if n]
    if not picked:
        raise ModelError("the model has no layer with an (N, C, H, W) output; name layers with --layers")
    return list(dict.fromkeys(picked))


def capture_features(net: nn.Module, x: Images, names: Sequence[str],
                     progress: Progress | None = None) -> FeatureMaps:
    """The feature maps of ``names`` for each image, one forward per image (kept on the CPU)."""
    import torch

    from cnnlens.featuremaps import FeatureMaps, capture

    parts = []
    n = len(x)
    with torch.no_grad():
        for i in range(n):
            _report(progress, i, n, f"forward · image {i + 1} of {n}")
            with capture(net, list(names), device="cpu", inputs=False) as part:
                net(x.tensor[i : i + 1])
            parts.append(part)
    _report(progress, n, n, "done")
    return FeatureMaps.concat(parts)


def check_filter_ids(net: nn.Module, layer: str | None, chosen: Sequence[int], size: int | None) -> int | None:
    """Refuse an out-of-range filter index; return the layer's channel count (None: filters() will explain)."""
    import torch

    from cnnlens import _resolve
    from cnnlens.models import meta_of

    side = size or meta_of(net).crop
    x = torch.zeros(1, 3, side, side, dtype=_resolve.model_dtype(net), device=_resolve.model_device(net))
    probe = _resolve.probe_or_fail(net, x, at=f" at {side}x{side}")
    _module, name = _resolve.resolve_layer(net, layer, probe)
    shapes = [s for n, s in probe.order if n == name]
    if not shapes or shapes[0] is None or len(shapes[0]) != 4:
        return None  # filters() explains what is wrong with the layer
    channels = int(shapes[0][1])
    for f in chosen:
        if not 0 <= f < channels:
            raise OptionError(f"filter {f} is out of range: layer '{name}' has {channels} filters (0..{channels - 1})")
    return channels


def visualize_filters(net: nn.Module, filter_ids: Sequence[int] | None, *, layer: str | None, steps: int, lr: float,
                      seed: int, size: int | None, progress: Progress | None = None) -> Any:
    """Gradient ascent for each filter, one at a time so that progress can be shown.

    Out-of-range indices are refused before any work; None picks the seeded default choice that
    :func:`cnnlens.activmax.filters` makes.
    """
    try:
        from cnnlens.activmax import FilterImages, _choose
        from cnnlens.activmax import filters as run_filters
    except ImportError as exc:
        raise CnnlensError(f"filter visualization is not available in this cnnlens: {exc}") from exc
    kw = {"layer": layer, "steps": steps, "lr": lr, "seed": seed, "size": size}
    channels = check_filter_ids(net, layer, filter_ids or [], size)  # one dry forward: refuse a bad index first
    chosen = list(filter_ids) if filter_ids is not None else None
    if chosen is None and channels is not None:
        chosen = _choose(None, channels, seed)  # the seeded choice filters() makes, so that progress can show it
    if chosen is None:
        return run_filters(net, filters=None, **kw)  # the seeded choice is made inside
    parts = []
    for i, f in enumerate(chosen):
        _report(progress, i, len(chosen), f"gradient ascent · filter {f}")
        parts.append(run_filters(net, filters=[f], **kw))
    _report(progress, len(chosen), len(chosen), "done")
    return FilterImages.concat(parts)


# ------------------------------------------------------------------------------------------------
# Benchmark studies and reports
# ------------------------------------------------------------------------------------------------

#: What the benchmark and its report import beyond the core: (module, pip requirement).
BENCH_NEEDS: tuple[tuple[str, str], ...] = (("pandas", "pandas>=2.0"), ("psutil", "psutil>=5.9"))



def check_bench_dependencies() -> None:
    """Refuse to start a benchmark or a report when a module it needs is missing, with the install line.

    Raises:
        CnnlensError: A module is not installed.
    """
    import importlib.util

    missing = [pip for mod, pip in BENCH_NEEDS if importlib.util.find_spec(mod) is None]
    if missing:
        raise CnnlensError(f"the benchmark needs {', '.join(missing)}, which is not installed; "
                           f"pip install {' '.join(repr(m) for m in missing)}")


def find_study(path: str | Path) -> Path:
    """The study database a path names: the ``.sqlite`` file itself, or the folder ``cnnlens bench`` wrote.

    Raises:
        StoreError: No study there, or a folder holding several (name the file).
    """
    from cnnlens.errors import StoreError

    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.glob("*.sqlite") if f.is_file())
        if not found:
            raise StoreError(f"folder '{p}' holds no study database (*.sqlite); run `cnnlens bench --out {p}` "
                             "first, or point to the .sqlite file it wrote")
        if len(found) > 1:
            raise StoreError(f"folder '{p}' holds {len(found)} study databases ({', '.join(f.name for f in found)}); "
                             "name one of them")
        return found[0]
    if not p.exists():
        raise StoreError(f"study database '{p}' does not exist; run `cnnlens bench` first, or point to the "
                         ".sqlite file (or the folder) it wrote")
    return p


def tidy_sqlite(db: str | Path) -> None:
    """Fold a study's write-ahead log back into the database and let SQLite delete its ``-wal`` and
    ``-shm`` files, so that a finished study folder holds one file that can be copied alone.

    Does nothing on read-only media, or while another process has the study open (SQLite keeps
    the files then, and they are needed).
    """
    import sqlite3

    p = Path(db)
    wal = p.with_name(p.name + "-wal")
    shm = p.with_name(p.name + "-shm")
    if not (wal.exists() or shm.exists()):
        return
    try:
        conn = sqlite3.connect(str(p), timeout=1.0)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()  # the last connection's close removes -wal and -shm
    except sqlite3.Error:
        return
