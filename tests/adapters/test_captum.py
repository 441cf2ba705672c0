"""The Captum adapter's dispatch table."""

from __future__ import annotations


def test_every_captum_pair_has_a_route() -> None:
    """The adapter dispatches through its table: each registered Captum method has exactly one route."""
    from cnnlens.adapters.captum import ROUTES
    from cnnlens.registry import REGISTRY

    assert set(ROUTES) == {m for (m, b) in REGISTRY if b == "captum"}
