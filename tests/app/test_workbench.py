"""The app's logic without a browser: top-5, layers, signs, the grid, agreement, export, errors."""

from __future__ import annotations

import io
import json
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens.app import workbench as W
from cnnlens.errors import ImageLoadError, TargetError
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn

PAIRS = [("gradcam", "pytorch-grad-cam"), ("gradcam", "captum")]


@pytest.fixture
def wb(tiny_model) -> W.Workbench:
    return W.Workbench(tiny_model, "tiny")


def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels but holds almost no data (decoding it would allocate w*h*3)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_top_classes_sorted_and_labelled(tiny_model):
    from cnnlens.predict import top_classes

    x = torch.randn(2, 3, 32, 32)
    top = top_classes(tiny_model, x, k=3, categories=["a", "b", "c", "d", "e"])
    with torch.no_grad():
        probs = tiny_model(x).softmax(1)
    for i, row in enumerate(top):
        assert [c.index for c in row] == probs[i].argsort(descending=True)[:3].tolist()
        assert row[0].probability == pytest.approx(float(probs[i].max()), rel=1e-5)
        assert row[0].label == "abcde"[row[0].index]


def test_top_classes_leaves_training_model_unchanged():
    from cnnlens.predict import top_classes

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).train()
    before = snapshot(model)
    top_classes(model, torch.randn(2, 3, 16, 16), k=2)
    assert_same_state(before, model)
    assert model.training and model[1].training


def test_layers_default_is_the_explainer_choice(wb, tiny_model):
    rows, default = wb.layers()
    e = cnnlens.explain(tiny_model, torch.randn(1, 3, 32, 32), "gradcam", backend="captum")
    assert default == e.layer
    assert default in wb.cam_layers()
    assert all(r.spatial for r in rows if r.name in wb.cam_layers())


def test_signed_maps_views(tiny_model):
    from cnnlens.signs import signed_maps

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    e = cnnlens.explain(tiny_model, x, "saliency", backend="captum", target=1)
    summed = e.raw.sum(dim=1)
    allv = signed_maps(e, "all")
    assert allv.min() < 0 < allv.max() and np.abs(allv).max() == pytest.approx(1.0)
    np.testing.assert_allclose(allv * np.abs(summed.numpy()).reshape(2, -1).max(1)[:, None, None], summed.numpy(),
                               rtol=1e-5, atol=1e-7)
    pos, neg, ab = signed_maps(e, "positive"), signed_maps(e, "negative"), signed_maps(e, "absolute")
    assert (pos >= 0).all() and (neg >= 0).all() and ab.max() == pytest.approx(1.0)
    assert ((pos > 0) & (neg > 0)).sum() == 0
    with pytest.raises(cnnlens.errors.OptionError, match="unknown sign"):
        signed_maps(e, "both")


def test_grid_two_backends_and_agreement(wb, photo_png):
    photo = wb.load(photo_png)
    target = wb.top5(photo)[1].index
    steps = list(wb.run(photo, target, PAIRS, faithfulness=True))
    assert [s[:2] for s in steps] == [(1, 2), (2, 2)]
    grid = steps[-1][2]
    assert all(c.ok for c in grid.cells) and grid.target == target
    assert all(int(c.explanation.targets[0]) == target for c in grid.cells)
    rows = W.agreement(grid)
    assert len(rows) == 1 and rows[0]["method"] == "gradcam"
    from cnnlens.bench import metrics as M

    a, b = (c.explanation.maps[0].numpy() for c in grid.cells)
    assert rows[0]["pearson"] == pytest.approx(M.pearson(a, b))
    assert rows[0]["iou_top5"] == pytest.approx(M.topk_iou(a, b, 5.0))
    assert {"deletion_auc", "insertion_auc"} <= set(grid.cells[0].faithfulness)
    pics = W.overlays(grid)
    assert len(pics) == 2 and pics[0][0].shape == photo.display.shape and "s" in pics[0][1]


@pytest.mark.bad_input("app")
def test_failures_are_one_line_per_cell(wb, photo_png):
    photo = wb.load(photo_png)
    *_, (_, _, grid) = wb.run(photo, 0, [("integrated_gradients", "captum"), ("gradcam", "captum")],
                              options={"integrated_gradients": {"n_steps": -3}})
    bad, good = grid.cells
    assert not bad.ok and "n_steps" in bad.error and "positive integer" in bad.error
    assert good.ok
    *_, (_, _, grid) = wb.run(photo, 99, [("gradcam", "captum")])
    assert "out of range" in grid.cells[0].error


@pytest.mark.bad_input("app")
def test_bad_uploads_are_refused_clearly(wb, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        wb.load(txt)
    huge = _png_header(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageLoadError, match="downscale it first"):
        wb.load(huge)


def test_class_search(wb):
    emb = W.Workbench(tiny_cnn(), "t")
    emb.categories = ["tabby", "tiger cat", "Persian cat", "dog", "fish"]
    assert [i for i, _ in emb.search_classes("cat")] == [1, 2]
    assert emb.search_classes("3") == [(3, "dog")]
    with pytest.raises(TargetError, match="close matches: tabby"):
        emb.search_classes("tabbby")


def test_export_zip_has_overlays_npy_and_manifest(wb, photo_png, tmp_path):
    photo = wb.load(photo_png)
    *_, (_, _, grid) = wb.run(photo, 2, [*PAIRS, ("integrated_gradients", "captum")],
                              options={"integrated_gradients": {"n_steps": 0}})
    path = W.export_zip(grid, tmp_path / "exports")
    assert path.parent == tmp_path / "exports" and not list(path.parent.glob("*.part"))
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        assert "input.png" in names and "00_gradcam_pytorch-grad-cam.png" in names
        m = np.load(io.BytesIO(z.read("01_gradcam_captum_map.npy")), allow_pickle=False)
    np.testing.assert_array_equal(m, grid.cells[1].explanation.maps[0].numpy())
    assert manifest["target"] == 2 and len(manifest["cells"]) == 3
    assert manifest["cells"][0]["provenance"]["backend"] == "pytorch-grad-cam"
    assert manifest["cells"][2]["error"] and "files" not in manifest["cells"][2]
    assert manifest["agreement"][0]["method"] == "gradcam"


def test_two_sessions_at_once_give_serial_results(photo_png):
    model = tiny_cnn(seed=3)
    before = snapshot(model)
    wb = W.Workbench(model, "t")
    photo = wb.load(photo_png)
    pairs = [("gradcam", "captum"), ("saliency", "captum"), ("integrated_gradients", "captum")]
    serial = [c.explanation.maps for c in list(wb.run(photo, 1, pairs))[-1][2].cells]
    out: dict[int, list[torch.Tensor]] = {}

    def session(k: int) -> None:
        out[k] = [c.explanation.maps for c in list(wb.run(photo, 1, pairs))[-1][2].cells]

    threads = [threading.Thread(target=session, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        for a, b in zip(out[k], serial, strict=True):
            torch.testing.assert_close(a, b)
    assert_same_state(before, model)


@pytest.mark.bad_input("app")
def test_too_many_cells_refused(wb, photo_png):
    photo = wb.load(photo_png)
    with pytest.raises(cnnlens.errors.InputError, match="at most"):
        next(wb.run(photo, 0, [("gradcam", "captum")] * (W.MAX_CELLS + 1)))


def test_study_view(study_db):
    from cnnlens.bench.browse import StudyView

    v = StudyView(study_db)
    assert v.models() == ["tiny"]
    assert ("gradcam", "captum") in v.pairs() and ("gradcam", "pytorch-grad-cam") in v.pairs()
    ag = v.agreement(methods=["gradcam"])
    assert set(ag["method"]) == {"gradcam"} and ag["pearson"].notna().all()  # one row per pair of its backends
    m = v.map("tiny", v.images[0].image, "gradcam", "captum")
    assert m is not None and m.shape == (32, 32) and m.min() >= 0 and m.max() <= 1
    curves = v.curves("deletion_blur", methods=["gradcam"])
    assert curves and all(len(c) == 5 for c in curves.values())
    assert not v.speed(backends=["captum"]).empty
    s = v.summary(metric="deletion_blur.auc")
    assert set(s["metric"]) == {"deletion_blur.auc"}


@pytest.mark.bad_input("app")
def test_study_view_refuses_a_foreign_file(tmp_path):
    from cnnlens.bench.browse import StudyView

    p = tmp_path / "x.sqlite"
    p.write_bytes(b"garbage" * 100)
    with pytest.raises(cnnlens.CnnlensError, match=r"x\.sqlite.*not a"):
        StudyView(p)
