"""Issue 7, part 7: every stochastic method takes ``seed=`` and gives identical maps on rerun.

Covers every (method, backend) whose spec is stochastic (the SmoothGrad family, GradientSHAP, LIME,
KernelSHAP), filter visualization, and the benchmark's random baselines. A different seed must give
a different result (so the seed is really used), and the caller's global RNG state is left alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens import registry
from cnnlens.testing import tiny_cnn, tiny_input

STOCHASTIC = sorted((m, b) for (m, b), impl in registry.REGISTRY.items()
                    if impl.spec.stochastic and registry.BACKENDS[b].installed)
CHEAP = {"nt_samples": 4, "n_samples": 24}


def sharp_tiny() -> torch.nn.Module:
    """The tiny CNN with logits on a real classifier's scale.

    With the tiny CNN's own logits (spread ~0.01 under perturbation) Captum's LIME fits an all-zero
    Lasso (alpha=0.01) whatever the seed, which would make the "other seed differs" check vacuous.
    """
    m = tiny_cnn()
    with torch.no_grad():
        m.fc.weight.mul_(100)
    return m


MODEL, X = sharp_tiny(), tiny_input()  # built once: building a module draws from the global RNG


def _explain(method: str, backend: str, seed: int | None) -> cnnlens.Explanation:
    valid = registry.REGISTRY[(method, backend)].all_options()
    opts = {k: v for k, v in CHEAP.items() if k in valid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(MODEL, X, method=method, backend=backend, target=[1, 3], seed=seed, **opts)


def test_the_stochastic_methods_are_covered() -> None:
    names = {m for m, _ in STOCHASTIC}
    assert {"smoothgrad", "smoothgrad_sq", "vargrad", "gradient_shap", "lime", "kernel_shap"} <= names
    for m, b in STOCHASTIC:
        assert "seed" in registry.REGISTRY[(m, b)].all_options(), (m, b)


@pytest.mark.parametrize("method,backend", STOCHASTIC, ids=[f"{m}-{b}" for m, b in STOCHASTIC])
def test_same_seed_same_maps_other_seed_other_maps(method: str, backend: str) -> None:
    a = _explain(method, backend, seed=7)
    torch.manual_seed(12345)  # disturb the global RNG between the two calls: the seed alone decides
    np.random.seed(999)
    _ = torch.rand(100), np.random.rand(100)
    b = _explain(method, backend, seed=7)
    assert torch.equal(a.raw, b.raw), "same seed, different raw attribution"
    assert torch.equal(a.maps, b.maps), "same seed, different maps"
    c = _explain(method, backend, seed=8)
    assert a.raw.abs().max() > 0, "degenerate all-zero attribution: the seed check would be vacuous"
    assert not torch.equal(a.raw, c.raw), "a different seed gave the identical attribution: seed ignored?"
    assert a.options["seed"] == 7 and c.options["seed"] == 8


@pytest.mark.parametrize("method,backend", STOCHASTIC[:2], ids=[f"{m}-{b}" for m, b in STOCHASTIC[:2]])
def test_seeded_call_leaves_global_rng_alone(method: str, backend: str) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    expected_t = torch.rand(5)
    expected_np = np.random.rand(5)
    torch.manual_seed(3)
    np.random.seed(3)
    _explain(method, backend, seed=11)
    assert torch.equal(torch.rand(5), expected_t), "the call consumed or reseeded torch's global RNG"
    assert np.array_equal(np.random.rand(5), expected_np), "the call consumed or reseeded NumPy's global RNG"


def test_default_seed_is_reproducible() -> None:
    """No seed given: the registered default (0) applies, so two plain calls agree too."""
    a = cnnlens.explain(MODEL, X, method="smoothgrad", backend="captum", target=1, nt_samples=4)
    torch.rand(10)
    b = cnnlens.explain(MODEL, X, method="smoothgrad", backend="captum", target=1, nt_samples=4)
    assert torch.equal(a.maps, b.maps)


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_seed_none_draws_fresh_noise_for_every_image(method: str) -> None:
    """seed=None is not turned into a fixed seed by the per-image calls: two calls differ, and so do
    two copies of one image in one batch (each seeded image would get the same noise)."""
    x = torch.cat([X[:1], X[:1]])
    a, b = _explain_x(method, x, seed=None), _explain_x(method, x, seed=None)
    assert not torch.equal(a.raw, b.raw)
    assert not torch.equal(a.raw[0], a.raw[1])
    seeded = _explain_x(method, x, seed=3)
    assert torch.equal(seeded.raw[0], seeded.raw[1]), "with a seed, each image is drawn from it afresh"


def _explain_x(method: str, x: torch.Tensor, seed: int | None) -> cnnlens.Explanation:
    valid = registry.REGISTRY[(method, "captum")].all_options()
    opts = {k: v for k, v in CHEAP.items() if k in valid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cnnlens.explain(MODEL, x, method=method, backend="captum", target=[1, 1], seed=seed, **opts)


# ------------------------------------------------------------------------------------------------
# Filter visualization and the benchmark's random baselines
# ------------------------------------------------------------------------------------------------


def test_filter_visualization_is_seeded() -> None:
    if not registry.BACKENDS["flashtorch"].installed:
        pytest.skip("flashtorch not installed")
    model = tiny_cnn()

    def run(seed: int, filters: list[int] | None = None) -> cnnlens.FilterImages:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cnnlens.filters(model, layer="features.3", filters=filters, steps=3, size=32, seed=seed)

    a, b = run(5, [0, 3]), run(5, [0, 3])
    assert torch.equal(a.tensor, b.tensor)
    assert not torch.equal(a.tensor, run(6, [0, 3]).tensor)
    # the seeded random choice of filters is reproducible too
    c, d = run(5), run(5)
    assert c.filters == d.filters and torch.equal(c.tensor, d.tensor)


@pytest.mark.parametrize("kind", ["random_pixel", "random_smooth"])
def test_bench_random_baseline_is_seeded(kind: str) -> None:
    metrics = pytest.importorskip("cnnlens.bench.metrics")
    a, b = metrics.baseline_map(kind, 32, 40, seed=4), metrics.baseline_map(kind, 32, 40, seed=4)
    assert a.shape == (32, 40) and np.array_equal(a, b)
    assert not np.array_equal(a, metrics.baseline_map(kind, 32, 40, seed=5))
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_seeded_calls_on_different_models_in_threads_give_the_serial_results() -> None:
    """The global RNGs are one per process: concurrent seeded calls on two models must not draw
    from each other's seeds (the model guard only serialises calls on the same model)."""
    import threading

    models = [tiny_cnn(seed=0), tiny_cnn(seed=1)]
    x = tiny_input(n=2, size=32)

    def run(model: torch.nn.Module) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cnnlens.explain(model, x, "smoothgrad", backend="captum", target=[0, 1], seed=5,
                                   nt_samples=8).raw

    serial = [run(m) for m in models]
    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for rep in range(10):
                results[(k, rep)] = run(models[k % 2])
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (k, rep), raw in results.items():
        assert torch.equal(raw, serial[k % 2]), f"thread {k}, call {rep} differs from the serial result"
