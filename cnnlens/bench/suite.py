"""Suite files: what a study measures, parsed from TOML and validated before any work starts.

A suite names models x images x methods x backends x options x batch sizes. Everything a suite
names is checked when it is loaded (models, demo/scikit-image/files images, methods, backends,
option names and values, measure settings, ``[[models]] layer``), so a typo fails in a second
with a :class:`~cnnlens.errors.SuiteError`, not an hour into a study. Every number has bounds
(stated in the error), so ``image_size = 100000`` or ``threads = 100000`` cannot exhaust the machine.

The shipped suites (``smoke``, ``standard``, ``gpu``) live in ``cnnlens/bench/suites/`` as package
data; ``benchmarks/suites/`` in the repository holds symlinks to the same files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from cnnlens.errors import CnnlensError, SuiteError, close_matches

SUITES_DIR = Path(__file__).with_name("suites")
#: Pseudo-backend of the baseline maps (random and centred); they are scored like methods.
BASELINE_BACKEND = "baseline"
BASELINES = ("random_pixel", "random_smooth", "center_gaussian")
BACKGROUNDS = ("gray", "grass", "gravel", "brick")

_TOP_KEYS = {"study", "models", "images", "methods", "agreement", "faithfulness", "sanity", "speed", "localization"}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: ``id`` names it in the table, ``spec`` is :func:`cnnlens.load_model`'s."""

    id: str
    spec: str
    weights: str | None = "DEFAULT"
    image_size: int | None = None
    layer: str | None = None


@dataclass(frozen=True)
class PasteSpec:
    """Pasted-object canvases with known boxes (localization ground truth)."""

    objects: tuple[str, ...] = ()
    scales: tuple[float, ...] = (0.5,)
    positions: tuple[tuple[float, float], ...] = ((0.5, 0.5),)
    backgrounds: tuple[str, ...] = ("gray",)
    keep: str = "correct"  # "correct": only canvases the model still classifies as the object; "all"
    max: int = 8


@dataclass(frozen=True)
class ImagesSpec:
    demo: tuple[str, ...] = ()
    flips: bool = False
    skimage: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    paste: PasteSpec = field(default_factory=PasteSpec)
    batch: int = 4


@dataclass(frozen=True)
class MethodsSpec:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("*",)
    baselines: bool = True
    #: method -> {option: value}; applied to every backend of the method that accepts the option.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: method -> N: run this (expensive) method on the study's first N images only.
    max_images: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AgreementSpec:
    enabled: bool = True
    within_backend: bool = True
    topk: tuple[float, ...] = (5.0, 10.0)


@dataclass(frozen=True)
class FaithSpec:
    enabled: bool = True
    steps: int = 16
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    road_percentiles: tuple[int, ...] = (20, 50, 80)
    road_images: int = 4  # ROAD runs on the first N images of the study (its imputer is slow)
    forward_batch: int = 32
    images: int = 0  # deletion/insertion/drop on the first N images only (0: all)
    # The toolkits' own metrics (cnnlens.bench.metrics, last block), on the same images; ARCC on the
    # ROAD images only (it runs ROAD itself).
    infidelity: bool = True  # captum.metrics.infidelity
    sensitivity: bool = False  # captum.metrics.sensitivity_max: re-explains perturb_samples copies per image
    confidence_change: bool = True  # pytorch-grad-cam's CamMultImageConfidenceChange, Drop/IncreaseInConfidence
    arcc: bool = False  # pytorch-grad-cam's ARCC: one re-explanation and a ROAD per image
    perturb_samples: int = 10  # n_perturb_samples of infidelity and sensitivity_max
    infidelity_stdev: float = 0.003  # Gaussian perturbation of infidelity, in model-input units
    perturb_radius: float = 0.02  # sensitivity_max's L-infinity radius (Captum's default)
    arcc_percentiles: tuple[int, ...] = (20, 40, 60, 80)


@dataclass(frozen=True)
class SanitySpec:
    enabled: bool = True
    images: int = 2  # first N images
    max_steps: int = 6
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeedSpec:
    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1,)
    repeats: int = 5
    warmup: int = 1
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    #: Methods timed at the smallest batch size only, with ``slow_repeats`` runs and no warm-up
    #: (perturbation methods whose one call is already hundreds of forwards).
    slow: tuple[str, ...] = ()
    slow_repeats: int = 2


@dataclass(frozen=True)
class LocalizationSpec:
    enabled: bool = True


@dataclass(frozen=True)
class Suite:
    """A validated study description."""

    name: str
    description: str
    seed: int
    models: tuple[ModelSpec, ...]
    images: ImagesSpec
    methods: MethodsSpec
    agreement: AgreementSpec
    faithfulness: FaithSpec
    sanity: SanitySpec
    speed: SpeedSpec
    localization: LocalizationSpec
    source: str = ""
    #: torch CPU threads for the study (0: torch's default). On a shared machine 1 thread avoids
    #: OpenMP oversubscription, which can make every forward several times slower.
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    def digest(self) -> str:
        """A hash of everything that defines the study (not where the file was)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def pairs(self) -> list[tuple[str, str]]:
        """The (method, backend) pairs of the study, in registry order (baselines last)."""
        from cnnlens import registry

        out = []
        for (m, b), _impl in registry.REGISTRY.items():
            if _match(m, self.methods.include) and not _match(m, self.methods.exclude, default=False) \
                    and _match(b, self.methods.backends):
                out.append((m, b))
        if self.methods.baselines:
            out.extend((name, BASELINE_BACKEND) for name in BASELINES)
        return out

    def options_for(self, method: str, backend: str) -> dict[str, Any]:
        """The suite's option overrides that this (method, backend) accepts."""
        if backend == BASELINE_BACKEND:
            return {}
        from cnnlens import registry

        accepted = registry.REGISTRY[(method, backend)].all_options()
        given = self.methods.options.get(method, {})
        return {k: v for k, v in given.items() if k in accepted}


def _match(name: str, patterns: tuple[str, ...], default: bool = True) -> bool:
    if not patterns:
        return default
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def resolve_path(suite: str | Path) -> Path:
    """A shipped suite name (``smoke``, ``standard``, ``gpu``) or a path to a TOML file."""
    s = str(suite)
    shipped = SUITES_DIR / f"{s}.toml"
    if "/" not in s and not s.endswith((".toml", ".json", ".yaml", ".yml")) and shipped.is_file():
        return shipped
    p = Path(s)
    if p.is_file():
        return p
    names = sorted(q.stem for q in SUITES_DIR.glob("*.toml"))
    hint = close_matches(s, names)
    extra = f" (did you mean {hint}?)" if hint else ""
    raise SuiteError(f"suite '{s}' is neither a shipped suite ({', '.join(names)}) nor an existing file{extra}")


def load_suite(suite: str | Path) -> Suite:
    """Read and validate a suite; raises :class:`SuiteError` on anything wrong, before any work."""
    path = resolve_path(suite)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"suite file '{path}' could not be read: {exc}") from None
    data = _decode(path, text)
    try:
        s = parse(data, source=str(path))
    except SuiteError as exc:
        raise SuiteError(f"{path.name}: {exc}") from None
    return s


def _decode(path: Path, text: str) -> Any:
    """TOML by default; JSON and YAML (when PyYAML is installed) by extension. Never runs code:
    YAML goes through ``yaml.safe_load``."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"suite file '{path}' is not valid JSON: {exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SuiteError(f"suite file '{path}' is YAML, which needs PyYAML (pip install pyyaml); "
                             "or write the suite in TOML") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SuiteError(f"suite file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file '{path}' is not valid TOML: {exc}") from None


# --------------------------------------------------------------------------------------------
# Parsing helpers: every wrong type or unknown key becomes one clear SuiteError.
# --------------------------------------------------------------------------------------------


def _section(data: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    sec = data.get(key, {})
    if not isinstance(sec, dict):
        raise SuiteError(f"[{key}] must be a table, got {type(sec).__name__}")
    unknown = set(sec) - allowed
    if unknown:
        bad = sorted(unknown)[0]
        hint = close_matches(bad, allowed)
        extra = f" (did you mean {hint}?)" if hint else ""
        raise SuiteError(f"unknown key '{bad}' in [{key}]{extra}; valid keys: {', '.join(sorted(allowed))}")
    return sec


def _get(sec: dict[str, Any], where: str, key: str, typ: type | tuple[type, ...], default: Any) -> Any:
    if key not in sec:
        return default
    v = sec[key]
    ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
    if not ok:
        name = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise SuiteError(f"{where}.{key} must be {name}, got {v!r}")
    return v


def _strs(sec: dict[str, Any], where: str, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    v = sec.get(key, list(default))
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
        raise SuiteError(f"{where}.{key} must be a list of strings, got {v!r}")
    return tuple(v)


def _nums(sec: dict[str, Any], where: str, key: str, default: tuple[Any, ...], typ: type = float) -> tuple[Any, ...]:
    v = sec.get(key, list(default))
    if not isinstance(v, list) or not v or not all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in v):
        raise SuiteError(f"{where}.{key} must be a non-empty list of numbers, got {v!r}")
    if typ is int and not all(isinstance(i, int) for i in v):
        raise SuiteError(f"{where}.{key} must be a list of integers, got {v!r}")
    return tuple(typ(i) for i in v)


#: Bounds of every numeric suite value: large enough for any real study, small enough that a typo
#: (``image_size = 100000``: a 58 GB batch) fails at load time instead of exhausting the machine.
MAX_IMAGE_SIZE = 4096
MAX_BATCH = 1024
MAX_IMAGES = 10_000
MAX_SEED = 2**32 - 1  # the widest seed every RNG the study feeds accepts (NumPy's legacy seed)
#: Largest input batch the suite may ask for, in bytes (float32 images of ``image_size``).
MAX_BATCH_BYTES = 4 * 2**30


def _bounded(where: str, v: int | float, lo: int | float, hi: int | float, note: str = "") -> None:
    """Refuse a value outside [lo, hi] (NaN included), naming the bounds."""
    if not lo <= v <= hi:
        raise SuiteError(f"{where} must be between {lo} and {hi}{note}, got {v!r}")


def max_threads() -> int:
    """The most torch threads a suite may ask for: this machine's CPUs (more only oversubscribes)."""
    return os.cpu_count() or 1


def parse(data: dict[str, Any], source: str = "") -> Suite:
    """Validate a suite given as a dict (the parsed TOML)."""
    if not isinstance(data, dict):
        raise SuiteError("a suite must be a TOML table")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        bad = sorted(unknown)[0]
        hint = close_matches(bad, _TOP_KEYS)
        extra = f" (did you mean [{hint}]?)" if hint else ""
        raise SuiteError(f"unknown section [{bad}]{extra}; valid sections: {', '.join(sorted(_TOP_KEYS))}")

    st = _section(data, "study", {"name", "description", "seed", "threads"})
    name = _get(st, "study", "name", str, Path(source).stem or "study")
    if not name or any(c in name for c in "/\\"):
        raise SuiteError(f"study.name must be a plain name, got {name!r}")
    seed = _get(st, "study", "seed", int, 0)
    _bounded("study.seed", seed, 0, MAX_SEED)
    threads = _get(st, "study", "threads", int, 0)
    _bounded("study.threads", threads, 0, max_threads(), " (this machine's CPUs; 0: torch's default)")

    models = _parse_models(data.get("models"))
    images = _parse_images(data)
    methods = _parse_methods(data)

    ag = _section(data, "agreement", {"enabled", "within_backend", "topk"})
    agreement = AgreementSpec(_get(ag, "agreement", "enabled", bool, True),
                              _get(ag, "agreement", "within_backend", bool, True),
                              _nums(ag, "agreement", "topk", (5.0, 10.0)))
    for k in agreement.topk:
        if not 0 < k <= 100:
            raise SuiteError(f"agreement.topk values are percentages in (0, 100], got {k}")

    fa = _section(data, "faithfulness", {"enabled", "steps", "blur_kernel", "blur_sigma", "road_percentiles",
                                         "road_images", "forward_batch", "images", "infidelity", "sensitivity",
                                         "confidence_change", "arcc", "perturb_samples", "infidelity_stdev",
                                         "perturb_radius", "arcc_percentiles"})
    faith = FaithSpec(
        _get(fa, "faithfulness", "enabled", bool, True),
        _get(fa, "faithfulness", "steps", int, 16),
        _get(fa, "faithfulness", "blur_kernel", int, 11),
        float(_get(fa, "faithfulness", "blur_sigma", (int, float), 5.0)),
        _nums(fa, "faithfulness", "road_percentiles", (20, 50, 80), int) if fa.get("road_percentiles") != [] else (),
        _get(fa, "faithfulness", "road_images", int, 4),
        _get(fa, "faithfulness", "forward_batch", int, 32),
        _get(fa, "faithfulness", "images", int, 0),
        _get(fa, "faithfulness", "infidelity", bool, True),
        _get(fa, "faithfulness", "sensitivity", bool, False),
        _get(fa, "faithfulness", "confidence_change", bool, True),
        _get(fa, "faithfulness", "arcc", bool, False),
        _get(fa, "faithfulness", "perturb_samples", int, 10),
        float(_get(fa, "faithfulness", "infidelity_stdev", (int, float), 0.003)),
        float(_get(fa, "faithfulness", "perturb_radius", (int, float), 0.02)),
        _nums(fa, "faithfulness", "arcc_percentiles", (20, 40, 60, 80), int),
    )
    _bounded("faithfulness.perturb_samples", faith.perturb_samples, 1, 1000)
    _bounded("faithfulness.infidelity_stdev", faith.infidelity_stdev, 1e-9, 1000.0)
    _bounded("faithfulness.perturb_radius", faith.perturb_radius, 1e-9, 1000.0)
    for p in faith.arcc_percentiles:
        if not 0 < p < 100:
            raise SuiteError(f"faithfulness.arcc_percentiles are percentages in (0, 100), got {p}")
    _bounded("faithfulness.images", faith.images, 0, MAX_IMAGES, " (0 means every image)")
    _bounded("faithfulness.steps", faith.steps, 1, 1000)
    _bounded("faithfulness.forward_batch", faith.forward_batch, 1, MAX_BATCH)
    _bounded("faithfulness.blur_sigma", faith.blur_sigma, 0.01, 1000.0)
    if not 1 <= faith.blur_kernel <= 255 or faith.blur_kernel % 2 == 0:
        raise SuiteError(f"faithfulness.blur_kernel must be an odd integer between 1 and 255, got {faith.blur_kernel}")
    _bounded("faithfulness.road_images", faith.road_images, 0, MAX_IMAGES)
    for p in faith.road_percentiles:
        if not 0 < p < 100:
            raise SuiteError(f"faithfulness.road_percentiles are percentages in (0, 100), got {p}")

    sa = _section(data, "sanity", {"enabled", "images", "max_steps", "include", "exclude"})
    sanity = SanitySpec(_get(sa, "sanity", "enabled", bool, True), _get(sa, "sanity", "images", int, 2),
                        _get(sa, "sanity", "max_steps", int, 6), _strs(sa, "sanity", "include", ("*",)),
                        _strs(sa, "sanity", "exclude", ()))
    _bounded("sanity.images", sanity.images, 1, MAX_IMAGES)
    _bounded("sanity.max_steps", sanity.max_steps, 2, 100)

    sp = _section(data, "speed", {"enabled", "batch_sizes", "repeats", "warmup", "include", "exclude", "slow",
                                  "slow_repeats"})
    speed = SpeedSpec(_get(sp, "speed", "enabled", bool, True), _nums(sp, "speed", "batch_sizes", (1,), int),
                      _get(sp, "speed", "repeats", int, 5), _get(sp, "speed", "warmup", int, 1),
                      _strs(sp, "speed", "include", ("*",)), _strs(sp, "speed", "exclude", ()),
                      _strs(sp, "speed", "slow", ()), _get(sp, "speed", "slow_repeats", int, 2))
    _bounded("speed.slow_repeats", speed.slow_repeats, 1, 1000)
    for b in speed.batch_sizes:
        _bounded("speed.batch_sizes", b, 1, MAX_BATCH)
    _bounded("speed.repeats", speed.repeats, 1, 1000)
    _bounded("speed.warmup", speed.warmup, 0, 100)

    lo = _section(data, "localization", {"enabled"})
    loc = LocalizationSpec(_get(lo, "localization", "enabled", bool, True))

    for where, pats in (("sanity", sanity.include + sanity.exclude),
                        ("speed", speed.include + speed.exclude + speed.slow)):
        _check_method_patterns(where, pats)

    _check_batch_bytes(models, images, speed, faith)
    suite = Suite(name, _get(st, "study", "description", str, ""), seed, models, images, methods, agreement,
                  faith, sanity, speed, loc, source, threads=threads)
    if not suite.pairs():
        raise SuiteError("the suite selects no (method, backend) pair; check [methods] include/exclude/backends")
    return suite


def _check_batch_bytes(models: tuple[ModelSpec, ...], images: ImagesSpec, speed: SpeedSpec,
                       faith: FaithSpec) -> None:
    """Refuse a suite whose largest input batch alone would not fit a machine's memory.

    Each bound above is sensible on its own; their product (1024 images of 4096 x 4096) is not.
    Models without ``image_size`` use their own (small) crop and are not checked here.
    """
    batch = max(images.batch, *speed.batch_sizes, faith.forward_batch if faith.enabled else 1)
    for m in models:
        if m.image_size is None:
            continue
        need = batch * 3 * m.image_size**2 * 4
        if need > MAX_BATCH_BYTES:
            raise SuiteError(
                f"model '{m.id}': a batch of {batch} images of {m.image_size}x{m.image_size} needs "
                f"{need / 2**30:.1f} GiB as float32, more than the {MAX_BATCH_BYTES // 2**30} GiB a suite may ask for; "
                "lower image_size or the batch sizes (images.batch, speed.batch_sizes, faithfulness.forward_batch)")


def _parse_models(raw: Any) -> tuple[ModelSpec, ...]:
    if raw is None:
        return (ModelSpec("efficientnet_lite0", "efficientnet_lite0"),)
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise SuiteError("[[models]] must be a non-empty array of tables, each with at least spec = '...'")
    out, seen = [], set()
    for i, m in enumerate(raw):
        where = f"models[{i}]"
        unknown = set(m) - {"id", "spec", "weights", "image_size", "layer"}
        if unknown:
            raise SuiteError(f"unknown key '{sorted(unknown)[0]}' in {where}; valid: id, spec, weights, image_size, layer")
        spec = _get(m, where, "spec", str, None)
        if not spec:
            raise SuiteError(f"{where} needs spec = 'efficientnet_lite0' (or a torchvision name, file, 'module:callable')")
        weights = m.get("weights", "DEFAULT")
        if weights is not None and not isinstance(weights, str):
            raise SuiteError(f"{where}.weights must be a string, got {weights!r}")
        size = _get(m, where, "image_size", int, None)
        if size is not None:
            _bounded(f"{where}.image_size", size, 8, MAX_IMAGE_SIZE)
        mid = _get(m, where, "id", str, spec.replace("/", "_").replace(":", "_"))
        if mid in seen:
            raise SuiteError(f"model id '{mid}' appears twice; give each [[models]] entry a distinct id")
        seen.add(mid)
        _check_model_spec(where, spec, weights)
        layer = _get(m, where, "layer", str, None)
        if layer is not None:
            _check_layer(where, spec, layer)
        out.append(ModelSpec(mid, spec, weights if weights != "none" else None, size, layer))
    return tuple(out)


def _check_model_spec(where: str, spec: str, weights: str | None) -> None:
    """Check that a model spec names something that exists, without loading weights."""
    import importlib
    import importlib.util

    from cnnlens.models import EMBEDDED

    if spec in (EMBEDDED, "embedded", "default"):
        return
    p = Path(spec)
    if p.suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".torchscript", ".jit"):
        if not p.is_file():
            raise SuiteError(f"{where}.spec: model file '{spec}' does not exist")
        return
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise SuiteError(f"{where}.spec: module '{mod}' of '{spec}' cannot be imported")
        if not hasattr(importlib.import_module(mod), attr):
            raise SuiteError(f"{where}.spec: module '{mod}' has no attribute '{attr}'")
        return
    from cnnlens.models import _torchvision_names

    names = _torchvision_names()
    if spec not in names:
        hint = close_matches(spec, [*names, EMBEDDED])
        extra = f" (did you mean {hint}?)" if hint else ""
        raise SuiteError(f"{where}.spec: unknown model '{spec}'{extra}")
    if weights not in (None, "none", "DEFAULT"):
        from torchvision.models import get_model_weights

        members = get_model_weights(spec).__members__
        if weights.split(".")[-1] not in members:
            raise SuiteError(f"{where}.weights: unknown weights '{weights}' for {spec}; valid: DEFAULT, {', '.join(members)}")


def _check_layer(where: str, spec: str, layer: str) -> None:
    """Check that ``layer`` names a module of the model, by building its architecture (no weights).

    torchvision architectures are built on the ``meta`` device (no memory, no initialisation cost);
    others (the embedded model, files, ``module:callable``) are loaded as the study will load them.
    """
    import torch

    from cnnlens.models import EMBEDDED, _torchvision_names, load_model

    net = None
    if spec not in (EMBEDDED, "embedded", "default") and spec in _torchvision_names():
        from torchvision.models import get_model_builder

        try:
            with torch.device("meta"):
                net = get_model_builder(spec)(weights=None)
        except Exception:  # an architecture whose __init__ needs real tensors: build it normally
            net = None
    try:
        if net is None:
            net = load_model(spec, weights=None)
    except CnnlensError as exc:
        raise SuiteError(f"{where}.spec: {exc}") from None
    names = [n for n, _m in net.named_modules() if n]
    if layer not in names:
        hint = close_matches(layer, names)
        extra = f"; close matches: {hint}" if hint else ""
        raise SuiteError(f"{where}.layer: layer '{layer}' is not a module of '{spec}'{extra} "
                         f"(`cnnlens layers --model {spec}` lists them)")


def _parse_images(data: dict[str, Any]) -> ImagesSpec:
    from cnnlens.bench import data as bdata
    from cnnlens.images import DEMO

    im = _section(data, "images", {"demo", "flips", "skimage", "files", "paste", "batch"})
    demo = _strs(im, "images", "demo", DEMO if "images" not in data else ())
    for d in demo:
        if d not in DEMO:
            hint = close_matches(d, DEMO)
            raise SuiteError(f"images.demo: unknown demo image '{d}'{f' (did you mean {hint}?)' if hint else ''}; "
                             f"available: {', '.join(DEMO)}")
    sk = _strs(im, "images", "skimage", ())
    avail = bdata.skimage_names()
    for s in sk:
        if s not in avail:
            hint = close_matches(s, avail)
            raise SuiteError(f"images.skimage: '{s}' is not a local scikit-image sample"
                             f"{f' (did you mean {hint}?)' if hint else ''}; available: {', '.join(avail)}")
    files = _strs(im, "images", "files", ())
    if files:
        from cnnlens.images import expand

        try:
            expand(files)
        except CnnlensError as exc:
            raise SuiteError(f"images.files: {exc}") from None
    pa = im.get("paste", {})
    if not isinstance(pa, dict):
        raise SuiteError("[images.paste] must be a table")
    unknown = set(pa) - {"objects", "scales", "positions", "backgrounds", "keep", "max"}
    if unknown:
        raise SuiteError(f"unknown key '{sorted(unknown)[0]}' in [images.paste]; "
                         "valid: objects, scales, positions, backgrounds, keep, max")
    objects = _strs(pa, "images.paste", "objects", ())
    for o in objects:
        if o not in bdata.OBJECTS:
            hint = close_matches(o, bdata.OBJECTS)
            raise SuiteError(f"images.paste.objects: unknown object '{o}'{f' (did you mean {hint}?)' if hint else ''}; "
                             f"available: {', '.join(bdata.OBJECTS)}")
    scales = _nums(pa, "images.paste", "scales", (0.5,))
    for s in scales:
        if not 0.05 <= s <= 1.0:
            raise SuiteError(f"images.paste.scales are fractions of the canvas in [0.05, 1], got {s}")
    pos = pa.get("positions", [[0.5, 0.5]])
    if not isinstance(pos, list) or not pos or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in p)
            for p in pos):
        raise SuiteError(f"images.paste.positions must be a list of [x, y] pairs in [0, 1], got {pos!r}")
    bgs = _strs(pa, "images.paste", "backgrounds", ("gray",))
    for b in bgs:
        if b not in BACKGROUNDS:
            raise SuiteError(f"images.paste.backgrounds: unknown background '{b}'; available: {', '.join(BACKGROUNDS)}")
    keep = _get(pa, "images.paste", "keep", str, "correct")
    if keep not in ("correct", "all"):
        raise SuiteError(f"images.paste.keep must be 'correct' or 'all', got {keep!r}")
    mx = _get(pa, "images.paste", "max", int, 8)
    _bounded("images.paste.max", mx, 1, MAX_IMAGES)
    paste = PasteSpec(objects, scales, tuple((float(a), float(b)) for a, b in pos), bgs, keep, mx)
    batch = _get(im, "images", "batch", int, 4)
    _bounded("images.batch", batch, 1, MAX_BATCH)
    spec = ImagesSpec(demo, _get(im, "images", "flips", bool, False), sk, files, paste, batch)
    if not (demo or sk or files or objects):
        raise SuiteError("[images] selects no image; give demo, skimage, files or paste.objects")
    return spec


def _check_method_patterns(where: str, patterns: tuple[str, ...]) -> None:
    from cnnlens import registry

    names = [*registry.METHODS, *BASELINES]
    for p in patterns:
        if not any(fnmatch.fnmatch(n, p) for n in names):
            hint = close_matches(p, names)
            extra = f" (did you mean {hint}?)" if hint else ""
            raise SuiteError(f"{where}: pattern '{p}' matches no method{extra}")


def _parse_methods(data: dict[str, Any]) -> MethodsSpec:
    from cnnlens import registry

    me = _section(data, "methods", {"include", "exclude", "backends", "baselines", "options", "max_images"})
    include = _strs(me, "methods", "include", ("*",))
    exclude = _strs(me, "methods", "exclude", ())
    _check_method_patterns("methods.include", include)
    _check_method_patterns("methods.exclude", exclude)
    backends = _strs(me, "methods", "backends", ("*",))
    for b in backends:
        if not any(fnmatch.fnmatch(x, b) for x in registry.BACKENDS):
            hint = close_matches(b, registry.BACKENDS)
            raise SuiteError(f"methods.backends: unknown backend '{b}'{f' (did you mean {hint}?)' if hint else ''}; "
                             f"backends: {', '.join(registry.BACKENDS)}")
    opts = me.get("options", {})
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise SuiteError("[methods.options] must map method names to tables, e.g. integrated_gradients = { n_steps = 16 }")
    for method, given in opts.items():
        if method not in registry.METHODS:
            hint = close_matches(method, registry.METHODS)
            raise SuiteError(f"methods.options: unknown method '{method}'{f' (did you mean {hint}?)' if hint else ''}")
        impls = [i for (m, _b), i in registry.REGISTRY.items() if m == method]
        for key, value in given.items():
            takers = [i for i in impls if key in i.all_options()]
            if not takers:
                valid = sorted({k for i in impls for k in i.all_options()})
                hint = close_matches(key, valid)
                extra = f" (did you mean {hint}?)" if hint else ""
                raise SuiteError(f"methods.options.{method}: unknown option '{key}'{extra}; "
                                 f"valid: {', '.join(valid) or 'none'}")
            for impl in takers:
                try:
                    impl.all_options()[key].validate(key, value)
                except CnnlensError as exc:
                    raise SuiteError(f"methods.options.{method}: {exc}") from None
    mx = me.get("max_images", {})
    if not isinstance(mx, dict):
        raise SuiteError("[methods.max_images] must map method names to image counts, e.g. scorecam = 4")
    for method, n in mx.items():
        if method not in registry.METHODS:
            hint = close_matches(method, registry.METHODS)
            raise SuiteError(f"methods.max_images: unknown method '{method}'{f' (did you mean {hint}?)' if hint else ''}")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
            raise SuiteError(f"methods.max_images.{method} must be an integer between 1 and {MAX_IMAGES}, got {n!r}")
    return MethodsSpec(include, exclude, backends, _get(me, "methods", "baselines", bool, True),
                       {k: dict(v) for k, v in opts.items()}, dict(mx))
