"""Shared fixtures: tiny models for breadth, the embedded model for truth. Nothing downloads."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CNNLENS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def embedded():
    import cnnlens

    return cnnlens.load_model()


@pytest.fixture(scope="session")
def demo(embedded):
    import cnnlens

    return cnnlens.demo_images(embedded).tensor


@pytest.fixture(scope="session")
def cat(embedded):
    import cnnlens

    return cnnlens.demo_images(embedded, names=["chelsea"]).tensor


@pytest.fixture()
def tiny():
    from cnnlens.testing import tiny_cnn

    return tiny_cnn()


@pytest.fixture()
def tiny_x():
    from cnnlens.testing import tiny_input

    return tiny_input(n=2, size=32)


@pytest.fixture(scope="session")
def resnet18_random():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()
