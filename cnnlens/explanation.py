"""The typed result of every explanation, with its provenance."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor


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
        images: (N, H, W, 3) uint8 display images, for plotting, when the input was an
            :class:`~cnnlens.images.Images` (None for a plain tensor).
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

    def __len__(self) -> int:
        return int(self.maps.shape[0])

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
        )

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write one overlay PNG per image, the maps as ``maps.pt`` and ``manifest.json``.

        Refuses to write into a non-empty directory unless ``overwrite=True``. Every file is written
        under a temporary name and then renamed, and the manifest last: a save that fails (a full
        disk, a read-only folder) removes what it wrote, so the rerun is not blocked by a
        half-written folder, and an earlier save being overwritten keeps its files until the new
        one is complete.

        Raises:
            OutputExistsError: The folder is a file, or non-empty without ``overwrite``.
            OutputError: A file could not be written.
        """
        import io

        import torch

        from cnnlens import _files, plot  # matplotlib only when saving
        from cnnlens.errors import OutputError

        existed = Path(directory).exists()
        out = plot.prepare_out_dir(Path(directory), overwrite=overwrite)
        previous = _previous_files(out)
        written: list[Path] = []
        try:
            files = []
            for i in range(len(self)):
                path = out / f"{i:03d}_{self.method}_{self.backend}.png"
                written.append(plot.save_overlay(self, i, path))
                files.append(path.name)
            buf = io.BytesIO()  # serialised in memory, so that only the file write can fail
            torch.save({"maps": self.maps.cpu(), "raw": self.raw.cpu(), "targets": self.targets.cpu()}, buf)
            written.append(_files.write_atomic(out / "maps.pt", lambda tmp: tmp.write_bytes(buf.getvalue())))
            data = self.manifest()
            data["files"] = files
            text = json.dumps(data, indent=2)
            written.append(_files.write_atomic(out / "manifest.json", lambda tmp: tmp.write_text(text)))
        except OutputError:
            for p in written:
                if p.name not in previous:  # a file of the earlier save was replaced whole, not truncated
                    p.unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
        # Only now, with the new save complete: overlays of an earlier, longer save that the new
        # manifest does not list.
        for name in previous - {p.name for p in written}:
            (out / name).unlink(missing_ok=True)
        return out

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
    return {name for name in [*names, "maps.pt", "manifest.json"]
            if isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", "..")}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(i) for i in v]
    if isinstance(v, Tensor):
        return f"tensor{tuple(v.shape)}"
    return repr(v)
