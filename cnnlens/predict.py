"""A model's top-k classes for an input, with their softmax probabilities.

What the web app shows next to a photo, and what a notebook prints before choosing a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlens.errors import InputError, ModelError


@dataclass(frozen=True)
class ClassScore:
    """One class of a top-k list."""

    index: int
    label: str
    probability: float


def top_classes(model: nn.Module, x: Tensor, k: int = 5, categories: Sequence[str] | None = None) -> list[list[ClassScore]]:
    """The ``k`` most probable classes of every image of ``x``.

    Args:
        model: A classifier returning (N, classes) scores. Modules in training mode are put in eval
            mode for the forward pass and put back afterwards, so BatchNorm statistics do not change.
        x: (N, C, H, W) preprocessed batch.
        k: How many classes per image (at most the number of classes).
        categories: Class names; defaults to those :func:`cnnlens.load_model` attached.

    Returns:
        One list per image, most probable first.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    cats = categories if categories is not None else getattr(model, "cnnlens_categories", None)
    training = [m for m in model.modules() if m.training]
    try:
        for m in training:
            m.train(False)
        with torch.no_grad():
            try:
                logits = model(x)
            except Exception as exc:
                raise ModelError(f"the model's forward pass failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for m in training:
            m.train(True)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ModelError(f"the model must return (N, classes) scores, got {type(logits).__name__}")
    probs = logits.float().softmax(dim=1).cpu()
    p, idx = probs.topk(min(k, probs.shape[1]), dim=1)
    out = []
    for pi, ii in zip(p.tolist(), idx.tolist(), strict=True):
        out.append([ClassScore(int(c), str(cats[c]) if cats is not None and c < len(cats) else f"class {c}", float(v))
                    for v, c in zip(pi, ii, strict=True)])
    return out
