"""Questions asked of the registry: which pairs exist, which backend runs a method, the README table."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from cnnlens import auto
from cnnlens.errors import BackendUnavailableError, UnknownMethodError, UnsupportedMethodError, close_matches
from cnnlens.registry.schema import BACKENDS, METHODS, REGISTRY, Implementation, Kind

# When backend="auto" and no measured table says otherwise: the toolkit that defines the method
# most canonically comes first.
PREFERENCE: tuple[str, ...] = ("pytorch-grad-cam", "captum", "flashtorch", "torchcam", "zennit")


@dataclass(frozen=True)
class MethodInfo:
    """One row of :func:`methods`: a (method, backend) pair and what it can do."""

    method: str
    backend: str
    toolkit_name: str
    installed: bool
    kind: Kind
    needs_layer: bool
    signed: bool
    stochastic: bool
    options: dict[str, Any]
    notes: str


def methods(pattern: str = "*", backend: str | None = None, installed_only: bool = False) -> list[MethodInfo]:
    """List every (method, backend) pair, optionally filtered by a wildcard and a backend.

    Args:
        pattern: ``fnmatch`` pattern on the method name, e.g. ``"*cam*"``.
        backend: Keep only this backend id.
        installed_only: Keep only pairs whose toolkit is importable.
    """
    rows = []
    for (m, b), impl in REGISTRY.items():
        if not fnmatch.fnmatch(m, pattern) or (backend is not None and b != backend):
            continue
        ok = BACKENDS[b].installed
        if installed_only and not ok:
            continue
        spec = impl.spec
        rows.append(MethodInfo(m, b, impl.toolkit_name, ok, spec.kind, spec.needs_layer, spec.signed,
                               spec.stochastic, {k: o.default for k, o in impl.all_options().items()},
                               impl.described))
    return rows


def markdown_table() -> str:
    """The README's methods table: one row per method, one column per backend (its toolkit class).

    README.md holds this table as printed by ``cnnlens methods --markdown``; a test keeps the two equal,
    so a new registry entry shows up there by rerunning that command.
    """
    backends = list(BACKENDS)
    head = ["method", "kind", "layer", "signed", "stochastic", *backends]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m, spec in METHODS.items():
        cells = [m, spec.kind, "yes" if spec.needs_layer else "", "yes" if spec.signed else "",
                 "yes" if spec.stochastic else ""]
        for b in backends:
            impl = REGISTRY.get((m, b))
            cells.append(f"`{impl.toolkit_name}`".replace("|", "\\|") if impl else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def list_methods(pattern: str = "*") -> list[str]:
    """Method names matching a wildcard pattern, in registry order."""
    return [m for m in METHODS if fnmatch.fnmatch(m, pattern)]


def is_method(name: str) -> bool:
    return name in METHODS


def backends_for(method: str) -> list[str]:
    """Backends that implement ``method``, in preference order."""
    have = [b for (m, b) in REGISTRY if m == method]
    return sorted(have, key=lambda b: PREFERENCE.index(b) if b in PREFERENCE else len(PREFERENCE))


def resolve(method: str, backend: str | None = "auto") -> Implementation:
    """Find the implementation of ``method`` on ``backend``, with helpful errors.

    ``backend=None`` or ``"auto"`` picks the first installed backend from the shipped auto table
    (see :mod:`cnnlens.auto`), falling back to :data:`PREFERENCE`.
    """
    if not isinstance(method, str) or method not in METHODS:
        hint = close_matches(str(method), METHODS)
        extra = f"; did you mean {hint}?" if hint else ""
        raise UnknownMethodError(
            f"unknown method '{method}'{extra} (cnnlens.methods() or `cnnlens methods` lists all)"
        )
    have = backends_for(method)
    if backend is None or backend == "auto":
        order = auto.preferred_backends(method, have)
        for b in order:
            if BACKENDS[b].installed:
                return REGISTRY[(method, b)]
        BACKENDS[order[0]].require()
    if backend not in BACKENDS:
        hint = close_matches(str(backend), BACKENDS)
        extra = f"; did you mean {hint}?" if hint else ""
        raise BackendUnavailableError(
            f"unknown backend '{backend}'{extra}; backends: {', '.join(BACKENDS)}, or 'auto'"
        )
    impl = REGISTRY.get((method, backend))
    if impl is None:
        raise UnsupportedMethodError(
            f"backend '{backend}' has no method '{method}'; backends that have it: {', '.join(have)}"
        )
    BACKENDS[backend].require()
    return impl
