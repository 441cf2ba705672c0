"""The lazy registry: which methods exist, which backend implements each, and what they accept.

Nothing here imports a backend. An implementation is addressed as ``"module:Class"`` and imported
only when an :class:`~cnnlens.Explainer` asks for it, so ``import cnnlens`` stays light and a missing
toolkit only matters for the methods that need it.

- :mod:`cnnlens.registry.schema`: the records (:class:`Backend`, :class:`MethodSpec`,
  :class:`Implementation`) and the tables, which refuse a duplicate at import.
- :mod:`cnnlens.registry.options`: option types and the options several methods share.
- :mod:`cnnlens.registry.catalogue`: one module per toolkit, where its methods are registered.
- :mod:`cnnlens.registry.queries`: :func:`methods`, :func:`resolve`, the README table.
"""

from __future__ import annotations

# isort: off
# The catalogues fill the tables when imported, in this order: the README table's (columns: toolkits;
# rows: methods as first declared). A toolkit's pairs may use methods an earlier toolkit declared.
from cnnlens.registry.catalogue import pytorch_grad_cam, captum, flashtorch, torchcam, zennit
# isort: on
from cnnlens.registry.options import SEED, Choice, Option
from cnnlens.registry.queries import (
    PREFERENCE,
    MethodInfo,
    backends_for,
    is_method,
    list_methods,
    markdown_table,
    methods,
    resolve,
)
from cnnlens.registry.schema import BACKENDS, METHODS, REGISTRY, Backend, Implementation, Kind, MethodSpec

# The tables the adapters, the direct tests and the benchmarks read, by their established names.
PGC_CAMS = pytorch_grad_cam.PGC_CAMS
PGC_EARLY_STOP = pytorch_grad_cam.PGC_EARLY_STOP
PGC_ECONOMY_SVD = pytorch_grad_cam.PGC_ECONOMY_SVD
NOISE_TUNNEL_GRID = captum.NOISE_TUNNEL_GRID
TORCHCAM_CAMS = torchcam.TORCHCAM_CAMS
TORCHCAM_FINER_BASES = torchcam.TORCHCAM_FINER_BASES
ZENNIT_COMPOSITES = zennit.ZENNIT_COMPOSITES

__all__ = [
    "BACKENDS", "METHODS", "NOISE_TUNNEL_GRID", "PGC_CAMS", "PGC_EARLY_STOP", "PGC_ECONOMY_SVD", "PREFERENCE",
    "REGISTRY", "SEED", "TORCHCAM_CAMS", "TORCHCAM_FINER_BASES", "ZENNIT_COMPOSITES", "Backend", "Choice",
    "Implementation", "Kind", "MethodInfo", "MethodSpec", "Option", "backends_for", "flashtorch", "is_method",
    "list_methods", "markdown_table", "methods", "resolve",
]
