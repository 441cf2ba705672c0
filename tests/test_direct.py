"""Every registered (method, backend) against its toolkit called directly, on the same input.

The table is the union of ``tests/direct/*.py``; a pair with no direct call fails, so a new registry
entry cannot land without one. Maps are compared to a relative tolerance of 1e-5 (of each map's
range), raw attributions likewise.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import direct as _direct_pkg  # tests/direct: tests/ is on sys.path (pytest's rootdir-less test folder)
import pytest
import torch

import cnnlens
from cnnlens import _post
from cnnlens.registry import BACKENDS, REGISTRY
from cnnlens.testing import tiny_cnn, tiny_input

DIRECT: dict = {}
for _info in pkgutil.iter_modules(_direct_pkg.__path__):
    try:
        DIRECT.update(importlib.import_module(f"direct.{_info.name}").DIRECT)
    except ModuleNotFoundError as _exc:  # an optional backend (an extra) that is not installed
        if not any(_exc.name == b.module for b in BACKENDS.values()):
            raise

PAIRS = sorted(REGISTRY)
RTOL = 1e-5


def sharp_tiny() -> torch.nn.Module:
    """The tiny CNN with logits on a real classifier's scale: with its raw logits LIME's Lasso fits
    all zeros, and a comparison of zeros with zeros would prove nothing."""
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(100)
    return model


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} != {tuple(b.shape)}"
    scale = max(float(b.abs().max()), 1e-12)
    err = float((a - b).abs().max()) / scale
    assert err <= RTOL, f"{what}: max abs difference {err:.2e} of the direct result's range (tolerance {RTOL})"


def test_every_pair_has_a_direct_call():
    missing = [p for p in PAIRS if p not in DIRECT and BACKENDS[p[1]].installed]
    assert not missing, f"no direct-toolkit call for {missing}"


@pytest.mark.parametrize(("method", "backend"), PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_matches_toolkit_called_directly(method, backend):
    if not BACKENDS[backend].installed:
        pytest.skip(f"{backend} not installed")
    if (method, backend) not in DIRECT:
        pytest.fail(f"no direct call for {method}/{backend}")
    impl = REGISTRY[(method, backend)]
    model, x = sharp_tiny(), tiny_input(n=3, size=32)
    targets = torch.tensor([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cnnlens.Explainer(model, method, backend=backend) as ex:
            e = ex.explain(x, target=targets)
        layer = dict(model.named_modules())[e.layer] if e.layer else None
        opts = dict(e.options)  # the direct call seeds stochastic methods itself from opts["seed"]
        raw = DIRECT[(method, backend)](model, x.clone(), targets.clone(), layer, opts)
    assert raw.abs().max() > 0, f"{method}/{backend}: the direct call returned all zeros; the comparison would be vacuous"
    assert_close(e.raw, raw, f"{method}/{backend} raw")
    maps = _post.to_maps(raw.to(torch.float32), impl.spec.kind, (x.shape[2], x.shape[3]), e.reduce)
    assert_close(e.maps, maps, f"{method}/{backend} maps")
