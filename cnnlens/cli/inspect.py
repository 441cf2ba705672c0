"""``cnnlens kernels``, ``features``, ``filters``, ``methods`` and ``layers``: looking inside a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cnnlens.cli import _common as c
from cnnlens.cli._app import command
from cnnlens.errors import UnknownMethodError

ImagesArg = Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (JPEG, PNG, BMP, WebP, TIFF).")]


@command()
def kernels(
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    layer: Annotated[str | None, typer.Option("--layer", help="A Conv2d layer (default: the first one).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto, rgb (3 input channels), mean (over inputs) or channel.")] = "auto",
    channel: Annotated[int, typer.Option("--channel", help="Input channel for --mode channel.")] = 0,
    normalize: Annotated[str, typer.Option("--normalize", help="filter (each tile its own range) or layer (one range).")] = "filter",
    ncols: Annotated[int | None, typer.Option("--ncols", min=1, help="Tiles per row.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("kernels.png"),
    overwrite: c.OverwriteOpt = False,
    dpi: c.DpiOpt = 100,
    palette: c.PaletteOpt = False,
) -> None:
    """Draw a convolution's kernels (its weights), one tile per filter."""
    from cnnlens import jobs, plot
    from cnnlens.conv_kernels import kernels as get_kernels

    jobs.check_choice(mode, ("auto", "rgb", "mean", "channel"), "--mode")
    jobs.check_choice(normalize, ("filter", "layer"), "--normalize")
    plot.prepare_out_file(out, overwrite, option="--out")
    net = c.load_model(model, weights, arch, "cpu")
    k = get_kernels(net, layer, mode=mode, channel=channel, normalize=normalize)  # type: ignore[arg-type]
    fig = k.plot(ncols=ncols)
    c.save_figure(fig, out, dpi, palette)
    c.wrote(out, f"{len(k)} kernels of {k.layer} ({k.mode})")


@command()
def features(
    images: ImagesArg,
    layers: Annotated[str | None, typer.Option("--layers", help="Comma-separated layers (default: the first conv and the last feature map).")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Channels per layer, ranked by mean activation.")] = 16,
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    device: c.DeviceOpt = "cpu",
    size: c.SizeOpt = None,
    fit: Annotated[str, typer.Option("--fit", metavar="whole|crop", help="whole: the whole picture resized to the model's input; crop: the centre crop.")] = "whole",
    ncols: Annotated[int, typer.Option("--ncols", min=1, help="Channels per row.")] = 8,
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("features.png"),
    overwrite: c.OverwriteOpt = False,
    dpi: c.DpiOpt = 100,
    palette: c.PaletteOpt = False,
) -> None:
    """Draw the feature maps that images produce at some layers: the top channels of each, per image."""
    from cnnlens import images as img
    from cnnlens import jobs, plot

    jobs.check_picture_options(fit=fit)
    paths = c.image_paths(images)
    plot.prepare_out_file(out, overwrite, inputs=paths, option="--out")
    net = c.load_model(model, weights, arch, device, mean=mean, std=std)
    x = img.load_images(paths, net, size=size, fit=fit)
    names = c.csv(layers) or jobs.default_feature_layers(net, x.tensor)
    with c.progress_bar("forward") as progress:
        fm = jobs.capture_features(net, x, names, progress=progress)
    fig = fm.plot(top=top, images=x, ncols=ncols)
    c.save_figure(fig, out, dpi, palette)
    shapes = ", ".join(f"{n} {tuple(fm[n].shape[1:])}" for n in names)
    c.wrote(out, f"top {top} channels of {shapes} for {len(x)} image(s)")


@command()
def filters(
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    layer: Annotated[str | None, typer.Option("--layer", help="Layer with an (N, C, H, W) output (default: the middle convolution).")] = None,
    filter_ids: Annotated[str | None, typer.Option("--filters", help="Comma-separated filter indices (default: 4 chosen with --seed).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Gradient-ascent steps per filter.")] = 30,
    lr: Annotated[float, typer.Option("--lr", help="Step size.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the starting noise.")] = 0,
    size: c.SizeOpt = None,
    device: c.DeviceOpt = "cpu",
    ncols: Annotated[int, typer.Option("--ncols", min=1, help="Images per row.")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("filters.png"),
    overwrite: c.OverwriteOpt = False,
    dpi: c.DpiOpt = 100,
    palette: c.PaletteOpt = False,
) -> None:
    """Visualize what filters respond to, by gradient ascent on the input (FlashTorch)."""
    from cnnlens import jobs, plot

    plot.prepare_out_file(out, overwrite, option="--out")
    chosen = c.ints(filter_ids, "--filters")
    net = c.load_model(model, weights, arch, device)
    with c.progress_bar("filters") as progress:
        result = jobs.visualize_filters(net, chosen, layer=layer, steps=steps, lr=lr, seed=seed, size=size,
                                        progress=progress)
    from cnnlens.activmax import plot_filters

    fig = plot_filters(result, None, ncols=ncols, title=f"{result.layer} · {steps} steps · seed {seed}")
    c.save_figure(fig, out, dpi, palette)
    c.wrote(out, f"{len(result)} filter image(s) of {result.layer}")


@command()
def methods(
    pattern: Annotated[str, typer.Argument(help="Wildcard on the method name, e.g. '*cam*'.")] = "*",
    backend: Annotated[str | None, typer.Option("--backend", help="Only this backend.")] = None,
    json_out: c.JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the README's methods table (Markdown).")] = False,
) -> None:
    """List methods x backends, with availability and capabilities."""
    from cnnlens import jobs, registry

    if markdown:
        typer.echo(registry.markdown_table())
        return

    if backend is not None:
        jobs.check_backend(backend)
    names = registry.list_methods(pattern)
    if not names:
        raise UnknownMethodError(f"no method matches '{pattern}'; `cnnlens methods` lists all")
    backends = [backend] if backend else list(registry.BACKENDS)
    if json_out:
        rows: list[dict[str, Any]] = []
        for info in registry.methods(pattern, backend):
            row = {k: getattr(info, k) for k in ("method", "backend", "toolkit_name", "installed", "kind",
                                                  "needs_layer", "signed", "stochastic", "notes")}
            row["options"] = {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
                              for k, v in info.options.items()}
            row["summary"] = registry.METHODS[info.method].summary
            rows.append(row)
        c.print_json({"methods": rows,
                      "backends": {b: {"installed": registry.BACKENDS[b].installed, "pip": registry.BACKENDS[b].pip}
                                   for b in backends}})
        return
    wide = not c.is_terminal() or c.stdout().width >= 110  # the one-line summaries only fit a wide terminal
    cells_rows = []
    for m in names:
        cells = []
        for b in backends:
            if (m, b) in registry.REGISTRY:
                cells.append("✓" if registry.BACKENDS[b].installed else "✗")
            else:
                cells.append("·")
        if backend and cells[0] == "·":
            continue
        spec = registry.METHODS[m]
        extra = [spec.summary] if wide else []
        cells_rows.append([m, *cells, spec.kind, "yes" if spec.needs_layer else "", "yes" if spec.stochastic else "",
                           *extra])
    columns = ["method", *backends, "kind", "layer", "random", *(["what it is"] if wide else [])]
    c.table("methods x backends (✓ installed, ✗ not installed, · not offered)", columns, cells_rows,
            fold=["what it is"], styles={"✓": "green", "✗": "red"})
    for b in backends:
        if not registry.BACKENDS[b].installed:
            c.plain(f"{b} is not installed: {registry.BACKENDS[b].install}")
    c.plain(f"{len(cells_rows)} method(s); options per pair: cnnlens.methods() in Python or `cnnlens methods --json`")


@command()
def layers(
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    size: c.SizeOpt = None,
    pattern: Annotated[str, typer.Option("--pattern", help="Wildcard on the layer name, e.g. 'layer4*'.")] = "*",
    json_out: c.JsonOpt = False,
) -> None:
    """List the model's modules with output shapes from a dry forward pass, to choose --layer."""
    import fnmatch

    from cnnlens import jobs
    from cnnlens.layer_list import list_layers
    from cnnlens.models import meta_of

    net = c.load_model(model, weights, arch, "cpu")
    side = size or meta_of(net).crop
    rows, default = list_layers(net, size=side)
    index = {r.name: i for i, r in enumerate(rows)}
    shown = [r for r in rows if fnmatch.fnmatch(r.name, pattern)]
    # wt-vit adds `reshape` (the token-to-map preset a CAM would use) to the rows; shown when present.
    reshape = [getattr(r, "reshape", None) for r in shown]
    has_reshape = any(v is not None for v in reshape)
    if json_out:
        c.print_json({
            "model": jobs.model_name(net), "input": [1, 3, side, side], "default_layer": default,
            "layers": [{"index": index[r.name], "name": r.name, "type": r.type, "shape": list(r.shape) if r.shape else None,
                        "calls": r.calls, "spatial": r.spatial, "reshape": rs, "default": r.name == default}
                       for r, rs in zip(shown, reshape, strict=True)],
        })
        return
    table_rows = []
    for r, rs in zip(shown, reshape, strict=True):
        shape = "x".join(map(str, r.shape)) if r.shape else "(not a tensor)"
        mark = "← default CAM layer" if r.name == default else ""
        table_rows.append([str(index[r.name]), r.name, r.type, shape, *([rs or ""] if has_reshape else []), mark])
    columns = ["#", "layer", "type", "output shape", *(["reshape"] if has_reshape else []), ""]
    c.table(f"{jobs.model_name(net)}: modules in execution order, input 1x3x{side}x{side}", columns, table_rows,
            right=["#"])
    c.plain(f"{len(shown)} module(s); {jobs.num_outputs(net, side)} classes")
