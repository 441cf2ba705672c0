"""The study's measures as plain functions of maps, images and a model.

* Agreement: Pearson and Spearman (``scipy.stats``), SSIM (``skimage.metrics``), top-k% IoU and
  the maximum absolute difference of ``raw``.
* Faithfulness: deletion and insertion curves and AUC (Petsiuk et al. 2018, steps batched in one
  forward), Average Drop and Increase in Confidence (Chattopadhyay et al. 2018, *divided* by the
  base score as in the paper, unlike pytorch-grad-cam's ``DropInConfidence``), and ROAD (Rong et al.
  2022) with pytorch-grad-cam's ``NoisyLinearImputer`` and our own rank-based removal.
* The toolkits' own metrics, each computed by the toolkit's function: Captum's ``infidelity`` and
  ``sensitivity_max`` (Yeh et al. 2019), pytorch-grad-cam's ``CamMultImageConfidenceChange``,
  ``DropInConfidence``, ``IncreaseInConfidence`` and ``ARCC``.
* Localization: pointing game and energy-based pointing game (Wang et al. 2020, Score-CAM).
* Baseline maps: pixel noise, smooth noise (low-resolution noise upsampled) and a centred Gaussian.

Pixel rankings rank a map made stable first: its values rounded to :data:`RANK_DIGITS` digits of
its largest magnitude (:func:`stable`), so float noise (another thread count, another CPU, another
engine change a map in its 7th digit) does not reorder pixels that the map holds equal; ties are
then broken by one fixed seeded permutation shared by every method, so a map with large flat regions
(a ReLU'd CAM) is not ranked in raster order, and two methods with the same map get the same ranking.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------

_TIEBREAK_SEED = 12345


def tiebreak(n: int) -> np.ndarray:
    return np.random.default_rng(_TIEBREAK_SEED).permutation(n)


#: Digits of a map's largest magnitude that its ranking sees: values closer than 1e-4 of the map's
#: range are ranked as ties, far above float32 noise (1e-7) and far below any difference a map means.
RANK_DIGITS = 4


def stable(saliency: np.ndarray) -> np.ndarray:
    """The map (float64) rounded to :data:`RANK_DIGITS` decimals of its largest magnitude.

    Two computations of one map that differ by float noise give the same values here, except for a
    value that falls within the noise of a rounding boundary (about 1e-7 / 1e-4 of them).
    """
    a = np.asarray(saliency, dtype=np.float64)
    scale = float(np.abs(a).max()) if a.size else 0.0
    if not math.isfinite(scale) or scale == 0.0:
        return a
    return np.round(a / scale, RANK_DIGITS)


def rank_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first, on the :func:`stable` map; ties broken by a fixed
    seeded permutation."""
    flat = stable(saliency).ravel()
    return np.lexsort((tiebreak(flat.size), -flat))


def top_fraction_mask(saliency: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean (H, W) mask of the ``fraction`` most salient pixels (exactly round(fraction * HW))."""
    order = rank_order(saliency)
    k = round(fraction * order.size)
    mask = np.zeros(order.size, bool)
    mask[order[:k]] = True
    return mask.reshape(np.shape(saliency))


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two maps; None when either is constant (r is undefined there)."""
    from scipy import stats

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    return _finite(stats.pearsonr(a, b).statistic)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rho of two maps; None when either is constant."""
    from scipy import stats

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _finite(stats.spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """SSIM of two [0, 1] maps (scikit-image, data_range=1, 7x7 window)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(a.shape) < 7:
        return None
    return _finite(structural_similarity(a, b, data_range=1.0))


def topk_iou(a: np.ndarray, b: np.ndarray, k_percent: float) -> float:
    """IoU of the top-k% pixel sets of two maps."""
    ma = top_fraction_mask(a, k_percent / 100.0)
    mb = top_fraction_mask(b, k_percent / 100.0)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 1.0


def raw_difference(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """Max |a - b| and the same relative to max(|a|, |b|); None when the shapes differ (beyond
    singleton dimensions: Captum's (1, 7, 7) CAM compares with pytorch-grad-cam's (7, 7))."""
    if a.shape != b.shape:
        a, b = np.squeeze(a), np.squeeze(b)
        if a.shape != b.shape:
            return None, None
    d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    return d, (d / scale if scale > 0 else 0.0)


def agreement(a: np.ndarray, b: np.ndarray, topk: Sequence[float] = (5.0, 10.0)) -> dict[str, float | None]:
    out: dict[str, float | None] = {"pearson": pearson(a, b), "spearman": spearman(a, b), "ssim": ssim(a, b),
                                    "maps_maxabs": float(np.abs(np.asarray(a, np.float64) - b).max())}
    for k in topk:
        out[f"iou_top{k:g}"] = topk_iou(a, b, k)
    return out


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def baseline_map(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    """A (H, W) baseline saliency map in [0, 1].

    ``random_pixel``: i.i.d. uniform noise per pixel. ``random_smooth``: uniform noise on a grid
    1/32 of the image (7x7 at 224), upsampled bilinearly, like a CAM's resolution.
    ``center_gaussian``: a Gaussian centred in the image, sigma = a quarter of the side.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "random_pixel":
        m = torch.rand((h, w), generator=gen)
    elif kind == "random_smooth":
        gh, gw = max(2, h // 32), max(2, w // 32)
        low = torch.rand((1, 1, gh, gw), generator=gen)
        m = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    elif kind == "center_gaussian":
        yy = torch.arange(h, dtype=torch.float64)[:, None] - (h - 1) / 2
        xx = torch.arange(w, dtype=torch.float64)[None, :] - (w - 1) / 2
        s = max(h, w) / 4
        m = torch.exp(-(yy**2 + xx**2) / (2 * s * s)).float()
    else:
        raise ValueError(f"unknown baseline '{kind}'")
    m = m - m.min()
    return (m / m.max()).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------


def gaussian_blur(x: Tensor, kernel: int = 11, sigma: float = 5.0) -> Tensor:
    """The blurred substrate: a Gaussian blur of each channel (Petsiuk et al.'s klen=11, nsig=5)."""
    import torchvision.transforms.v2.functional as TF

    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


@torch.no_grad()
def _probs(model: nn.Module, batch: Tensor, target: int, forward_batch: int) -> np.ndarray:
    out = []
    for i in range(0, batch.shape[0], forward_batch):
        logits = model(batch[i:i + forward_batch])
        out.append(logits.float().softmax(dim=1)[:, target].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def perturbation_curve(
    model: nn.Module,
    x: Tensor,
    saliency: np.ndarray,
    target: int,
    substrate: Tensor,
    mode: str,
    steps: int = 16,
    forward_batch: int = 32,
) -> np.ndarray:
    """The target probability as pixels are deleted (or inserted) in saliency order.

    Args:
        x: One image (C, H, W) in the model's input space.
        substrate: What replaces a deleted pixel (deletion), or the start image (insertion).
        mode: ``"deletion"`` (x -> substrate, most salient first) or ``"insertion"``
            (substrate -> x, most salient first).
        steps: The curve has steps + 1 points at fractions 0, 1/steps, ..., 1; they are built as one
            batch and evaluated in ``forward_batch`` chunks.
    """
    h, w = x.shape[-2:]
    order = rank_order(saliency)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    rank_t = torch.from_numpy(rank.reshape(h, w)).to(x.device)
    counts = torch.tensor([round(k * h * w / steps) for k in range(steps + 1)], device=x.device)
    masks = (rank_t[None] < counts[:, None, None])[:, None]  # (S+1, 1, H, W): True = changed pixel
    if mode == "deletion":
        batch = torch.where(masks, substrate[None], x[None])
    elif mode == "insertion":
        batch = torch.where(masks, x[None], substrate[None])
    else:
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    return _probs(model, batch, target, forward_batch)


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equally spaced fractions of [0, 1] (trapezoid rule)."""
    from scipy.integrate import trapezoid

    return float(trapezoid(np.asarray(curve, np.float64), dx=1.0 / (len(curve) - 1)))


def average_drop_increase(model: nn.Module, x: Tensor, maps: Tensor, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Average Drop (%) and Increase in Confidence (0/1), Chattopadhyay et al. 2018.

    The explanation map E = x * map (element-wise in the model's input space, as
    pytorch-grad-cam's ``multiply_tensor_with_cam``); Y and O are softmax probabilities of the
    target on x and E. drop = 100 * max(0, Y - O) / Y; increase = [O > Y]. Averaging over images
    gives the paper's numbers.
    """
    t = torch.as_tensor(list(targets), device=x.device)
    with torch.no_grad():
        y = model(x).float().softmax(1).gather(1, t[:, None])[:, 0]
        o = model(x * maps[:, None].to(x.dtype)).float().softmax(1).gather(1, t[:, None])[:, 0]
    drop = 100.0 * torch.clamp(y - o, min=0) / y.clamp_min(1e-12)
    return drop.cpu().numpy().astype(np.float64), (o > y).float().cpu().numpy().astype(np.float64)


def road_scores(
    model: nn.Module,
    x: Tensor,
    saliency: np.ndarray,
    target: int,
    percentiles: Sequence[int],
    seed: int = 0,
) -> dict[str, float]:
    """ROAD (Rong et al. 2022): remove the most (MoRF) or least (LeRF) relevant p% of pixels and
    fill them by noisy linear imputation (pytorch-grad-cam's ``NoisyLinearImputer``).

    The removal set is exactly the top (or bottom) p% by rank, not pytorch-grad-cam's
    ``map < percentile`` threshold, which removes far more than p% when a map has ties.

    Returns:
        ``morf@p`` and ``lerf@p`` target probabilities after imputation for each p.
    """
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    imputer = NoisyLinearImputer(noise=0.01)
    img = x.detach().float().cpu()
    order = rank_order(saliency)
    n = order.size
    batch, names = [], []
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2 deprecation inside SciPy's spsolve path
        torch.manual_seed(seed)  # the imputer's noise comes from torch's global RNG
        for p in percentiles:
            k = round(p / 100.0 * n)
            for name, removed in (("morf", order[:k]), ("lerf", order[n - k:])):
                keep = np.ones(n, np.float32)
                keep[removed] = 0.0
                mask = torch.from_numpy(keep.reshape(saliency.shape))
                batch.append(imputer(img, mask))
                names.append(f"{name}@{p}")
    probs = _probs(model, torch.stack(batch).to(x.device, x.dtype), target, 32)
    return dict(zip(names, probs.tolist(), strict=True))


# --------------------------------------------------------------------------------------------
# Localization
# --------------------------------------------------------------------------------------------


Region = tuple[int, int, int, int] | Sequence[tuple[int, int, int, int]] | np.ndarray


def region_mask(shape: tuple[int, ...], region: Region) -> np.ndarray:
    """A bool (H, W) mask of a region: a box (x0, y0, x1, y1, exclusive ends), several boxes (their
    union: any instance of the class counts), or a bool mask itself."""
    if isinstance(region, np.ndarray):
        return region.astype(bool)
    boxes = [region] if region and isinstance(region[0], (int, np.integer)) else list(region)  # type: ignore[list-item]
    m = np.zeros(shape[-2:], bool)
    for x0, y0, x1, y1 in boxes:  # type: ignore[misc]
        m[y0:y1, x0:x1] = True
    return m


def pointing_hit(saliency: np.ndarray, box: Region) -> float:
    """1 if the map's maximum lies in the box, any of several boxes or the mask (the first pixel of
    :func:`rank_order`: near-ties are ties, broken by the seeded permutation), else 0; an all-zero
    map misses."""
    s = np.asarray(saliency)
    if not np.any(s > 0):
        return 0.0
    y, x = np.unravel_index(int(rank_order(s)[0]), s.shape)
    return float(region_mask(s.shape, box)[y, x])


def energy_pointing(saliency: np.ndarray, box: Region) -> float | None:
    """Energy-based pointing game: the share of the map's mass inside the box, boxes or mask (None
    for a zero map)."""
    s = np.asarray(saliency, np.float64)
    total = s.sum()
    if total <= 0:
        return None
    return float(s[region_mask(s.shape, box)].sum() / total)

    x0, y0, x1, y1 = box
    return float(s[y0:y1, x0:x1].sum() / total)


# --------------------------------------------------------------------------------------------
# The toolkits' own explanation metrics
# --------------------------------------------------------------------------------------------
#
# Each is the defining toolkit's function, called as its documentation shows; cnnlens only
# supplies the inputs (the map, the model, the target, a seeded RNG) and, where the metric
# re-explains perturbed inputs, the explanation function (the same Explainer that made the map).
# Every function takes one image, so a measure never depends on the image's batch mates (the
# perturbations are drawn per image, from that image's own seed).

#: A re-explanation for the metrics that explain perturbed inputs: (inputs (N, C, H, W), targets
#: (N,) ints) -> maps (N, H, W) in [0, 1], as ``Explanation.maps``.
ExplainFn = Callable[[Tensor, Sequence[int]], Tensor]


def _one(x: Tensor) -> Tensor:
    return x[None] if x.dim() == 3 else x


def captum_infidelity(
    model: nn.Module,
    x: Tensor,
    saliency: np.ndarray,
    target: int,
    *,
    n_perturb_samples: int = 10,
    stdev: float = 0.003,
    seed: int = 0,
) -> float:
    """Explanation infidelity (Yeh et al. 2019) by ``captum.metrics.infidelity``.

    The map (H, W) is the attribution of every channel of its pixel (broadcast to the input's
    shape); the perturbation is Captum's documented one, Gaussian noise I of standard deviation
    ``stdev`` (in the model's input space) with perturbed input x - I; the score is the target
    logit (the score the methods explain); ``normalize=True`` makes the value invariant to the
    map's scale, which the [0, 1] normalisation of every map has made arbitrary. Lower is better.

    Args:
        x: One image (C, H, W) in the model's input space.
        saliency: Its (H, W) map.
        seed: Seeds the noise (torch's RNG, forked: the caller's state is untouched).
    """
    from captum.metrics import infidelity

    xi = _one(x).detach()
    attr = torch.as_tensor(np.asarray(saliency, np.float32), device=xi.device)[None, None].expand_as(xi)

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn(inputs.shape, dtype=inputs.dtype).to(inputs.device) * stdev
        return noise, inputs - noise

    devices = [xi.device] if xi.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        value = infidelity(model, perturb, xi, attr.to(xi.dtype), target=[int(target)],
                           n_perturb_samples=n_perturb_samples, normalize=True)
    return float(value[0])


def captum_sensitivity_max(
    explain: ExplainFn,
    x: Tensor,
    target: int,
    *,
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
    seed: int = 0,
) -> float:
    """Max-sensitivity (Yeh et al. 2019) by ``captum.metrics.sensitivity_max``: the largest relative
    change (Frobenius norm) of the map when the input moves by uniform noise in an L-infinity ball
    of ``perturb_radius`` (Captum's ``default_perturb_func``). Lower is better.

    Args:
        explain: Re-explains a batch of perturbed copies (the Explainer that made the map, seeded
            as it was, so only the input changes).
        x: One image (C, H, W) in the model's input space.
        seed: Seeds the perturbations (torch's RNG, forked).
    """
    from captum.metrics import sensitivity_max

    xi = _one(x).detach()

    def explanation_func(inputs: Tensor | tuple[Tensor, ...], target: list[int]) -> Tensor | tuple[Tensor]:
        # Captum passes a tuple of inputs and expects a tuple back, as its attribute() gives.
        batch = inputs[0] if isinstance(inputs, tuple) else inputs
        maps = explain(batch, [int(t) for t in target]).to(batch.device, torch.float32)
        return (maps,) if isinstance(inputs, tuple) else maps

    devices = [xi.device] if xi.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        value = sensitivity_max(explanation_func, xi, perturb_radius=perturb_radius,
                                n_perturb_samples=n_perturb_samples,
                                target=[int(target)])  # a list: Captum repeats it for each copy
    return float(value[0])


def _softmax_targets(targets: Sequence[int]) -> list[Any]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]


def pgc_confidence_change(model: nn.Module, x: Tensor, maps: Tensor, targets: Sequence[int]) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's image-times-map confidence metrics, per image.

    ``CamMultImageConfidenceChange`` (the target's softmax probability on x * map minus that on
    x, with ``ClassifierOutputSoftmaxTarget`` as pytorch-grad-cam's README shows), and its
    ``DropInConfidence`` (max(0, -change), *not* divided by the base score, unlike ``avg_drop``)
    and ``IncreaseInConfidence`` ([change > 0]).

    Args:
        x: (N, C, H, W) images in the model's input space.
        maps: (N, H, W) maps in [0, 1].

    Returns:
        ``confidence_change``, ``drop_in_confidence`` and ``increase_in_confidence``, each (N,).
    """
    from pytorch_grad_cam.metrics.cam_mult_image import (
        CamMultImageConfidenceChange,
        DropInConfidence,
        IncreaseInConfidence,
    )

    cams = maps.detach().float().cpu().numpy()
    tg = _softmax_targets(targets)
    out = {}
    for name, metric in (("confidence_change", CamMultImageConfidenceChange()),
                         ("drop_in_confidence", DropInConfidence()),
                         ("increase_in_confidence", IncreaseInConfidence())):
        out[name] = np.asarray(metric(x, cams, tg, model), np.float64).reshape(-1)
    return out


def pgc_arcc(
    model: nn.Module,
    x: Tensor,
    saliency: np.ndarray,
    target: int,
    explain: ExplainFn,
    *,
    percentiles: Sequence[int] = (20, 40, 60, 80),
    seed: int = 0,
) -> float:
    """ARCC by pytorch-grad-cam's ``metrics.arcc.ARCC``: the harmonic mean of its coherency (the
    map's Pearson agreement with the map of x * map, re-explained by ``explain``), 1 - complexity
    (the map's mean) and its ``ROADCombined`` (its own threshold removal and NoisyLinearImputer,
    clipped to [0, 1]). Higher is better.

    Args:
        x: One image (C, H, W) in the model's input space.
        saliency: Its (H, W) map in [0, 1].
        explain: The base method ARCC re-runs on the masked image (the Explainer that made the map).
        seed: Seeds the imputer's noise (torch's RNG, forked).
    """
    from pytorch_grad_cam.metrics.arcc import ARCC

    xi = _one(x).detach()

    def base_method(input_tensor: Tensor, targets: list[Any]) -> np.ndarray:
        return explain(input_tensor, [t.category for t in targets]).detach().float().cpu().numpy()

    cams = stable(saliency).astype(np.float32)[None]  # ARCC ranks pixels: on the stable map
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2 deprecation inside SciPy's spsolve path
        torch.manual_seed(seed)  # the imputer's noise comes from torch's global RNG
        value = ARCC(base_method, road_percentiles=list(percentiles))(xi, cams, _softmax_targets([target]), model)
    return float(np.asarray(value).reshape(-1)[0])
