"""zennit: the toolkit and its (method, backend) pairs: its attributors and LRP composites (it brings no
method of its own).

Nothing here imports the toolkit: its adapter (``cnnlens.adapters.zennit``) does, when a pair is run.
"""

from __future__ import annotations

from cnnlens.registry.options import BASELINES, N_STEPS, NT_SAMPLES, STDEVS, STRIDE, WINDOW, Choice, Option, _baselines
from cnnlens.registry.schema import Backend, Implementation, add_backend, register

add_backend(Backend("zennit", "zennit", "zennit", "https://github.com/chr-peters/zennit", extra="zennit"))

_ZENNIT = "cnnlens.adapters.zennit:ZennitAdapter"

#: zennit's own names of the LRP composites cnnlens offers (keys of ``zennit.composites.COMPOSITES``).
ZENNIT_COMPOSITES: tuple[str, ...] = (
    "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus", "epsilon_alpha2_beta1_flat",
)
_ZENNIT_BOX = ("(epsilon_gamma_box only) {} pixel value of the model's input for zennit's ZBox rule: a number or a "
               "tensor broadcastable to the input (None: {} of the model's preprocessing, (0 - mean) / std or "
               "(1 - mean) / std per channel, as zennit's ZBox documentation advises)")
_ZENNIT_CANON = ("canonizer picked for the model: ResNetCanonizer for torchvision ResNets, VGGCanonizer for "
                 "torchvision VGGs, SequentialMergeBatchNorm for other models with BatchNorm, none without; refuses "
                 "a model with a BatchNorm that no Conv/Linear leaf directly precedes (EfficientNet-Lite0: zennit "
                 "would pass relevance through it unchanged) or whose Conv/Linear/pooling modules run twice per "
                 "forward; residual additions that are not modules are not conserved (zennit's ResNetCanonizer "
                 "makes torchvision's a module)")

register(
    Implementation("saliency", "zennit", _ZENNIT, "Gradient",
                   notes="zennit's Gradient attributor with a one-hot output relevance: the signed input gradient"),
    Implementation("smoothgrad", "zennit", _ZENNIT, "SmoothGrad",
                   {"nt_samples": NT_SAMPLES, "stdevs": STDEVS},
                   notes="nt_samples is zennit's n_iter, stdevs its noise_level (both a fraction of each image's "
                         "value range); zennit's last sample is the noise-free input (nt_samples - 1 noisy copies, "
                         "Captum's NoiseTunnel draws nt_samples); one zennit call per image, each drawn from the "
                         "seed afresh"),
    Implementation("integrated_gradients", "zennit", _ZENNIT, "IntegratedGradients",
                   {"n_steps": N_STEPS, "baselines": BASELINES},
                   notes="n_steps is zennit's n_iter: a right Riemann sum at alpha = 1/n .. 1 (Captum's default is "
                         "Gauss-Legendre); baselines becomes zennit's baseline_fn"),
    Implementation("occlusion", "zennit", _ZENNIT, "Occlusion",
                   {"sliding_window": WINDOW, "strides": STRIDE, "baselines": BASELINES},
                   notes="zennit's Occlusion with the window itself occluded (occlude_independent, invert=True, "
                         "filled with baselines; zennit's default keeps only the window) and the score drop "
                         "(original score - occluded score) as output function; each pixel gets the sum over the "
                         "windows covering it, and zennit's windows wrap around the image edges (torch.roll), "
                         "where Captum's stop at the edge and average; one zennit call per image"),
    Implementation("guided_backprop", "zennit", _ZENNIT, "Gradient(composite=GuidedBackprop)",
                   notes="zennit's GuidedBackprop composite: guides nn.ReLU modules only"),
    Implementation("deconvolution", "zennit", _ZENNIT, "Gradient(composite=DeconvNet)",
                   notes="zennit's DeconvNet composite: overrides nn.ReLU modules only"),
    Implementation("lrp", "zennit", _ZENNIT, "Gradient(composite=<composite>, canonizers)",
                   {"composite": Choice("epsilon_plus_flat", "zennit's LRP composite (rules per layer type); "
                                        "epsilon_plus_flat is the one zennit recommends for CNNs", expect="",
                                        choices=ZENNIT_COMPOSITES),
                    "low": Option(None, _ZENNIT_BOX.format("lowest", "the lowest"), _baselines,
                                  "a finite number, a tensor of finite values, or None"),
                    "high": Option(None, _ZENNIT_BOX.format("highest", "the highest"), _baselines,
                                   "a finite number, a tensor of finite values, or None")},
                   notes="zennit's composites assign one rule per layer type: epsilon_plus_flat (default) is flat "
                         "on the first layer, z-plus on convolutions and epsilon on dense layers, where Captum's "
                         "lrp is the epsilon rule on every layer with BatchNorm left unmerged; relevance starts from the "
                         "target score, as in Captum; " + _ZENNIT_CANON,
                   mutates_params=True),
)
