"""Bugs that are easy to plant and that earlier tests let through: each test here fails if its bug is
introduced (the agreement's Pearson computed by Spearman, a top-k of 0 %, a classes file read one line
off, a partial last shard dropped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

import cnnlens.bench as bench
from cnnlens.bench import metrics as M
from cnnlens.bench import suite as S
from cnnlens.errors import SuiteError
from cnnlens.testing import tiny_suite


def test_pearson_is_pearson_not_spearman() -> None:
    """On a monotonic but curved relation Spearman is 1 and Pearson is not: the two must differ."""
    a = np.linspace(0.0, 1.0, 400).reshape(20, 20)
    b = a**4
    want = stats.pearsonr(a.ravel(), b.ravel()).statistic
    assert want < 0.95
    assert M.pearson(a, b) == pytest.approx(want, abs=1e-12)
    assert M.spearman(a, b) == pytest.approx(1.0)
    res = M.agreement(a, b)
    assert res["pearson"] == pytest.approx(want, abs=1e-12) and res["spearman"] == pytest.approx(1.0)


@pytest.mark.bad_input("engine")
@pytest.mark.parametrize("k", [0, -5, 100.5])
def test_a_topk_outside_0_to_100_percent_is_refused(k: float) -> None:
    """A top-0 % IoU is 1.0 for any two maps (two empty sets): the suite refuses it."""
    with pytest.raises(SuiteError, match="percentages in"):
        S.parse({"study": {"name": "t"}, "models": [{"id": "tiny", "spec": "cnnlens.testing:tiny_cnn"}],
                 "images": {"demo": ["chelsea"]}, "agreement": {"topk": [5, k]}})


def test_topk_iou_of_unrelated_maps_is_not_one() -> None:
    ramp = np.arange(100, dtype=float).reshape(10, 10)
    assert M.topk_iou(ramp, -ramp, 5) == 0.0


@pytest.mark.parametrize("text", ["tabby\nespresso\nrocket\n", "# my classes\ntabby\n\nespresso\nrocket\n",
                                  "tabby 0\nespresso 1\nrocket 2\n", "tabby,0\nespresso,1\nrocket,2\n"])
def test_a_classes_file_maps_each_name_to_its_own_index(tmp_path: Path, text: str) -> None:
    """One name per line (index = position among the names), or ``name index``: never one line off."""
    from cnnlens.bench.datasets import _read_classes

    p = tmp_path / "classes.txt"
    p.write_text(text)
    assert _read_classes(p) == {"tabby": 0, "espresso": 1, "rocket": 2}


def test_a_partial_last_shard_is_explained(tmp_path: Path) -> None:
    """5 images in shards of 2: the last shard holds one image, and it is explained like the others."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(5):
        arr = np.random.default_rng(k).integers(0, 255, (36, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"p{k}.png")
    suite = tmp_path / "partial.toml"
    suite.write_text(tiny_suite("partial", f'files = ["{folder / "*.png"}"]', shard=2))
    db = bench.run(str(suite), out=tmp_path / "study", progress=False)
    df: pd.DataFrame = bench.load(db)
    explained = df[(df.method == "gradcam") & (df.backend == "captum")]
    assert sorted(explained.image.unique()) == [f"file-p{k}" for k in range(5)]
