"""The typed result of every explanation, with its provenance."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from cnnlens.images import Images


@dataclass(frozen=True)
class Provenance:
    """Whose code computed a result.

    Attributes:
        backend: Backend id (the toolkit's own name).
        toolkit_name: The toolkit's class or function that was called.
        version: The toolkit's installed version.
        substitutions: Steps of the toolkit that cnnlens replaced by a faster equivalent for this
            call (each registered with its measured speed-up and tested against the toolkit called
            directly); empty when the toolkit's own code ran throughout.
        driven: How cnnlens drove the toolkit without replacing its code (one image at a time, a
            backward pass stopped at the layer, ...).
    """

    backend: str
    toolkit_name: str
    version: str
    substitutions: tuple[str, ...] = ()
    driven: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "toolkit_name": self.toolkit_name, "version": self.version,
                "substitutions": list(self.substitutions), "driven": list(self.driven)}


@dataclass(frozen=True)
class Explanation:
    """What :meth:`cnnlens.Explainer.explain` returns.

    Attributes:
        maps: (N, H, W) float32 in [0, 1] at input resolution, on the input's device (the contract).
        raw: The backend's own attribution as a tensor on the input's device: the CAM before
            resizing (N, h, w) for CAM methods, the signed (N, C, H, W) attribution for pixel methods.
        targets: (N,) class indices that were explained.
        method: Canonical method name.
        backend: Backend id.
        toolkit_name: The backend's own class or function.
        layer: Name of the layer the CAM was computed on (None for pixel methods without a layer).
        seconds: Time of the backend call: wall clock on the CPU, CUDA events (GPU time from the call's start
            to its end, no synchronisation) on a GPU.
        versions: Versions of torch, the backend and cnnlens.
        options: The options the method ran with, defaults filled in.
        kind: "cam" or "pixel".
        reduce: Channel reduction used for pixel methods.
        scores: Softmax probability of each target, when the predicted class was computed.
        labels: Class names of the targets, when the model has categories.
        warnings: Caveats about this result (e.g. guided backprop on a model without nn.ReLU).
        provenance: Whose code computed the result, and any step cnnlens substituted.
        images: (N, H, W, 3) uint8 copies of what the model saw, when the input was an
            :class:`~cnnlens.images.Images` (None for a plain tensor).
        source: The :class:`~cnnlens.images.Images` that was explained (None for a plain tensor):
            its names name the saved files, and its original pictures carry the overlays, drawn
            at each picture's own size. Passing an ``Images`` as ``images`` sets both.

    The signed view is :attr:`signed_maps`; pictures choose a view with ``sign=`` (see
    :func:`cnnlens.plot.draw`).
    """

    maps: Tensor
    raw: Tensor
    targets: Tensor
    method: str
    backend: str
    toolkit_name: str
    layer: str | None
    seconds: float
    versions: dict[str, str]
    options: dict[str, Any]
    kind: str
    reduce: str
    scores: Tensor | None = None
    labels: tuple[str, ...] | None = None
    warnings: tuple[str, ...] = ()
    provenance: Provenance | None = None
    images: Tensor | None = field(default=None, repr=False)
    source: Images | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        from cnnlens.images import Images

        if isinstance(self.images, Images):  # the Explainer hands over the whole Images
            object.__setattr__(self, "source", self.images)
            object.__setattr__(self, "images", self.images.images)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def __repr__(self) -> str:
        layer = f", layer={self.layer!r}" if self.layer else ""
        names = f", names={_short(self.names)}" if self.names else ""
        return (f"Explanation({self.method!r}, backend={self.backend!r}{layer}, {len(self)} x "
                f"{tuple(self.maps.shape[1:])}{names}, {self.seconds:.2f} s)")

    @property
    def names(self) -> tuple[str, ...] | None:
        """The images' names (their file stems), when the input was an :class:`~cnnlens.images.Images`."""
        return self.source.names if self.source is not None else None

    @property
    def signed_reduce(self) -> str | None:
        """The channel reduction of :attr:`signed_maps`: ``reduce`` when it keeps the sign
        (``"sum"``, ``"max"``), else ``"sum"`` (Captum's ``visualize_image_attr``); None for CAMs."""
        from cnnlens import _post

        return _post.signed_reduce(self.kind, self.reduce)

    @property
    def signed_maps(self) -> Tensor:
        """(N, H, W) float32 in [-1, 1]: the signed attribution, zero kept at zero.

        Made from ``raw`` like ``maps``, but without what removes the sign: for CAM methods the
        CAM upsampled without its ReLU (negative where the layer's features speak against the
        target); for pixel methods the channel reduction :attr:`signed_reduce`. Each image is
        divided by Captum's outlier threshold (``outlier_perc=2``: the value below which 98% of
        its total absolute attribution lies) and clipped, as Captum's ``visualize_image_attr``
        scales with ``sign="all"``. Computed on first use and kept.
        """
        cached = self.__dict__.get("_signed_maps")
        if cached is None:
            cached = self.signed(sign="all")
            object.__setattr__(self, "_signed_maps", cached)
        return cached

    def signed(self, sign: str = "all", outlier_perc: float = 2.0) -> Tensor:
        """The map as drawn for ``sign`` (Captum's ``_normalize_attr``): ``"all"`` in [-1, 1],
        ``"positive"``, ``"negative"`` (as magnitudes) and ``"absolute"`` in [0, 1]; (N, H, W)."""
        from cnnlens import _post

        size = (int(self.maps.shape[1]), int(self.maps.shape[2]))
        attr = _post.signed_attribution(self.raw, self.kind, size, self.reduce)
        return _post.normalize_signed(attr, sign, outlier_perc).to(self.maps.device)

    def manifest(self) -> dict[str, Any]:
        """Provenance as JSON-serialisable data."""
        return {
            "method": self.method,
            "backend": self.backend,
            "toolkit_name": self.toolkit_name,
            "layer": self.layer,
            "kind": self.kind,
            "reduce": self.reduce,
            "seconds": self.seconds,
            "versions": self.versions,
            "options": {k: _jsonable(v) for k, v in self.options.items()},
            "targets": [int(t) for t in self.targets.tolist()],
            "labels": list(self.labels) if self.labels else None,
            "scores": [float(s) for s in self.scores.tolist()] if self.scores is not None else None,
            "maps_shape": list(self.maps.shape),
            "signed_reduce": self.signed_reduce,
            "raw_shape": list(self.raw.shape),
            "warnings": list(self.warnings),
            "provenance": self.provenance.as_dict() if self.provenance is not None else None,
        }

    @classmethod
    def concat(cls, parts: Sequence[Explanation]) -> Explanation:
        """Join explanations of consecutive parts of one batch (same method, backend, layer and options).

        ``seconds`` is the sum of the parts'; warnings, substitutions and driving notes are merged.
        ``images``, ``scores`` and ``labels`` are kept when every part has them.

        Raises:
            InputError: ``parts`` is empty, or the parts were not made by the same explainer settings.
        """
        import torch

        from cnnlens.errors import InputError

        parts = list(parts)
        if not parts or not all(isinstance(p, Explanation) for p in parts):
            raise InputError("Explanation.concat needs a non-empty list of Explanation objects")
        first = parts[0]
        if len(parts) == 1:
            return first
        for p in parts[1:]:
            for key in ("method", "backend", "toolkit_name", "layer", "kind", "reduce"):
                if getattr(p, key) != getattr(first, key):
                    raise InputError(
                        f"cannot concatenate explanations with different {key} ({getattr(first, key)!r} and "
                        f"{getattr(p, key)!r}); join the parts of one Explainer's batch only"
                    )
            if p.maps.shape[1:] != first.maps.shape[1:] or p.raw.shape[1:] != first.raw.shape[1:]:
                raise InputError(
                    f"cannot concatenate explanations of different image sizes ({tuple(first.maps.shape[1:])} and "
                    f"{tuple(p.maps.shape[1:])})"
                )

        def cat(key: str) -> Tensor | None:
            items = [getattr(p, key) for p in parts]
            if any(i is None for i in items):
                return None
            return torch.cat([i.to(items[0].device) for i in items])

        prov = [p.provenance for p in parts if p.provenance is not None]
        provenance = replace(
            prov[0],
            substitutions=tuple(dict.fromkeys(s for q in prov for s in q.substitutions)),
            driven=tuple(dict.fromkeys(d for q in prov for d in q.driven)),
        ) if prov else None
        labels = tuple(lab for p in parts for lab in p.labels) if all(p.labels for p in parts) else None
        return replace(
            first,
            maps=cat("maps"),
            raw=cat("raw"),
            targets=cat("targets"),
            seconds=sum(p.seconds for p in parts),
            scores=cat("scores"),
            labels=labels,
            warnings=tuple(dict.fromkeys(w for p in parts for w in p.warnings)),
            provenance=provenance,
            images=cat("images"),
            source=_join_sources([p.source for p in parts]),
        )

    def save(self, directory: str | Path, overwrite: bool = False, *, sign: str | None = None,
             outlier_perc: float = 2.0, cmap: str | None = None, alpha: float = 0.5) -> Path:
        """Write one overlay PNG per image, the maps as ``.npy`` files and ``manifest.json``.

        Files (``maps.pt`` of cnnlens 0.x is no longer written: a ``.npy`` needs no pickle):

        * ``<name>.png`` per image, named after the input image (``Images.names``, sanitised and
          made distinct by :func:`cnnlens.outputs.names_for`; ``000``, ``001``, ... for a plain
          tensor): the overlay on the original picture at its own size (see :func:`cnnlens.plot.draw`
          for ``sign``, ``outlier_perc``, ``cmap``, ``alpha``).
        * ``maps.npy`` (N, H, W) float32 in [0, 1], ``signed_maps.npy`` (N, H, W) float32 in
          [-1, 1], ``raw.npy`` and ``targets.npy``: plain arrays, ``np.load(path,
          allow_pickle=False)`` reads them.
        * ``manifest.json``: provenance, each image's source path, name, file and preprocessing.

        The folder follows :func:`cnnlens.outputs.check_out_dir`: refused when it holds input images,
        or is non-empty without ``overwrite=True``. Every file is written under a temporary name
        and then renamed, and the manifest last: a save that fails (a full disk, a read-only
        folder) removes what it wrote, so the rerun is not blocked by a half-written folder, and an
        earlier save being overwritten keeps its files until the new one is complete.

        Raises:
            OutputExistsError: The folder is a file, holds input images, or is non-empty without
                ``overwrite``.
            OutputError: A file could not be written.
            OptionError: ``sign``, ``outlier_perc``, ``cmap`` or ``alpha`` is invalid (checked
                before anything is written).
        """
        import io

        import numpy as np

        from cnnlens import _files, _post, outputs, plot  # matplotlib only when saving
        from cnnlens.errors import OutputError

        if sign is not None:
            _post.check_sign(sign)
        outlier_perc = _post.check_outlier_perc(outlier_perc)
        plot.check_style(cmap, alpha)
        src = self.source
        existed = Path(directory).exists()
        out = outputs.check_out_dir(Path(directory), overwrite=overwrite, inputs=src.paths if src is not None else ())
        previous = _previous_files(out)
        stems = outputs.names_for(len(self), self.names, taken=_SAVED_STEMS)
        written: list[Path] = []
        try:
            images = []
            for i, stem in enumerate(stems):
                path = out / f"{stem}.png"
                written.append(plot.save_overlay(self, i, path, cmap=cmap, alpha=alpha, sign=sign,
                                                 outlier_perc=outlier_perc))
                entry: dict[str, Any] = {"index": i, "file": path.name,
                                         "name": self.names[i] if self.names else None,
                                         "source": str(src.paths[i]) if src is not None else None}
                if src is not None and src.fits is not None:
                    entry.update(src.fits[i].as_dict())
                    entry["preprocessing"] = src.preprocessing(i)
                images.append(entry)
            arrays = {"maps": self.maps, "signed_maps": self.signed_maps, "raw": self.raw, "targets": self.targets}
            for key, value in arrays.items():
                buf = io.BytesIO()  # serialised in memory, so that only the file write can fail
                np.save(buf, value.detach().cpu().numpy(), allow_pickle=False)
                blob = buf.getvalue()
                written.append(_files.write_atomic(out / f"{key}.npy", blob))
            data = self.manifest()
            data["files"] = [e["file"] for e in images]  # the overlays, one per image
            data["arrays"] = {k: f"{k}.npy" for k in arrays}
            data["images"] = images
            shown = plot.auto_sign(self, sign)  # None: maps, as the contract has them
            data["view"] = {"sign": shown, "outlier_perc": outlier_perc if shown else None,
                            "cmap": cmap or plot.default_cmap(shown), "alpha": alpha}
            text = json.dumps(data, indent=2)
            written.append(_files.write_atomic(out / "manifest.json", text))
        except OutputError:
            for p in written:
                if p.name not in previous:  # a file of the earlier save was replaced whole, not truncated
                    p.unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
        # Only now, with the new save complete: files of an earlier save that the new manifest
        # does not list (overlays of a longer batch, a maps.pt of an older version).
        for name in previous - {p.name for p in written}:
            (out / name).unlink(missing_ok=True)
        return out

    def plot(self, out: str | Path | None = None, *, sign: str | None = None, outlier_perc: float = 2.0,
             cmap: str | None = None, alpha: float = 0.5, overwrite: bool = False) -> Any:
        """One row of overlays on the original pictures (:func:`cnnlens.plot.explanation_figure`).

        Args:
            out: Also write the figure here (format by suffix); an existing file is replaced only
                with ``overwrite=True``, an input image never.
            sign: None (``maps``; pixel maps reduced with their sign are drawn as ``"all"``), or
                ``"absolute"``, ``"positive"``, ``"negative"``, ``"all"`` (Captum's
                ``visualize_image_attr`` signs; see :func:`cnnlens.plot.view`), with a colour bar.
            outlier_perc: Captum's ``outlier_perc``: the percent of the total attribution above
                the colour scale's end.
            cmap: Colormap (None: ``"jet"``, or ``"bwr"`` for ``sign="all"``).
            alpha: Heatmap weight.

        Returns:
            A matplotlib ``Figure`` (it shows itself in a notebook).
        """
        from cnnlens import plot

        fig = plot.explanation_figure(self, sign=sign, outlier_perc=outlier_perc, cmap=cmap, alpha=alpha)
        if out is not None:
            inputs = self.source.paths if self.source is not None else ()
            plot.save_figure(fig, plot.prepare_out_file(out, overwrite, inputs=inputs))
        return fig

    def _repr_png_(self) -> bytes:
        from cnnlens import plot

        return plot.explanation_png(self)


def _previous_files(out: Path) -> set[str]:
    """The files an earlier ``save()`` wrote here (listed in its manifest), and nothing else.

    Without removing them, overwriting a 3-image save with a 1-image one would leave two stale
    overlays that the new manifest does not mention. Only names the manifest lists, inside ``out``.
    """
    manifest = out / "manifest.json"
    try:
        previous = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return set()
    names = previous.get("files", []) if isinstance(previous, dict) else []
    return {name for name in [*names, "maps.pt", *(f"{s}.npy" for s in _SAVED_STEMS), "manifest.json"]
            if isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")}


#: Stems of the files every save writes besides the overlays; overlay names avoid them.
_SAVED_STEMS = ("maps", "signed_maps", "raw", "targets", "manifest")


def _short(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")
    return f"({shown})"


def _join_sources(sources: Sequence[Images | None]) -> Images | None:
    if any(s is None for s in sources):
        return None
    from cnnlens.images import Images

    return Images.concat([s for s in sources if s is not None])


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(i) for i in v]
    if isinstance(v, Tensor):
        return f"tensor{tuple(v.shape)}"
    return repr(v)
