"""One verb over every toolkit: ``Explainer(model, method, backend=...).explain(inputs, target=...)``."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens import _post, _resolve, registry
from cnnlens._guard import ModelGuard, is_scripted
from cnnlens.errors import CnnlensError, CnnlensWarning, ModelError, OptionError, TargetError
from cnnlens.explanation import Explanation, Provenance
from cnnlens.images import Images


def _module_at(model: nn.Module, name: str) -> nn.Module | None:
    """The module at dotted ``name`` in ``model`` ("<model>" is the model itself), or None."""
    if name == "<model>":
        return model
    m: nn.Module | None = model
    for part in name.split("."):
        m = m._modules.get(part) if m is not None else None
    return m


# Methods whose backward rule only changes nn.ReLU modules in every wrapped toolkit.
RELU_GUIDED = {"guided_backprop", "guided_gradcam", "deconvolution",
               "smoothgrad_guided_backprop", "smoothgrad_sq_guided_backprop", "vargrad_guided_backprop"}
RELU_FAMILY = (nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.PReLU, nn.SELU, nn.CELU)


@cache
def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def versions(backend: str) -> dict[str, str]:
    return {
        "cnnlens": _dist_version("cnnlens"),
        "torch": torch.__version__,
        backend: _dist_version(registry.BACKENDS[backend].pip),
    }


#: torch's and NumPy's global generators are one per process: two threads running seeded calls at
#: once (on different models: the model guard already serialises calls on one model) would draw
#: from each other's seeds. Seeded blocks therefore take turns.
_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch and NumPy for the block and give the caller's RNG state back afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with _RNG_LOCK, _forked_rng(seed, devices):
        yield


@contextlib.contextmanager
def _forked_rng(seed: int, devices: list[torch.device]) -> Iterator[None]:
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class _CallTimer:
    """Seconds of the backend call: wall clock on the CPU, CUDA events on a GPU.

    Events instead of ``torch.cuda.synchronize`` before and after the call, so that the CPU can
    queue the post-processing while the GPU finishes. (On an H200 the two synchronisations made no
    difference that two perf.py runs could resolve: cnnlens / Captum direct 1.21-1.35 with them,
    1.23-1.31 without, EfficientNet-Lite0; the per-call Python cost dominates there.)
    """

    def __init__(self, device: torch.device) -> None:
        self.events = None
        if device.type == "cuda":
            self.stream = torch.cuda.current_stream(device)  # both events on this device's current stream
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.events[0].record(self.stream)
        self.t0 = time.perf_counter()
        self.t1 = self.t0

    def stop(self) -> None:
        self.t1 = time.perf_counter()
        if self.events is not None:
            self.events[1].record(self.stream)

    def seconds(self) -> float:
        if self.events is None:
            return self.t1 - self.t0
        start, end = self.events
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


class Explainer:
    """Explain a classifier's predictions with one method from one backend.

    Args:
        model: A classifier returning (N, classes) scores. It is never modified: hooks, flags,
            ``requires_grad``, ``.grad``, buffers and submodules are restored after every call. Calls
            run in eval mode.
        method: Canonical method name, e.g. ``"gradcam"`` (see :func:`cnnlens.methods`).
        backend: ``"pytorch-grad-cam"``, ``"captum"``, ``"flashtorch"`` or ``"auto"``.
        layer: Module, dotted name or None (the last spatial feature map) for methods that need one.
        reduce: Channel reduction for pixel methods (default ``"abs_max"``).
        categories: Class names; defaults to the ones :func:`cnnlens.load_model` attached.
        output: Key or index selecting the scores when the model returns a tuple or dict.
        shortcuts: Allow the substitutions registered for this pair (``cnnlens.methods()`` notes them):
            a step of the toolkit replaced by a faster one that gives the same values, tested against
            the toolkit called directly. Each one applied is named in ``Explanation.provenance``.
            ``False`` runs every step in the toolkit's own code.
        **options: Method options; unknown names raise :class:`~cnnlens.errors.OptionError`.

    Example:
        >>> with Explainer(model, "gradcam", backend="captum") as ex:  # doctest: +SKIP
        ...     e = ex.explain(x, target="tabby")
    """

    def __init__(
        self,
        model: nn.Module,
        method: str,
        backend: str | None = "auto",
        layer: nn.Module | str | None = None,
        *,
        reduce: str = _post.DEFAULT_REDUCE,
        categories: Sequence[str] | None = None,
        output: int | str | None = None,
        shortcuts: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.impl = registry.resolve(method, backend)
        self.method = self.impl.method
        self.backend = self.impl.backend
        self.spec = self.impl.spec
        self.options = self.impl.validate_options(options)
        self.reduce = _post.check_reduce(reduce)
        self.model = model
        self.net: nn.Module = model if output is None else _resolve.OutputSelector(model, output)
        self.output = output
        self.shortcuts = bool(shortcuts)
        cats = categories if categories is not None else getattr(model, "cnnlens_categories", None)
        self.categories = list(cats) if cats is not None else None
        if layer is not None and self.method != "fullgrad":
            _resolve.resolve_layer(model, layer, None)  # fail early on a bad name
        self._layer_arg = layer
        self._adapter_cls = self.impl.load()
        scripted = is_scripted(model) if self.impl.needs_hooks else None
        if scripted is not None:
            what = "is a TorchScript module" if scripted is model else "contains a TorchScript module"
            free = ", ".join(dict.fromkeys(i.method for i in registry.REGISTRY.values() if not i.needs_hooks))
            raise ModelError(
                f"{self.method} ({self.backend}) needs module hooks, and the model {what} "
                f"({type(scripted).__name__}), whose compiled forward never runs them; use the eager model, "
                f"or a gradient/perturbation method on backend 'captum': {free}"
            )
        self._probe_cache: dict[tuple[int, ...], _resolve.ProbeResult] = {}
        self._layer_cache: dict[int, tuple[_resolve.ProbeResult, nn.Module, str, Any]] = {}

    # A context manager for symmetry with the toolkits; every call already cleans up after itself.
    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._probe_cache.clear()
        self._layer_cache.clear()

    def __repr__(self) -> str:
        return f"Explainer(method={self.method!r}, backend={self.backend!r}, layer={self._layer_arg!r})"

    def _probe(self, x: Tensor) -> _resolve.ProbeResult:
        key = tuple(x.shape[1:])
        if key not in self._probe_cache:
            try:
                probe = _resolve.probe_or_fail(self.net, x[:1])
            except ModelError:
                _resolve.check_channels(self.net, x[:1])  # the input's fault when the first conv to run refuses it
                raise
            if probe.nonfinite is not None:  # one clear error before any backend runs
                _resolve.check_finite(x)  # the input's fault when its pixels are NaN / Inf
                with torch.no_grad():
                    _resolve.check_scores(self.model, self.net(x))
            self._check_categories(probe.num_classes)
            self._probe_cache[key] = probe
        return self._probe_cache[key]

    def _check_categories(self, num_classes: int) -> None:
        """Refuse too few class names before any work: labelling the result would fail after it."""
        if self.categories is not None and len(self.categories) < num_classes:
            raise TargetError(
                f"categories has {len(self.categories)} names but the model has {num_classes} classes; "
                f"give one name per class ({num_classes}), or categories=None for class indices"
            )

    def _layer(self, probe: _resolve.ProbeResult) -> tuple[nn.Module | None, str | None, Any]:
        """The layer, its name and its reshape (tokens or channels-last to (N, C, H, W); None if none)."""
        if self.method == "fullgrad" or (not self.spec.needs_layer and self._layer_arg is None):
            return None, None, None
        # Resolved once per input shape; reused while the model still holds that module under that
        # name (a lookup along the dotted path instead of naming every module on every call).
        cached = self._layer_cache.get(id(probe))
        if cached is not None and cached[0] is probe and _module_at(self.model, cached[2]) is cached[1]:
            return cached[1], cached[2], cached[3]
        takes_reshape = "reshape" in self.impl.options
        module, name = _resolve.resolve_layer(self.model, self._layer_arg, probe, reshape_ok=takes_reshape)
        reshape = _resolve.layer_reshape(self.model, name, self.options.get("reshape"), takes_reshape, probe)
        _resolve.check_spatial_layer(name, probe, reshape)
        self._layer_cache[id(probe)] = (probe, module, name, reshape)
        return module, name, reshape

    def _guided_warning(self) -> str | None:
        if self.method not in RELU_GUIDED:
            return None
        modules = list(self.model.modules())
        if any(type(m) is nn.ReLU for m in modules):
            return None
        others = sorted({type(m).__name__ for m in modules if isinstance(m, RELU_FAMILY)})
        what = ", ".join(others) if others else "functional activations"
        return (
            f"{self.method} ({self.backend}): the model has no nn.ReLU module ({what} instead); every "
            "toolkit guides nn.ReLU only, so this result equals the plain gradient rule for those activations"
        )

    def _constant_caveat(self, x: Tensor, flat: list[int], targets: Tensor, layer_name: str | None,
                         probe: _resolve.ProbeResult, said: Sequence[str]) -> _resolve.Caveat | None:
        """The warning for the images ``flat`` whose maps are constant, naming the likely cause (None
        where the adapter's own caveats, ``said``, already name one for each); a :class:`ModelError`
        when their scores are NaN or Inf (whose maps are zero for that reason)."""
        idx = torch.tensor(flat, device=x.device)
        with ModelGuard(self.model), torch.no_grad():
            scores = self.net(x.index_select(0, idx))
        _resolve.check_scores(self.model, scores, flat)
        covered = {i for w in said if isinstance(w, _resolve.Caveat) for i in w.images}
        keep = [k for k, i in enumerate(flat) if i not in covered]
        if not keep:
            return None
        flat, scores, idx = [flat[k] for k in keep], scores[keep], idx[keep]
        python, cli = _resolve.constant_map_causes(
            model=self.model, method=self.method, kind=self.spec.kind, layer=layer_name,
            auto_layer=self._layer_arg is None, size=(x.shape[2], x.shape[3]), scores=scores,
            targets=targets.index_select(0, idx.cpu()), probe_result=probe, reshape_ok="reshape" in self.impl.options,
        )
        return _resolve.Caveat(self.method, self.backend, python, cli, flat, x.shape[0])

    def explain(self, inputs: Tensor | Images, target: Any = None, *, chunk_size: int | None = None) -> Explanation:
        """Explain ``inputs`` for ``target``.

        Args:
            inputs: (N, C, H, W) float tensor, preprocessed for the model, or the
                :class:`~cnnlens.images.Images` that :func:`cnnlens.load_images` returns (its display
                copies then travel into the result). It is not modified.
            target: None (predicted class), an int or class name for every image, or a list, tensor
                or NumPy array of N ints or names (NumPy integers count as ints).
            chunk_size: Images per backend call (bounds memory; the CLI's ``--batch-size``); None
                explains the whole batch in one call. Every target is checked before the first call.
                An image's result does not depend on the chunking. (Not ``batch_size``: that is
                ScoreCAM's and AblationCAM's option for masked inputs per forward.)

        Returns:
            An :class:`~cnnlens.Explanation` whose ``maps`` follow the output contract (one for the
            whole batch, whatever ``chunk_size``).
        """
        if chunk_size is not None:
            e = Explanation.concat([e for _start, _stop, e in self.explain_chunks(inputs, target, chunk_size)])
            return dataclasses.replace(e, warnings=tuple(_resolve.merge_caveats(e.warnings)))
        images: Images | None = None
        if isinstance(inputs, Images):
            # The whole Images travels into the result (Explanation.source): its original pictures
            # carry the overlays and its names name the saved files.
            inputs, images = inputs.tensor, inputs
        return self._explain(inputs, target, images)

    def explain_chunks(
        self, inputs: Tensor | Images, target: Any = None, chunk_size: int = 8
    ) -> Iterator[tuple[int, int, Explanation]]:
        """Explain ``inputs`` ``chunk_size`` images at a time, yielding ``(start, stop, explanation)``.

        What ``explain(..., chunk_size=...)`` joins with :meth:`Explanation.concat`; iterate it
        directly to report progress. The inputs and every target are checked before the first
        chunk is explained.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise OptionError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        tensor = inputs.tensor if isinstance(inputs, Images) else inputs
        first = _resolve.check_input(tensor[:1] if isinstance(tensor, Tensor) and tensor.dim() == 4 else tensor,
                                     self.model)
        n = int(tensor.shape[0])
        if target is not None:
            with ModelGuard(self.model):
                probe = self._probe(first)
            _resolve.resolve_targets(target, n, probe.num_classes, self.categories, None)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            e = self.explain(inputs[start:stop], target=_chunk_target(target, start, stop))
            if start or stop < n:  # a caveat names images by their index in the whole batch
                shifted = tuple(w.shifted(start, n) if isinstance(w, _resolve.Caveat) else w for w in e.warnings)
                e = dataclasses.replace(e, warnings=shifted)
            yield start, stop, e

    def _explain(self, inputs: Tensor, target: Any, images: Images | None) -> Explanation:
        x = _resolve.check_input(inputs, self.model)
        out_device = inputs.device
        device = x.device
        # On an accelerator the NaN/Inf check is read after the call, not synchronised before it.
        finite = _resolve.finite_flag(inputs) if inputs.device.type != "cpu" else None
        warn_msgs: list[str] = []
        guided = self._guided_warning()
        if guided:
            warnings.warn(guided, CnnlensWarning, stacklevel=2)
            warn_msgs.append(guided)
        with ModelGuard(self.model, freeze_params=self.impl.freeze_params and self.shortcuts,
                        copy_params=self.impl.mutates_params) as guard:
            probe = self._probe(x)
            layer, layer_name, reshape = self._layer(probe)
            predicted = scores = None
            if target is None:
                with torch.no_grad():
                    try:
                        logits = self.net(x)
                    except Exception as exc:
                        raise ModelError(f"the model's forward pass failed: {type(exc).__name__}: {exc}") from exc
                if not bool(torch.isfinite(logits).all()):  # argmax(NaN) is class 0: refuse before any map
                    if finite is not None:
                        _resolve.check_finite(inputs, finite)
                    _resolve.check_scores(self.model, logits)
                predicted = logits.argmax(dim=1)
                scores = logits.float().softmax(dim=1).gather(1, predicted[:, None])[:, 0]
            targets = _resolve.resolve_targets(target, x.shape[0], probe.num_classes, self.categories, predicted)
            if self.impl.refuses_reuse:
                reused = [n for n in probe.reused() if n]
                if reused:
                    raise ModelError(
                        f"{self.backend} {self.impl.toolkit_name} cannot explain this model: module(s) "
                        f"{', '.join(reused[:3])} run more than once per forward pass (EfficientNet-Lite reuses one "
                        f"activation module), and {self.impl.toolkit_name} keeps one input/output per module, so its "
                        "result would be silently wrong; use integrated_gradients or input_x_gradient instead"
                    )
            # A target tensor already on the device (as the checked values) is used as it is: no
            # copy back to the device on every call.
            given = isinstance(target, Tensor) and target.dim() == 1 and target.dtype == torch.long
            on_device = target.detach().clone() if given and target.device == device else targets.to(device)
            options = self.options if reshape is None else {**self.options, "reshape": reshape}
            adapter = self._adapter_cls(self.net, self.impl, layer, options, shortcuts=self.shortcuts)
            adapter.check_input(x)
            seed = self.options.get("seed") if self.spec.stochastic else None
            with seeded(seed, device), torch.enable_grad():
                timer = _CallTimer(device)
                try:
                    raw = adapter.run(x, on_device)
                except CnnlensError:
                    if finite is not None:
                        _resolve.check_finite(inputs, finite)  # the input's fault, not the backend's
                    raise
                timer.stop()
            warn_msgs.extend(adapter.warnings)
            changed = guard.params_modified()
            # Post-processing is queued before the guard restores the model, so that on a GPU the
            # restore (Python on the CPU) overlaps with these kernels instead of following them.
            raw = raw.detach().to(out_device)
            maps = _post.to_maps(raw, self.spec.kind, (x.shape[2], x.shape[3]), self.reduce)
        if finite is not None:
            _resolve.check_finite(inputs, finite)
        # After the restore (on a GPU, reading the maps waits for the post-processing kernels)
        flat = _resolve.constant_maps(maps)
        if flat:
            caveat = self._constant_caveat(x, flat, targets, layer_name, probe, adapter.warnings)
            if caveat is not None:
                warnings.warn(caveat, CnnlensWarning, stacklevel=2)
                warn_msgs.append(caveat)
        if changed:
            raise CnnlensError(
                f"backend {self.backend} modified model parameters in place ({', '.join(changed[:3])}); "
                "please report this"
            )
        labels = tuple(self.categories[t] for t in targets.tolist()) if self.categories else None
        seconds = timer.seconds()  # on CUDA: waits for the backend's kernels, not for the post-processing
        return Explanation(
            maps=maps,
            raw=raw,
            targets=on_device if on_device.device == out_device else targets.to(out_device),
            method=self.method,
            backend=self.backend,
            toolkit_name=self.impl.toolkit_name,
            layer=layer_name,
            provenance=Provenance(
                backend=self.backend,
                toolkit_name=self.impl.toolkit_name,
                version=versions(self.backend)[self.backend],
                substitutions=tuple(dict.fromkeys(adapter.substitutions)),
                driven=tuple(dict.fromkeys(adapter.driven)),
            ),
            seconds=seconds,
            versions=versions(self.backend),
            options=dict(self.options),
            kind=self.spec.kind,
            reduce=self.reduce,
            scores=scores.detach().to(out_device) if scores is not None else None,
            labels=labels,
            warnings=tuple(warn_msgs),
            images=images,
        )


def _chunk_target(target: Any, start: int, stop: int) -> Any:
    """The targets of images ``start:stop``: a per-image list or tensor is sliced, one for all is kept."""
    if isinstance(target, (list, tuple)) or (isinstance(target, (Tensor, np.ndarray)) and target.ndim == 1):
        return target[start:stop]
    return target


def explain(
    model: nn.Module,
    inputs: Tensor | Images,
    method: str = "gradcam",
    backend: str | None = "auto",
    layer: nn.Module | str | None = None,
    target: Any = None,
    *,
    chunk_size: int | None = None,
    **options: Any,
) -> Explanation:
    """One-shot form of ``Explainer(model, method, backend, layer, **options).explain(inputs, target, chunk_size=)``."""
    with Explainer(model, method, backend=backend, layer=layer, **options) as ex:
        return ex.explain(inputs, target=target, chunk_size=chunk_size)
