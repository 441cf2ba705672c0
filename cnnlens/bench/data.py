"""The study's images: demo photos, flips, local scikit-image samples, user files and pasted-object
canvases whose ground-truth box is known by construction (for the localization measures).

Everything is local: scikit-image samples are read from the files shipped inside the
``skimage.data`` package, never through its downloader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlens.bench import datasets
from cnnlens.bench.records import BenchImage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from cnnlens.bench.suite import ImagesSpec

#: Pasteable objects: the demo photo, the object's box in it (relative x0, y0, x1, y1), and the
#: ImageNet classes that count as "recognised" for it.
OBJECTS: dict[str, tuple[str, tuple[float, float, float, float], tuple[str, ...]]] = {
    "cat": ("chelsea", (0.03, 0.03, 0.85, 1.0), ("tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat")),
    "espresso": ("coffee", (0.12, 0.02, 0.82, 0.95), ("espresso", "cup", "coffee mug", "eggnog")),
    "rocket": ("rocket", (0.40, 0.25, 0.60, 0.97), ("missile", "projectile", "space shuttle")),
    "shuttle": ("astronaut", (0.76, 0.0, 0.98, 0.56), ("space shuttle", "missile", "projectile")),
}


def _skimage_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def skimage_names() -> list[str]:
    """Local scikit-image sample images usable as photos (file stems in ``skimage/data``)."""
    d = _skimage_dir()
    return sorted(p.stem for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg") and p.is_file())


def _skimage_path(name: str) -> Path:
    d = _skimage_dir()
    for ext in (".png", ".jpg"):
        p = d / f"{name}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(name)


def _skimage_rgb(name: str) -> np.ndarray:
    from cnnlens.images import read_rgb

    return read_rgb(_skimage_path(name))


def _fit(arr: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """The same resize + centre crop as :func:`cnnlens.images.preprocess`, as uint8 (H, W, 3)."""
    import torch
    import torchvision.transforms.v2.functional as TF

    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    t = TF.resize(t, [resize], antialias=True)
    t = TF.center_crop(t, [crop, crop])
    return t.permute(1, 2, 0).contiguous().numpy()


def _resize_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    import torch
    import torchvision.transforms.v2.functional as TF

    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    return TF.resize(t, [h, w], antialias=True).permute(1, 2, 0).contiguous().numpy()


def background(kind: str, size: int) -> np.ndarray:
    """A neutral (``gray``) or textured (scikit-image ``grass``/``gravel``/``brick``) canvas."""
    if kind == "gray":
        return np.full((size, size, 3), 124, np.uint8)
    tex = _skimage_rgb(kind)
    return _fit(tex, size, size)


def paste(obj: str, scale: float, pos: tuple[float, float], bg: str, size: int) -> BenchImage:
    """Paste a demo photo's object onto a canvas; the box is where it landed."""
    from cnnlens.images import demo_paths, read_rgb

    photo, (x0, y0, x1, y1), classes = OBJECTS[obj]
    arr = read_rgb(demo_paths([photo])[0])
    h, w = arr.shape[:2]
    crop = arr[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]
    ch, cw = crop.shape[:2]
    f = scale * size / max(ch, cw)
    nh, nw = max(1, round(ch * f)), max(1, round(cw * f))
    piece = _resize_to(crop, nh, nw)
    canvas = background(bg, size).copy()
    cx, cy = pos[0] * size, pos[1] * size
    left = int(np.clip(round(cx - nw / 2), 0, size - nw))
    top = int(np.clip(round(cy - nh / 2), 0, size - nh))
    canvas[top:top + nh, left:left + nw] = piece
    ident = f"paste-{obj}-s{scale:g}-x{pos[0]:g}y{pos[1]:g}-{bg}"
    return BenchImage(ident, f"paste:{obj}", canvas, (left, top, left + nw, top + nh), classes)


def normalize(displays: list[np.ndarray], model: nn.Module) -> Tensor:
    import torch

    from cnnlens.models import meta_of

    meta = meta_of(model)
    x = torch.from_numpy(np.stack(displays)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _sizes(model: nn.Module, size: int | None) -> tuple[int, int]:
    """(resize, crop) of the model's preprocessing, scaled to ``size`` when the suite sets one."""
    from cnnlens.models import meta_of

    meta = meta_of(model)
    resize, crop = meta.resize, meta.crop
    if size is not None:
        resize, crop = round(size * resize / crop), size
    return resize, crop


def _device(model: nn.Module) -> Any:
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


def predict(model: nn.Module, displays: list[np.ndarray]) -> list[int]:
    """The model's top-1 class of each display image (chunks of 16, no gradients)."""
    import torch

    dev = _device(model)
    out: list[int] = []
    with torch.no_grad():
        for i in range(0, len(displays), 16):
            out.extend(int(t) for t in model(normalize(displays[i:i + 16], model).to(dev)).argmax(1).tolist())
    return out


def collect_images(spec: ImagesSpec, model: nn.Module, size: int | None = None,
                   target: str = "predicted") -> list[BenchImage]:
    """The study's image records for one model, in study order, without reading file pixels.

    Pasted canvases are generated here (their ground-truth box and, with ``keep = "correct"``,
    whether the model recognises the object, need the pixels); they are kept only when the
    model's top-1 class is one of the object's classes (or, with ``keep = "all"``, always; then
    the target is the model's top-1 on the object pasted alone, centred on gray).

    The user's dataset (``folder``, ``manifest``, ``annotations``) comes from
    :func:`cnnlens.bench.datasets.records`, with labels, boxes and masks. With ``target="label"``
    each image is explained for its label (``[study] target``), and every label must map to one of
    the model's classes; otherwise labels that do not map are dropped with one warning.

    Raises:
        SuiteError: No image survived; a bad dataset (see :func:`cnnlens.bench.datasets.records`);
            ``target="label"`` and an image without a label.
    """
    from cnnlens.images import demo_paths, expand

    resize, crop = _sizes(model, size)
    items: list[BenchImage] = []
    for name in spec.demo:
        items.append(BenchImage(name, f"demo:{name}", path=str(demo_paths([name])[0])))
    if spec.flips:
        for name in spec.demo:
            items.append(BenchImage(f"{name}-flip", f"demo:{name}:flip", path=str(demo_paths([name])[0]), flip=True))
    for name in spec.skimage:
        items.append(BenchImage(f"sk-{name}", f"skimage:{name}", path=str(_skimage_path(name))))
    if spec.files and not (spec.annotations and not spec.folder):  # else the annotated files are records below
        for p in expand(list(spec.files)):
            items.append(BenchImage(f"file-{p.stem}", str(p), path=str(p)))
    items.extend(datasets.records(spec, model, resize, crop, target))
    if target == "label":
        unlabelled = [im.id for im in items if im.label is None]
        if unlabelled:
            from cnnlens.errors import SuiteError

            raise SuiteError(f"[study] target = 'label' but {len(unlabelled)} images have no label (e.g. "
                             f"{', '.join(unlabelled[:5])}); give labels (folder names, manifest label) or "
                             "use target = 'predicted'")
        for im in items:
            im.target = im.label

    cats = getattr(model, "cnnlens_categories", None)
    kept = 0
    p = spec.paste
    alone = {obj: predict(model, [paste(obj, 0.9, (0.5, 0.5), "gray", crop).display])[0] for obj in p.objects} \
        if p.keep == "all" else {}
    # Objects vary fastest, so a small ``max`` still gets every object that the model recognises.
    for bg in p.backgrounds:
        for scale in p.scales:
            for pos in p.positions:
                for obj in p.objects:
                    if kept >= p.max:
                        break
                    im = paste(obj, scale, pos, bg, crop)
                    t = predict(model, [im.display])[0]
                    if p.keep == "correct":
                        name = cats[t] if cats and t < len(cats) else None
                        if name not in im.expected:
                            continue
                    else:
                        t = int(alone[obj])
                    im.target = int(t)
                    items.append(im)
                    kept += 1
    if not items:
        from cnnlens.errors import SuiteError

        raise SuiteError("no image survived: the pasted objects were not recognised by the model and no other "
                         "images were given; add [images] demo or set images.paste.keep = 'all'")
    return items


def read_display(record: BenchImage, resize: int, crop: int) -> np.ndarray:
    """One record's display image (H, W, 3) uint8 at the model's input size."""
    from cnnlens.images import read_rgb

    if record.display is not None:
        return record.display
    if record.path is None:
        raise ValueError(f"image record '{record.id}' has neither pixels nor a path")
    arr = read_rgb(record.path)
    if record.flip:
        arr = arr[:, ::-1]
    return _fit(arr, resize, crop)


def region_of(record: BenchImage, model: nn.Module, size: int | None = None) -> np.ndarray | tuple[tuple[int, int, int, int], ...] | None:
    """What the localization measures score ``record`` against: its mask, else its boxes, else None.

    A mask file is read here, through a small bounded cache, and not kept on the record: a study's
    memory must not grow with its number of images.
    """
    if record.mask is None and record.mask_path is not None:
        resize, crop = _sizes(model, size)
        return datasets.load_mask(record.mask_path, resize, crop, record.flip)
    return record.region()


def load_pixels(records: list[BenchImage], model: nn.Module, size: int | None = None) -> tuple[list[np.ndarray], Tensor]:
    """Read one shard: the records' display images and their normalised batch (on the CPU)."""
    resize, crop = _sizes(model, size)
    displays = [read_display(r, resize, crop) for r in records]
    return displays, normalize(displays, model)


def build_images(spec: ImagesSpec, model: nn.Module, size: int | None = None,
                 target: str = "predicted") -> tuple[list[BenchImage], Tensor, list[int]]:
    """Every image of the study at once: records, their preprocessed batch and each one's target.

    A thin wrapper over :func:`collect_images` and :func:`load_pixels` for small studies and
    tests; the engine streams shards instead. The target is the record's own (pasted canvases)
    or the model's top-1 class on the image.
    """
    items = collect_images(spec, model, size, target)
    displays, x = load_pixels(items, model, size)
    free = [i for i, r in enumerate(items) if r.target is None]
    pred = dict(zip(free, predict(model, [displays[i] for i in free]), strict=True))
    targets = [int(r.target) if r.target is not None else pred[i] for i, r in enumerate(items)]
    for r, d in zip(items, displays, strict=True):
        r.display = d
    return items, x, targets
