"""Two libraries' versions of one metric, compared: against a case worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cnnlens.bench import metric_agreement as MA


def _res() -> pd.DataFrame:
    """Three pairs on two images. Deletion means (ours): a 0.1, b 0.2, c 0.3; PixelFlipping means
    (Quantus): a 3, b 1, c 2. Spearman of the means: ranks (1, 2, 3) vs (3, 1, 2) -> 1 - 6 * 6 / 24 = -0.5;
    Kendall: pairs (a, b) discordant, (a, c) discordant, (b, c) concordant -> (1 - 2) / 3."""
    rows = []
    ours = {"a": (0.05, 0.15), "b": (0.2, 0.2), "c": (0.25, 0.35)}
    theirs = {"a": (3.0, 3.0), "b": (0.5, 1.5), "c": (2.0, 2.0)}
    for m in "abc":
        for i in range(2):
            rows.append(("tiny", f"img{i}", m, "captum", "deletion_zero.auc", ours[m][i]))
            rows.append(("tiny", f"img{i}", m, "captum", "quantus.PixelFlipping", theirs[m][i]))
    rows.append(("tiny", "img0", "a", "captum", "sanity.spearman@01", 0.9))  # only ours: not compared
    return pd.DataFrame(rows, columns=["model", "image", "method", "backend", "metric", "value"])


def test_metric_agreement_by_hand():
    tab = MA.compare(_res()).set_index("metric")
    row = tab.loc["deletion / pixel flipping"]
    assert row.pairs == 3 and row.images == 2
    assert row.spearman_methods == pytest.approx(-0.5)
    assert row.kendall_methods == pytest.approx(-1 / 3)
    # mean of theirs - ours over the six values: (3 + 3 + 0.5 + 1.5 + 2 + 2) / 6 - (0.05 + ... + 0.35) / 6
    assert row.mean_difference == pytest.approx(12 / 6 - 1.2 / 6)
    assert tab.loc["model randomisation"].pairs == 0 and math.isnan(tab.loc["model randomisation"].spearman_methods)
    assert "any pixel tied at the maximum" in tab.loc["pointing game"].differ
    d = MA.per_image(_res(), "tiny", MA.SHARED[1])
    assert len(d) == 6 and d.difference.tolist()[0] == pytest.approx(3.0 - 0.05)
