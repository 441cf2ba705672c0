"""``cnnlens bench`` and ``cnnlens report``: run a benchmark study and write its report."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnlens.cli import _common as c
from cnnlens.cli._app import EXIT_INTERRUPTED, CnnlensCommand, CnnlensGroup, app, command, error
from cnnlens.errors import CnnlensError, OutputExistsError


def _bench_module() -> Any:
    from cnnlens import jobs

    jobs.check_bench_dependencies()
    try:
        import cnnlens.bench as bench

        bench.run  # noqa: B018 - fail here, not half-way, when the engine is missing
        bench.report  # noqa: B018
    except (ImportError, AttributeError) as exc:
        raise CnnlensError(f"the benchmark engine (cnnlens.bench) is not available: {exc}") from exc
    return bench


#: Exit code of ``cnnlens bench`` when the study finished but some of its cells failed or were skipped
#: (1 is an unexpected error, 2 bad input, 130 an interruption).
EXIT_CELLS_FAILED = 3

#: ``cnnlens bench`` runs a study; ``cnnlens bench export DB`` exports one (a group with a default action).
bench_app = typer.Typer(cls=CnnlensGroup, invoke_without_command=True, no_args_is_help=False,
                        help="Run a benchmark study of the toolkits (or export one: `cnnlens bench export DB`).")
app.add_typer(bench_app, name="bench")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    suite: Annotated[str, typer.Option("--suite", help="smoke, standard, or a suite file (YAML/TOML/JSON).")] = "smoke",
    device: c.DeviceOpt = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Study folder (holds the SQLite database; a rerun resumes).")] = Path("cnnlens-bench"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start the study afresh (deletes its database and report).")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also write the report (report.md, report.html) into the study folder.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No estimate and no progress (a bar on a terminal, else a line every 30 s).")] = False,
    engine_name: Annotated[str, typer.Option("--engine", help="local (this process) or ray (Ray actors; pip install -e '.\\[ray]').")] = "local",
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Ray workers (default: one per CPU).")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Join a Ray cluster: auto or ray://host:port (default: start a local one).")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option("--gpus-per-worker", help="GPUs per Ray worker with --device cuda (0.5: two share a card).")] = None,
    no_retry: Annotated[bool, typer.Option("--no-retry", help="On a resume, keep failed and skipped cells as they are (default: run them again).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads for the study, per Ray worker with --engine ray (default: the suite's [study] threads, else torch's).")] = None,
) -> None:
    """Run a benchmark study of the toolkits and write its SQLite database (a rerun resumes).

    Exit code 0 when every cell finished, 3 when the study finished but some cells failed or were
    skipped (the end of the output says how many, why, and that the same command retries them).
    """
    if ctx.invoked_subcommand is not None:
        return
    from cnnlens import jobs, outputs

    engine = _bench_module()
    jobs.check_device(device)
    outputs.check_study_out(out)  # never a folder of the user's pictures
    if report and not overwrite:
        # Before any work. A resumed study keeps its report until `cnnlens report --overwrite`
        # rewrites it; --overwrite here starts the study afresh, report included.
        existing = outputs.existing_report(out)
        if existing:
            raise OutputExistsError(f"'{out}' already holds a report ({', '.join(existing)}); rewrite it with "
                                    f"`cnnlens report {out} --overwrite`, or run without --report")
    if report:
        outputs.check_report_out(out, overwrite=True)
    # The bar only on a terminal (in a log or a pipe tqdm's \r frames are noise; there a line on
    # stdout every 30 s), so that an error stays the one line on stderr.
    again = ["cnnlens", "bench", "--suite", suite, "--out", str(out), *(["--device", device] if device != "cpu" else []),
             *(["--engine", engine_name] if engine_name != "local" else []),
             *(["--workers", str(workers)] if workers is not None else []),
             *(["--address", address] if address is not None else [])]
    try:
        db = Path(engine.run(suite, device=device, out=out, overwrite=overwrite,
                             progress=not no_progress, engine=engine_name, workers=workers,
                             address=address, gpus_per_worker=gpus_per_worker, retry=not no_retry,
                             threads=threads))
    except KeyboardInterrupt:
        error("interrupted; every finished cell is saved, and the same command resumes the study: "
              f"{shlex.join(again + (['--report'] if report else []))}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    c.wrote(db, "study database")
    from cnnlens.bench.engine import failure_report

    # A report written now is rewritten after the retry with `cnnlens report --overwrite`.
    failed = failure_report(db, shlex.join(again) + (f"; then cnnlens report {shlex.quote(str(out))} --overwrite"
                                                     if report else ""))
    if report:
        md, html = engine.report(db, out)
        jobs.tidy_sqlite(db)
        c.wrote(Path(html), "report")
        c.wrote(Path(md), "report")
    else:
        c.plain(f"next: cnnlens report {shlex.quote(str(out))}   (writes report.md and report.html into {out})")
    if failed:
        for line in failed:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_CELLS_FAILED)


@bench_app.command("export", cls=CnnlensCommand)
def bench_export(
    db: Annotated[Path, typer.Argument(help="A study folder or database written by `cnnlens bench`.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", help="Output file (default: results.<format> next to DB).")] = None,
) -> None:
    """Export a study's results table (one row per model, image, method, backend, metric)."""
    from cnnlens import jobs

    engine = _bench_module()
    c.wrote(Path(engine.export(jobs.find_study(db), out, format=fmt)), "results table")


@command()
def report(
    db: Annotated[Path, typer.Argument(help="A study folder or database written by `cnnlens bench`.")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.md and report.html (default: the study folder).")] = None,
    overwrite: c.OverwriteOpt = False,
) -> None:
    """Write the Markdown and HTML report of a benchmark study."""
    from cnnlens import jobs, outputs

    engine = _bench_module()
    path = jobs.find_study(db)
    folder = out if out is not None else path.parent
    outputs.check_report_out(folder, overwrite)
    md, html = engine.report(path, folder)
    jobs.tidy_sqlite(path)
    c.wrote(Path(html), "report")
    c.wrote(Path(md), "report")
