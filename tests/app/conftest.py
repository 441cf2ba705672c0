"""Fixtures of the web-app tests: a tiny model, a photo file, a small study, a live server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cnnlens.testing import tiny_cnn

#: A study of two backends per method on the tiny CNN, small enough to build in seconds.
STUDY_SUITE = """
[study]
name = "appstudy"
seed = 1
threads = 1

[[models]]
id = "tiny"
spec = "cnnlens.testing:tiny_cnn"
image_size = 32

[images]
demo = ["chelsea", "coffee"]
batch = 1

[methods]
include = ["gradcam", "saliency"]

[faithfulness]
steps = 4
road_percentiles = [50]
road_images = 1

[sanity]
images = 1
max_steps = 2

[speed]
batch_sizes = [1]
repeats = 1
warmup = 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_cnn(num_classes=5, seed=0)


@pytest.fixture(scope="session")
def photo_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from cnnlens.images import demo_paths

    path = tmp_path_factory.mktemp("photo") / "cat.png"
    with Image.open(demo_paths(["chelsea"])[0]) as im:
        im.convert("RGB").resize((160, 120)).save(path)
    return path


@pytest.fixture(scope="session")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cnnlens.bench as bench

    d = tmp_path_factory.mktemp("study")
    suite = d / "app.toml"
    suite.write_text(STUDY_SUITE)
    return Path(bench.run(suite, out=d / "out", progress=False))


