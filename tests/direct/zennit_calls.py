"""zennit called directly, as its documentation shows: ``with Attributor(model, composite) as a: out, rel = a(x, y)``.

The output relevance is the one-hot target row (zennit's README: ``torch.eye(1000)[[target]]``), for
LRP that row times the output (the target score, where LRP's relevance starts).
Options are passed as cnnlens's zennit adapter documents them: ``n_steps`` / ``nt_samples`` as
``n_iter``, ``stdevs`` as SmoothGrad's ``noise_level``, ``baselines`` as ``baseline_fn`` and as the
occlusion fill. Occlusion occludes the window (``occlude_independent(..., invert=True)``) and scores
the drop of the target score. LRP registers the composite with the canonizer zennit ships for the
model; the tiny CNN is neither a VGG nor a ResNet, so that is ``SequentialMergeBatchNorm``.
SmoothGrad is called one image at a time, each after ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from zennit.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad, occlude_independent
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import DeconvNet, EpsilonPlusFlat, GuidedBackprop

from direct import DirectCall

Opts = dict[str, Any]


def _onehot(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    with torch.no_grad():
        n = model(x[:1]).shape[1]
    return torch.eye(n)[targets]


def _window(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[-2]), int(v[-1]))


def saliency(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    with Gradient(model=model) as attributor:
        _, relevance = attributor(x, _onehot(model, x, targets))
    return relevance


def smoothgrad(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    outs = []
    with SmoothGrad(model=model, noise_level=o["stdevs"], n_iter=o["nt_samples"]) as attributor:
        for i in range(x.shape[0]):
            torch.manual_seed(o["seed"])
            outs.append(attributor(x[i : i + 1], _onehot(model, x, targets[i : i + 1]))[1])
    return torch.cat(outs)


def integrated_gradients(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    base = torch.full_like(x, float(o["baselines"]))
    with IntegratedGradients(model=model, baseline_fn=lambda _x: base, n_iter=o["n_steps"]) as attributor:
        _, relevance = attributor(x, _onehot(model, x, targets))
    return relevance


def occlusion(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
    with torch.no_grad():
        reference = model(x)
    onehot = _onehot(model, x, targets)
    fill = partial(occlude_independent, fill_fn=lambda inp: torch.full_like(inp, float(o["baselines"])), invert=True)
    with Occlusion(model=model, occlusion_fn=fill, window=_window(o["sliding_window"]),
                   stride=_window(o["strides"])) as attributor:
        _, relevance = attributor(x, lambda out: onehot * (reference - out))
    return relevance


def _composite(make: Any, *, from_score: bool = False) -> DirectCall:
    def direct(model: nn.Module, x: Tensor, targets: Tensor, layer: nn.Module | None, o: Opts) -> Tensor:
        onehot = _onehot(model, x, targets)
        with Gradient(model=model, composite=make()) as attributor:
            # LRP starts from the target score itself (zennit: attr_output as a function of the output)
            _, relevance = attributor(x, (lambda out: onehot * out) if from_score else onehot)
        return relevance

    return direct


DIRECT: dict[tuple[str, str], DirectCall] = {
    ("saliency", "zennit"): saliency,
    ("smoothgrad", "zennit"): smoothgrad,
    ("integrated_gradients", "zennit"): integrated_gradients,
    ("occlusion", "zennit"): occlusion,
    ("guided_backprop", "zennit"): _composite(GuidedBackprop),
    ("deconvolution", "zennit"): _composite(DeconvNet),
    ("lrp", "zennit"): _composite(lambda: EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]), from_score=True),
}
