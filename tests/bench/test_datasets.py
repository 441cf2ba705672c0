"""The user's dataset: ImageFolder trees, CSV / JSON-lines manifests, Pascal VOC and COCO boxes, generated
here; their records, labels and boxes (mapped to model-input pixels), the localization measures they
drive in a study, and one clear SuiteError for each kind of bad dataset."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnlens.bench as bench
from cnnlens.bench import datasets
from cnnlens.bench.data import collect_images, load_pixels, region_of
from cnnlens.bench.metrics import baseline_map
from cnnlens.bench.suite import load_suite
from cnnlens.errors import SuiteError
from cnnlens.testing import tiny_cnn

SIZE = 32  # [[models]] image_size: resize the shorter side to round(32 * 256 / 224) = 37, crop 32
RESIZE = 37


def _img(path: Path, w: int = 64, h: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _suite(folder: Path, images: str, extra: str = "") -> Path:
    p = folder / "suite.toml"
    p.write_text(f"""
[study]
name = "ds"
threads = 1
{extra}
[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = {SIZE}
[images]
{images}
shard = 2
[methods]
include = ["saliency"]
backends = ["captum"]
[faithfulness]
enabled = false
[sanity]
enabled = false
[speed]
enabled = false
[agreement]
enabled = false
""")
    return p


def _records(suite: Path, target: str = "predicted"):
    s = load_suite(suite)
    return collect_images(s.images, tiny_cnn(), SIZE, target)


def _expected_box(box, w, h):
    """Independent arithmetic of resize-shorter-side + centre crop (what torchvision does to the image)."""
    nw, nh = (int(RESIZE * w / h), RESIZE) if w >= h else (RESIZE, int(RESIZE * h / w))
    left, top = round((nw - SIZE) / 2), round((nh - SIZE) / 2)
    x0, y0, x1, y1 = box
    clip = lambda v: int(min(max(round(v), 0), SIZE))  # noqa: E731
    return (clip(x0 * nw / w - left), clip(y0 * nh / h - top), clip(x1 * nw / w - left), clip(y1 * nh / h - top))


# --------------------------------------------------------------------------------------------
# Records and labels
# --------------------------------------------------------------------------------------------


def test_imagenet_wordnet_ids_are_the_class_order():
    wnids = datasets.imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids[999] == "n15075141"
    assert wnids == sorted(wnids)


def test_an_imagefolder_with_wordnet_id_folders_lists_without_pixels(tmp_path):
    for cls in ("n01440764", "n01443537"):
        for i in range(2):
            _img(tmp_path / "data" / cls / f"{i}.png", seed=i)
    recs = _records(_suite(tmp_path, 'folder = "data"'))
    assert [r.id for r in recs] == ["n01440764/0.png", "n01440764/1.png", "n01443537/0.png", "n01443537/1.png"]
    assert [r.label for r in recs] == [0, 0, 1, 1]  # tench, goldfish
    assert all(r.display is None and r.path and Path(r.path).is_file() for r in recs)
    displays, x = load_pixels(recs, tiny_cnn(), SIZE)
    assert x.shape == (4, 3, SIZE, SIZE) and displays[0].shape == (SIZE, SIZE, 3)


def test_an_imagefolder_with_a_classes_file_and_target_label(tmp_path):
    for cls in ("cat", "dog"):
        _img(tmp_path / "data" / cls / "a.jpg")
    (tmp_path / "classes.txt").write_text("dog 3\ncat,1\n")
    recs = _records(_suite(tmp_path, 'folder = "data"\nclasses = "classes.txt"'), target="label")
    assert [(r.id, r.label, r.target) for r in recs] == [("cat/a.jpg", 1, 1), ("dog/a.jpg", 3, 3)]


def test_a_csv_manifest_with_several_boxes_and_a_mask(tmp_path):
    _img(tmp_path / "im" / "a.png", 64, 32)
    _img(tmp_path / "im" / "b.png", 40, 80)
    mask = np.zeros((80, 40), np.uint8)
    mask[30:50, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "im" / "b_mask.png")
    (tmp_path / "m.csv").write_text("path,label,x0,y0,x1,y1,mask\n"
                                    "im/a.png,2,20,4,40,20,\n"
                                    "im/a.png,2,30,10,50,30,\n"
                                    "im/a.png,2,0,0,10,10,\n"  # left of the centre crop: dropped
                                    "im/b.png,4,,,,,im/b_mask.png\n")
    with pytest.warns(UserWarning, match="1 boxes fall outside"):
        recs = _records(_suite(tmp_path, 'manifest = "m.csv"'))
    a, b = recs
    assert a.label == 2 and b.label == 4
    assert a.boxes == (_expected_box((20, 4, 40, 20), 64, 32), _expected_box((30, 10, 50, 30), 64, 32))
    assert a.box == a.boxes[0] and b.boxes == () and b.mask is None
    model = tiny_cnn()
    mask = region_of(b, model, SIZE)
    assert isinstance(mask, np.ndarray) and mask.shape == (SIZE, SIZE) and mask.dtype == bool
    assert region_of(a, model, SIZE) == a.boxes and b.mask is None  # not kept on the record
    # the mask went through the image's own resize + crop: its centre pixel is inside
    assert mask[SIZE // 2, SIZE // 2] and not mask[0, 0]


def test_a_jsonl_manifest(tmp_path):
    _img(tmp_path / "a.png", 32, 32)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.png", "boxes": [[0, 0, 16, 16], [16, 16, 32, 32]]}) + "\n")
    (rec,) = _records(_suite(tmp_path, 'manifest = "m.jsonl"'))
    assert rec.boxes == (_expected_box((0, 0, 16, 16), 32, 32), _expected_box((16, 16, 32, 32), 32, 32))


def _voc(folder: Path, name: str, w: int, h: int, boxes: list[tuple[int, int, int, int]]) -> None:
    objs = "".join(f"<object><name>cat</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{Path(name).stem}.xml").write_text(
        f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>")


def test_pascal_voc_boxes_on_files(tmp_path):
    _img(tmp_path / "im" / "a.png", 64, 32)
    _voc(tmp_path / "voc", "a.png", 64, 32, [(21, 5, 40, 20)])
    (rec,) = _records(_suite(tmp_path, f'files = ["{tmp_path}/im/*.png"]\nannotations = "voc"'))
    assert rec.boxes == (_expected_box((20, 4, 40, 20), 64, 32),)  # VOC corners are 1-based, inclusive


def test_coco_boxes_on_an_imagefolder(tmp_path):
    _img(tmp_path / "data" / "n01440764" / "a.png", 64, 32)
    _img(tmp_path / "data" / "n01440764" / "b.png", 64, 32)
    (tmp_path / "coco.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png", "width": 64, "height": 32}],
        "annotations": [{"image_id": 7, "bbox": [20, 4, 20, 16], "category_id": 1}],
        "categories": [{"id": 1, "name": "tench"}]}))
    a, b = _records(_suite(tmp_path, 'folder = "data"\nannotations = "coco.json"'))
    assert a.boxes == (_expected_box((20, 4, 40, 20), 64, 32),) and b.boxes == ()


# --------------------------------------------------------------------------------------------
# The localization measures use the dataset's boxes and masks
# --------------------------------------------------------------------------------------------


def _pointing(db: Path) -> dict[tuple[str, str], float]:
    df = bench.read_results(db)
    df = df[(df.method == "center_gaussian") & df.metric.str.startswith("pointing.")]
    return {(r.image, r.metric): r.value for r in df.itertuples()}


def test_voc_and_coco_boxes_drive_the_pointing_game(tmp_path):
    """The centred Gaussian baseline peaks in the middle: a centred box is hit, a corner box missed."""
    _img(tmp_path / "im" / "mid.png", 64, 64)
    _img(tmp_path / "im" / "corner.png", 64, 64, seed=1)
    _voc(tmp_path / "voc", "mid.png", 64, 64, [(25, 25, 40, 40)])
    _voc(tmp_path / "voc", "corner.png", 64, 64, [(1, 1, 12, 12), (50, 50, 60, 60)])
    _img(tmp_path / "im" / "second.png", 64, 64, seed=2)  # any of several boxes counts
    _voc(tmp_path / "voc", "second.png", 64, 64, [(1, 1, 12, 12), (25, 25, 40, 40)])
    db = bench.run(_suite(tmp_path, f'files = ["{tmp_path}/im/*.png"]\nannotations = "voc"'),
                   out=tmp_path / "out", progress=False)
    got = _pointing(db)
    assert got[("mid.png", "pointing.hit")] == 1.0 and got[("corner.png", "pointing.hit")] == 0.0
    assert got[("second.png", "pointing.hit")] == 1.0
    assert 0 < got[("corner.png", "pointing.energy")] < got[("mid.png", "pointing.energy")]

    coco = tmp_path / "coco"
    _img(coco / "data" / "n01440764" / "mid.png", 64, 64)
    (coco / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "mid.png"}],
                                             "annotations": [{"image_id": 1, "bbox": [24, 24, 16, 16]}]}))
    db = bench.run(_suite(coco, 'folder = "data"\nannotations = "c.json"'), out=coco / "out", progress=False)
    assert _pointing(db)[("n01440764/mid.png", "pointing.hit")] == 1.0


def test_a_csv_manifest_drives_box_and_mask_measures(tmp_path):
    _img(tmp_path / "a.png", 64, 64)
    _img(tmp_path / "b.png", 64, 64, seed=1)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 1  # the left half: half the centred Gaussian's mass
    Image.fromarray(mask).save(tmp_path / "b_mask.png")
    (tmp_path / "m.csv").write_text("path,x0,y0,x1,y1,mask\na.png,0,0,64,64,\nb.png,,,,,b_mask.png\n")
    db = bench.run(_suite(tmp_path, 'manifest = "m.csv"'), out=tmp_path.with_name(tmp_path.name + "_study"), progress=False)
    got = _pointing(db)
    assert got[("a.png", "pointing.energy")] == pytest.approx(1.0)  # the box is the whole image
    # The mask went through the image's resize (nearest: 64 -> 37, source column floor(x * 64 / 37)) and
    # centre crop (2 columns off the left): crop columns 0..16 come from source columns < 32.
    inside = [x for x in range(SIZE) if (x + 2) * 64 // RESIZE < 32]
    assert inside == list(range(17))
    g = baseline_map("center_gaussian", SIZE, SIZE, 0).astype(np.float64)
    assert got[("b.png", "pointing.energy")] == pytest.approx(g[:, inside].sum() / g.sum(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Bad datasets: one clear SuiteError before any work
# --------------------------------------------------------------------------------------------


@pytest.mark.bad_input("datasets")
def test_a_missing_folder_fails_when_the_suite_loads(tmp_path):
    with pytest.raises(SuiteError, match=r"images.folder: folder 'nope' does not exist"):
        load_suite(_suite(tmp_path, 'folder = "nope"'))


@pytest.mark.bad_input("datasets")
def test_an_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(SuiteError, match="has no class sub-folders"):
        _records(_suite(tmp_path, 'folder = "data"'))
    (tmp_path / "data" / "cat").mkdir()
    with pytest.raises(SuiteError, match="holds no images"):
        _records(_suite(tmp_path, 'folder = "data"'))


@pytest.mark.bad_input("datasets")
def test_unreadable_images_are_listed_with_their_count_or_skipped(tmp_path):
    _img(tmp_path / "data" / "1" / "ok.png")
    for name in ("bad1.jpg", "bad2.png"):
        (tmp_path / "data" / "1" / name).write_bytes(b"not an image")
    with pytest.raises(SuiteError, match=r"2 of 3 images cannot be read: .*bad1\.jpg.*bad2\.png.*skip_unreadable"):
        _records(_suite(tmp_path, 'folder = "data"'))
    with pytest.warns(UserWarning, match="skipping 2 unreadable images"):
        recs = _records(_suite(tmp_path, 'folder = "data"\nskip_unreadable = true'))
    assert [r.id for r in recs] == ["1/ok.png"]


@pytest.mark.bad_input("datasets")
def test_labels_that_do_not_map_to_the_model(tmp_path):
    """Explaining each image for its label needs labels that map to the model's classes."""
    _img(tmp_path / "data" / "zebra" / "a.png")
    with pytest.raises(SuiteError, match=r"labels zebra do not map to the model's classes; give \[images\] classes"):
        _records(_suite(tmp_path, 'folder = "data"'), target="label")
    _img(tmp_path / "data2" / "7" / "a.png")  # tiny_cnn has 5 classes
    with pytest.raises(SuiteError, match=r"outside the model's 5 classes"):
        _records(_suite(tmp_path, 'folder = "data2"'), target="label")
    (tmp_path / "classes.txt").write_text("cat\n")
    with pytest.raises(SuiteError, match=r"labels zebra are not in the classes file"):
        _records(_suite(tmp_path, 'folder = "data"\nclasses = "classes.txt"'), target="label")


def test_folder_names_that_are_not_the_models_classes_run_for_the_predicted_class(tmp_path):
    """``cats/`` and ``dogs/`` are not tiny_cnn's classes: the images keep their names, carry no label,
    and one warning says the labels were not mapped; the study runs for the model's top-1 class."""
    for cls in ("cats", "dogs"):
        _img(tmp_path / "data" / cls / "a.png")
    suite = _suite(tmp_path, 'folder = "data"')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = _records(suite)
    said = [str(w.message) for w in caught if "do not map" in str(w.message)]
    assert len(said) == 1 and "cats, dogs" in said[0] and "not used" in said[0], said
    assert [(r.id, r.label, r.target) for r in recs] == [("cats/a.png", None, None), ("dogs/a.png", None, None)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        db = bench.run(suite, out=tmp_path / "out", progress=False)
    images = bench.read_table(db, "images")
    assert sorted(images.image) == ["cats/a.png", "dogs/a.png"] and images.target.between(0, 4).all()
    assert set(bench.read_table(db, "cells").status) == {"done"}


def test_symbolic_link_loops_list_each_image_once_and_fast(tmp_path):
    """A ``self -> .`` link, two of them, a link up to the dataset's root and two links to one file:
    each real image is listed once, in well under a second."""
    import threading
    import time

    cat = tmp_path / "data" / "1"
    _img(cat / "a.png")
    _img(cat / "deep" / "b.png", seed=1)
    (cat / "self").symlink_to(".", target_is_directory=True)
    (cat / "self2").symlink_to(".", target_is_directory=True)
    (cat / "deep" / "up").symlink_to("..", target_is_directory=True)
    (cat / "deep" / "root").symlink_to(tmp_path / "data", target_is_directory=True)
    (cat / "again.png").symlink_to(cat / "a.png")
    suite = _suite(tmp_path, 'folder = "data"')
    got: list = []
    # In a daemon thread: a walk that loops (exponential in the links) fails the test instead of hanging it.
    walk = threading.Thread(target=lambda: got.append(_records(suite)), daemon=True)
    t0 = time.perf_counter()
    walk.start()
    walk.join(20)
    assert not walk.is_alive() and time.perf_counter() - t0 < 5, "the listing did not finish"
    (recs,) = got
    assert sorted(Path(r.path).resolve().name for r in recs) == ["a.png", "b.png"], [r.id for r in recs]
    # a link to a folder elsewhere is still followed (once)
    _img(tmp_path / "elsewhere" / "c.png", seed=2)
    (tmp_path / "data" / "2").mkdir()
    (tmp_path / "data" / "2" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    recs = _records(_suite(tmp_path, 'folder = "data"'))
    assert [r.id for r in recs if r.label == 2] == ["2/linked/c.png"]


def test_a_utf8_bom_in_a_csv_manifest(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_bytes("\ufeffpath,label\na.png,3\n".encode())
    (rec,) = _records(_suite(tmp_path, 'manifest = "m.csv"'))
    assert rec.id == "a.png" and rec.label == 3


def test_paths_outside_the_manifests_folder_with_allow_outside_root(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,label\n../a.png,1\n")
    (rec,) = _records(_suite(tmp_path, 'manifest = "sub/m.csv"\nallow_outside_root = true'))
    assert Path(rec.path) == (tmp_path / "a.png").resolve() and rec.label == 1


@pytest.mark.bad_input("datasets")
def test_boxes_outside_the_image(tmp_path):
    _img(tmp_path / "a.png", 64, 32)
    (tmp_path / "m.csv").write_text("path,x0,y0,x1,y1\na.png,10,10,70,20\n")
    with pytest.raises(SuiteError, match=r"1 boxes lie outside their image.*a\.png \[10\.0, 10\.0, 70\.0, 20\.0\] \(64x32\)"):
        _records(_suite(tmp_path, 'manifest = "m.csv"'))


@pytest.mark.bad_input("datasets")
def test_target_label_needs_labels(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path\na.png\n")
    with pytest.raises(SuiteError, match="target = 'label' but 1 images have no label"):
        _records(_suite(tmp_path, 'manifest = "m.csv"'), target="label")


@pytest.mark.bad_input("datasets")
def test_a_bad_dataset_fails_the_run_before_the_study_file_exists(tmp_path):
    _img(tmp_path / "data" / "zebra" / "a.png")
    out = tmp_path / "out"
    with pytest.raises(SuiteError, match="do not map"), warnings.catch_warnings():
        bench.run(_suite(tmp_path, 'folder = "data"', extra='target = "label"'), out=out, progress=False)
    assert not (out.exists() and list(out.iterdir()))


def _bad_csv_field(d: Path) -> str:
    (d / "m.csv").write_text("path,label\n" + "a" * 140_000 + ".png,1\n")
    return 'manifest = "m.csv"'


def _jsonl(*rows: object, raw: str = "") -> Callable[[Path], str]:
    def make(d: Path) -> str:
        _img(d / "a.png")
        (d / "m.jsonl").write_text(raw or "".join(json.dumps(r) + "\n" for r in rows))
        return 'manifest = "m.jsonl"'
    return make


def _csv(text: str, mask: np.ndarray | None = None) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        _img(d / "a.png", 64, 32)
        _img(d / "b.png", 64, 32, seed=1)
        if mask is not None:
            Image.fromarray(mask).save(d / "mask.png")
        (d / "m.csv").write_text(text)
        return 'manifest = "m.csv"'
    return make


def _coco_file(images: list, annotations: list) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        _img(d / "im" / "a.png")
        (d / "c.json").write_text(json.dumps({"images": images, "annotations": annotations}))
        return f'files = ["{d}/im/*.png"]\nannotations = "c.json"'
    return make


def _outside(d: Path) -> str:
    _img(d / "secret.png")
    (d / "sub").mkdir()
    (d / "sub" / "m.csv").write_text(f"path\n../secret.png\n{d / 'secret.png'}\n")
    return 'manifest = "sub/m.csv"'


def _one_file_two_classes(d: Path) -> str:
    _img(d / "data" / "1" / "a.png")
    (d / "data" / "2").mkdir()
    (d / "data" / "2" / "b.png").symlink_to(d / "data" / "1" / "a.png")
    return 'folder = "data"'


def _rgba_alpha_only() -> np.ndarray:
    m = np.zeros((32, 64, 4), np.uint8)
    m[8:24, 16:48, 3] = 255  # the object is opaque, its colour black
    return m


_LEFT_EDGE = np.zeros((32, 64), np.uint8)
_LEFT_EDGE[8:24, :3] = 255  # the crop keeps source columns 17..46 of 64 (resize to 74x37, crop 32)

#: (id, files, what the one SuiteError says). Each is a raw exception or a silent acceptance without a check.
BAD_DATASETS = [
    ("csv-field-over-128kb", _bad_csv_field, r"row 2 cannot be read as CSV: a field is longer than 128 KB"),
    ("nul-byte-in-a-csv-path", _csv("path\na\x00.png\n"), r"row 2: path: a path cannot hold a NUL byte"),
    ("nul-byte-in-a-jsonl-mask", _jsonl({"path": "a.png", "mask": "m\x00.png"}), r"row 1: mask: .*NUL byte"),
    ("jsonl-box-of-3-numbers", _jsonl({"path": "a.png", "boxes": [[1, 2, 3]]}),
     r"row 1: boxes\.0\.3: Field required .*boxes is a list of boxes of 4 numbers"),
    ("jsonl-boxes-a-number", _jsonl({"path": "a.png", "boxes": [5]}), r"row 1: boxes\.0: Input should be a valid tuple"),
    ("jsonl-boxes-null", _jsonl({"path": "a.png", "boxes": [None]}), r"row 1: boxes\.0: .*got None"),
    ("jsonl-box-of-strings", _jsonl({"path": "a.png", "boxes": [["a", "b", "c", "d"]]}),
     r"row 1: boxes\.0\.0: Input should be a valid number \(got 'a'\)"),
    ("jsonl-boxes-a-dict", _jsonl({"path": "a.png", "boxes": {"x0": 1, "y0": 1, "x1": 9, "y1": 9}}),
     r"row 1: boxes: Input should be a valid list"),
    ("jsonl-mask-an-int", _jsonl({"path": "a.png", "mask": 5}), r"row 1: mask: Input should be a valid string .*mask is a"),
    ("jsonl-mask-a-list", _jsonl({"path": "a.png", "mask": ["a.png"]}), r"row 1: mask: Input should be a valid string"),
    ("jsonl-nested-100000-deep", _jsonl(raw="[" * 100_000 + "]" * 100_000 + "\n"), r"line 1 is nested too deeply"),
    ("coco-integer-file-name", _coco_file([{"id": 1, "file_name": 5}], []),
     r"COCO file .*images\.0\.file_name: Input should be a valid string \(got 5\)"),
    ("coco-box-of-strings", _coco_file([{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "bbox": ["1", 2, 3, 4]}]),
     r"annotations\.0\.bbox\.0: Input should be a valid number"),
    ("one-image-two-labels", _csv("path,label\na.png,1\nb.png,2\na.png,3\n"),
     r"gives 1 images two different labels.*a\.png \(row 2: label 1, row 4: label 3\)"),
    ("one-file-in-two-class-folders", _one_file_two_classes, r"are one image file .* in two class folders"),
    ("all-zero-mask", _csv("path,mask\na.png,mask.png\n", np.zeros((32, 64), np.uint8)), r"mask\.png' .* is all zero"),
    ("rgba-mask-object-only-in-alpha", _csv("path,mask\na.png,mask.png\n", _rgba_alpha_only()),
     r"marks its object only in the alpha channel"),
    ("mask-object-outside-the-crop", _csv("path,mask\na.png,mask.png\n", _LEFT_EDGE),
     r"marks an object only outside the model's centre crop"),
    ("paths-outside-the-manifests-folder", _outside,
     r"names 2 files outside its folder .*row 2: \.\./secret\.png.*allow_outside_root = true"),
]


@pytest.mark.bad_input("datasets")
@pytest.mark.parametrize(("make", "match"), [pytest.param(m, r, id=i) for i, m, r in BAD_DATASETS])
def test_a_malformed_dataset_is_one_suite_error(tmp_path, make, match):
    suite = _suite(tmp_path, make(tmp_path))
    with pytest.raises(SuiteError, match=match):
        _records(suite)


# --------------------------------------------------------------------------------------------
# The same dataset study on the local engine and on Ray
# --------------------------------------------------------------------------------------------


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray(), reason="Ray is not installed (pip install -e '.[ray]')")
def test_an_imagefolder_study_is_identical_on_local_and_ray(tmp_path):
    """A folder with VOC boxes, explained for its labels: the deterministic results of ``--engine local``
    and ``--engine ray --workers 2`` (records, boxes and targets travel to the actors) are identical."""
    from bench_helpers import deterministic_table

    for i, cls in enumerate(("n01440764", "n01443537", "n01484850")):
        for j in range(2):
            _img(tmp_path / "data" / cls / f"{j}.png", 64, 64, seed=3 * i + j)
            _voc(tmp_path / "voc", f"{j}.png", 64, 64, [(1, 1, 20, 20), (25, 25, 40, 40)][j:j + 1])
    suite = _suite(tmp_path, 'folder = "data"\nannotations = "voc"', extra='target = "label"')
    local = bench.run(suite, out=tmp_path / "local", progress=False)
    ray_db = bench.run(suite, out=tmp_path / "ray", progress=False, engine="ray", workers=2)
    ref = deterministic_table(local)
    assert set(ref.metric) >= {"pointing.hit", "pointing.energy"} and len(set(ref.image)) == 6
    import pandas as pd

    pd.testing.assert_frame_equal(deterministic_table(ray_db), ref)
    images = bench.read_table(local, "images")
    assert sorted(images.target.tolist()) == [0, 0, 1, 1, 2, 2]  # the labels, not the model's top-1


@pytest.mark.bad_input("datasets")
@pytest.mark.parametrize(("case", "words"), [("jsonl-nested-100000-deep", ("nested too deeply",)),
                                             ("csv-field-over-128kb", ("longer than 128 KB",)),
                                             ("jsonl-box-of-3-numbers", ("boxes.0.3", "4 numbers"))])
def test_a_malformed_manifest_is_one_line_in_the_cli_and_no_study_file(tmp_path, case, words):
    from cnnlens.testing import one_line_error, run_cli

    make = next(m for i, m, _r in BAD_DATASETS if i == case)
    out = tmp_path / "out"
    one_line_error(run_cli("bench", "--suite", _suite(tmp_path, make(tmp_path)), "--out", out), *words)
    assert not (out.exists() and list(out.iterdir()))


@pytest.mark.bad_input("datasets")
def test_a_bad_dataset_is_one_line_in_the_cli(tmp_path):
    from cnnlens.testing import one_line_error, run_cli

    _img(tmp_path / "data" / "1" / "ok.png")
    (tmp_path / "data" / "1" / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    one_line_error(run_cli("bench", "--suite", _suite(tmp_path, 'folder = "data"'), "--out", out),
                   "1 of 2 images cannot be read", "bad.jpg", "skip_unreadable = true")
