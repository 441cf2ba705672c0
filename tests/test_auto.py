"""backend="auto": the shipped table, and a refresh measured on the user's machine."""

from __future__ import annotations

import json

import cnnlens
from cnnlens import auto, auto_refresh
from cnnlens.registry import BACKENDS, backends_for, resolve
from cnnlens.testing import tiny_cnn, tiny_input


def test_shipped_table_drives_auto(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLENS_CACHE", str(tmp_path))  # no user table: the shipped one applies
    auto._table.cache_clear()
    try:
        data = json.loads(auto.SHIPPED.read_text())
        assert data["methods"], "cnnlens/data/auto_backend.json must list methods"
        for method, row in data["methods"].items():
            assert resolve(method, "auto").backend == row["order"][0]
    finally:
        auto._table.cache_clear()


def test_refresh_writes_user_table_that_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLENS_CACHE", str(tmp_path))
    auto._table.cache_clear()
    try:
        data = auto_refresh.refresh(model=tiny_cnn(), inputs=tiny_input(n=2), repeats=1)
        assert (tmp_path / "auto_backend.json").exists()
        row = data["methods"]["saliency"]
        assert set(row["backends"]) == {b for b in backends_for("saliency") if BACKENDS[b].installed}
        # FlashTorch's saliency is the plain gradient: it agrees with Captum's
        assert row["backends"]["flashtorch"]["pearson_to_reference"] > 0.999
        # FlashTorch's guided backprop is its own variant: it must not be picked as agreeing
        gb = data["methods"]["guided_backprop"]
        assert gb["order"][-1] == "flashtorch" or gb["backends"]["flashtorch"]["pearson_to_reference"] >= 0.95
        assert resolve("saliency", "auto").backend == row["order"][0]
        e = cnnlens.explain(tiny_cnn(), tiny_input(), "saliency", "auto")
        assert e.backend == row["order"][0]
    finally:
        auto._table.cache_clear()
