"""Quantus as a metrics backend: every metric a suite may name equals Quantus' class called directly,
the way its documentation shows, and a study stores the values under the library's name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.errors import SuiteError

quantus = pytest.importorskip("quantus")

from cnnlens.bench import quantus_metrics as Q  # noqa: E402
from cnnlens.explainer import Explainer  # noqa: E402


def _model() -> nn.Module:
    """A tiny CNN whose first module is a biased convolution (Quantus' InputInvariance shifts its bias)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()


@pytest.fixture(scope="module")
def case():
    model = _model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = [1, 3]
    maps = Explainer(model, "saliency", "captum").explain(x, target=torch.tensor(targets)).maps.numpy()
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 8:20, 10:24] = True
    return model, x, targets, maps, masks


def _direct(name, model, x, targets, maps, masks):
    """Quantus called as its README shows: a_batch/s_batch with a channel axis, an explain_func that
    returns NumPy attributions, the global RNGs seeded."""
    kwargs = dict(Q.METRICS[name].settings)
    if name == "RandomLogit":
        kwargs["num_classes"] = 5
    metric = getattr(quantus, name)(**kwargs, disable_warnings=True, display_progressbar=False)

    def explain(model, inputs, targets, **_kw):
        e = Explainer(model, "saliency", "captum").explain(torch.as_tensor(inputs), target=torch.as_tensor(targets))
        return e.maps.numpy()[:, None]

    np.random.seed(7)
    torch.manual_seed(7)
    out = metric(model=model, x_batch=x.numpy(), y_batch=np.array(targets), a_batch=maps[:, None].astype(np.float32),
                 s_batch=masks[:, None].astype(np.float32), device="cpu", explain_func=explain,
                 explain_func_kwargs={}, channel_first=True, softmax=True)
    if Q.METRICS[name].reduce == "auc":
        return np.array([np.trapezoid(np.asarray(c), dx=1) for c in out])
    return np.asarray(out, dtype=np.float64).reshape(-1)


def test_at_least_twenty_quantus_metrics_over_every_family():
    assert len(Q.METRICS) >= 20
    assert {m.family for m in Q.METRICS.values()} == set(Q.FAMILIES)


@pytest.mark.parametrize("name", list(Q.METRICS))
def test_each_metric_equals_quantus_called_directly(case, name):
    model, x, targets, maps, masks = case
    got = Q.compute(name, model, x, targets, maps, masks, Q.make_explain_func("saliency", "captum"),
                    {"num_classes": 5} if name == "RandomLogit" else None, seed=7)
    want = _direct(name, model, x, targets, maps, masks)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert np.isfinite(got).any(), name


def test_the_explain_func_is_the_toolkits_explain(case):
    model, x, targets, maps, _ = case
    got = Q.make_explain_func("saliency", "captum")(model, x.numpy(), np.array(targets))
    assert got.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(got[:, 0], maps)


def test_metric_names_say_which_library_computed_them():
    assert Q.library("quantus.PixelFlipping") == "quantus"
    assert Q.library("captum.infidelity") == "captum"
    assert Q.library("pgc.arcc") == "pytorch-grad-cam"
    assert Q.library("deletion_blur.auc") == "cnnlens"
    assert Q.direction("quantus.Sparseness") == 1 and Q.direction("quantus.Complexity") == -1


SUITE = """
[study]
name = "q"
threads = 1
[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32
[images]
demo = ["chelsea", "coffee"]
batch = 2
[images.paste]
objects = ["cat"]
scales = [0.5]
positions = [[0.3, 0.3]]
keep = "all"
max = 1
[methods]
include = ["saliency"]
backends = ["captum"]
baselines = false
[agreement]
enabled = false
[faithfulness]
enabled = false
[sanity]
enabled = false
[speed]
enabled = false
[quantus]
metrics = ["PixelFlipping", "Sparseness", "PointingGame", "MaxSensitivity", "InputInvariance"]
images = 3
[quantus.settings]
PixelFlipping = { features_in_step = 128 }
"""


def test_a_study_stores_quantus_values_per_image(tmp_path):
    import cnnlens.bench as bench
    from cnnlens.bench.store import read_table

    suite = tmp_path / "q.toml"
    suite.write_text(SUITE)
    db = bench.run(str(suite), out=tmp_path / "s", progress=False)
    res = bench.read_results(db)
    q = res[res.metric.str.startswith("quantus.")]
    assert set(q.metric) == {"quantus.PixelFlipping", "quantus.Sparseness", "quantus.PointingGame",
                             "quantus.MaxSensitivity"}
    assert q[q.metric == "quantus.Sparseness"].image.nunique() == 3
    assert q[q.metric == "quantus.PointingGame"].image.nunique() == 1  # only the pasted canvas has a box
    # InputInvariance cannot shift tiny_cnn's first module (a Sequential): said in the metadata, not stored
    meta = read_table(db, "meta")
    err = meta[meta.key.str.startswith("quantus.error:")]
    assert list(err.key) == ["quantus.error:tiny|saliency|captum|InputInvariance"]
    md, _page = bench.report(db, tmp_path / "r")
    verdict = md.read_text().split("## Summary")[0]
    assert "1 Quantus metric run failed and stored no value: tiny saliency captum InputInvariance" in verdict
    assert "quantus.Sparseness" in verdict  # the per-metric table of the verdict
    speed = md.read_text().split("## Speed")[1].split("\n## ")[0]
    assert "Metrics' time" in speed and "| saliency | captum | 3 |" in speed


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize(("line", "words"), [
    ('metrics = ["PixelFliping"]', "unknown Quantus metric 'PixelFliping' (did you mean PixelFlipping?)"),
    ('metrics = ["Sparseness"]\n[quantus.settings]\nSparseness = { nr_runs = 3 }',
     "quantus.Sparseness takes no 'nr_runs'"),
    ('metrics = ["Sparseness"]\n[quantus.settings]\nComplexity = { abs = true }',
     "settings for 'Complexity', which metrics does not name"),
])
def test_a_bad_quantus_section_is_refused_at_load(tmp_path, line, words):
    from cnnlens.bench.suite import load_suite

    text = SUITE.split("[quantus]")[0] + "[quantus]\n" + line + "\n"
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(p)
    assert words in str(info.value), str(info.value)
