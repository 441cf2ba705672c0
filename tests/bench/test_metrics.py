"""Each measure on tiny cases whose answer is known by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.bench import metrics as M
from cnnlens.bench import speed as S
from cnnlens.bench.engine import randomization_stages, sanity_steps


class PatchModel(nn.Module):
    """logits = [s, -s] with s = sum(W * x): the class-0 probability is sigmoid(2 s), and only the
    pixels where W != 0 (a 4x4 patch of a 8x8 image) matter. The oracle map is W."""

    def __init__(self, size: int = 8, patch: tuple[int, int, int, int] = (2, 2, 6, 6), scale: float = 1.0) -> None:
        super().__init__()
        w = torch.zeros(1, 1, size, size)
        x0, y0, x1, y1 = patch
        w[..., y0:y1, x0:x1] = scale / ((x1 - x0) * (y1 - y0))
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([s, -s], dim=1)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


@pytest.fixture
def patch_case():
    model = PatchModel()
    x = torch.ones(1, 8, 8)
    oracle = model.w[0, 0].numpy().copy()
    return model, x, oracle


def test_deletion_curve_hand_computed(patch_case):
    model, x, oracle = patch_case
    # The patch is 16 of 64 pixels = 1/4: with 4 steps, step 1 deletes exactly the patch -> s = 0.
    curve = M.perturbation_curve(model, x, oracle, 0, torch.zeros_like(x), "deletion", steps=4)
    np.testing.assert_allclose(curve, [sigmoid(2), 0.5, 0.5, 0.5, 0.5], rtol=1e-6)
    # Insertion from zeros: step 1 restores the whole patch.
    ins = M.perturbation_curve(model, x, oracle, 0, torch.zeros_like(x), "insertion", steps=4)
    np.testing.assert_allclose(ins, [0.5, sigmoid(2), sigmoid(2), sigmoid(2), sigmoid(2)], rtol=1e-6)
    # Trapezoid: (0.5*(a + 0.5) + 0.5*3) / 4 with a = sigmoid(2)
    assert M.auc(curve) == pytest.approx((0.5 * (sigmoid(2) + 0.5) + 1.5) / 4)


def test_oracle_beats_random_on_deletion_and_insertion(patch_case):
    model, x, oracle = patch_case
    zero = torch.zeros_like(x)
    rand = M.baseline_map("random_pixel", 8, 8, seed=3)
    d_or = M.auc(M.perturbation_curve(model, x, oracle, 0, zero, "deletion", 8))
    d_rn = M.auc(M.perturbation_curve(model, x, rand, 0, zero, "deletion", 8))
    i_or = M.auc(M.perturbation_curve(model, x, oracle, 0, zero, "insertion", 8))
    i_rn = M.auc(M.perturbation_curve(model, x, rand, 0, zero, "insertion", 8))
    assert d_or < d_rn
    assert i_or > i_rn
    # and the inverted oracle is the worst possible ranking for deletion
    d_anti = M.auc(M.perturbation_curve(model, x, -oracle, 0, zero, "deletion", 8))
    assert d_anti > d_rn


def test_average_drop_and_increase_hand_computed(patch_case):
    model, x, _ = patch_case
    xb = x[None].repeat(2, 1, 1, 1)
    maps = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])
    drop, inc = M.average_drop_increase(model, xb, maps, [0, 0])
    y = sigmoid(2)
    # map of ones: E = x, no drop; map of zeros: E = 0 -> O = 0.5, drop = 100 (Y - 0.5) / Y
    np.testing.assert_allclose(drop, [0.0, 100 * (y - 0.5) / y], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(inc, [0.0, 0.0])
    # class 1 gains when its evidence is removed: increase in confidence
    drop1, inc1 = M.average_drop_increase(model, xb, maps, [1, 1])
    np.testing.assert_array_equal(inc1, [0.0, 1.0])
    assert drop1[1] == 0.0


def test_road_oracle_beats_random():
    model = PatchModel()
    x = torch.zeros(1, 8, 8)
    x[..., 2:6, 2:6] = 1.0  # the evidence is an isolated bright patch: imputation cannot restore it
    oracle = model.w[0, 0].numpy().copy()
    rand = M.baseline_map("random_pixel", 8, 8, seed=1)
    ro = M.road_scores(model, x, oracle, 0, [25])
    rr = M.road_scores(model, x, rand, 0, [25])
    assert ro["morf@25"] < rr["morf@25"]
    assert ro["lerf@25"] >= rr["lerf@25"] - 1e-6
    # removing exactly the patch (25% of the pixels) leaves almost no evidence: p ~ sigmoid(0)
    assert ro["morf@25"] == pytest.approx(0.5, abs=0.05)


def test_road_is_seeded():
    model = PatchModel()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    sal = M.baseline_map("random_pixel", 8, 8, seed=2)
    assert M.road_scores(model, x, sal, 0, [50], seed=4) == M.road_scores(model, x, sal, 0, [50], seed=4)


def test_correlations():
    a = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert M.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert M.spearman(a, a**3) == pytest.approx(1.0)
    assert M.pearson(a, a**3) < 0.99
    assert M.spearman(a, -a) == pytest.approx(-1.0)
    assert M.pearson(a, np.zeros_like(a)) is None  # undefined, not NaN in the table
    assert M.spearman(np.ones_like(a), a) is None


def test_ssim_and_iou():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16)).astype(np.float32)
    assert M.ssim(a, a) == pytest.approx(1.0)
    assert M.ssim(a, 1 - a) < 0.5
    assert M.topk_iou(a, a, 10) == 1.0
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert M.topk_iou(ramp, -ramp, 10) == 0.0  # top 10 vs bottom 10 pixels: disjoint
    # top 20%: pixels 80..99 vs pixels 70..89 (shifted ramp) -> |A&B| = 10, |A|B| = 30
    assert M.topk_iou(ramp, np.roll(ramp.ravel(), 10).reshape(10, 10), 20) == pytest.approx(10 / 30)
    res = M.agreement(a, a, (5,))
    assert res["maps_maxabs"] == 0.0 and res["iou_top5"] == 1.0 and res["pearson"] == pytest.approx(1.0)


def test_raw_difference():
    a = np.zeros((3, 4, 4), np.float32)
    b = a.copy()
    b[0, 1, 1] = 0.5
    a[1, 0, 0] = 2.0
    b[1, 0, 0] = 2.0
    assert M.raw_difference(a, b) == (0.5, 0.25)
    assert M.raw_difference(a, b[:2]) == (None, None)
    assert M.raw_difference(a[None, 1], a[1]) == (0.0, 0.0)  # (1, H, W) vs (H, W) compare


def test_rank_ties_are_broken_the_same_way_for_everyone():
    flat = np.zeros((6, 6))
    o1, o2 = M.rank_order(flat), M.rank_order(flat.copy())
    np.testing.assert_array_equal(o1, o2)
    assert sorted(o1.tolist()) == list(range(36))
    assert o1.tolist() != list(range(36))  # not raster order
    m = M.top_fraction_mask(np.arange(36).reshape(6, 6), 0.25)
    assert m.sum() == 9 and m.ravel()[-9:].all()


def test_pointing_game():
    s = np.zeros((16, 16))
    s[5, 3] = 1.0
    assert M.pointing_hit(s, (2, 4, 6, 8)) == 1.0  # x in [2, 6), y in [4, 8)
    assert M.pointing_hit(s, (4, 4, 8, 8)) == 0.0
    assert M.pointing_hit(np.zeros((4, 4)), (0, 0, 4, 4)) == 0.0  # an empty map never hits
    assert M.energy_pointing(np.ones((16, 16)), (0, 0, 4, 4)) == pytest.approx(16 / 256)
    assert M.energy_pointing(np.zeros((4, 4)), (0, 0, 2, 2)) is None


def test_baseline_maps():
    for kind in ("random_pixel", "random_smooth", "center_gaussian"):
        m = M.baseline_map(kind, 64, 64, seed=5)
        assert m.shape == (64, 64) and m.min() == 0.0 and m.max() == 1.0
        np.testing.assert_array_equal(m, M.baseline_map(kind, 64, 64, seed=5))
    px, sm = M.baseline_map("random_pixel", 64, 64, 5), M.baseline_map("random_smooth", 64, 64, 5)
    tv = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert tv(sm) < tv(px) / 5
    g = M.baseline_map("center_gaussian", 65, 65, 0)
    assert np.unravel_index(g.argmax(), g.shape) == (32, 32)
    assert not np.array_equal(M.baseline_map("random_pixel", 8, 8, 1), M.baseline_map("random_pixel", 8, 8, 2))


def test_randomization_stages_are_top_down():
    from cnnlens.testing import tiny_cnn

    names = [n for n, _ in randomization_stages(tiny_cnn())]
    assert names == ["fc", "features.4", "features.3", "features.1", "features.0"]
    assert sanity_steps(21, 5) == [1, 6, 11, 16, 21]
    assert sanity_steps(3, 5) == [1, 2, 3]


def test_limits():
    x = torch.zeros(1, 3, 48, 48)
    from cnnlens.testing import tiny_cnn

    m = tiny_cnn()
    assert S.limit_of("occlusion", "pixel", {"sliding_window": 16, "strides": 16}, x, None, m) == ("forward", 10)
    assert S.limit_of("feature_ablation", "pixel", {"feature_grid": 16}, x, None, m) == ("forward", 10)
    assert S.limit_of("integrated_gradients", "pixel", {"n_steps": 7}, x, None, m) == ("grad_input", 7)
    assert S.limit_of("gradcam", "cam", {}, x, m.features[3], m) == ("grad_layer", 1)
    assert S.limit_of("scorecam", "cam", {}, x, m.features[3], m) == ("forward", 17)  # 16 channels + 1
    assert S.limit_of("a_new_method", "pixel", {}, x, None, m) == ("grad_input", 1)  # kind fallback
    st = S.summarize([0.2, 0.4, 0.6, 0.8, 1.0], per=2)
    assert st["latency_median"] == pytest.approx(0.3) and st["latency_iqr"] == pytest.approx(0.2)
    assert st["throughput"] == pytest.approx(1 / 0.3)


def test_peak_memory_sees_an_allocation():
    with S.PeakMemory(torch.device("cpu")) as mem:
        a = np.ones(200 * 2**20 // 8)  # 200 MB, touched
        a.sum()
        del a
    assert mem.peak > 150 * 2**20
    with S.PeakMemory(torch.device("cpu")) as small:
        np.ones(1000).sum()
    assert small.peak < 50 * 2**20


# --------------------------------------------------------------------------------------------
# The toolkits' own metrics: each value is the toolkit's function called directly on the same
# inputs (issue 17, section 2).
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_case():
    import cnnlens
    from cnnlens.testing import tiny_cnn, tiny_input

    model, x = tiny_cnn(), tiny_input(n=2, size=32, seed=4)
    with torch.no_grad():
        model.fc.weight.mul_(20)  # logits on a classifier's scale: the confidence metrics move
    ex = cnnlens.Explainer(model, "saliency", "captum")
    maps = ex.explain(x, target=[1, 3]).maps

    def explain(xb, tb):
        return ex.explain(xb, target=list(tb)).maps

    return model, x, maps, [1, 3], explain


def test_captum_infidelity_is_captums_own(tiny_case):
    from captum.metrics import infidelity

    model, x, maps, targets, _ = tiny_case
    rng = torch.get_rng_state()
    got = M.captum_infidelity(model, x[0], maps[0].numpy(), targets[0], n_perturb_samples=6, stdev=0.01, seed=5)
    assert torch.equal(torch.get_rng_state(), rng), "the caller's RNG state must be untouched"

    def perturb(inputs):  # Captum's documented form: (perturbation, perturbed input)
        noise = torch.randn(inputs.shape) * 0.01
        return noise, inputs - noise

    torch.manual_seed(5)
    want = infidelity(model, perturb, x[:1], maps[:1, None].expand_as(x[:1]), target=[targets[0]],
                      n_perturb_samples=6, normalize=True)
    assert got == pytest.approx(float(want[0]), rel=1e-6)
    assert got > 0
    # the seed decides the perturbations; the same seed gives the same value
    assert M.captum_infidelity(model, x[0], maps[0].numpy(), targets[0], n_perturb_samples=6, stdev=0.01,
                               seed=5) == got
    assert M.captum_infidelity(model, x[0], maps[0].numpy(), targets[0], n_perturb_samples=6, stdev=0.01,
                               seed=6) != got


def test_captum_sensitivity_max_is_captums_own(tiny_case):
    from captum.metrics import sensitivity_max

    _model, x, _, targets, explain = tiny_case
    got = M.captum_sensitivity_max(explain, x[1], targets[1], n_perturb_samples=4, perturb_radius=0.05, seed=2)

    def explanation_func(inputs, target):
        return (explain(inputs[0], target),)

    torch.manual_seed(2)
    want = sensitivity_max(explanation_func, x[1:2], perturb_radius=0.05, n_perturb_samples=4, target=[targets[1]])
    assert got == pytest.approx(float(want[0]), rel=1e-6)
    assert got > 0
    # a map that ignores its input is perfectly insensitive
    fixed = torch.rand(1, 32, 32)
    assert M.captum_sensitivity_max(lambda xb, _t: fixed.expand(xb.shape[0], -1, -1), x[1], 0, seed=2) == 0


def test_pgc_confidence_change_is_pgcs_own(tiny_case):
    from pytorch_grad_cam.metrics.cam_mult_image import (
        CamMultImageConfidenceChange,
        DropInConfidence,
        IncreaseInConfidence,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, maps, targets, _ = tiny_case
    got = M.pgc_confidence_change(model, x, maps, targets)
    tg = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    cams = maps.numpy()
    np.testing.assert_array_equal(got["confidence_change"], CamMultImageConfidenceChange()(x, cams, tg, model))
    np.testing.assert_array_equal(got["drop_in_confidence"], DropInConfidence()(x, cams, tg, model))
    np.testing.assert_array_equal(got["increase_in_confidence"], IncreaseInConfidence()(x, cams, tg, model))
    assert np.abs(got["confidence_change"]).max() > 0


def test_pgc_confidence_change_hand_computed(patch_case):
    model, x, _ = patch_case
    xb = x[None].repeat(2, 1, 1, 1)
    maps = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])
    got = M.pgc_confidence_change(model, xb, maps, [0, 0])
    y = sigmoid(2)  # softmax of [s, -s] at s = 1 is sigmoid(2 s)
    # map of ones: no change; map of zeros: the class-0 probability falls to 0.5, not divided by Y
    np.testing.assert_allclose(got["confidence_change"], [0.0, 0.5 - y], atol=1e-6)
    np.testing.assert_allclose(got["drop_in_confidence"], [0.0, y - 0.5], atol=1e-6)
    np.testing.assert_array_equal(got["increase_in_confidence"], [0.0, 0.0])


def test_pgc_arcc_is_pgcs_own(tiny_case):
    from pytorch_grad_cam.metrics.arcc import ARCC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, maps, targets, explain = tiny_case
    rng = torch.get_rng_state()
    got = M.pgc_arcc(model, x[0], maps[0].numpy(), targets[0], explain, percentiles=(30, 70), seed=9)
    assert torch.equal(torch.get_rng_state(), rng)

    def base_method(input_tensor, targets):
        return explain(input_tensor, [t.category for t in targets]).numpy()

    torch.manual_seed(9)
    want = ARCC(base_method, road_percentiles=[30, 70])(x[:1], maps[:1].numpy(), [ClassifierOutputSoftmaxTarget(
        targets[0])], model)
    assert got == pytest.approx(float(want[0]), rel=1e-6)
    assert 0 <= got <= 1


_TOOLKIT_SUITE = """
[study]
name = "toolkit-metrics"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
demo = ["chelsea", "coffee"]
batch = 2

[methods]
include = ["saliency"]
backends = ["captum"]
baselines = true

[agreement]
enabled = false

[faithfulness]
steps = 2
road_percentiles = [50]
road_images = 1
infidelity = true
sensitivity = true
confidence_change = true
arcc = true
perturb_samples = 2
arcc_percentiles = [50]

[sanity]
enabled = false

[speed]
enabled = false
"""


def test_the_study_records_the_toolkit_metrics(tmp_path):
    import cnnlens.bench as bench
    from cnnlens.bench.suite import load_suite

    (tmp_path / "s.toml").write_text(_TOOLKIT_SUITE)
    suite = load_suite(tmp_path / "s.toml")
    f = suite.faithfulness
    assert (f.infidelity, f.sensitivity, f.confidence_change, f.arcc, f.perturb_samples) == (True, True, True, True, 2)
    res = bench.read_results(bench.run(tmp_path / "s.toml", out=tmp_path / "out", progress=False))
    sal = res[(res.method == "saliency") & (res.backend == "captum")]
    per_metric = sal.groupby("metric").image.nunique()
    for name in ("captum.infidelity", "captum.sensitivity_max", "pgc.confidence_change", "pgc.drop_in_confidence",
                 "pgc.increase_in_confidence"):
        assert per_metric.get(name) == 2, name
    assert per_metric.get("pgc.arcc") == 1  # on the ROAD images only
    assert np.isfinite(sal[sal.metric.str.startswith(("captum.", "pgc."))].value.astype(float)).all()
    base = set(res[res.backend == "baseline"].metric)
    assert {"captum.infidelity", "pgc.confidence_change"} <= base  # a baseline map has no explainer to re-run
    assert not {"captum.sensitivity_max", "pgc.arcc"} & base


@pytest.mark.parametrize(("line", "bad", "message"), [
    ("perturb_samples = 2", "perturb_samples = 0", "faithfulness.perturb_samples must be between 1 and 1000, got 0"),
    ("infidelity = true", 'infidelity = "yes"', "faithfulness.infidelity must be bool, got 'yes'"),
    ("arcc_percentiles = [50]", "arcc_percentiles = [0]", "faithfulness.arcc_percentiles are percentages in (0, 100)"),
])
def test_bad_toolkit_metric_keys_are_refused(tmp_path, line, bad, message):
    from cnnlens.bench.suite import load_suite
    from cnnlens.errors import SuiteError

    (tmp_path / "s.toml").write_text(_TOOLKIT_SUITE.replace(line, bad))
    with pytest.raises(SuiteError, match=re.escape(message)):
        load_suite(tmp_path / "s.toml")


def test_rankings_do_not_turn_float_noise_into_other_orders():
    # A 4x4 CAM upsampled to 64x64 holds plateaus of equal values; float noise of another thread
    # count (1e-7 relative) must not reorder them, nor move the map's maximum.
    rng = np.random.default_rng(0)
    cam = rng.integers(0, 8, (4, 4)).astype(np.float64) / 8
    cam[0, 0] = cam[3, 3] = cam.max()  # the maximum twice: inside and outside a box
    base = np.kron(cam, np.ones((16, 16)))
    noisy = base * (1 + rng.normal(0, 1e-7, base.shape))
    assert not np.array_equal(np.argsort(-base.ravel(), kind="stable"), np.argsort(-noisy.ravel(), kind="stable"))
    assert np.array_equal(M.rank_order(base), M.rank_order(noisy))
    for k in (1, 5, 10, 30):
        assert M.topk_iou(base, noisy, k) == 1.0
    box = (0, 0, 16, 16)
    hits = {M.pointing_hit(base, box), M.pointing_hit(noisy, box)}
    assert len(hits) == 1
    assert np.array_equal(M.stable(noisy), M.stable(base))
