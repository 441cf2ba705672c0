"""An image's map does not depend on the other images of its batch (issue 16, section 2).

Every registry pair explains one image alone and the same image between two neighbours, one of them
scaled x50 (a much wider value range, which used to widen the batch-level noise scale of SmoothGrad
and GradientSHAP and the baseline noise of DeepLIFT-SHAP).

- Deterministic methods: the image's ``raw`` and ``maps`` in the batch equal those alone, to a
  relative tolerance of 1e-5 of the alone result's largest magnitude (the float noise of batch-size
  dependent kernels; the measured differences are 0 to ~1e-7).
- Stochastic methods: the batch must not move the map more than a change of seed does, and since
  cnnlens calls the toolkit one image at a time, each image drawn from the seed afresh, the two are
  equal to the same tolerance.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import cnnlens
from cnnlens import registry
from cnnlens.testing import tiny_cnn, tiny_input

PAIRS = sorted(p for p in registry.REGISTRY if registry.BACKENDS[p[1]].installed)
RTOL = 1e-5
CHEAP = {"nt_samples": 4, "n_samples": 24, "n_steps": 8}
TARGET, NEIGHBOUR_TARGETS = 1, (3, 0)
KNOWN: dict = {}


def sharp_tiny() -> torch.nn.Module:
    """The tiny CNN with logits on a real classifier's scale (LIME's Lasso is all-zero otherwise)."""
    m = tiny_cnn()
    with torch.no_grad():
        m.fc.weight.mul_(100)
    return m


MODEL = sharp_tiny()
IMAGES = tiny_input(n=3, size=32, seed=1)
IMAGE = IMAGES[1:2]
# the image in the middle: a neighbour of 50 times its range before it, an ordinary one after it
BATCH = torch.cat([IMAGES[:1] * 50, IMAGE, IMAGES[2:]])


def _explain(method: str, backend: str, x: torch.Tensor, target: list[int], **extra: object) -> cnnlens.Explanation:
    valid = registry.REGISTRY[(method, backend)].all_options()
    opts = {k: v for k, v in CHEAP.items() if k in valid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(MODEL, x, method=method, backend=backend, target=target, **opts, **extra)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, relative to ``b``'s largest magnitude."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


@pytest.mark.parametrize(("method", "backend"), [pytest.param(*p, marks=KNOWN.get(p, ())) for p in PAIRS],
                         ids=[f"{m}-{b}" for m, b in PAIRS])
def test_an_images_map_does_not_depend_on_its_batch(method: str, backend: str) -> None:
    stochastic = registry.REGISTRY[(method, backend)].spec.stochastic
    seed = {"seed": 0} if stochastic else {}
    alone = _explain(method, backend, IMAGE, [TARGET], **seed)
    batched = _explain(method, backend, BATCH, [NEIGHBOUR_TARGETS[0], TARGET, NEIGHBOUR_TARGETS[1]], **seed)
    assert alone.raw.abs().max() > 0, "degenerate all-zero attribution: the comparison would be vacuous"
    raw_diff = rel_diff(batched.raw[1:2], alone.raw)
    map_diff = rel_diff(batched.maps[1:2], alone.maps)
    if stochastic:
        other_seed = _explain(method, backend, IMAGE, [TARGET], seed=1)
        seed_diff = rel_diff(other_seed.raw, alone.raw)
        assert seed_diff > 0, "a different seed gave the identical attribution: the criterion would be vacuous"
        assert raw_diff <= seed_diff, (
            f"the neighbours moved the image's attribution by {raw_diff:.3g} of its range, more than a change "
            f"of seed does ({seed_diff:.3g})"
        )
    assert raw_diff <= RTOL, f"raw in the batch differs from raw alone by {raw_diff:.2e} of its range (tolerance {RTOL})"
    assert map_diff <= RTOL, f"map in the batch differs from the map alone by {map_diff:.2e} (tolerance {RTOL})"


STOCHASTIC = [p for p in PAIRS if registry.REGISTRY[p].spec.stochastic]


@pytest.mark.parametrize(("method", "backend"), STOCHASTIC, ids=[f"{m}-{b}" for m, b in STOCHASTIC])
def test_per_image_calls_are_named_in_the_provenance(method: str, backend: str) -> None:
    e = _explain(method, backend, BATCH[:2], [0, 1])
    assert any("per image" in d for d in e.provenance.driven), e.provenance
    assert e.provenance.substitutions == ()
