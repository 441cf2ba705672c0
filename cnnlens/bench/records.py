"""The study's image record: where an image's pixels come from, and what it is scored against.

Made by :mod:`cnnlens.bench.data` (demo photos, samples, canvases) and :mod:`cnnlens.bench.datasets`
(the user's folders and manifests); read by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BenchImage:
    """One image of the study: a record that says where its pixels come from.

    File-backed records (demo photos, scikit-image samples, user files) carry no pixels:
    :func:`load_pixels` reads them one shard at a time, so a study's memory does not grow with
    its number of images. Generated canvases (pasted objects) carry their pixels (``display``).
    """

    id: str
    source: str
    display: np.ndarray | None = None  # (H, W, 3) uint8 at the model's input size, generated images only
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in pixels (exclusive ends)
    expected: tuple[str, ...] = ()  # classes that count as correct (pasted objects only)
    path: str | None = None  # the image file (file-backed records)
    flip: bool = False  # mirrored left-right after reading
    target: int | None = None  # the class to explain when the source fixes it (pasted canvases)
    label: int | None = None  # the dataset's class index of the image (folder, manifest)
    #: Ground-truth boxes (x0, y0, x1, y1) in model-input pixels (exclusive ends); ``box`` is the first.
    boxes: tuple[tuple[int, int, int, int], ...] = ()
    mask: np.ndarray | None = None  # (H, W) bool at the model's input size (generated masks)
    mask_path: str | None = None  # a mask file (manifest ``mask`` column), read by :func:`region_of`

    def __post_init__(self) -> None:
        if self.box is not None and not self.boxes:
            self.boxes = (self.box,)

    def region(self) -> np.ndarray | tuple[tuple[int, int, int, int], ...] | None:
        """What the localization measures score against: the mask, else the boxes, else None."""
        if self.mask is not None:
            return self.mask
        return self.boxes or None
