"""The user's dataset as study records: an ImageFolder tree, a CSV / JSON-lines manifest, and Pascal
VOC or COCO box annotations.

Listing reads no pixels: each image's header (``PIL.Image.open`` without ``load``) gives its size and
proves it is an image, so a 50,000-image folder lists in seconds and an unreadable file is refused
before any work. Boxes are mapped from the original image's pixels to the model's input pixels with
torchvision's own box transforms (``resize`` of the shorter side, then ``center_crop``: what the
image goes through in :func:`cnnlens.bench.data.read_display`), clipped to the crop; a box that
falls outside the crop is dropped and reported. Masks are read when a measure needs them
(:func:`load_mask`), through the same resize and crop.

Labels map to the model's classes through, in order: a ``classes`` file (one name per line, or
``name index`` / ``name,index``), ImageNet WordNet ids (``n01440764``, when every label is one;
the table is :data:`IMAGENET_WNIDS`), the model's category names, or integer labels.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlens.bench.data import BenchImage
from cnnlens.errors import SuiteError

if TYPE_CHECKING:
    from cnnlens.bench.suite import ImagesSpec

Box = tuple[int, int, int, int]
_WNID = re.compile(r"n\d{8}")
#: How many offending files or labels an error lists before "... and N more".
_SHOW = 8


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (index 0 is ``n01440764``, tench).

    Read offline from the ``imagenet_class_index.json`` that FlashTorch (a cnnlens dependency)
    ships (Keras's ImageNet class index); its order is the sorted-wnid order torchvision's
    ImageNet weights use.
    """
    from importlib.resources import files

    table = json.loads(files("flashtorch.utils.resources").joinpath("imagenet_class_index.json").read_text())
    return [table[str(i)][0] for i in range(len(table))]


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _image_files(folder: Path) -> list[Path]:
    from cnnlens.images import EXTENSIONS

    out = []
    for root, _dirs, names in os.walk(folder, followlinks=True):
        out.extend(Path(root) / n for n in names if Path(n).suffix.lower() in EXTENSIONS)
    return sorted(out)


def _header(path: Path) -> tuple[int, int] | str:
    """(width, height) after EXIF orientation, read from the header only; or why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "a folder"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}"
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# --------------------------------------------------------------------------------------------
# Labels -> class indices
# --------------------------------------------------------------------------------------------


def _read_classes(path: Path) -> dict[str, int]:
    """One class name per line (its index is the line's position), or ``name index`` / ``name,index``."""
    out: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(.*?)[\s,]+(\d+)", line)
        if m:
            out[m.group(1).strip()] = int(m.group(2))
        else:
            out[line] = len(out)
    return out


def class_index(labels: Iterable[str], classes: str | None, model: Any) -> dict[str, int]:
    """Map each label name to a class index of ``model``; one SuiteError naming what does not map."""
    names = sorted(set(labels))
    cats = list(getattr(model, "cnnlens_categories", None) or [])
    n_classes = _num_classes(model, cats)
    if classes is not None:
        table = _read_classes(Path(classes))
        how = f"the classes file '{classes}'"
    elif names and all(_WNID.fullmatch(n) for n in names):
        table = {w: i for i, w in enumerate(imagenet_wnids())}
        how = "the ImageNet WordNet ids"
    elif cats and all(n in cats or n.replace("_", " ") in cats for n in names):
        table = {c: i for i, c in enumerate(cats)} | {c.replace(" ", "_"): i for i, c in enumerate(cats)}
        how = "the model's class names"
    elif all(n.isdigit() for n in names):
        table = {n: int(n) for n in names}
        how = "integer labels"
    else:
        unknown = [n for n in names if n not in cats and n.replace("_", " ") not in cats]
        raise SuiteError(f"labels {_listing(unknown)} do not map to the model's classes; give [images] classes = "
                         "'classes.txt' (one class name per line in the model's order, or 'name index' per line), "
                         "or name the folders by ImageNet WordNet id (n01440764) or class index")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SuiteError(f"labels {_listing(unknown)} are not in {how}; add them there")
    out = {n: table[n] for n in names}
    if n_classes is not None:
        bad = [f"{n} -> {i}" for n, i in out.items() if not 0 <= i < n_classes]
        if bad:
            raise SuiteError(f"labels {_listing(bad)} (from {how}) are outside the model's {n_classes} classes")
    return out


def _num_classes(model: Any, cats: list[str]) -> int | None:
    if cats:
        return len(cats)
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else None


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def map_boxes(boxes: Sequence[Sequence[float]], size: tuple[int, int], resize: int, crop: int) -> tuple[list[Box], int]:
    """Boxes (x0, y0, x1, y1, original pixels, exclusive ends) in model-input pixels, and how many were
    dropped because they fall outside the centre crop. ``size`` is the original (width, height)."""
    if not boxes:
        return [], 0
    import torch
    import torchvision.transforms.v2.functional as TF
    from torchvision import tv_tensors

    w, h = size
    b = tv_tensors.BoundingBoxes(torch.tensor([list(map(float, bx)) for bx in boxes]), format="XYXY",
                                 canvas_size=(h, w))
    b = TF.center_crop(TF.resize(b, [resize]), [crop, crop])
    out = []
    for x0, y0, x1, y1 in b.round().clamp(0, crop).int().tolist():
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1, y1))
    return out, len(boxes) - len(out)


@functools.lru_cache(maxsize=64)
def load_mask(path: str, resize: int, crop: int, flip: bool = False) -> np.ndarray:
    """A mask file (non-zero = object) as a bool (crop, crop) array, resized (nearest) and cropped like
    its image. The last few are cached (a shard's cells score the same masks), read-only."""
    import torch
    import torchvision.transforms.v2.functional as TF
    from PIL import Image, ImageOps
    from torchvision import tv_tensors

    with Image.open(path) as im:
        arr = np.asarray(ImageOps.exif_transpose(im).convert("L")) > 0
    if flip:
        arr = arr[:, ::-1]
    m = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(arr)).to(torch.uint8)[None])
    m = TF.center_crop(TF.resize(m, [resize]), [crop, crop])
    out = m[0].numpy().astype(bool)
    out.flags.writeable = False
    return out


def _voc(path: Path) -> dict[str, list[tuple[float, ...]]]:
    import xml.etree.ElementTree as ET

    files = sorted(path.rglob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise SuiteError(f"annotations folder '{path}' holds no Pascal VOC .xml files")
    out: dict[str, list[tuple[float, ...]]] = {}
    for f in files:
        try:
            root = ET.parse(f).getroot()
            name = root.findtext("filename") or f.with_suffix(".jpg").name
            boxes = []
            for obj in root.iter("object"):
                bb = obj.find("bndbox")
                if bb is None:
                    continue
                x0, y0, x1, y1 = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
                # VOC corners are 1-based and inclusive: pixel xmin..xmax is [xmin - 1, xmax) here.
                boxes.append((x0 - 1, y0 - 1, x1, y1))
        except (ET.ParseError, ValueError) as exc:
            raise SuiteError(f"Pascal VOC file '{f}' could not be read: {exc}") from None
        out.setdefault(name, []).extend(boxes)
    return out


def _coco(path: Path) -> dict[str, list[tuple[float, ...]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {im["id"]: im["file_name"] for im in data["images"]}
        out: dict[str, list[tuple[float, ...]]] = {n: [] for n in names.values()}
        for a in data.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            out[names[a["image_id"]]].append((x, y, x + w, y + h))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SuiteError(f"COCO file '{path}' could not be read (needs images [id, file_name] and annotations "
                         f"[image_id, bbox]): {type(exc).__name__}: {exc}") from None
    return out


def read_annotations(path: str, fmt: str = "auto") -> dict[str, list[tuple[float, ...]]]:
    """Boxes per image file name (x0, y0, x1, y1 in the image's pixels) from VOC XML or COCO JSON."""
    p = Path(path)
    if fmt == "auto":
        fmt = "coco" if p.suffix.lower() == ".json" else "voc"
    return _coco(p) if fmt == "coco" else _voc(p)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _folder(folder: Path) -> list[tuple[Path, str | None, list[tuple[float, ...]], str | None]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise SuiteError(f"folder '{folder}' has no class sub-folders; an ImageFolder tree is "
                         f"{folder}/<class>/<image>.jpg")
    rows = [(p, d.name, [], None) for d in classes for p in _image_files(d)]
    if not rows:
        from cnnlens.images import EXTENSIONS

        raise SuiteError(f"folder '{folder}' holds no images ({', '.join(EXTENSIONS)}) in its class sub-folders")
    return rows


def _manifest(path: Path) -> list[tuple[Path, str | None, list[tuple[float, ...]], str | None]]:
    base = path.parent
    raw: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            raw = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raw = list(csv.DictReader(text.splitlines()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"manifest '{path}' could not be read: {exc}") from None
    if not raw:
        raise SuiteError(f"manifest '{path}' lists no image")
    rows: dict[Path, tuple[Path, str | None, list[tuple[float, ...]], str | None]] = {}
    for n, r in enumerate(raw, start=2 if path.suffix.lower() == ".csv" else 1):
        if not isinstance(r, dict) or not r.get("path"):
            raise SuiteError(f"manifest '{path}' row {n} has no path; columns: path, label, x0, y0, x1, y1, mask")
        p = (base / str(r["path"])).resolve()
        label = r.get("label")
        label = None if label in (None, "") else str(label)
        mask = r.get("mask") or None
        boxes = [tuple(b) for b in r.get("boxes", [])] if isinstance(r.get("boxes"), list) else []
        corners = [r.get(k) for k in ("x0", "y0", "x1", "y1")]
        if any(c not in (None, "") for c in corners):
            try:
                boxes.append(tuple(float(c) for c in corners))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise SuiteError(f"manifest '{path}' row {n}: a box needs numbers x0, y0, x1, y1, "
                                 f"got {corners}") from None
        old = rows.get(p)
        if old is not None:  # several rows of one image: several boxes
            old[2].extend(boxes)
        else:
            rows[p] = (p, label, boxes, str((base / mask).resolve()) if mask else None)
    return list(rows.values())


def records(spec: ImagesSpec, model: Any, resize: int, crop: int) -> list[BenchImage]:
    """The dataset records of ``[images] folder / manifest / annotations`` (no pixels read).

    Raises:
        SuiteError: An empty folder, an unreadable image (unless ``skip_unreadable``), a missing mask,
            a label that does not map to the model's classes, or a box outside its image.
    """
    rows: list[tuple[Path, str | None, list[tuple[float, ...]], str | None]] = []
    root: Path | None = None
    if spec.folder:
        root = Path(spec.folder)
        rows += _folder(root)
    if spec.manifest:
        rows += _manifest(Path(spec.manifest))
    if spec.annotations:
        ann = read_annotations(spec.annotations, spec.annotations_format)
        files = [(p, None, [], None) for p in _user_files(spec)]
        rows = rows + files if not spec.folder else rows
        hit = 0
        for _p, _l, boxes, _m in rows:
            found = ann.get(_p.name)
            if found is not None:
                boxes.extend(found)
                hit += 1
        if not hit:
            raise SuiteError(f"annotations '{spec.annotations}' name no image of the study "
                             f"(they name e.g. {_listing(sorted(ann)[:3])})")
    if not rows:
        return []

    bad: list[str] = []
    out: list[BenchImage] = []
    outside: list[str] = []
    dropped = 0
    prefix = str(root) + os.sep if root is not None else ""
    labels = {label for _p, label, _b, _m in rows if label is not None}
    index = class_index(labels, spec.classes, model) if labels else {}
    for p, label, boxes, mask in rows:
        size = _header(p)
        if isinstance(size, str):
            bad.append(f"{p} ({size})")
            continue
        if mask is not None:
            msize = _header(Path(mask)) if Path(mask).is_file() else "missing"
            if isinstance(msize, str) or msize != size:
                raise SuiteError(f"mask '{mask}' of '{p}' "
                                 + (f"cannot be read ({msize})" if isinstance(msize, str) else
                                    f"is {msize[0]}x{msize[1]}, its image {size[0]}x{size[1]}"))
        w, h = size
        for b in boxes:
            x0, y0, x1, y1 = b
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                outside.append(f"{p.name} {[round(v, 1) for v in b]} ({w}x{h})")
        mapped, lost = map_boxes(boxes, size, resize, crop)
        dropped += lost
        sp = str(p)
        rel = sp[len(prefix):].replace(os.sep, "/") if prefix and sp.startswith(prefix) else p.name
        out.append(BenchImage(rel, str(p), path=str(p), box=mapped[0] if mapped else None,
                              label=index[label] if label is not None else None, boxes=tuple(mapped),
                              mask_path=mask))
    if outside:
        raise SuiteError(f"{len(outside)} boxes lie outside their image (x0, y0, x1, y1 must satisfy "
                         f"0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height): {_listing(outside)}")
    if bad:
        if not spec.skip_unreadable:
            raise SuiteError(f"{len(bad)} of {len(rows)} images cannot be read: {_listing(bad)}; fix or remove them, "
                             "or set [images] skip_unreadable = true to go on without them")
        warnings.warn(f"skipping {len(bad)} unreadable images: {_listing(bad)}", stacklevel=2)
    if not out:
        raise SuiteError(f"none of the {len(rows)} images of the dataset can be read")
    if dropped:
        warnings.warn(f"{dropped} boxes fall outside the model's centre crop ({crop}x{crop}) and were dropped",
                      stacklevel=2)
    _unique_ids(out)
    return out


def _user_files(spec: ImagesSpec) -> list[Path]:
    if not spec.files:
        return []
    from cnnlens.images import expand

    return expand(list(spec.files))


def _unique_ids(items: list[BenchImage]) -> None:
    seen: dict[str, int] = {}
    for im in items:
        n = seen.get(im.id, 0)
        seen[im.id] = n + 1
        if n:
            im.id = f"{im.id}#{n}"
