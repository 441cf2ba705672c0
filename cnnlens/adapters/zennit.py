"""Adapter for zennit.

Every method runs one of zennit's attributors, driven as zennit documents it: the attributor (with a
composite where the method has one) is a context manager, and ``attributor(input, attr_output)``
returns the model output and the attribution. The adapter only translates at the boundary:

- Targets become zennit's output relevance (``attr_output``, a function of the model's output): a
  one on each image's target class for the gradient methods (the gradient of the target score),
  the target score itself for ``lrp`` (LRP starts from the score it explains, as Captum's LRP does,
  so zennit's conservative rules sum to that score).
- Options keep cnnlens's (Captum's) names: ``n_steps`` and ``nt_samples`` are zennit's ``n_iter``,
  ``stdevs`` is SmoothGrad's ``noise_level`` (in zennit, too, a fraction of each image's value
  range), ``baselines`` becomes ``baseline_fn`` or the occlusion fill, ``sliding_window`` and
  ``strides`` are ``window`` and ``stride``.
- ``occlusion`` occludes the window (zennit's ``occlude_independent`` with ``invert=True``; zennit's
  default keeps only the window) and scores the drop of the target score, which is what cnnlens's
  ``occlusion`` means; zennit itself slides the window and sums.
- ``lrp`` registers the named zennit composite with the canonizer zennit ships for the model
  (ResNetCanonizer, VGGCanonizer, otherwise SequentialMergeBatchNorm when the model has BatchNorm).
  zennit's canonizers rewrite weights and BatchNorm statistics for the call and put them back
  themselves (the registry marks the pair ``mutates_params``; the model guard verifies the values).
  They are zennit's classes with two additions: every applied instance is logged, so that the ones
  applied before a failing one are removed too (zennit's ``apply`` loses them when a later merge
  raises, leaving those BatchNorms at mean 0, variance 1), and the BatchNorm merge also folds
  torchvision's ``FrozenBatchNorm2d`` (detection backbones), which computes the same affine map from
  buffers and which zennit's types do not list (its LRP would otherwise run through it unmerged).
  Models zennit has no canonizer for are refused when its result would not be LRP: a BatchNorm that
  no Conv/Linear leaf module directly precedes (zennit's BatchNorm rule then passes relevance
  through unchanged), a BatchNorm without an affine map or running statistics (zennit's merge needs
  both), or a Conv/Linear/pooling module that runs more than once per forward (zennit keeps one input
  per module). A canonized model must still compute the model's own output.

Why one ``lrp`` method with a ``composite=`` option rather than a method per composite: a composite
is a choice of rules for one method, LRP, as ``aug_smooth`` is a choice within Grad-CAM; one name
keeps ``lrp`` a two-backend method in the agreement table (Captum's epsilon rule against zennit's
recommended ``epsilon_plus_flat``, the difference stated in ``cnnlens.methods()``) instead of five
one-backend methods whose pairs would count one implementation five times.

zennit's exceptions become cnnlens errors; nothing of zennit is replaced
(``provenance.substitutions`` stays empty).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zennit import composites as zc
from zennit.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad, occlude_independent
from zennit.canonizers import Canonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.core import collect_leaves
from zennit.torchvision import (
    ResNetBasicBlockCanonizer,
    ResNetBottleneckCanonizer,
    ResNetCanonizer,
    VGGCanonizer,
)
from zennit.types import AvgPool, BatchNorm
from zennit.types import Linear as ZennitLinear

from cnnlens._resolve import OutputSelector
from cnnlens.adapters.base import Adapter, check_window_fits, window_pair
from cnnlens.errors import CnnlensError, ModelError, OptionError
from cnnlens.models import meta_of

#: cnnlens composite names -> zennit's composite classes (zennit's own registry names).
COMPOSITES: dict[str, type] = {
    "epsilon_plus_flat": zc.EpsilonPlusFlat,
    "epsilon_gamma_box": zc.EpsilonGammaBox,
    "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
    "epsilon_plus": zc.EpsilonPlus,
    "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
}
GUIDED = {"guided_backprop": zc.GuidedBackprop, "deconvolution": zc.DeconvNet}
#: Named in ``provenance.driven`` when zennit is called once per image.
PER_IMAGE_SEEDED = "one zennit call per image, each image drawn from the seed afresh"
#: Occlusion scores the drop of the target score, a small difference of large logits, so the noise
#: of batch-size dependent kernels would show in it; one image per call makes it batch independent.
PER_IMAGE_OCCLUSION = "one zennit Occlusion call per image (its score drops come from that image's forwards only)"
#: A canonized model must give the model's own scores to this relative tolerance (of the largest
#: score); zennit's BatchNorm merge moves them by float noise only (~5e-5 measured, resnet18 and vgg11_bn).
CANON_RTOL = 1e-3


def _norm_types() -> tuple[type, ...]:
    """What the BatchNorm merge folds: zennit's BatchNorm types and torchvision's FrozenBatchNorm2d."""
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except ImportError:  # pragma: no cover - torchvision is a dependency of the zennit extra
        return (BatchNorm,)
    return (BatchNorm, FrozenBatchNorm2d)


NORMS = _norm_types()


class _Logged:
    """Mixin for a zennit canonizer: every instance it registers is listed in ``applied`` (shared by
    its copies) until removed, so that :func:`remove_applied` can undo a half-applied canonizer."""

    applied: list[Canonizer]

    def copy(self) -> Canonizer:
        c = type(self)()
        c.applied = self.applied
        return c

    def register(self, *args: Any) -> None:
        self.applied.append(self)  # listed first: a merge that fails half-way is undone too
        super().register(*args)  # type: ignore[misc]

    def remove(self) -> None:
        super().remove()  # type: ignore[misc]
        self.applied.remove(self)


class MergeBatchNorm(_Logged, SequentialMergeBatchNorm):
    """zennit's SequentialMergeBatchNorm, logged, merging FrozenBatchNorm2d as well."""

    batch_norm_type = NORMS


class VGGMergeBatchNorm(_Logged, VGGCanonizer):
    """zennit's VGGCanonizer, logged, merging FrozenBatchNorm2d as well."""

    batch_norm_type = NORMS


class _BottleneckCanonizer(_Logged, ResNetBottleneckCanonizer):
    pass


class _BasicBlockCanonizer(_Logged, ResNetBasicBlockCanonizer):
    pass


class ResNetMergeCanonizer(ResNetCanonizer):
    """zennit's ResNetCanonizer (BatchNorm merge, then the residual sums as Sum modules), its parts logged,
    merging FrozenBatchNorm2d as well."""

    def __init__(self) -> None:
        CompositeCanonizer.__init__(self, (MergeBatchNorm(), _BottleneckCanonizer(), _BasicBlockCanonizer()))


def remove_applied(canonizer: Canonizer) -> None:
    """Remove every instance that ``canonizer`` (or its parts) registered and nothing removed since,
    latest first. Nothing remains on the normal path (zennit removes them on leaving its attributor);
    after a failure inside zennit's ``apply`` these are the instances zennit lost. A removal that fails
    leaves the rest to the model guard."""
    parts = canonizer.canonizers if isinstance(canonizer, CompositeCanonizer) else [canonizer]
    applied = [c for part in parts for c in getattr(part, "applied", [])]
    for c in reversed(applied):
        with contextlib.suppress(Exception):  # a half-registered instance: the guard restores the rest
            c.remove()


def one_hot_output(targets: Tensor) -> Callable[[Tensor], Tensor]:
    """zennit's ``attr_output``: a one on each image's target score, zero elsewhere."""
    return lambda out: F.one_hot(targets, out.shape[1]).to(out)


def score_output(targets: Tensor) -> Callable[[Tensor], Tensor]:
    """zennit's ``attr_output`` for LRP: each image's target score itself, zero elsewhere, so that
    the relevance starts from (and the conservative rules sum to) the score being explained."""
    return lambda out: F.one_hot(targets, out.shape[1]).to(out) * out


def _inner(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, OutputSelector) else model


def pick_canonizer(model: nn.Module) -> Canonizer | None:
    """The canonizer zennit ships for ``model`` (logged, see :class:`MergeBatchNorm`), or None when
    it has no BatchNorm to merge. Each call gives a new canonizer with its own log."""
    from torchvision.models import VGG
    from torchvision.models.resnet import BasicBlock, Bottleneck

    modules = list(model.modules())
    canonizer: Canonizer
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in modules):
        canonizer = ResNetMergeCanonizer()
    elif not any(isinstance(m, NORMS) for m in modules):
        return None
    elif any(isinstance(m, VGG) for m in modules):
        canonizer = VGGMergeBatchNorm()
    else:
        canonizer = MergeBatchNorm()
    for part in canonizer.canonizers if isinstance(canonizer, CompositeCanonizer) else [canonizer]:
        part.applied = []
    return canonizer


def zennit_name(canonizer: Canonizer | None, model: nn.Module) -> str:
    """The zennit class a canonizer is (the logged subclasses above add no rule of their own), and
    whether it merged FrozenBatchNorm2d modules of ``model``."""
    if canonizer is None:
        return "none"
    name = next(c.__name__ for c in type(canonizer).__mro__ if c.__module__.startswith("zennit."))
    frozen = NORMS[1:]
    if frozen and any(isinstance(m, frozen) for m in model.modules()):
        name += " (its BatchNorm merge applied to FrozenBatchNorm2d too)"
    return name


def unmerged_batchnorms(model: nn.Module) -> list[str]:
    """BatchNorm modules that zennit's SequentialMergeBatchNorm cannot merge: the leaf module before
    them (zennit's ``collect_leaves`` order) is not a Conv/Linear module."""
    names = {id(m): n for n, m in model.named_modules()}
    out, last = [], None
    for leaf in collect_leaves(model):
        if isinstance(leaf, NORMS) and not isinstance(last, ZennitLinear):
            out.append(names.get(id(leaf), type(leaf).__name__))
        last = leaf
    return out


def unmergeable_batchnorms(model: nn.Module) -> list[str]:
    """BatchNorm modules, each with what it lacks, that zennit's merge cannot fold: it reads
    ``weight``, ``bias``, ``running_mean`` and ``running_var``, which ``affine=False`` and
    ``track_running_stats=False`` leave as None."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, NORMS):
            lacks = [k for k in ("weight", "bias", "running_mean", "running_var") if getattr(m, k, None) is None]
            if lacks:
                out.append(f"'{name or type(m).__name__}' (no {', '.join(lacks)})")
    return out


class ZennitAdapter(Adapter):
    backend = "zennit"

    def check_input(self, x: Tensor) -> None:
        if self.method == "occlusion":
            check_window_fits(self.options, x)
        if self.method == "lrp" and self.options["composite"] != "epsilon_gamma_box":
            given = [k for k in ("low", "high") if self.options[k] is not None]
            if given:
                raise OptionError(
                    f"option(s) {', '.join(given)} apply to composite='epsilon_gamma_box' only (its ZBox first "
                    f"layer), not to composite={self.options['composite']!r}; drop them or choose epsilon_gamma_box"
                )

    def _baseline(self, x: Tensor) -> Tensor:
        """``baselines`` as a tensor of ``x``'s shape (a per-image tensor gives each image its row)."""
        b = self.options.get("baselines", 0.0)
        if isinstance(b, Tensor):
            return torch.broadcast_to(b.to(device=x.device, dtype=x.dtype), x.shape).clone()
        return torch.full_like(x, float(b))

    def _baseline_of(self, x: Tensor, i: int) -> Tensor:
        """Image ``i``'s baseline for the one image ``x``: a per-image tensor gives its row ``i``."""
        b = self.options.get("baselines", 0.0)
        if isinstance(b, Tensor) and b.dim() == 4 and b.shape[0] > 1:
            return b[i : i + 1].to(device=x.device, dtype=x.dtype).expand_as(x).clone()
        return self._baseline(x)

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        m, o, model = self.method, self.options, self.model
        if m == "saliency":
            with Gradient(model) as attributor:
                _, out = attributor(x, one_hot_output(targets))
        elif m == "smoothgrad":
            with SmoothGrad(model, noise_level=float(o["stdevs"]), n_iter=o["nt_samples"]) as attributor:
                out = self.each_image(x, targets, lambda xi, ti, _i: attributor(xi, one_hot_output(ti))[1],
                                      PER_IMAGE_SEEDED)
        elif m == "integrated_gradients":
            base = self._baseline(x)
            with IntegratedGradients(model, baseline_fn=lambda _inp: base, n_iter=o["n_steps"]) as attributor:
                _, out = attributor(x, one_hot_output(targets))
        elif m == "occlusion":
            out = self.each_image(x, targets, lambda xi, ti, i: self._occlusion(xi, ti, i), PER_IMAGE_OCCLUSION)
        elif m in GUIDED:
            with Gradient(model, composite=GUIDED[m]()) as attributor:
                _, out = attributor(x, one_hot_output(targets))
        elif m == "lrp":
            out = self._lrp(x, targets)
        else:  # the registry only routes methods listed above
            raise CnnlensError(f"zennit adapter has no route for '{m}'")
        return out.detach()

    def _occlusion(self, x: Tensor, targets: Tensor, i: int) -> Tensor:
        """Image ``i`` alone (``x`` is that image): its score drops come from forwards of that image only."""
        with torch.no_grad():
            reference = self.model(x)
        onehot = F.one_hot(targets, reference.shape[1]).to(reference)
        base = self._baseline_of(x, i)
        occlude = partial(occlude_independent, fill_fn=lambda _inp: base, invert=True)
        with Occlusion(self.model, occlusion_fn=occlude, window=window_pair(self.options["sliding_window"]),
                       stride=window_pair(self.options["strides"])) as attributor:
            # the output function scores each occluded input by the drop of its target score
            _, out = attributor(x, lambda scores: onehot * (reference - scores))
        return out

    def _composite(self, x: Tensor, canonizer: Canonizer | None) -> Any:
        name = self.options["composite"]
        canonizers = [canonizer] if canonizer is not None else None
        if name != "epsilon_gamma_box":
            return COMPOSITES[name](canonizers=canonizers)
        low, high = self._box(x)
        return zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)

    def _box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """ZBox bounds: the options, else the model's preprocessing applied to pixel values 0 and 1."""
        meta = meta_of(_inner(self.model))
        c = x.shape[1]
        mean = torch.tensor(meta.mean if len(meta.mean) == c else meta.mean[:1] * c, dtype=x.dtype)
        std = torch.tensor(meta.std if len(meta.std) == c else meta.std[:1] * c, dtype=x.dtype)
        bounds = []
        for key, pixel in (("low", 0.0), ("high", 1.0)):
            given = self.options[key]
            b = ((pixel - mean) / std).view(1, c, 1, 1) if given is None else torch.as_tensor(given, dtype=x.dtype)
            bounds.append(b.to(x.device))
        return bounds[0], bounds[1]

    def _check_lrp_model(self, x: Tensor, canonizer: Canonizer | None) -> Tensor:
        """Refuse models whose zennit LRP would be silently wrong; return the model's own scores."""
        model = self.model
        lacking = unmergeable_batchnorms(model)
        if lacking:
            raise ModelError(
                f"zennit LRP cannot explain this model: {len(lacking)} BatchNorm module(s) have no affine "
                f"map or no running statistics ({'; '.join(lacking[:3])}), and zennit's canonizer merges a "
                "BatchNorm into the layer before it from exactly those tensors (affine=True, "
                "track_running_stats=True); use a gradient method (integrated_gradients, smoothgrad) on "
                "backend 'zennit' instead"
            )
        left = unmerged_batchnorms(model)
        if left:
            raise ModelError(
                f"zennit has no canonizer for this model ({type(_inner(model)).__name__}): {len(left)} "
                f"BatchNorm module(s) ({', '.join(left[:3])}) do not directly follow a Conv2d/Linear leaf "
                "module, so zennit's SequentialMergeBatchNorm cannot merge them and its LRP rules would pass "
                "relevance through them unchanged; zennit ships canonizers for torchvision VGG and ResNet "
                "models; use lrp on a model whose BatchNorms follow their convolutions, or a gradient method "
                "(integrated_gradients, smoothgrad) on backend 'zennit'"
            )
        counts: dict[str, int] = {}
        names = {id(mod): n for n, mod in model.named_modules()}
        ruled = [mod for mod in model.modules() if isinstance(mod, (ZennitLinear, AvgPool))]

        def count(mod: nn.Module, _inp: Any) -> None:
            counts[names[id(mod)]] = counts.get(names[id(mod)], 0) + 1

        handles = [mod.register_forward_pre_hook(count) for mod in ruled]
        try:
            with torch.no_grad():
                scores = model(x)
        finally:
            for h in handles:
                h.remove()
        reused = [n for n, k in counts.items() if k > 1]
        if reused:
            raise ModelError(
                f"zennit LRP cannot explain this model: module(s) {', '.join(reused[:3])} run more than once per "
                "forward pass, and zennit's rules keep one input per module, so the result would be silently "
                "wrong; use integrated_gradients or smoothgrad on backend 'zennit' instead"
            )
        return scores

    def _lrp(self, x: Tensor, targets: Tensor) -> Tensor:
        canonizer = pick_canonizer(self.model)
        scores = self._check_lrp_model(x, canonizer)
        composite = self._composite(x, canonizer)
        try:
            with Gradient(self.model, composite=composite) as attributor:
                output, out = attributor(x, score_output(targets))
        finally:
            if canonizer is not None:
                remove_applied(canonizer)
        err = float((output.detach() - scores).abs().max()) / max(float(scores.abs().max()), 1e-12)
        if err > CANON_RTOL:
            raise ModelError(
                f"zennit's {type(canonizer).__name__} changed this model's output (by {err:.1e} of its largest "
                "score): its BatchNorm merge does not match the model's forward order, so LRP on the canonized "
                "model would explain another function; use a gradient method on backend 'zennit' instead"
            )
        self.driven.append(f"zennit composite {type(composite).__name__}, canonizer {zennit_name(canonizer, self.model)}")
        return out
