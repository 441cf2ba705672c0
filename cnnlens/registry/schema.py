"""The registry's schema and tables: toolkits (:class:`Backend`), methods (:class:`MethodSpec`) and
(method, backend) pairs (:class:`Implementation`), and the three tables the catalogues fill.

A catalogue (``cnnlens.registry.catalogue.<backend>``) declares its toolkit, the methods it introduces
and its pairs with :func:`add_backend`, :func:`declare` and :func:`register`. Each refuses a second
entry under the same key at import, so a duplicate can never silently replace the first.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from cnnlens.errors import BackendUnavailableError, OptionError, close_matches, install_hint
from cnnlens.registry.options import SEED, Option

Kind = Literal["cam", "pixel"]


@dataclass(frozen=True)
class Backend:
    """A wrapped toolkit: its id, the module that proves it is installed, its pip name, and the
    cnnlens extra that installs it (``None``: a core dependency)."""

    id: str
    module: str
    pip: str
    homepage: str
    extra: str | None = None

    @property
    def install(self) -> str:
        """How to install it: cnnlens's extra, which carries cnnlens's version cap on the toolkit."""
        return install_hint(self.extra)

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def require(self) -> None:
        if not self.installed:
            raise BackendUnavailableError(
                f"backend '{self.id}' needs the package '{self.pip}', which is not installed; "
                f"install it with: {self.install}"
            )


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, whatever the backend."""

    name: str
    kind: Kind
    needs_layer: bool
    signed: bool
    stochastic: bool
    summary: str


@dataclass(frozen=True)
class Implementation:
    """One (method, backend) pair: where the adapter lives and what it accepts."""

    method: str
    backend: str
    adapter: str
    toolkit_name: str
    options: Mapping[str, Option] = field(default_factory=dict)
    notes: str = ""
    #: Freeze parameters during the call (no method reads weight gradients). ShapleyCAM needs the
    #: graph through the weights for its Hessian-vector product, so it opts out.
    freeze_params: bool = True
    #: The toolkit rewrites weights during the call and restores them itself (Captum's LRP); the
    #: guard then keeps a copy and verifies values instead of version counters.
    mutates_params: bool = False
    #: The toolkit stores one input/output per module, so a module called twice per forward gives
    #: silently wrong results (Captum's DeepLift family and LRP); refuse such models up front.
    refuses_reuse: bool = False
    #: Steps of the toolkit that cnnlens may replace when ``Explainer(shortcuts=True)`` (the
    #: default): the name an adapter puts in ``Explanation.provenance.substitutions``, mapped to the
    #: speed-up measured side by side by ``benchmarks/substitutions.py``. Each one is tested against
    #: the toolkit called directly; ``shortcuts=False`` runs the toolkit's own code throughout.
    substitutions: Mapping[str, str] = field(default_factory=dict)

    @property
    def described(self) -> str:
        """:attr:`notes`, followed by the substitutions this pair may apply and their measured gain."""
        subs = "; ".join(f"{name} ({gain})" for name, gain in self.substitutions.items())
        if not subs:
            return self.notes
        head = f"{self.notes}; " if self.notes else ""
        return f"{head}with shortcuts=True, substituted: {subs}"

    #: Per backend, the methods whose toolkit code only runs the model and differentiates (or
    #: perturbs) its input: no module hooks, no module swaps.
    _HOOK_FREE: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType({
        "captum": frozenset({
            "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad",
            "gradient_shap", "occlusion", "feature_ablation", "lime", "kernel_shap",
            # NoiseTunnel over hook-free bases, and Shapley value sampling (perturbs the input only)
            "smoothgrad_integrated_gradients", "smoothgrad_input_x_gradient", "smoothgrad_sq_integrated_gradients",
            "vargrad_integrated_gradients", "shapley_value_sampling",
        }),
        # zennit's attributors without a composite register nothing on the model
        "zennit": frozenset({"saliency", "smoothgrad", "integrated_gradients", "occlusion"}),
    })

    @property
    def needs_hooks(self) -> bool:
        """True if the toolkit hooks or swaps modules (every CAM, the guided and DeepLIFT families,
        LRP, every FlashTorch method), which a TorchScript model does not allow: module hooks on it
        never run, so such a method is refused for it."""
        return self.method not in self._HOOK_FREE.get(self.backend, frozenset())

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    def load(self) -> type:
        """Import the adapter class (and with it the backend)."""
        BACKENDS[self.backend].require()
        module_name, _, cls_name = self.adapter.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, cls_name)  # type: ignore[no-any-return]

    def all_options(self) -> dict[str, Option]:
        """The options this pair accepts, including the ones cnnlens adds to every method."""
        opts = dict(self.options)
        if self.spec.stochastic:
            opts.setdefault("seed", SEED)
        return opts

    def validate_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check names and values; unknown names list the valid ones."""
        valid = self.all_options()
        out: dict[str, Any] = {}
        for key, value in given.items():
            if key not in valid:
                names = ", ".join(sorted(valid)) or "none"
                hint = close_matches(key, valid)
                extra = f" (did you mean {hint}?)" if hint else ""
                raise OptionError(
                    f"unknown option '{key}' for {self.method} on backend '{self.backend}'{extra}; "
                    f"valid options: {names}"
                )
            out[key] = valid[key].validate(key, value)
        for key, opt in valid.items():
            out.setdefault(key, opt.default)
        return out


#: Every toolkit, by id, in the order the catalogues are imported (the README table's columns).
BACKENDS: dict[str, Backend] = {}
#: Every method, by name, in declaration order (the README table's rows).
METHODS: dict[str, MethodSpec] = {}
#: Every (method, backend) pair.
REGISTRY: dict[tuple[str, str], Implementation] = {}


def add_backend(backend: Backend) -> Backend:
    """Add a toolkit; a second one with the same id is an error."""
    if backend.id in BACKENDS:
        raise ValueError(f"backend '{backend.id}' is declared twice")
    BACKENDS[backend.id] = backend
    return backend


def declare(*specs: MethodSpec) -> None:
    """Declare methods (what they compute, whatever the backend); a name declared twice is an error."""
    for spec in specs:
        if spec.name in METHODS:
            raise ValueError(f"method '{spec.name}' is declared twice (its summary would silently be lost)")
        METHODS[spec.name] = spec


def register(*impls: Implementation) -> None:
    """Register (method, backend) pairs; a pair registered twice, or of an undeclared method or
    backend, is an error."""
    for impl in impls:
        key = (impl.method, impl.backend)
        if key in REGISTRY:
            raise ValueError(f"({impl.method}, {impl.backend}) is registered twice")
        if impl.method not in METHODS:
            raise ValueError(f"({impl.method}, {impl.backend}): method '{impl.method}' is not declared")
        if impl.backend not in BACKENDS:
            raise ValueError(f"({impl.method}, {impl.backend}): backend '{impl.backend}' is not declared")
        REGISTRY[key] = impl
