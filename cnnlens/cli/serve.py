"""``cnnlens serve``: the local web app (:mod:`cnnlens.app`, an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnlens.cli import _common as c
from cnnlens.cli._app import command
from cnnlens.errors import CnnlensError


@command()
def serve(
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    classes: c.ClassesOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    device: c.DeviceOpt = "cpu",
    study: Annotated[Path | None, typer.Option(
        "--study", help="A study database (from `cnnlens bench`), open in the Study tab when the page loads.")] = None,
    studies: Annotated[Path | None, typer.Option(
        "--studies", help="A folder of study databases the Study tab offers (no other study can be opened).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; anything but 127.0.0.1 has no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: a free one).")] = 7860,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Also answer requests addressed to this host name (repeatable), e.g. a reverse "
        "proxy's; only 127.0.0.1, localhost and --host are answered otherwise.")] = None,
    time_budget: Annotated[float, typer.Option(
        "--time-budget", min=1, max=3600, help="Seconds one Explain request may run before it is stopped.")] = 60.0,
) -> None:
    """Start the local web app: explore one image with several methods and backends, browse studies."""
    import cnnlens.app as webapp
    from cnnlens import jobs

    webapp.require()
    if study is not None and not study.is_file():
        raise CnnlensError(f"study database '{study}' does not exist; run `cnnlens bench --out DIR` first")
    if studies is not None and not studies.is_dir():
        raise CnnlensError(f"--studies '{studies}' is not a folder; give the folder `cnnlens bench --out` wrote")
    from cnnlens.app.server import host_warning

    net = c.load_model(model, weights, arch, device, classes=classes, mean=mean, std=std)
    warning = host_warning(host)
    if warning:
        c.stderr().print(f"warning: {c.escape(warning)}")
    c.stderr().print("starting the web app (Ctrl-C stops it) ...")
    webapp.serve(net, study, host, port or None, name=jobs.model_name(net), block=True, quiet=True,
                 studies=studies, time_budget=time_budget, announce=True, allow_hosts=allow_host or ())
