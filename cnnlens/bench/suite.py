"""Suite files: what a study measures, parsed from TOML and validated before any work starts.

A suite names models x images x methods x backends x options x batch sizes. Everything a suite
names is checked when it is loaded (models, demo/scikit-image/files images, the user's dataset
folder, manifest and annotation files, methods, backends, option names and values, measure
settings, ``[[models]] layer``), so a typo fails in a second with a :class:`~cnnlens.errors.SuiteError`,
not an hour into a study. Every number has bounds (stated in the error), so ``image_size = 100000``
or ``threads = 100000`` cannot exhaust the machine.

The schema is a set of pydantic dataclasses (strict types, unknown keys refused). Pydantic's
``ValidationError`` is translated here, at the boundary, into one :class:`SuiteError` with one line
per problem: the key path (``faithfulness.steps``), what was wrong and, for an unknown key, the
close matches.

The shipped suites (``smoke``, ``standard``, ``gpu``) live in ``cnnlens/bench/suites/`` as package
data; ``benchmarks/suites/`` in the repository holds symlinks to the same files.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic import dataclasses as pdc
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from cnnlens.errors import CnnlensError, SuiteError, close_matches

SUITES_DIR = Path(__file__).with_name("suites")
#: Pseudo-backend of the baseline maps (random and centred); they are scored like methods.
BASELINE_BACKEND = "baseline"
BASELINES = ("random_pixel", "random_smooth", "center_gaussian")
BACKGROUNDS = ("gray", "grass", "gravel", "brick")
ANNOTATION_FORMATS = ("auto", "voc", "coco")

#: Bounds of every numeric suite value: large enough for any real study, small enough that a typo
#: (``image_size = 100000``: a 58 GB batch) fails at load time instead of exhausting the machine.
MAX_IMAGE_SIZE = 4096
MAX_BATCH = 1024
MAX_IMAGES = 10_000
MAX_SEED = 2**32 - 1  # the widest seed every RNG the study feeds accepts (NumPy's legacy seed)
#: Largest input batch the suite may ask for, in bytes (float32 images of ``image_size``).
MAX_BATCH_BYTES = 4 * 2**30


def max_threads() -> int:
    """The most torch threads a suite may ask for: this machine's CPUs (more only oversubscribes)."""
    return os.cpu_count() or 1


#: Strict types (an int is not a bool, a string is not a number; a float field takes an int) and
#: no unknown keys. Suites are validated in pydantic's JSON mode, where a TOML array is a tuple.
_CFG = ConfigDict(extra="forbid", strict=True)
#: Field metadata of keys added after studies were first stored: such a key enters
#: :meth:`Suite.digest` only when it is set, so an unchanged suite keeps the digest (and resumes
#: the study) it had before the key existed.
LATER = {"digest": "when_set"}


class _Problem(PydanticCustomError):
    """Raise from a validator: ``message`` follows the key path (``sub`` extends it)."""

    def __new__(cls, message: str, sub: str | None = None) -> _Problem:
        # "must ..." reads after the path with a space, anything else after a colon.
        kind = "suite_must" if message.startswith(("must ", "values are ", "are ", "needs ", "selects ")) else "suite"
        # pydantic fills only "{key}" placeholders of the context keys in the message; braces stay as written.
        return super().__new__(cls, kind, message, {"sub": sub})


def _hint(name: str, pool: Any, fmt: str = "{}") -> str:
    h = close_matches(name, pool)
    return f" (did you mean {fmt.format(h)}?)" if h else ""


def _check_names(given: tuple[str, ...], pool: Any, what: str, available: str = "available") -> None:
    for g in given:
        if g not in pool:
            raise _Problem(f"unknown {what} '{g}'{_hint(g, pool)}; {available}: {', '.join(pool)}")


def _one_or_many(v: Any) -> Any:
    """A single string where a list of strings is expected is that one string."""
    if isinstance(v, str):
        return (v,)
    return tuple(v) if isinstance(v, list) else v  # the strict tuple check after this takes no list


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


@pdc.dataclass(frozen=True, config=_CFG)
class ModelSpec:
    """One model of the study: ``id`` names it in the table, ``spec`` is :func:`cnnlens.load_model`'s."""

    id: str = ""  # default: the spec, with / and : replaced
    spec: str = ""
    weights: str | None = "DEFAULT"
    image_size: int | None = Field(None, ge=8, le=MAX_IMAGE_SIZE)
    layer: str | None = None

    @model_validator(mode="after")
    def _exists(self) -> ModelSpec:
        if not self.spec:
            raise _Problem("needs spec = 'efficientnet_lite0' (or a torchvision name, file, 'module:callable')")
        if not self.id:
            object.__setattr__(self, "id", self.spec.replace("/", "_").replace(":", "_"))
        _check_model_spec(self.spec, self.weights)
        if self.layer is not None:
            _check_layer(self.spec, self.layer)
        if self.weights == "none":
            object.__setattr__(self, "weights", None)
        return self


@pdc.dataclass(frozen=True, config=_CFG)
class PasteSpec:
    """Pasted-object canvases with known boxes (localization ground truth)."""

    objects: tuple[str, ...] = ()
    scales: tuple[float, ...] = Field((0.5,), min_length=1)
    positions: tuple[tuple[float, float], ...] = Field(((0.5, 0.5),), min_length=1)
    backgrounds: tuple[str, ...] = ("gray",)
    keep: Literal["correct", "all"] = "correct"  # "correct": only canvases the model still classifies as the object
    max: int = Field(8, ge=1, le=MAX_IMAGES)

    _lists = field_validator("objects", "backgrounds", mode="before")(_one_or_many)

    @field_validator("objects")
    @classmethod
    def _objects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from cnnlens.bench import data as bdata

        _check_names(v, list(bdata.OBJECTS), "object")
        return v

    @field_validator("backgrounds")
    @classmethod
    def _backgrounds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        _check_names(v, BACKGROUNDS, "background")
        return v

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for s in v:
            if not 0.05 <= s <= 1.0:
                raise _Problem(f"are fractions of the canvas in [0.05, 1], got {s}")
        return v

    @field_validator("positions")
    @classmethod
    def _positions(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        if not all(0 <= c <= 1 for p in v for c in p):
            raise _Problem(f"must be a list of [x, y] pairs in [0, 1], got {[list(p) for p in v]!r}")
        return v


@pdc.dataclass(frozen=True, config=_CFG)
class ImagesSpec:
    """The study's images. ``batch`` is the shard: images are read and explained that many at a time
    (``shard = N`` in a suite file; ``batch`` is its older name)."""

    demo: tuple[str, ...] = ()
    flips: bool = False
    skimage: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    paste: PasteSpec = field(default_factory=PasteSpec)
    batch: int = Field(4, ge=1, le=MAX_BATCH)
    #: An ImageFolder tree (one sub-folder per class); absolute once loaded (given relative to the suite file).
    folder: str | None = field(default=None, metadata=LATER)
    #: A CSV or JSON-lines file: one row per image (path, label, x0, y0, x1, y1, mask).
    manifest: str | None = field(default=None, metadata=LATER)
    #: Pascal VOC XML (a file or a folder of them) or a COCO JSON file of boxes.
    annotations: str | None = field(default=None, metadata=LATER)
    annotations_format: Literal["auto", "voc", "coco"] = field(default="auto", metadata=LATER)
    #: A text file mapping folder or label names to the model's classes (one name per line, or
    #: ``name index`` / ``name,index`` per line).
    classes: str | None = field(default=None, metadata=LATER)
    #: Go on without images that cannot be read (they are listed in a warning) instead of refusing.
    skip_unreadable: bool = field(default=False, metadata=LATER)
    #: Let manifest rows name files outside the manifest's folder (``../``, absolute paths elsewhere);
    #: off, such a row is refused, so a manifest cannot pull any readable image of the machine into a study.
    allow_outside_root: bool = field(default=False, metadata=LATER)

    _lists = field_validator("demo", "skimage", "files", mode="before")(_one_or_many)

    @property
    def shard(self) -> int:
        """Images read and explained at a time (``[images] shard``)."""
        return self.batch

    @field_validator("demo")
    @classmethod
    def _demo(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from cnnlens.images import DEMO

        _check_names(v, DEMO, "demo image")
        return v

    @field_validator("skimage")
    @classmethod
    def _skimage(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from cnnlens.bench import data as bdata

        avail = bdata.skimage_names()
        for s in v:
            if s not in avail:
                raise _Problem(f"'{s}' is not a local scikit-image sample{_hint(s, avail)}; available: {', '.join(avail)}")
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if v:
            from cnnlens.images import expand

            try:
                expand(list(v))
            except CnnlensError as exc:
                raise _Problem(str(exc)) from None
        return v

    @field_validator("folder", "manifest", "annotations", "classes")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Resolve against the suite file's folder; the dataset itself is checked by ``datasets``."""
        if v is None:
            return v
        root = Path((info.context or {}).get("root", "."))
        p = (root / os.path.expanduser(v)).resolve()
        what = {"folder": "folder", "manifest": "manifest file", "annotations": "annotation file or folder",
                "classes": "classes file"}[info.field_name or ""]
        if not p.exists():
            raise _Problem(f"{what} '{v}' does not exist (looked for {p}; paths are relative to the suite file)")
        if info.field_name == "folder" and not p.is_dir():
            raise _Problem(f"'{v}' is not a folder; give an ImageFolder tree (one sub-folder per class)")
        if info.field_name in ("manifest", "classes") and not p.is_file():
            raise _Problem(f"{what} '{v}' is a folder, not a file")
        return str(p)

    @model_validator(mode="after")
    def _selects_something(self) -> ImagesSpec:
        if not (self.demo or self.skimage or self.files or self.paste.objects or self.folder or self.manifest):
            raise _Problem("selects no image; give demo, skimage, files, folder, manifest or paste.objects")
        if self.annotations and not (self.folder or self.manifest or self.files):
            raise _Problem("annotations give boxes for image files; give folder, manifest or files too",
                           "annotations")
        if self.manifest and self.annotations:
            raise _Problem("give boxes in the manifest or in annotations, not both", "annotations")
        return self


def _method_patterns(v: tuple[str, ...]) -> tuple[str, ...]:
    from cnnlens import registry

    names = [*registry.METHODS, *BASELINES]
    for p in v:
        if not any(fnmatch.fnmatch(n, p) for n in names):
            raise _Problem(f"pattern '{p}' matches no method{_hint(p, names)}")
    return v


@pdc.dataclass(frozen=True, config=_CFG)
class MethodsSpec:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("*",)
    baselines: bool = True
    #: method -> {option: value}; applied to every backend of the method that accepts the option.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: method -> N: run this (expensive) method on the study's first N images only.
    max_images: dict[str, int] = field(default_factory=dict)

    _lists = field_validator("include", "exclude", "backends", mode="before")(_one_or_many)
    _patterns = field_validator("include", "exclude")(_method_patterns)

    @field_validator("backends")
    @classmethod
    def _backends(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from cnnlens import registry

        for b in v:
            if not any(fnmatch.fnmatch(x, b) for x in registry.BACKENDS):
                raise _Problem(f"unknown backend '{b}'{_hint(b, registry.BACKENDS)}; "
                               f"backends: {', '.join(registry.BACKENDS)}")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from cnnlens import registry

        for method, given in v.items():
            if method not in registry.METHODS:
                raise _Problem(f"unknown method '{method}'{_hint(method, registry.METHODS)}")
            impls = [i for (m, _b), i in registry.REGISTRY.items() if m == method]
            for key, value in given.items():
                takers = [i for i in impls if key in i.all_options()]
                if not takers:
                    valid = sorted({k for i in impls for k in i.all_options()})
                    raise _Problem(f"unknown option '{key}'{_hint(key, valid)}; valid: {', '.join(valid) or 'none'}",
                                   method)
                for impl in takers:
                    try:
                        impl.all_options()[key].validate(key, value)
                    except CnnlensError as exc:
                        raise _Problem(str(exc), method) from None
        return v

    @field_validator("max_images")
    @classmethod
    def _max_images(cls, v: dict[str, int]) -> dict[str, int]:
        from cnnlens import registry

        for method, n in v.items():
            if method not in registry.METHODS:
                raise _Problem(f"unknown method '{method}'{_hint(method, registry.METHODS)}")
            if not 1 <= n <= MAX_IMAGES:
                raise _Problem(f"must be an integer between 1 and {MAX_IMAGES}, got {n!r}", method)
        return v


@pdc.dataclass(frozen=True, config=_CFG)
class AgreementSpec:
    enabled: bool = True
    within_backend: bool = True
    topk: tuple[float, ...] = Field((5.0, 10.0), min_length=1)

    @field_validator("topk")
    @classmethod
    def _topk(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for k in v:
            if not 0 < k <= 100:
                raise _Problem(f"values are percentages in (0, 100], got {k}")
        return v


@pdc.dataclass(frozen=True, config=_CFG)
class FaithSpec:
    enabled: bool = True
    steps: int = Field(16, ge=1, le=1000)
    blur_kernel: int = 11
    blur_sigma: float = Field(5.0, ge=0.01, le=1000.0)
    road_percentiles: tuple[int, ...] = (20, 50, 80)
    road_images: int = Field(4, ge=0, le=MAX_IMAGES)  # ROAD runs on the first N images of the study (its imputer is slow)
    forward_batch: int = Field(32, ge=1, le=MAX_BATCH)
    images: int = Field(0, ge=0, le=MAX_IMAGES)  # deletion/insertion/drop on the first N images only (0: all)
    # wt-captum's keys (ported from its FaithSpec): the toolkits' own metrics (cnnlens.bench.metrics,
    # last block), on the same images; ARCC on the ROAD images only (it runs ROAD itself).
    infidelity: bool = field(default=True, metadata=LATER)  # captum.metrics.infidelity
    #: captum.metrics.sensitivity_max: re-explains perturb_samples copies per image
    sensitivity: bool = field(default=False, metadata=LATER)
    #: pytorch-grad-cam's CamMultImageConfidenceChange, Drop/IncreaseInConfidence
    confidence_change: bool = field(default=True, metadata=LATER)
    arcc: bool = field(default=False, metadata=LATER)  # pytorch-grad-cam's ARCC: one re-explanation and a ROAD per image
    #: n_perturb_samples of infidelity and sensitivity_max
    perturb_samples: int = Field(10, ge=1, le=1000, json_schema_extra=LATER)
    #: Gaussian perturbation of infidelity, in model-input units
    infidelity_stdev: float = Field(0.003, ge=1e-9, le=1000.0, json_schema_extra=LATER)
    #: sensitivity_max's L-infinity radius (Captum's default)
    perturb_radius: float = Field(0.02, ge=1e-9, le=1000.0, json_schema_extra=LATER)
    arcc_percentiles: tuple[int, ...] = Field((20, 40, 60, 80), json_schema_extra=LATER)

    @field_validator("blur_kernel")
    @classmethod
    def _kernel(cls, v: int) -> int:
        if not 1 <= v <= 255 or v % 2 == 0:
            raise _Problem(f"must be an odd integer between 1 and 255, got {v}")
        return v

    @field_validator("road_percentiles", "arcc_percentiles")
    @classmethod
    def _percentiles(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for p in v:
            if not 0 < p < 100:
                raise _Problem(f"are percentages in (0, 100), got {p}")
        return v


@pdc.dataclass(frozen=True, config=_CFG)
class SanitySpec:
    enabled: bool = True
    images: int = Field(2, ge=1, le=MAX_IMAGES)  # first N images
    max_steps: int = Field(6, ge=2, le=100)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    _lists = field_validator("include", "exclude", mode="before")(_one_or_many)
    _patterns = field_validator("include", "exclude")(_method_patterns)


@pdc.dataclass(frozen=True, config=_CFG)
class SpeedSpec:
    enabled: bool = True
    batch_sizes: tuple[int, ...] = Field((1,), min_length=1)
    repeats: int = Field(5, ge=1, le=1000)
    warmup: int = Field(1, ge=0, le=100)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    #: Methods timed at the smallest batch size only, with ``slow_repeats`` runs and no warm-up
    #: (perturbation methods whose one call is already hundreds of forwards).
    slow: tuple[str, ...] = ()
    slow_repeats: int = Field(2, ge=1, le=1000)

    _lists = field_validator("include", "exclude", "slow", mode="before")(_one_or_many)
    _patterns = field_validator("include", "exclude", "slow")(_method_patterns)

    @field_validator("batch_sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for b in v:
            if not 1 <= b <= MAX_BATCH:
                raise _Problem(f"must be between 1 and {MAX_BATCH}, got {b!r}")
        return v


@pdc.dataclass(frozen=True, config=_CFG)
class LocalizationSpec:
    enabled: bool = True


@pdc.dataclass(frozen=True, config=_CFG)
class QuantusSpec:
    """``[quantus]``: Quantus metrics (:mod:`cnnlens.bench.quantus_metrics`) on the first ``images`` images,
    each image's maps scored by the Quantus class of that name; ``settings`` overrides a metric's
    keyword arguments (``[quantus.settings] PixelFlipping = { features_in_step = 32 }``)."""

    metrics: tuple[str, ...] = ()
    images: int = Field(4, ge=1, le=MAX_IMAGES)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)  # Quantus' own batch_size (its perturbed copies per forward)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    _lists = field_validator("metrics", mode="before")(_one_or_many)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from cnnlens.bench.quantus_metrics import METRICS

        if v == ("*",):
            return tuple(METRICS)
        _check_names(v, list(METRICS), "Quantus metric")
        return v

    @model_validator(mode="after")
    def _settings(self) -> QuantusSpec:
        import inspect

        from cnnlens.bench.quantus_metrics import require

        if not self.metrics:
            return self
        try:
            quantus = require()
        except CnnlensError as exc:
            raise _Problem(str(exc)) from None
        for name, kw in self.settings.items():
            if name not in self.metrics:
                raise _Problem(f"settings for '{name}', which metrics does not name; metrics: "
                               f"{', '.join(self.metrics)}")
            accepted = [p for p in inspect.signature(getattr(quantus, name).__init__).parameters
                        if p not in ("self", "args", "kwargs")]
            for k in kw:
                if k not in accepted:
                    raise _Problem(f"settings.{name}: quantus.{name} takes no '{k}'{_hint(k, accepted)}")
        return self


@pdc.dataclass(frozen=True, config=_CFG)
class StudySpec:
    """The ``[study]`` table (its values become :class:`Suite` attributes)."""

    name: str | None = None
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    #: torch CPU threads for the study (0: torch's default).
    threads: int = Field(0, ge=0, le=max_threads())
    #: Which class each image is explained for: the model's top-1 ("predicted") or the dataset's label.
    target: Literal["predicted", "label"] = "predicted"

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/\\")):
            raise _Problem(f"must be a plain name, got {v!r}")
        return v


_DEFAULT_MODELS = ({"id": "efficientnet_lite0", "spec": "efficientnet_lite0"},)


@pdc.dataclass(frozen=True, config=_CFG)
class SuiteFile:
    """A suite file's tables, as written (one field per section)."""

    models: tuple[ModelSpec, ...] = Field(min_length=1)
    study: StudySpec = field(default_factory=StudySpec)
    images: ImagesSpec = field(default_factory=ImagesSpec)
    methods: MethodsSpec = field(default_factory=MethodsSpec)
    agreement: AgreementSpec = field(default_factory=AgreementSpec)
    faithfulness: FaithSpec = field(default_factory=FaithSpec)
    sanity: SanitySpec = field(default_factory=SanitySpec)
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    localization: LocalizationSpec = field(default_factory=LocalizationSpec)
    quantus: QuantusSpec | None = None

    @model_validator(mode="after")
    def _distinct_ids(self) -> SuiteFile:
        seen: set[str] = set()
        for m in self.models:
            if m.id in seen:
                raise _Problem(f"model id '{m.id}' appears twice; give each [[models]] entry a distinct id")
            seen.add(m.id)
        return self


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
    #: ``[study] target``: explain each image for the model's top-1 class or for its dataset label.
    target: str = field(default="predicted", metadata=LATER)
    #: ``[quantus]``: Quantus metrics (None: the suite has no such section).
    quantus: QuantusSpec | None = field(default=None, metadata=LATER)

    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
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


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict``, leaving out :data:`LATER` keys that are at their default."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            # LATER sits in a dataclass field's metadata, or in a pydantic Field's json_schema_extra.
            info = f.default if isinstance(f.default, FieldInfo) else None
            marks = (info.json_schema_extra if info is not None else None) or f.metadata
            default = info.default if info is not None else f.default
            if hasattr(marks, "get") and marks.get("digest") == LATER["digest"] and v == default:
                continue
            out[f.name] = _plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


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
# Validation, and pydantic's errors translated into one SuiteError
# --------------------------------------------------------------------------------------------

_SUITE_FILE = TypeAdapter(SuiteFile)


def parse(data: dict[str, Any], source: str = "") -> Suite:
    """Validate a suite given as a dict (the parsed TOML). Relative dataset paths are resolved
    against the folder of ``source`` (the suite file)."""
    if not isinstance(data, dict):
        raise SuiteError("a suite must be a TOML table")
    data = dict(data)
    data.setdefault("models", list(_DEFAULT_MODELS))
    images = data.get("images")
    renamed = False
    if images is None:
        from cnnlens.images import DEMO

        data["images"] = {"demo": list(DEMO)}
    elif isinstance(images, dict) and "shard" in images:
        images = dict(images)
        if "batch" in images and images["batch"] != images["shard"]:
            raise SuiteError("[images] gives both shard and batch (its older name) with different values; "
                             "give shard only")
        images["batch"] = images.pop("shard")
        data["images"] = images
        renamed = True
    _refuse_dates(data, "")
    root = str(Path(source).parent) if source else "."
    try:
        blob = json.dumps(data, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"the suite holds a value that is not a number, string, boolean, array or table: {exc}") \
            from None
    try:
        f = _SUITE_FILE.validate_json(blob, context={"root": root})
    except ValidationError as exc:
        raise SuiteError(_messages(exc, renamed)) from None
    st = f.study
    suite = Suite(st.name if st.name is not None else (Path(source).stem or "study"), st.description, st.seed,
                  f.models, f.images, f.methods, f.agreement, f.faithfulness, f.sanity, f.speed, f.localization,
                  source, threads=st.threads, target=st.target,
                  quantus=f.quantus if f.quantus is not None and f.quantus.metrics else None)
    _check_batch_bytes(suite.models, suite.images, suite.speed, suite.faithfulness)
    if not suite.pairs():
        raise SuiteError("the suite selects no (method, backend) pair; check [methods] include/exclude/backends")
    return suite


def _refuse_dates(v: Any, where: str) -> None:
    """TOML dates and times are no suite value; name the key instead of failing in ``json.dumps``."""
    if isinstance(v, (datetime.date, datetime.time)):
        raise SuiteError(f"{where} must not be a date or time, got {v.isoformat()}")
    if isinstance(v, dict):
        for k, x in v.items():
            _refuse_dates(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _refuse_dates(x, f"{where}[{i}]")


_TYPES = {"int_type": "int", "float_type": "int or float", "bool_type": "bool", "string_type": "str",
          "tuple_type": "a list", "list_type": "a list", "dict_type": "a table", "dataclass_type": "a table"}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_at(loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """The pydantic dataclass holding ``loc``'s last key, and that key's FieldInfo (or None)."""
    import typing

    cls: Any = SuiteFile
    info = None
    for part in loc:
        if isinstance(part, int):
            args = typing.get_args(cls)
            cls = args[0] if args else None
            continue
        fields_ = getattr(cls, "__pydantic_fields__", None)
        if not fields_ or part not in fields_:
            return cls, None
        info = fields_[part]
        ann = info.annotation
        cls = ann
        if typing.get_origin(ann) is not None and typing.get_args(ann):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            cls = ann if typing.get_origin(ann) is tuple else (args[0] if len(args) == 1 else ann)
    return cls, info


def _bounds(info: Any) -> tuple[Any, Any]:
    lo = next((m.ge for m in getattr(info, "metadata", ()) if hasattr(m, "ge")), None)
    hi = next((m.le for m in getattr(info, "metadata", ()) if hasattr(m, "le")), None)
    return lo, hi


#: Why a bound is what it is, after the key path of a value out of bounds.
_NOTES = {"study.threads": " (this machine's CPUs; 0: torch's default)", "faithfulness.images": " (0 means every image)"}


def _message(err: Any, renamed: bool) -> str:
    loc, kind, given = tuple(err["loc"]), err["type"], err.get("input")
    where = _path(loc)
    if renamed:
        where = where.replace("images.batch", "images.shard")
    if kind in ("suite", "suite_must"):
        sub = (err.get("ctx") or {}).get("sub")
        if sub:
            where = f"{where}.{sub}"
        if not where:
            return str(err["msg"])
        return f"{where}{' ' if kind == 'suite_must' else ': '}{err['msg']}"
    if kind == "unexpected_keyword_argument":
        bad = str(loc[-1])
        owner, _ = _schema_at(loc[:-1])
        valid = sorted(getattr(owner, "__pydantic_fields__", {}))
        if len(loc) == 1:
            return (f"unknown section [{bad}]{_hint(bad, valid, '[{}]')}; valid sections: {', '.join(valid)}")
        table = _path(loc[:-1])
        table = table if table.endswith("]") else f"[{table}]"
        return f"unknown key '{bad}' in {table}{_hint(bad, valid)}; valid keys: {', '.join(valid)}"
    if kind in ("missing_argument", "missing"):
        return f"{_path(loc[:-1]) or 'the suite'} needs {loc[-1]} = ..."
    if kind in ("greater_than_equal", "less_than_equal"):
        lo, hi = _bounds(_schema_at(loc)[1])
        return f"{where} must be between {lo} and {hi}{_NOTES.get(where, '')}, got {given!r}"
    if kind == "too_short":
        return f"{where} must not be empty"
    if kind == "too_long":
        return f"{where} must have {err['ctx']['max_length']} items, got {given!r}"
    if kind == "literal_error":
        return f"{where} must be {err['ctx']['expected']}, got {given!r}"
    if kind in _TYPES:
        if where == "" or (kind == "dataclass_type" and len(loc) == 0):
            return "a suite must be a TOML table"
        return f"{where} must be {_TYPES[kind]}, got {given!r}"
    return f"{where}: {err['msg']}, got {given!r}"


def _messages(exc: ValidationError, renamed: bool = False) -> str:
    """One line per problem (the first problem alone when there is one)."""
    errs = exc.errors()
    # A list whose items failed is also reported as too short; the items' own errors say more.
    errs = [e for e in errs if not any(len(o["loc"]) > len(e["loc"]) and tuple(o["loc"][:len(e["loc"])]) ==
                                       tuple(e["loc"]) for o in errs)]
    lines = list(dict.fromkeys(_message(e, renamed) for e in errs))
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems:\n" + "\n".join(f"  {line};" for line in lines)


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
                "lower image_size or the batch sizes (images.shard, speed.batch_sizes, faithfulness.forward_batch)")


def _check_model_spec(spec: str, weights: str | None) -> None:
    """Check that a model spec names something that exists, without loading weights."""
    import importlib
    import importlib.util

    from cnnlens.models import EMBEDDED

    if spec in (EMBEDDED, "embedded", "default"):
        return
    p = Path(spec)
    if p.suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".torchscript", ".jit"):
        if not p.is_file():
            raise _Problem(f"model file '{spec}' does not exist", "spec")
        return
    if ":" in spec:
        mod, _, attr = spec.partition(":")
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _Problem(f"module '{mod}' of '{spec}' cannot be imported", "spec")
        if not hasattr(importlib.import_module(mod), attr):
            raise _Problem(f"module '{mod}' has no attribute '{attr}'", "spec")
        return
    from cnnlens.models import _torchvision_names

    names = _torchvision_names()
    if spec not in names:
        hint = close_matches(spec, [*names, EMBEDDED])
        extra = f" (did you mean {hint}?)" if hint else ""
        raise _Problem(f"unknown model '{spec}'{extra}", "spec")
    if weights not in (None, "none", "DEFAULT"):
        from torchvision.models import get_model_weights

        members = get_model_weights(spec).__members__
        if weights.split(".")[-1] not in members:
            raise _Problem(f"unknown weights '{weights}' for {spec}; valid: DEFAULT, {', '.join(members)}", "weights")


def _check_layer(spec: str, layer: str) -> None:
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
        raise _Problem(f"{exc}", "spec") from None
    names = [n for n, _m in net.named_modules() if n]
    if layer not in names:
        hint = close_matches(layer, names)
        extra = f"; close matches: {hint}" if hint else ""
        raise _Problem(f"layer '{layer}' is not a module of '{spec}'{extra} "
                       f"(`cnnlens layers --model {spec}` lists them)", "layer")
