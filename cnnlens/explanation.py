"""The typed result of every explanation, with its provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
        images: Optional (N, H, W, 3) uint8 display images, for plotting.
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

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write one overlay PNG per image, the maps as ``maps.pt`` and ``manifest.json``.

        Refuses to write into a non-empty directory unless ``overwrite=True``.
        """
        from cnnlens import plot  # matplotlib only when saving

        out = plot.prepare_out_dir(Path(directory), overwrite=overwrite)
        _remove_previous_save(out)
        files = []
        for i in range(len(self)):
            path = out / f"{i:03d}_{self.method}_{self.backend}.png"
            plot.save_overlay(self, i, path)
            files.append(path.name)
        import torch

        torch.save({"maps": self.maps.cpu(), "raw": self.raw.cpu(), "targets": self.targets.cpu()}, out / "maps.pt")
        data = self.manifest()
        data["files"] = files
        (out / "manifest.json").write_text(json.dumps(data, indent=2))
        return out

    def _repr_png_(self) -> bytes:
        from cnnlens import plot

        return plot.explanation_png(self)


def _remove_previous_save(out: Path) -> None:
    """Delete what an earlier ``save()`` wrote here (listed in its manifest), and nothing else.

    Without this, overwriting a 3-image save with a 1-image one would leave two stale overlays that
    the new manifest does not mention. Only names the manifest lists, inside ``out``, are removed.
    """
    manifest = out / "manifest.json"
    try:
        previous = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    names = previous.get("files", []) if isinstance(previous, dict) else []
    for name in [*names, "maps.pt"]:
        if isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", ".."):
            (out / name).unlink(missing_ok=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(i) for i in v]
    if isinstance(v, Tensor):
        return f"tensor{tuple(v.shape)}"
    return repr(v)
