"""cnnlens: one API over pytorch-grad-cam, Captum and FlashTorch, and a benchmark that compares them.

``import cnnlens`` imports neither torch's toolkits nor matplotlib: every public name is resolved
lazily on first access (a test in a subprocess enforces it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY: dict[str, str] = {
    "Explainer": "cnnlens.explainer:Explainer",
    "explain": "cnnlens.explainer:explain",
    "CnnlensWarning": "cnnlens.errors:CnnlensWarning",
    "Explanation": "cnnlens.explanation:Explanation",
    "methods": "cnnlens.registry:methods",
    "list_methods": "cnnlens.registry:list_methods",
    "is_method": "cnnlens.registry:is_method",
    "load_model": "cnnlens.models:load_model",
    "load_images": "cnnlens.images:load_images",
    "demo_images": "cnnlens.images:demo_images",
    "Images": "cnnlens.images:Images",
    # Modules not named like the functions, so importing them cannot shadow the lazy names.
    "kernels": "cnnlens.conv_kernels:kernels",
    "Kernels": "cnnlens.conv_kernels:Kernels",
    "capture": "cnnlens.featuremaps:capture",
    "FeatureMaps": "cnnlens.featuremaps:FeatureMaps",
    "plot": "cnnlens.plot",
    # Not "cnnlens.filters": importing a submodule named like a lazy function would shadow it.
    "filters": "cnnlens.activmax:filters",
    "plot_filters": "cnnlens.activmax:plot_filters",
    "FilterImages": "cnnlens.activmax:FilterImages",
    # Deep Feature Factorization (pytorch-grad-cam); module "dff", not "concepts", for the same reason.
    "concepts": "cnnlens.dff:concepts",
    "Concepts": "cnnlens.dff:Concepts",
    "errors": "cnnlens.errors",
    "CnnlensError": "cnnlens.errors:CnnlensError",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from cnnlens import errors as errors
    from cnnlens import plot as plot
    from cnnlens.activmax import FilterImages as FilterImages
    from cnnlens.activmax import filters as filters
    from cnnlens.activmax import plot_filters as plot_filters
    from cnnlens.conv_kernels import Kernels as Kernels
    from cnnlens.conv_kernels import kernels as kernels
    from cnnlens.dff import Concepts as Concepts
    from cnnlens.dff import concepts as concepts
    from cnnlens.errors import CnnlensError as CnnlensError
    from cnnlens.errors import CnnlensWarning as CnnlensWarning
    from cnnlens.explainer import Explainer as Explainer
    from cnnlens.explainer import explain as explain
    from cnnlens.explanation import Explanation as Explanation
    from cnnlens.featuremaps import FeatureMaps as FeatureMaps
    from cnnlens.featuremaps import capture as capture
    from cnnlens.images import Images as Images
    from cnnlens.images import demo_images as demo_images
    from cnnlens.images import load_images as load_images
    from cnnlens.models import load_model as load_model
    from cnnlens.registry import is_method as is_method
    from cnnlens.registry import list_methods as list_methods
    from cnnlens.registry import methods as methods


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'cnnlens' has no attribute '{name}'")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
