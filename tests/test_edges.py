"""Edges a newcomer meets: NumPy targets, torchcam's noisy CAMs on a half-precision model, 1x1 inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens import registry
from cnnlens.errors import TargetError
from cnnlens.testing import tiny_cnn, tiny_input


def _explain(model, x, method="saliency", backend="captum", **kw) -> cnnlens.Explanation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(model, x, method, backend=backend, **kw)


@pytest.mark.bad_input("api")
@pytest.mark.parametrize(("target", "expected"), [
    (np.int64(3), [3, 3, 3]),
    (np.uint8(2), [2, 2, 2]),
    (np.array(4), [4, 4, 4]),
    (np.array([1, 2, 0]), [1, 2, 0]),
    (np.arange(3, dtype=np.int32)[::-1], [2, 1, 0]),
    ([np.int64(1), 2, np.int16(0)], [1, 2, 0]),
], ids=["int64", "uint8", "0-d-array", "array", "strided-int32-array", "list-of-numpy-ints"])
def test_numpy_targets_are_accepted_like_ints_lists_and_tensors(target, expected) -> None:
    """What indexing an array of labels gives (np.int64) and an array of them were refused."""
    model, x = tiny_cnn(), tiny_input(n=3, size=32)
    e = _explain(model, x, target=target)
    assert e.targets.tolist() == expected
    reference = _explain(model, x, target=expected)
    assert torch.equal(e.maps, reference.maps)
    chunked = cnnlens.Explainer(model, "saliency", backend="captum").explain(x, target, chunk_size=2)
    assert chunked.targets.tolist() == expected


@pytest.mark.bad_input("api")
@pytest.mark.parametrize(("target", "words"), [
    (np.array([1.0, 2.0, 0.0]), ["integer class indices", "float64"]),
    (np.array([True, False, True]), ["integer class indices", "bool"]),
    (np.array([[1, 2, 0]]), ["0-D or 1-D"]),
    (np.array([1, 9, 0]), ["target 9 is out of range"]),
    (np.float64(1.0), ["got float"]),
], ids=["float-array", "bool-array", "2-d-array", "out-of-range", "float64-scalar"])
def test_bad_numpy_targets_are_one_clear_error(target, words) -> None:
    with pytest.raises(TargetError) as info:
        _explain(tiny_cnn(), tiny_input(n=3, size=32), target=target)
    for w in words:
        assert w in str(info.value)


NOISY_TORCHCAM = [m for m in ("smoothgradcam_plusplus", "sscam") if registry.BACKENDS["torchcam"].installed]


@pytest.mark.bad_input("api")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("method", NOISY_TORCHCAM)
def test_torchcams_noisy_cams_run_on_a_half_precision_model(method, dtype) -> None:
    """torchcam adds float32 noise, which turned the input into float32 and a float16 model refused
    it; the noise is now cast to the model's dtype, and the map matches the float32 model's."""
    x = tiny_input(n=2, size=32)
    half = _explain(tiny_cnn().to(dtype), x.to(dtype), method, "torchcam", target=1, seed=0)
    full = _explain(tiny_cnn(), x, method, "torchcam", target=1, seed=0)
    assert any("cast to the model's" in d for d in half.provenance.driven)
    if float(half.maps.amax(dim=(1, 2)).min()) > 0:
        r = torch.corrcoef(torch.stack([half.maps.flatten(), full.maps.flatten()]))[0, 1]
        assert r > 0.99, r
    else:  # float16 rounding flattened it: said so
        assert any("constant map" in w and "float16" in w for w in half.warnings), half.warnings


@pytest.mark.bad_input("api")
def test_a_1x1_input_gives_a_map_and_says_it_is_one_value() -> None:
    e = _explain(tiny_cnn(), tiny_input(n=1, size=1), "saliency", "captum", target=1)
    assert e.maps.shape == (1, 1, 1)
    assert any("1x1 pixel" in w for w in e.warnings), e.warnings
