"""The study report: ``report.md`` (with PNGs next to it) and a self-contained ``report.html``.

The package has one module per job: :mod:`.data` reads the study file, :mod:`.tables` computes
the numbers, :mod:`.figures` draws them (matplotlib's object-oriented API), :mod:`.sections`
words them, and :mod:`.render` writes Markdown and HTML from the same list of sections, so the
two always hold the same content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlens.bench.reporting.render import Section

SECTIONS = ("Verdict", "Summary", "Agreement", "Metric agreement", "Faithfulness", "Localization", "Sanity", "Speed",
            "Image x method grid", "Failures", "Run")

__all__ = ["SECTIONS", "Section", "build_sections", "write_report"]


def build_sections(db: Path) -> tuple[list[Section], dict[str, bytes], dict[str, Any]]:
    """Every section of the report of ``db``, the files they name (figures as PNG bytes, the verdict's
    tables as CSV bytes), and the study's metadata."""
    from cnnlens.bench.metric_agreement import section as metric_agreement
    from cnnlens.bench.reporting import sections as S
    from cnnlens.bench.reporting.data import load
    from cnnlens.bench.reporting.verdict_section import add_metric_seconds, verdict

    st = load(db)
    figs: dict[str, bytes] = {}
    faith_sec, faith_tab = S.faithfulness(st, figs)
    speed = S.speed(st, figs)
    add_metric_seconds(speed, st)
    sections = [verdict(st, figs), S.summary(st, faith_tab), S.agreement(st, figs),
                metric_agreement(st), faith_sec, S.localization(st, figs),
                S.sanity(st, figs), speed, S.grid(st, figs), S.failures(st), S.run(st)]
    return sections, figs, st.meta


def write_report(db: Path | str, out_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` (figures in ``figures/``), a self-contained ``report.html`` and the verdict's
    tables (:data:`cnnlens.bench.reporting.verdict_section.CSV_FILES`) as CSV.

    Every file is written to a temporary name and renamed when complete, so a full disk or a
    read-only folder leaves the previous report (or none), never a truncated file.

    Args:
        db: The study's SQLite file (read-only media are fine).
        out_dir: Where to write (default: the database's folder). Existing report files there are
            replaced; nothing else is touched. A folder holding pictures is refused: the report
            never writes among the user's images (:func:`cnnlens.outputs.check_report_out`, the
            same rule as the CLI's, which also refuses to replace a report without ``--overwrite``).

    Returns:
        (path of report.md, path of report.html).

    Raises:
        StoreError: ``db`` is missing, corrupt or not a cnnlens study.
        OutputExistsError: The output folder holds pictures, or is a file.
        OutputError: The output folder is read-only or the disk is full.
    """
    from cnnlens._files import ensure_folder, write_atomic
    from cnnlens.bench.reporting.render import render_html, render_md
    from cnnlens.outputs import check_report_out

    db = Path(db)
    out = check_report_out(Path(out_dir) if out_dir is not None else db.parent, overwrite=True)
    sections, figs, meta = build_sections(db)
    title = f"cnnlens benchmark: {meta.get('suite_name', db.stem)}"
    fig_dir = out / "figures"
    ensure_folder(fig_dir, "report folder", "--out")
    for name, data in figs.items():
        if name.endswith(".csv"):  # the verdict's tables, next to the report
            write_atomic(out / name, data, "verdict table", "--out")
        else:
            write_atomic(fig_dir / name, data, "figure", "--out")
    md = write_atomic(out / "report.md", render_md(sections, title, "figures"), "report", "--out")
    page = write_atomic(out / "report.html", render_html(sections, title, figs), "report", "--out")
    return md, page
