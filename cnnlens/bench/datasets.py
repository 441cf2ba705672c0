"""The user's dataset as study records: an ImageFolder tree, a CSV / JSON-lines manifest, and Pascal
VOC or COCO box annotations.

Listing reads no image pixels: each image's header (``PIL.Image.open`` without ``load``) gives its size
and proves it is an image, so a 50,000-image folder lists in seconds and an unreadable file is refused
before any work. A folder's walk follows symbolic links but no real folder or file twice, so a link
loop (``self -> .``) lists each image once. Manifest rows and COCO files are validated with pydantic:
a malformed value is one :class:`~cnnlens.errors.SuiteError` naming the row and the field, and a path
that leaves the manifest's folder (``../``, an absolute path elsewhere) is refused unless
``[images] allow_outside_root = true``. Boxes are mapped from the original image's pixels to the model's input pixels with
torchvision's own box transforms (``resize`` of the shorter side, then ``center_crop``: what the
image goes through in :func:`cnnlens.bench.data.read_display`), clipped to the crop; a box that
falls outside the crop is dropped and reported. Masks are read once at listing, to refuse one that marks
no object (all zero, or an object only in the alpha channel), and again when a measure needs them
(:func:`load_mask`), through the same resize and crop.

Labels map to the model's classes through, in order: a ``classes`` file (one name per line, or
``name index`` / ``name,index``), ImageNet WordNet ids (``n01440764``, when every label is one;
the table is :func:`imagenet_wnids`), the model's category names, or integer labels. Labels are needed
only to explain each image for its label (``[study] target = "label"``); otherwise labels that do not
map are kept as the images' names, with one warning.
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
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from cnnlens.bench.records import BenchImage
from cnnlens.errors import SuiteError

if TYPE_CHECKING:
    from cnnlens.bench.suite import ImagesSpec

Box = tuple[int, int, int, int]
#: A JSON number (not a string, not a bool, not NaN or infinity).
_Num = Annotated[float, Strict(), AllowInfNan(False)]
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


def _image_files(folder: Path, skip: Iterable[str] = ()) -> list[Path]:
    """The image files under ``folder``, following symbolic links but no real folder or file twice,
    and no folder whose real path is in ``skip`` (the dataset's root and its other class folders).

    A link back up the tree (``self -> .``) or two links to one file would otherwise list the same
    image many times (and a few such links make the walk exponential).
    """
    from cnnlens.images import EXTENSIONS

    out = []
    seen_dirs: set[str] = set(skip) - {os.path.realpath(folder)}
    seen_files: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen_dirs)
        for n in sorted(names):
            if Path(n).suffix.lower() not in EXTENSIONS:
                continue
            f = os.path.realpath(os.path.join(root, n))
            if f not in seen_files:
                seen_files.add(f)
                out.append(Path(root) / n)
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


class _CocoImage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: StrictInt | StrictStr
    file_name: StrictStr


class _CocoAnnotation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image_id: StrictInt | StrictStr
    bbox: tuple[_Num, _Num, _Num, _Num]


class _Coco(BaseModel):
    model_config = ConfigDict(extra="ignore")
    images: list[_CocoImage]
    annotations: list[_CocoAnnotation] = []


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """(where, what) of a pydantic error: ``boxes.0``, ``Input should be a valid number (got 'a')``."""
    errs = exc.errors()
    e = errs[0]
    where = ".".join(str(x) for x in e["loc"]) or "top level"
    got = repr(e.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    msg = re.sub(r" or instance of \w+", "", e["msg"]).removeprefix("Value error, ")
    return where, f"{msg} (got {got}){more}"


def _coco(path: Path) -> dict[str, list[tuple[float, ...]]]:
    need = "needs images [{id, file_name}] and annotations [{image_id, bbox: [x, y, width, height]}]"
    try:
        data = _Coco.model_validate(_load_json(path.read_text(encoding="utf-8"), f"COCO file '{path}'"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"COCO file '{path}' could not be read: {exc}") from None
    except ValidationError as exc:
        where, what = _first_error(exc)
        raise SuiteError(f"COCO file '{path}': {where}: {what}; a COCO file {need}") from None
    names = {im.id: im.file_name for im in data.images}
    out: dict[str, list[tuple[float, ...]]] = {n: [] for n in names.values()}
    for i, a in enumerate(data.annotations):
        if a.image_id not in names:
            raise SuiteError(f"COCO file '{path}': annotations.{i} names image_id {a.image_id!r}, which is not "
                             f"in its images; a COCO file {need}")
        x, y, w, h = a.bbox
        out[names[a.image_id]].append((x, y, x + w, y + h))
    return out


def _load_json(text: str, what: str) -> Any:
    """``json.loads``, with one clear error for a document nested too deeply for Python's parser."""
    try:
        return json.loads(text)
    except RecursionError:
        raise SuiteError(f"{what} is nested too deeply to read (thousands of levels of [ or {{); "
                         "it is not a dataset file") from None


def read_annotations(path: str, fmt: str = "auto") -> dict[str, list[tuple[float, ...]]]:
    """Boxes per image file name (x0, y0, x1, y1 in the image's pixels) from VOC XML or COCO JSON."""
    p = Path(path)
    if fmt == "auto":
        fmt = "coco" if p.suffix.lower() == ".json" else "voc"
    return _coco(p) if fmt == "coco" else _voc(p)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


_Record = tuple[Path, str | None, list[tuple[float, ...]], str | None]


def _folder(folder: Path) -> list[_Record]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise SuiteError(f"folder '{folder}' has no class sub-folders; an ImageFolder tree is "
                         f"{folder}/<class>/<image>.jpg")
    rows: list[_Record] = []
    owner: dict[str, Path] = {}
    # A link inside a class folder up to the root or to another class folder is not followed.
    skip = {os.path.realpath(folder)} | {os.path.realpath(d) for d in classes}
    for d in classes:
        for p in _image_files(d, skip):
            real = os.path.realpath(p)
            other = owner.setdefault(real, p)
            if other != p:
                raise SuiteError(f"'{other.relative_to(folder)}' and '{p.relative_to(folder)}' are one image file "
                                 f"({real}) in two class folders; an image has one label: keep it in one")
            rows.append((p, d.name, [], None))
    if not rows:
        from cnnlens.images import EXTENSIONS

        raise SuiteError(f"folder '{folder}' holds no images ({', '.join(EXTENSIONS)}) in its class sub-folders")
    return rows


def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("a path cannot hold a NUL byte")
    return v


class _Row(BaseModel):
    """One manifest row: CSV columns are strings (an empty one is absent); JSON lines keep JSON types."""

    model_config = ConfigDict(extra="ignore")
    path: StrictStr = Field(min_length=1)
    label: StrictStr | StrictInt | None = None
    boxes: list[tuple[_Num, _Num, _Num, _Num]] | None = None
    mask: StrictStr | None = None
    x0: Annotated[float, AllowInfNan(False)] | None = None
    y0: Annotated[float, AllowInfNan(False)] | None = None
    x1: Annotated[float, AllowInfNan(False)] | None = None
    y1: Annotated[float, AllowInfNan(False)] | None = None

    _empty = field_validator("label", "mask", "x0", "y0", "x1", "y1", mode="before")(
        classmethod(lambda cls, v: None if v == "" else v))
    _nul = field_validator("path", "mask")(classmethod(lambda cls, v: _no_nul(v)))


#: What each manifest field holds, for the error that names a malformed one.
_FIELD_HELP = {
    "path": "path is the image file (a string), relative to the manifest's folder",
    "label": "label is a class name or a class index",
    "boxes": "boxes is a list of boxes of 4 numbers, [[x0, y0, x1, y1], ...] in the image's pixels",
    "mask": "mask is a mask image file (a string), relative to the manifest's folder",
}


def _read_manifest(path: Path) -> list[Any]:
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"manifest '{path}' could not be read: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        raw = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw.append((n, _load_json(line, f"manifest '{path}' line {n}")))
            except json.JSONDecodeError as exc:
                raise SuiteError(f"manifest '{path}' line {n} is not JSON: {exc}; each line is one object "
                                 '{"path": ..., "label": ..., "boxes": [[x0, y0, x1, y1]], "mask": ...}') from None
        return raw
    reader = csv.DictReader(text.splitlines())
    rows: list[Any] = []
    try:
        for r in reader:
            rows.append((len(rows) + 2, {k: v for k, v in r.items() if k is not None}))
    except csv.Error as exc:
        limit = csv.field_size_limit()
        why = f"a field is longer than {limit // 1024} KB ({limit} characters)" if "field larger" in str(exc) else exc
        raise SuiteError(f"manifest '{path}' row {len(rows) + 2} cannot be read as CSV: {why}; a manifest "
                         "has one image per row, columns path, label, x0, y0, x1, y1, mask") from None
    return rows


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _manifest(path: Path, allow_outside: bool = False) -> list[_Record]:
    base = path.parent.resolve()
    raw = _read_manifest(path)
    if not raw:
        raise SuiteError(f"manifest '{path}' lists no image")
    rows: dict[Path, tuple[_Record, int]] = {}
    outside: list[str] = []
    conflicts: list[str] = []
    for n, r in raw:
        if not isinstance(r, dict) or r.get("path") in (None, ""):
            raise SuiteError(f"manifest '{path}' row {n} has no path; columns: path, label, x0, y0, x1, y1, mask")
        try:
            row = _Row.model_validate(r)
        except ValidationError as exc:
            where, what = _first_error(exc)
            top = where.split(".")[0]
            hint = _FIELD_HELP.get(top, "x0, y0, x1, y1 are a box's corners, numbers in the image's pixels")
            raise SuiteError(f"manifest '{path}' row {n}: {where}: {what}; {hint}") from None
        for f in (row.path, row.mask):
            if f is not None and not _inside(os.path.normpath(base / f), str(base)):
                outside.append(f"row {n}: {f}")
        p = (base / row.path).resolve()
        label = None if row.label is None else str(row.label)
        mask = str((base / row.mask).resolve()) if row.mask else None
        boxes: list[tuple[float, ...]] = [tuple(b) for b in row.boxes or []]
        corners = (row.x0, row.y0, row.x1, row.y1)
        if any(c is not None for c in corners):
            if any(c is None for c in corners):
                raise SuiteError(f"manifest '{path}' row {n}: a box needs all four numbers x0, y0, x1, y1, "
                                 f"got {list(corners)}")
            boxes.append(tuple(float(c) for c in corners))  # type: ignore[arg-type]
        known = rows.get(p)
        if known is None:
            rows[p] = ((p, label, boxes, mask), n)
            continue
        (_p, old_label, old_boxes, old_mask), first = known
        if label is not None and old_label is not None and label != old_label:
            conflicts.append(f"{row.path} (row {first}: label {old_label}, row {n}: label {label})")
        elif mask is not None and old_mask is not None and mask != old_mask:
            conflicts.append(f"{row.path} (row {first}: mask {old_mask}, row {n}: mask {mask})")
        old_boxes.extend(boxes)  # several rows of one image: several boxes
        rows[p] = ((p, old_label if old_label is not None else label, old_boxes, old_mask or mask), first)
    if outside and not allow_outside:
        raise SuiteError(f"manifest '{path}' names {len(outside)} files outside its folder {base}: "
                         f"{_listing(outside)}; move them under it, or set [images] allow_outside_root = true "
                         "to read files anywhere on this machine")
    if conflicts:
        raise SuiteError(f"manifest '{path}' gives {len(conflicts)} images two different labels or masks: "
                         f"{_listing(conflicts)}; an image has one label and one mask (rows of one image add boxes)")
    return [rec for rec, _n in rows.values()]


def _mask_problem(path: str, resize: int, crop: int) -> str | None:
    """Why a mask file cannot be scored against (None when it can)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as raw:
            im = ImageOps.exif_transpose(raw)
            if np.asarray(im.convert("L")).any():
                return None if load_mask(path, resize, crop).any() else \
                    f"marks an object only outside the model's centre crop ({crop}x{crop}), so nothing is left to score"
            if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
                alpha = np.asarray(im.convert("RGBA").getchannel("A"))
                if alpha.min() != alpha.max():
                    return ("marks its object only in the alpha channel (its grey values are all zero); masks mark "
                            "the object with non-zero grey values: save its alpha channel as the mask "
                            "(Image.open(f).getchannel('A').save(f))")
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot be read ({type(exc).__name__})"
    return "is all zero: it marks no object pixel (non-zero pixels are the object)"


def records(spec: ImagesSpec, model: Any, resize: int, crop: int, target: str = "predicted") -> list[BenchImage]:
    """The dataset records of ``[images] folder / manifest / annotations`` (no image pixels read).

    With ``target="label"`` every label must map to one of the model's classes; otherwise labels that
    do not map are dropped from the records (their images keep their names, ``cats/a.jpg``) and one
    warning says so.

    Raises:
        SuiteError: An empty folder, an unreadable image (unless ``skip_unreadable``), a malformed
            manifest or annotation file, a path outside the manifest's folder (unless
            ``allow_outside_root``), one image with two labels, a missing or empty mask, a label
            that does not map to the model's classes (``target="label"``), or a box outside its image.
    """
    rows: list[_Record] = []
    root: Path | None = None
    if spec.folder:
        root = Path(spec.folder)
        rows += _folder(root)
    if spec.manifest:
        rows += _manifest(Path(spec.manifest), spec.allow_outside_root)
    if spec.annotations:
        ann = read_annotations(spec.annotations, spec.annotations_format)
        files: list[_Record] = [(p, None, [], None) for p in _user_files(spec)]
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
    try:
        index = class_index(labels, spec.classes, model) if labels else {}
    except SuiteError as exc:
        if target == "label":
            raise
        warnings.warn(f"{exc}. The labels are not used: [study] target is 'predicted', so each image is explained "
                      "for the model's top-1 class and keeps its name", stacklevel=2)
        index = {}
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
            why = _mask_problem(mask, resize, crop)
            if why is not None:
                raise SuiteError(f"mask '{mask}' of '{p}' {why}")
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
                              label=index.get(label) if label is not None else None, boxes=tuple(mapped),
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
