"""Concept discovery: pytorch-grad-cam's Deep Feature Factorization (Collins et al. 2018), one verb.

    c = cnnlens.concepts(model, x, n_components=4)   # cnnlens/dff.py
    c.maps          # (N, K, H, W) in [0, 1]: where each of an image's K concepts is
    c.scores        # (N, K, classes): the classifier head's scores for each concept embedding
    c.plot("dff.png")

pytorch-grad-cam's ``DeepFeatureFactorization`` records the layer's activations and factorizes them
with scikit-learn's NMF into K concepts (channel vectors) and K heatmaps; given a
``computation_on_concepts`` (the classifier head), it also scores each concept. cnnlens drives it:
the layer and its reshape are chosen as for a CAM, the forward runs without a graph, and every image
is factorized on its own (DFF factorizes whatever batch it is given jointly, so an image's concepts
would otherwise depend on its neighbours). Pictures use pytorch-grad-cam's own
``show_factorization_on_image`` and ``create_labels_legend``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from cnnlens.errors import BackendError, CnnlensError, ModelError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from cnnlens.images import Images

#: How cnnlens drives pytorch-grad-cam's DeepFeatureFactorization (``Concepts.driven``).
DRIVEN = ("one DeepFeatureFactorization call per image (it factorizes its whole input jointly), the forward run "
          "under torch.no_grad (DFF reads activations only)")


@dataclass(frozen=True)
class Concepts:
    """What Deep Feature Factorization found in each image.

    Attributes:
        maps: (N, K, H, W) heatmaps in [0, 1] at the input size, as pytorch-grad-cam returns them.
        concepts: (N, C, K) concept embeddings: one channel vector of the layer per concept.
        scores: (N, K, classes) the head's scores for each concept embedding, or None without a head.
        layer: The factorized layer.
        head: The module that scored the concepts (its dotted name), or None.
        categories: Class names, for labels.
        images: (N, H, W, 3) uint8 display copies when the inputs were :class:`~cnnlens.images.Images`.
        driven: How pytorch-grad-cam was driven.
    """

    maps: Tensor
    concepts: Tensor
    scores: Tensor | None
    layer: str
    head: str | None
    categories: list[str] | None
    images: Tensor | None
    driven: tuple[str, ...] = (DRIVEN,)

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.maps.shape[1])

    def labels(self, i: int, top_k: int = 2) -> list[str] | None:
        """Per concept of image ``i``: its ``top_k`` classes with softmax scores (pytorch-grad-cam's legend)."""
        if self.scores is None:
            return None
        from pytorch_grad_cam.utils.image import create_labels_legend

        probs = torch.softmax(self.scores[i].float(), dim=-1).numpy()
        names = self.categories or [str(k) for k in range(probs.shape[1])]
        return create_labels_legend(probs, dict(enumerate(names)), top_k=top_k)  # type: ignore[no-any-return]

    def picture(self, i: int, image_weight: float = 0.3) -> np.ndarray:
        """Image ``i`` with its concepts colour-coded, by pytorch-grad-cam's ``show_factorization_on_image``."""
        import matplotlib
        from pytorch_grad_cam.utils.image import show_factorization_on_image

        h, w = self.maps.shape[-2:]
        rgb = (self.images[i].numpy().astype(np.float32) / 255 if self.images is not None
               else np.full((h, w, 3), 0.5, dtype=np.float32))
        # pytorch-grad-cam's default colours (gist_rainbow at i / K), given explicitly: its own lookup
        # calls matplotlib.cm.get_cmap, which matplotlib >= 3.9 no longer has.
        cmap = matplotlib.colormaps["gist_rainbow"]
        k = self.n_components
        colors = [np.array(cmap(j)) for j in np.arange(0, 1, 1.0 / k)]
        return show_factorization_on_image(rgb, self.maps[i].numpy(), colors=colors,  # type: ignore[no-any-return]
                                           image_weight=image_weight, concept_labels=self.labels(i))

    def plot(self, out: str | Path | None = None, cell: float = 3.0) -> Figure:
        """One picture per image (at most 8); also saved to ``out`` when given."""
        from matplotlib.figure import Figure

        n = min(len(self), 8)
        fig = Figure(figsize=(n * cell, cell * (1.4 if self.scores is not None else 1.0)), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)
        for i in range(n):
            axes[0, i].imshow(self.picture(i))
            axes[0, i].set_axis_off()
        fig.suptitle(f"Deep Feature Factorization · pytorch-grad-cam · layer {self.layer} · "
                     f"{self.n_components} concepts", fontsize=9)
        if out is not None:
            fig.savefig(out)
        return fig

    def _repr_png_(self) -> bytes:
        from cnnlens.plot import figure_png

        return figure_png(self.plot(cell=2.5), dpi=80)


def _default_head(model: nn.Module, channels: int) -> tuple[nn.Module | None, str | None]:
    """The last ``nn.Linear`` (definition order) taking ``channels`` features: the classifier that
    scores a concept embedding (ResNet's ``fc``, ViT's ``heads.head``)."""
    found: tuple[nn.Module | None, str | None] = (None, None)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features == channels:
            found = (m, name)
    return found


def concepts(
    model: nn.Module,
    inputs: Tensor | Images,
    n_components: int = 5,
    layer: nn.Module | str | None = None,
    *,
    head: nn.Module | Callable[[Tensor], Tensor] | bool | None = None,
    reshape: str | Callable[[Tensor], Tensor] | None = None,
    categories: Sequence[str] | None = None,
) -> Concepts:
    """Deep Feature Factorization of each image at ``layer`` (pytorch-grad-cam's).

    Args:
        model: A classifier (never modified: the model guard restores it).
        inputs: (N, C, H, W) preprocessed images, or :class:`~cnnlens.images.Images`.
        n_components: Concepts per image (NMF components).
        layer: As for a CAM; None picks the same layer a CAM would.
        head: What scores a concept embedding (pytorch-grad-cam's ``computation_on_concepts``): a
            module or callable taking (K, C); None picks the model's last ``nn.Linear`` with C inputs;
            False scores nothing.
        reshape: For token or channels-last layers, as the CAM option (None: picked for known families).
        categories: Class names; defaults to the ones :func:`cnnlens.load_model` attached.
    """
    from pytorch_grad_cam import DeepFeatureFactorization

    from cnnlens import _resolve
    from cnnlens import reshape as reshapes
    from cnnlens._guard import ModelGuard
    from cnnlens.images import Images

    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise OptionError(f"n_components must be a positive integer, got {n_components!r}")
    if not reshapes.valid(reshape):
        raise OptionError(f"invalid value for reshape: {reshape!r}; expected {reshapes.EXPECT}")
    images = None
    if isinstance(inputs, Images):
        inputs, images = inputs.tensor, inputs.images
    x = _resolve.check_input(inputs, model)
    cats = categories if categories is not None else getattr(model, "cnnlens_categories", None)
    with ModelGuard(model):
        probe = _resolve.probe_or_fail(model, x[:1])
        module, name = _resolve.resolve_layer(model, layer, probe)
        fn = _resolve.layer_reshape(model, name, reshape, True, probe)
        _resolve.check_spatial_layer(name, probe, fn)
        shape = [s for n, s in probe.order if n == name][-1]
        after = _resolve.reshaped_shape(fn, shape) if fn is not None else shape
        channels = int(after[1]) if after is not None else 0
        head_name = None
        if head is None:
            head, head_name = _default_head(model, channels)
        elif head is False:
            head = None
        elif isinstance(head, nn.Module):
            head_name = next((n for n, m in model.named_modules() if m is head), type(head).__name__)
        maps, embeddings, scores = [], [], []
        for i in range(x.shape[0]):
            dff = DeepFeatureFactorization(model=model, target_layer=module, reshape_transform=fn,
                                           computation_on_concepts=head or None)
            try:
                with torch.no_grad():
                    out = dff(x[i : i + 1], n_components)
            except CnnlensError:
                raise
            except Exception as exc:  # the boundary: pytorch-grad-cam / scikit-learn failures
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BackendError(f"pytorch-grad-cam DeepFeatureFactorization failed at layer '{name}': "
                                   f"{type(exc).__name__}: {first}") from exc
            finally:
                dff.activations_and_grads.release()
            maps.append(torch.as_tensor(np.float32(out[1][0])))
            embeddings.append(torch.as_tensor(np.float32(out[0])))
            if head:
                scores.append(torch.as_tensor(np.float32(out[2])))
    return Concepts(
        maps=torch.stack(maps),
        concepts=torch.stack(embeddings),
        scores=torch.stack(scores) if scores else None,
        layer=name,
        head=head_name,
        categories=list(cats) if cats is not None else None,
        images=images,
    )
