"""Agreement of zennit's implementations with Captum's, measured (issue 17, section 3).

1. The embedded model (EfficientNet-Lite0, ImageNet weights) on the 4 demo images, each method with
   cnnlens's default options on both backends, explaining the predicted class: Pearson correlation
   of the maps (``Explanation.maps``) and of the signed channel sums of ``raw``, per image.
2. LRP on a model both toolkits accept (torchvision vgg11, random weights, 64 px): Captum's ``lrp``
   (epsilon rule everywhere) against zennit's ``lrp`` with each composite, and against zennit's rules
   arranged as Captum's (epsilon on every Conv/Linear layer, zennit's LayerMapComposite), which
   checks that the two toolkits compute the same LRP where their rules are the same.
3. SmoothGrad's noise floor: the same backend with seed 0 against seed 1 (10 noisy samples), the
   agreement any two SmoothGrad draws reach, for reading the zennit-Captum figure of part 1.

Usage: python benchmarks/zennit_agreement.py
"""

from __future__ import annotations

import warnings

import torch

import cnnlens


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


def per_image(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [round(pearson(a[i], b[i]), 4) for i in range(a.shape[0])]


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = cnnlens.load_model()
    images = cnnlens.demo_images(model)
    print("1. embedded model, 4 demo images, predicted class; Pearson zennit vs captum")
    for method in ("saliency", "integrated_gradients", "smoothgrad", "occlusion", "guided_backprop",
                   "deconvolution"):
        z = cnnlens.explain(model, images, method, backend="zennit")
        c = cnnlens.explain(model, images, method, backend="captum")
        maps, raw = per_image(z.maps, c.maps), per_image(z.raw.sum(1), c.raw.sum(1))
        print(f"  {method:22s} maps {sum(maps) / 4:.4f} {maps}   raw channel sums {sum(raw) / 4:.4f} {raw}")

    import torchvision
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, Linear

    torch.manual_seed(0)
    vgg = torchvision.models.vgg11(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = vgg(x).argmax(1)
    c = cnnlens.explain(vgg, x, "lrp", backend="captum", target=targets)
    print("2. vgg11 random weights, 64 px, 4 random inputs; Pearson zennit lrp vs captum lrp (maps; raw channel sums)")
    for composite in cnnlens.registry.ZENNIT_COMPOSITES:
        z = cnnlens.explain(vgg, x, "lrp", backend="zennit", target=targets, composite=composite)
        maps, raw = per_image(z.maps, c.maps), per_image(z.raw.sum(1), c.raw.sum(1))
        print(f"  {composite:26s} maps {sum(maps) / 4:.4f} {maps}   raw {sum(raw) / 4:.4f} {raw}")
    epsilon_everywhere = LayerMapComposite([(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()),
                                            (Linear, Epsilon(epsilon=1e-9))])
    onehot = torch.eye(10)[targets]
    with Gradient(vgg, composite=epsilon_everywhere) as attributor:
        _, rel = attributor(x.clone(), lambda out: onehot * out)
    print(f"  zennit epsilon everywhere  raw {per_image(rel.sum(1), c.raw.sum(1))}; max |zennit - captum| / max "
          f"|captum| = {float((rel - c.raw).abs().max() / c.raw.abs().max()):.2e}")

    smoothgrad_noise_floor(model, images)


def smoothgrad_noise_floor(model: torch.nn.Module, images: cnnlens.Images) -> None:
    print("3. smoothgrad, same backend, seed 0 vs seed 1; Pearson of maps")
    for backend in ("captum", "zennit"):
        a = cnnlens.explain(model, images, "smoothgrad", backend=backend, seed=0)
        b = cnnlens.explain(model, images, "smoothgrad", backend=backend, seed=1)
        maps = per_image(a.maps, b.maps)
        print(f"  {backend:8s} maps {sum(maps) / 4:.4f} {maps}")


if __name__ == "__main__":
    main()
