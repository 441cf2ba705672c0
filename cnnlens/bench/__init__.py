"""The benchmark: compare backends' outputs, faithfulness, sanity, localization and speed.

``import cnnlens.bench`` stays light: the engine, metrics and report import torch, SciPy,
scikit-image, pandas and matplotlib only when called.

Example:
    >>> import cnnlens.bench as bench  # doctest: +SKIP
    >>> db = bench.run("smoke", out="bench-out")
    >>> md, html = bench.report(db)
    >>> df = bench.load(db)
    >>> bench.export(db, "results.parquet", format="parquet")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["export", "export_csv", "failures", "load", "load_suite", "read_results", "read_table", "report", "run", "summary"]


def run(
    suite: str | Path,
    device: str = "cpu",
    out: Path | str = "bench-out",
    overwrite: bool = False,
    progress: bool = True,
    max_cells: int | None = None,
    engine: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    retry: bool = True,
    threads: int | None = None,
) -> Path:
    """Run or resume a study, on this process (``engine="local"``) or on Ray actors (``"ray"``).

    See :func:`cnnlens.bench.engine.run`. Returns the SQLite file.
    """
    from cnnlens.bench.engine import run as _run

    return _run(suite, device=device, out=out, overwrite=overwrite, progress=progress, max_cells=max_cells,
                engine=engine, workers=workers, address=address, gpus_per_worker=gpus_per_worker, retry=retry,
                threads=threads)


def failures(db: Path | str) -> list[tuple[str, str, int]]:
    """The cells that failed or were skipped, grouped by reason; see :func:`cnnlens.bench.engine.failures`."""
    from cnnlens.bench.engine import failures as _failures

    return _failures(db)


def report(db: Path | str, out_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html``; see :func:`cnnlens.bench.reporting.write_report`."""
    from cnnlens.bench.reporting import write_report

    return write_report(db, out_dir)


def load_suite(suite: str | Path) -> Any:
    """Parse and validate a suite (name or TOML path); raises SuiteError."""
    from cnnlens.bench.suite import load_suite as _load

    return _load(suite)


def read_results(db: Path | str, study: str | None = None, deterministic_only: bool = False) -> Any:
    """The results table as a pandas DataFrame."""
    from cnnlens.bench.store import read_results as _read

    return _read(db, study, deterministic_only)


def read_table(db: Path | str, table: str) -> Any:
    """Another table of the study file (cells, meta, images) as a DataFrame."""
    from cnnlens.bench.store import read_table as _read

    return _read(db, table)


def load(db: Path | str) -> Any:
    """The study's results as a pandas DataFrame; see :func:`cnnlens.bench.store.load`."""
    from cnnlens.bench.store import load as _load

    return _load(db)


def export(db: Path | str, out: Path | str | None = None, format: str = "csv") -> Path:
    """Write the results table as ``csv`` or ``parquet``; see :func:`cnnlens.bench.store.export`."""
    from cnnlens.bench.store import export as _export

    return _export(db, out, format)


def export_csv(db: Path | str, path: Path | str | None = None) -> Path:
    """Write the results table to CSV."""
    from cnnlens.bench.store import export_csv as _export

    return _export(db, path)


def summary(db: Path | str) -> Any:
    """Per (model, method, backend, metric) mean, std and count over images, as a DataFrame."""
    from cnnlens.bench.store import summary as _summary

    return _summary(db)
