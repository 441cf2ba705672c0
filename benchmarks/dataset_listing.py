"""How long listing a large ImageFolder takes (headers only, no pixels): ``python benchmarks/dataset_listing.py [N]``.

Writes N copies of one 500x375 JPEG into 5 class folders of a temporary tree, lists it three times with
:func:`cnnlens.bench.datasets.records` and prints each pass and the median.
"""

from __future__ import annotations

import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlens.bench.datasets import records
from cnnlens.bench.suite import load_suite
from cnnlens.testing import tiny_cnn


def main(n: int) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG")
        for i in range(n):
            d = root / "data" / str(i % 5)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        (root / "s.toml").write_text('[[models]]\nspec = "cnnlens.testing:tiny_cnn"\nimage_size = 224\n'
                                     '[images]\nfolder = "data"\n[methods]\ninclude = ["saliency"]\n')
        spec, model = load_suite(root / "s.toml").images, tiny_cnn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            recs = records(spec, model, 256, 224)
            times.append(time.perf_counter() - t0)
        print(f"{len(recs)} records; passes {[round(t, 2) for t in times]} s, median {statistics.median(times):.2f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
