"""The ``cnnlens`` command line.

Every command answers ``--help``. Bad input (any :class:`~cnnlens.errors.CnnlensError`, or a usage
error) prints one line to stderr and exits with code 2; ``--debug`` anywhere on the command line
prints the traceback instead. Outputs never replace an input image, and an existing output file or
non-empty output folder is only written to with ``--overwrite``.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperGroup

from cnnlens.errors import (
    BackendUnavailableError,
    CnnlensError,
    ModelError,
    OptionError,
    OutputError,
    UnknownMethodError,
    UnsupportedMethodError,
    close_matches,
)

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.progress import Progress
    from torch import Tensor, nn

    from cnnlens.explanation import Explanation
    from cnnlens.images import Images

DEBUG_FLAG = "--debug"
#: Exit code for bad input (usage errors and CnnlensError), as click uses for usage errors.
EXIT_BAD_INPUT = 2


def _debug_requested(args: list[str]) -> tuple[list[str], bool]:
    """Remove ``--debug`` from anywhere before a ``--`` separator, so it works after a subcommand too."""
    debug = os.environ.get("CNNLENS_DEBUG", "") not in ("", "0")
    out: list[str] = []
    for i, a in enumerate(args):
        if a == "--":
            out.extend(args[i:])
            break
        if a == DEBUG_FLAG:
            debug = True
            continue
        out.append(a)
    return out, debug


class CnnlensGroup(TyperGroup):
    """Typer's group with cnnlens' error contract: one line and exit code 2 for bad input."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv, debug = _debug_requested(list(sys.argv[1:] if args is None else args))
        code = 0
        with _quiet_warnings(debug):
            try:
                rv = super().main(argv, prog_name or "cnnlens", complete_var, standalone_mode=False, **extra)
                code = rv if isinstance(rv, int) else 0
            except CnnlensError as exc:
                if debug:
                    traceback.print_exc()
                _error(str(exc))
                code = EXIT_BAD_INPUT
            except click.exceptions.NoArgsIsHelpError as exc:  # the help is already printed
                code = exc.exit_code
            except click.exceptions.ClickException as exc:  # usage errors: bad option, missing argument
                if debug:
                    traceback.print_exc()
                hint = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
                _error(exc.format_message() + hint)
                code = exc.exit_code
            except (typer.Abort, KeyboardInterrupt):
                _error("aborted")
                code = 130
            except typer.Exit as exc:
                code = exc.exit_code
            except Exception as exc:
                if debug:
                    raise
                _error(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
                       "(rerun with --debug for the traceback; please report it if cnnlens is at fault)")
                code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _error(message: str) -> None:
    # One line: a message that spans lines (a toolkit's error text) is joined.
    line = " ".join(message.split())
    click.echo(f"cnnlens: error: {line}", err=True)


@contextlib.contextmanager
def _quiet_warnings(debug: bool) -> Iterator[None]:
    """Toolkits warn a lot (Captum about requires_grad, FlashTorch deprecations); the CLI prints
    cnnlens' own caveats from the results instead. ``--debug`` shows everything."""
    if debug:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


app = typer.Typer(
    cls=CnnlensGroup,
    name="cnnlens",
    help="See what a CNN sees: CAM and saliency maps from pytorch-grad-cam, Captum and FlashTorch, "
    "kernels, feature maps and filter visualization, and a benchmark of the toolkits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from cnnlens import __version__

        click.echo(f"cnnlens {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors (also after a command).")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    """cnnlens command line."""


# ------------------------------------------------------------------------------------------------
# Shared options and helpers
# ------------------------------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Model: omit for the embedded EfficientNet-Lite0 (offline); a torchvision name "
                 "(resnet50, vgg11, ...); a .pt/.pth state dict (with --arch) or TorchScript file; or "
                 "'package.module:callable'."),
]
WeightsOpt = Annotated[
    str,
    typer.Option("--weights", help="torchvision weights: an enum name (IMAGENET1K_V1), DEFAULT, or none for random "
                 "weights. Cached weights in the torch hub folder are used offline."),
]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="Architecture of a state-dict file, e.g. resnet18.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file or write into a non-empty folder.")]
DpiOpt = Annotated[int, typer.Option("--dpi", min=20, max=600, help="Resolution of the saved picture.")]
PaletteOpt = Annotated[bool, typer.Option("--palette", help="Write a 256-colour PNG, about a third of the size (for READMEs).")]
SizeOpt = Annotated[int | None, typer.Option("--size", min=8, help="Crop size of the images (default: the model's).")]


def _stdout() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = _stderr()
    # Off when stderr is not a terminal: rich's transient bar then leaves a blank line in logs and pipes.
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _ints(value: str | None, what: str) -> list[int] | None:
    items = _csv(value)
    if not items:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise OptionError(f"{what} must be comma-separated integers such as 0,5,9; got '{value}'") from None


def _weights(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", "none", "null", "random") else value


def _target(value: str | None) -> Any:
    """``--target``: an index or class name for every image, or a comma-separated list, one per image."""
    items = _csv(value)
    if not items:
        return None
    parsed: list[int | str] = [int(t) if t.lstrip("-").isdigit() else t for t in items]
    return parsed[0] if len(parsed) == 1 else parsed


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-o key=value`` pairs; values are Python literals when they parse as one (16, 0.5, True)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"option '{pair}' must look like key=value, e.g. -o n_steps=16")
        try:
            value: Any = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        out[key.strip()] = value
    return out


def _load_model(model: str | None, weights: str, arch: str | None, device: str) -> nn.Module:
    from cnnlens.models import load_model

    return load_model(model, weights=_weights(weights), arch=arch, device=device)


def _model_name(model: nn.Module) -> str:
    from cnnlens.models import meta_of

    meta = meta_of(model)
    return f"{meta.name} ({meta.weights or 'random weights'})"


def _wrote(path: Path, what: str) -> None:
    from rich.markup import escape

    _stdout().print(f"wrote {escape(what)}: [bold]{escape(str(path))}[/bold]", highlight=False)


def _save_figure(fig: Any, out: Path, dpi: int, palette: bool = False) -> None:
    from cnnlens.plot import save_figure

    save_figure(fig, out, dpi, palette=palette)


# ------------------------------------------------------------------------------------------------
# explain / compare / demo
# ------------------------------------------------------------------------------------------------


def _pairs(methods: Sequence[str], backends: Sequence[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """Every existing (method, backend) pair, in the order asked; and notes on what was skipped."""
    from cnnlens import registry

    if not methods:
        raise OptionError("no method given; e.g. --methods gradcam,saliency (`cnnlens methods` lists them)")
    for m in methods:
        if m not in registry.METHODS:
            registry.resolve(m)  # raises UnknownMethodError with close matches
    explicit = backends is not None
    chosen = list(backends) if backends else list(registry.BACKENDS)
    for b in chosen:
        if b not in registry.BACKENDS:
            hint = close_matches(b, registry.BACKENDS)
            extra = f"; did you mean {hint}?" if hint else ""
            raise BackendUnavailableError(f"unknown backend '{b}'{extra}; backends: {', '.join(registry.BACKENDS)}")
    pairs: list[tuple[str, str]] = []
    notes: list[str] = []
    for m in methods:
        for b in chosen:
            if (m, b) not in registry.REGISTRY:
                continue
            if not registry.BACKENDS[b].installed:
                if explicit:
                    registry.BACKENDS[b].require()  # raises with the install command
                notes.append(f"skipped {m} on {b}: '{registry.BACKENDS[b].pip}' is not installed")
                continue
            pairs.append((m, b))
    if not pairs:
        have = {m: ", ".join(registry.backends_for(m)) for m in methods}
        detail = "; ".join(f"{m}: {b}" for m, b in have.items())
        raise UnsupportedMethodError(
            f"no installed backend among {', '.join(chosen)} has {', '.join(methods)} (backends that have them: {detail})"
        )
    return pairs, notes


def _warm_up(net: nn.Module, x: Tensor) -> None:
    """One untimed forward and input-gradient pass, so that one-time costs (the allocator's first
    blocks, kernel selection, lazy initialisation) do not land on whichever pair is timed first: on
    the demo the first CAM read 0.19-0.60 s and the first saliency 0.26-0.63 s against 0.06 s and
    0.14-0.18 s once warm. Errors are left to the real calls, which report them properly."""
    import torch

    from cnnlens._guard import ModelGuard

    try:
        with ModelGuard(net), torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            out = net(xi)
            torch.autograd.grad(out.max(dim=1).values.sum(), xi)
    except Exception:  # the explainers raise the proper error for the same input
        pass


def _run_pairs(
    model: nn.Module,
    x: Images,
    pairs: Sequence[tuple[str, str]],
    *,
    layer: str | None,
    target: Any,
    options: dict[str, Any],
    per_pair: dict[tuple[str, str], dict[str, Any]] | None = None,
    batch_size: int = 8,
) -> list[Explanation]:
    """Explain ``x`` with every pair, in chunks of ``batch_size`` images, with a progress bar."""
    from cnnlens import registry
    from cnnlens.explainer import Explainer
    from cnnlens.explanation import Explanation

    used: set[str] = set()
    explainers = []
    for m, b in pairs:  # build every explainer first: bad options and layers fail before any work
        impl = registry.REGISTRY[(m, b)]
        accepted = impl.all_options()
        opts = {k: v for k, v in options.items() if k in accepted}
        used.update(opts)
        opts.update((per_pair or {}).get((m, b), {}))
        explainers.append(Explainer(model, m, b, layer=layer if impl.spec.needs_layer else None, **opts))
    unused = sorted(set(options) - used)
    if unused:
        valid = sorted({k for m, b in pairs for k in registry.REGISTRY[(m, b)].all_options()})
        hint = close_matches(unused[0], valid)
        raise OptionError(
            f"unknown option(s) {', '.join(unused)} for {', '.join(f'{m}/{b}' for m, b in pairs)}"
            f"{f' (did you mean {hint}?)' if hint else ''}; valid options: {', '.join(valid) or 'none'}"
        )
    n = len(x)
    chunks = -(-n // batch_size)
    results = []
    with _progress() as bar:
        task = bar.add_task("explaining", total=len(explainers) * chunks)
        bar.update(task, description="warming up (one untimed forward and backward)")
        _warm_up(explainers[0].net, x.tensor[:batch_size])
        for ex in explainers:
            parts = []
            bar.update(task, description=f"{ex.method} · {ex.backend} · images 1-{min(batch_size, n)} of {n}")
            # The library chunks (and checks every target before the first chunk); the CLI shows progress.
            for _start, stop, part in ex.explain_chunks(x, target=target, chunk_size=batch_size):
                parts.append(part)
                bar.advance(task)
                if stop < n:
                    bar.update(task, description=f"{ex.method} · {ex.backend} · images {stop + 1}-"
                                                 f"{min(stop + batch_size, n)} of {n}")
            results.append(Explanation.concat(parts))
    return results


def _print_results(model: nn.Module, names: Sequence[str], expls: Sequence[Explanation]) -> None:
    from rich.table import Table

    console = _stdout()
    first = expls[0]
    table = Table(title=f"{_model_name(model)}: explained classes", title_justify="left")
    table.add_column("image")
    table.add_column("class")
    table.add_column("p", justify="right")
    for i, name in enumerate(names):
        label = first.labels[i] if first.labels else str(int(first.targets[i]))
        p = f"{float(first.scores[i]):.3f}" if first.scores is not None else "(given)"
        table.add_row(_escape(str(name)), _escape(f"{label} ({int(first.targets[i])})"), p)
    console.print(table)
    times = Table(title="time per method and backend", title_justify="left")
    times.add_column("method")
    times.add_column("backend")
    times.add_column("layer")
    times.add_column("seconds", justify="right")
    for e in expls:
        times.add_row(e.method, e.backend, e.layer or "-", f"{e.seconds:.2f}")
    console.print(times)
    for w in dict.fromkeys(w for e in expls for w in e.warnings):
        _stderr().print(f"[yellow]warning:[/yellow] {_escape(w)}", highlight=False)


def _explain_job(
    images: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    notes: Sequence[str],
    *,
    model: str | None,
    weights: str,
    arch: str | None,
    target: str | None,
    layer: str | None,
    device: str,
    out: Path,
    overwrite: bool,
    options: dict[str, Any],
    save: Path | None,
    size: int | None,
    batch_size: int,
    cmap: str,
    alpha: float,
    dpi: int,
    palette: bool = False,
    title: str | None = None,
    per_pair: dict[tuple[str, str], dict[str, Any]] | None = None,
    demo: bool = False,
) -> None:
    from cnnlens import images as img
    from cnnlens import plot

    paths = img.demo_paths() if demo else img.expand(list(images))
    plot.prepare_out_file(out, overwrite, inputs=paths)
    out_existed = out.exists()
    save_existed = save is not None and save.exists()
    if save is not None:
        if any(Path(p).resolve().is_relative_to(save.resolve()) for p in paths):
            raise OptionError(f"--save folder '{save}' holds input images; choose a folder of its own")
        plot.prepare_out_dir(save, overwrite)
    for note in notes:
        _stderr().print(f"[yellow]note:[/yellow] {_escape(note)}", highlight=False)
    net = _load_model(model, weights, arch, device)
    x = img.load_images(paths, net, size=size)
    expls = _run_pairs(net, x, pairs, layer=layer, target=_target(target), options=options, per_pair=per_pair,
                       batch_size=batch_size)
    _print_results(net, x.names, expls)
    fig = plot.comparison_grid(expls, x, cmap=cmap, alpha=alpha, title=title or _model_name(net))
    _save_figure(fig, out, dpi, palette)
    if save is not None:
        try:
            _save_all(expls, save, overwrite)
        except OutputError:
            # Leave nothing this run wrote that would make the rerun ask for --overwrite.
            if not out_existed:
                out.unlink(missing_ok=True)
            if not save_existed:
                with contextlib.suppress(OSError):
                    save.rmdir()
            raise
        _wrote(save, "overlays, maps and manifests")
    _wrote(out, f"{len(expls)} explanation(s) of {len(x)} image(s)")


def _save_all(expls: Sequence[Explanation], save: Path, overwrite: bool) -> None:
    """Each explanation into its own folder under ``save``; on a failed write, remove the folders this
    call created (``Explanation.save`` already removes its own partial files)."""
    from cnnlens.explanation import _previous_files

    created: list[Path] = []
    try:
        for e in expls:
            folder = save / f"{e.method}__{e.backend}"
            existed = folder.exists()
            e.save(folder, overwrite=overwrite)
            if not existed:
                created.append(folder)
    except OutputError:
        for folder in created:
            for name in _previous_files(folder):
                (folder / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


ImagesArg = Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (JPEG, PNG, BMP, WebP, TIFF).")]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", help="Class index or name to explain for every image, or a comma-separated list with "
                 "one per image (default: the predicted class)."),
]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="Layer for CAM methods (default: the last feature map; see `cnnlens layers`).")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value, e.g. -o n_steps=16 (repeatable).")]
SaveOpt = Annotated[Path | None, typer.Option("--save", help="Also write each explanation's overlays, maps.pt and manifest.json into this folder.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per backend call.")]
CmapOpt = Annotated[str, typer.Option("--cmap", help="Heatmap colormap.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Heatmap weight in the overlay.")]


@app.command()
def explain(
    images: ImagesArg,
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated methods (`cnnlens methods` lists them).")] = "gradcam",
    backends: Annotated[str | None, typer.Option("--backends", "-b", help="Comma-separated backends (default: every installed one).")] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Output picture (.png, .pdf, .svg).")] = Path("grid.png"),
    overwrite: OverwriteOpt = False,
    option: OptionOpt = None,
    save: SaveOpt = None,
    size: SizeOpt = None,
    batch_size: BatchOpt = 8,
    cmap: CmapOpt = "jet",
    alpha: AlphaOpt = 0.5,
    dpi: DpiOpt = 100,
    palette: PaletteOpt = False,
) -> None:
    """Explain images with every (method, backend) pair that exists, and draw a comparison grid."""
    pairs, notes = _pairs(_csv(methods), _csv(backends) or None)
    _explain_job(images, pairs, notes, model=model, weights=weights, arch=arch, target=target, layer=layer,
                 device=device, out=out, overwrite=overwrite, options=_options(option or []), save=save, size=size,
                 batch_size=batch_size, cmap=cmap, alpha=alpha, dpi=dpi, palette=palette)


@app.command()
def compare(
    images: ImagesArg,
    method: Annotated[str, typer.Option("--method", "-m", help="One method, run on every backend that has it.")] = "gradcam",
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    device: DeviceOpt = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Output picture (.png, .pdf, .svg).")] = Path("compare.png"),
    overwrite: OverwriteOpt = False,
    option: OptionOpt = None,
    save: SaveOpt = None,
    size: SizeOpt = None,
    batch_size: BatchOpt = 8,
    cmap: CmapOpt = "jet",
    alpha: AlphaOpt = 0.5,
    dpi: DpiOpt = 100,
    palette: PaletteOpt = False,
) -> None:
    """One method on every installed backend that has it, side by side."""
    pairs, notes = _pairs([method.strip()], None)
    _explain_job(images, pairs, notes, model=model, weights=weights, arch=arch, target=target, layer=layer,
                 device=device, out=out, overwrite=overwrite, options=_options(option or []), save=save, size=size,
                 batch_size=batch_size, cmap=cmap, alpha=alpha, dpi=dpi, palette=palette,
                 title=f"{method} on every backend")


#: What `cnnlens demo` runs: one method per backend, and one method on two backends to compare.
DEMO_PAIRS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("gradcam", "pytorch-grad-cam", {}),
    ("gradcam", "captum", {}),
    ("saliency", "flashtorch", {}),
    ("saliency", "captum", {}),
    ("integrated_gradients", "captum", {"n_steps": 12}),
)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("cnnlens-demo/grid.png"),
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "cpu",
    save: SaveOpt = None,
    dpi: DpiOpt = 100,
    palette: PaletteOpt = False,
) -> None:
    """The README's main job: explain the bundled photos with the embedded model on every toolkit, as one grid.

    Grad-CAM on pytorch-grad-cam and Captum, saliency on Captum and FlashTorch, and Integrated Gradients on Captum, on EfficientNet-Lite0 with ImageNet weights (offline).
    """
    from cnnlens import registry

    pairs = [(m, b) for m, b, _ in DEMO_PAIRS if registry.BACKENDS[b].installed]
    notes = [f"skipped {m} on {b}: '{registry.BACKENDS[b].pip}' is not installed"
             for m, b, _ in DEMO_PAIRS if not registry.BACKENDS[b].installed]
    per_pair = {(m, b): opts for m, b, opts in DEMO_PAIRS}
    _explain_job([], pairs, notes, model=None, weights="DEFAULT", arch=None, target=None, layer=None, device=device,
                 out=out, overwrite=overwrite, options={}, save=save, size=None, batch_size=8, cmap="jet", alpha=0.5,
                 dpi=dpi, palette=palette, per_pair=per_pair, demo=True, title="cnnlens demo: EfficientNet-Lite0 (embedded, ImageNet)")


# ------------------------------------------------------------------------------------------------
# kernels / features / filters
# ------------------------------------------------------------------------------------------------


@app.command()
def kernels(
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    layer: Annotated[str | None, typer.Option("--layer", help="A Conv2d layer (default: the first one).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto, rgb (3 input channels), mean (over inputs) or channel.")] = "auto",
    channel: Annotated[int, typer.Option("--channel", help="Input channel for --mode channel.")] = 0,
    normalize: Annotated[str, typer.Option("--normalize", help="filter (each tile its own range) or layer (one range).")] = "filter",
    ncols: Annotated[int | None, typer.Option("--ncols", min=1, help="Tiles per row.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("kernels.png"),
    overwrite: OverwriteOpt = False,
    dpi: DpiOpt = 100,
    palette: PaletteOpt = False,
) -> None:
    """Draw a convolution's kernels (its weights), one tile per filter."""
    from cnnlens import plot
    from cnnlens.conv_kernels import kernels as get_kernels

    plot.prepare_out_file(out, overwrite)
    net = _load_model(model, weights, arch, "cpu")
    k = get_kernels(net, layer, mode=mode, channel=channel, normalize=normalize)  # type: ignore[arg-type]
    fig = k.plot(ncols=ncols)
    _save_figure(fig, out, dpi, palette)
    _wrote(out, f"{len(k)} kernels of {k.layer} ({k.mode})")


def _default_feature_layers(net: nn.Module, x: Tensor) -> list[str]:
    """The first conv and the last feature map: the two ends of the tutorial's progression."""
    from torch import nn

    from cnnlens import _resolve

    probe = _resolve.probe(net, x[:1])
    calls: dict[str, int] = {}
    for n, _s in probe.order:
        calls[n] = calls.get(n, 0) + 1
    # A module the model runs more than once per forward (a shared activation) has no single map.
    spatial = [n for n, s in probe.order
               if calls[n] == 1 and s is not None and len(s) == 4 and (s[2] > 1 or s[3] > 1)]
    modules = dict(net.named_modules())
    # The first convolution that runs (definition order can differ).
    first = next((n for n, _s in probe.order if isinstance(modules.get(n), nn.Conv2d) and calls[n] == 1), None)
    picked = [n for n in (first, spatial[-1] if spatial else None) if n]
    if not picked:
        raise ModelError("the model has no layer with an (N, C, H, W) output; name layers with --layers")
    return list(dict.fromkeys(picked))


@app.command()
def features(
    images: ImagesArg,
    layers: Annotated[str | None, typer.Option("--layers", help="Comma-separated layers (default: the first conv and the last feature map).")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Channels per layer, ranked by mean activation.")] = 16,
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    size: SizeOpt = None,
    ncols: Annotated[int, typer.Option("--ncols", min=1, help="Channels per row.")] = 8,
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("features.png"),
    overwrite: OverwriteOpt = False,
    dpi: DpiOpt = 100,
    palette: PaletteOpt = False,
) -> None:
    """Draw the feature maps that images produce at some layers: the top channels of each, per image."""
    import torch

    from cnnlens import images as img
    from cnnlens import plot
    from cnnlens.featuremaps import FeatureMaps, capture

    paths = img.expand(list(images))
    plot.prepare_out_file(out, overwrite, inputs=paths)
    net = _load_model(model, weights, arch, device)
    x = img.load_images(paths, net, size=size)
    names = _csv(layers) or _default_feature_layers(net, x.tensor)
    parts = []
    with _progress() as bar, torch.no_grad():
        task = bar.add_task("forward", total=len(x))
        for i in range(len(x)):
            bar.update(task, description=f"forward · image {i + 1} of {len(x)}")
            with capture(net, names, device="cpu", inputs=False) as part:
                net(x.tensor[i : i + 1])
            parts.append(part)
            bar.advance(task)
    fm = FeatureMaps.concat(parts)
    fig = fm.plot(top=top, images=x, ncols=ncols)
    _save_figure(fig, out, dpi, palette)
    shapes = ", ".join(f"{n} {tuple(fm[n].shape[1:])}" for n in names)
    _wrote(out, f"top {top} channels of {shapes} for {len(x)} image(s)")


@app.command()
def filters(
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    layer: Annotated[str | None, typer.Option("--layer", help="Layer with an (N, C, H, W) output (default: the middle convolution).")] = None,
    filter_ids: Annotated[str | None, typer.Option("--filters", help="Comma-separated filter indices (default: 4 chosen with --seed).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Gradient-ascent steps per filter.")] = 30,
    lr: Annotated[float, typer.Option("--lr", help="Step size.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the starting noise.")] = 0,
    size: SizeOpt = None,
    device: DeviceOpt = "cpu",
    ncols: Annotated[int, typer.Option("--ncols", min=1, help="Images per row.")] = 4,
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("filters.png"),
    overwrite: OverwriteOpt = False,
    dpi: DpiOpt = 100,
    palette: PaletteOpt = False,
) -> None:
    """Visualize what filters respond to, by gradient ascent on the input (FlashTorch)."""
    from cnnlens import plot

    try:
        from cnnlens.activmax import FilterImages, plot_filters
        from cnnlens.activmax import filters as run_filters
    except ImportError as exc:
        raise CnnlensError(f"filter visualization is not available in this cnnlens: {exc}") from exc
    plot.prepare_out_file(out, overwrite)
    net = _load_model(model, weights, arch, device)
    chosen: Any = _ints(filter_ids, "--filters")
    kw = {"layer": layer, "steps": steps, "lr": lr, "seed": seed, "size": size}
    channels = _check_filter_ids(net, layer, chosen or [], size)  # one dry forward: refuse a bad index before any work
    if chosen is None and channels is not None:
        from cnnlens.activmax import _choose

        chosen = _choose(None, channels, seed)  # the seeded choice filters() makes, so that the bar can show it
    if chosen is None:
        result = run_filters(net, filters=None, **kw)  # the seeded choice is made inside
    else:
        parts = []
        with _progress() as bar:
            task = bar.add_task("filters", total=len(chosen))
            for f in chosen:
                bar.update(task, description=f"gradient ascent · filter {f}")
                parts.append(run_filters(net, filters=[f], **kw))
                bar.advance(task)
        result = FilterImages.concat(parts)
    fig = plot_filters(result, None, ncols=ncols, title=f"{result.layer} · {steps} steps · seed {seed}")
    _save_figure(fig, out, dpi, palette)
    _wrote(out, f"{len(result)} filter image(s) of {result.layer}")


def _check_filter_ids(net: nn.Module, layer: str | None, chosen: Sequence[int], size: int | None) -> int | None:
    """Refuse an out-of-range filter index; return the layer's channel count (None: filters() will explain)."""
    import torch

    from cnnlens import _resolve
    from cnnlens.models import meta_of

    side = size or meta_of(net).crop
    x = torch.zeros(1, 3, side, side, dtype=_resolve.model_dtype(net), device=_resolve.model_device(net))
    probe = _resolve.probe_or_fail(net, x, at=f" at {side}x{side}")
    _module, name = _resolve.resolve_layer(net, layer, probe)
    shapes = [s for n, s in probe.order if n == name]
    if not shapes or shapes[0] is None or len(shapes[0]) != 4:
        return None  # filters() explains what is wrong with the layer
    channels = int(shapes[0][1])
    for f in chosen:
        if not 0 <= f < channels:
            raise OptionError(f"filter {f} is out of range: layer '{name}' has {channels} filters (0..{channels - 1})")
    return channels


# ------------------------------------------------------------------------------------------------
# methods / layers
# ------------------------------------------------------------------------------------------------


@app.command()
def methods(
    pattern: Annotated[str, typer.Argument(help="Wildcard on the method name, e.g. '*cam*'.")] = "*",
    backend: Annotated[str | None, typer.Option("--backend", help="Only this backend.")] = None,
) -> None:
    """List methods x backends, with availability and capabilities."""
    from rich.table import Table

    from cnnlens import registry

    if backend is not None and backend not in registry.BACKENDS:
        hint = close_matches(backend, registry.BACKENDS)
        extra = f"; did you mean {hint}?" if hint else ""
        raise BackendUnavailableError(f"unknown backend '{backend}'{extra}; backends: {', '.join(registry.BACKENDS)}")
    names = [m for m in registry.list_methods(pattern)]
    if not names:
        raise UnknownMethodError(f"no method matches '{pattern}'; `cnnlens methods` lists all")
    backends = [backend] if backend else list(registry.BACKENDS)
    table = Table(title="methods x backends (✓ installed, ✗ not installed, · not offered)", title_justify="left")
    table.add_column("method", no_wrap=True)
    for b in backends:
        table.add_column(b.replace("-", "-\n", 1) if b == "pytorch-grad-cam" else b, justify="center", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("layer", justify="center", no_wrap=True)
    table.add_column("random", justify="center", no_wrap=True)
    console = _stdout()
    wide = console.width >= 110  # the one-line summaries only fit a wide terminal
    if wide:
        table.add_column("what it is", overflow="fold", ratio=1)
    shown = 0
    for m in names:
        cells = []
        for b in backends:
            if (m, b) in registry.REGISTRY:
                cells.append("[green]✓[/green]" if registry.BACKENDS[b].installed else "[red]✗[/red]")
            else:
                cells.append("·")
        if backend and cells[0] == "·":
            continue
        spec = registry.METHODS[m]
        extra = [spec.summary] if wide else []
        table.add_row(m, *cells, spec.kind, "yes" if spec.needs_layer else "", "yes" if spec.stochastic else "", *extra)
        shown += 1
    console.print(table)
    missing = [b for b in backends if not registry.BACKENDS[b].installed]
    for b in missing:
        console.print(f"{b} is not installed: pip install '{registry.BACKENDS[b].pip}'")
    console.print(f"{shown} method(s); options per pair: cnnlens.methods() in Python")


@app.command()
def layers(
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    size: SizeOpt = None,
    pattern: Annotated[str, typer.Option("--pattern", help="Wildcard on the layer name, e.g. 'layer4*'.")] = "*",
) -> None:
    """List the model's modules with output shapes from a dry forward pass, to choose --layer."""
    import fnmatch

    import torch
    from rich.table import Table

    from cnnlens import _resolve, reshape
    from cnnlens.models import meta_of

    net = _load_model(model, weights, arch, "cpu")
    meta = meta_of(net)
    side = size or meta.crop
    x = torch.zeros(1, 3, side, side, dtype=_resolve.model_dtype(net))
    try:
        probe = _resolve.probe(net, x)
    except CnnlensError:
        raise
    except Exception as exc:
        raise ModelError(f"the model's forward pass failed on a 1x3x{side}x{side} input: {type(exc).__name__}: {exc}") from exc
    try:
        default = _resolve.resolve_layer(net, None, probe)[1]
    except CnnlensError:
        default = None
    named = dict(net.named_modules())
    table = Table(title=f"{_model_name(net)}: modules in execution order, input 1x3x{side}x{side}", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("layer", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("output shape", no_wrap=True)
    table.add_column("", overflow="fold")
    seen: set[str] = set()
    for i, (name, shape) in enumerate(probe.order):
        if name in seen or not fnmatch.fnmatch(name, pattern):
            continue
        seen.add(name)
        mod = named.get(name)
        kind = getattr(mod, "original_name", None) or type(mod).__name__
        mark = "← default CAM layer" if name == default else ""
        shape_as = reshape.name_of(reshape.for_layer(net, name)) if shape else None  # token / channels-last layer
        mark = f"{mark} reshape={shape_as}".strip() if shape_as else mark
        table.add_row(str(i), name, kind, "x".join(map(str, shape)) if shape else "(not a tensor)", mark)
    console = _stdout()
    console.print(table)
    console.print(f"{len(seen)} module(s); {probe.num_classes} classes")


# ------------------------------------------------------------------------------------------------
# bench / report
# ------------------------------------------------------------------------------------------------


def _bench_module() -> Any:
    try:
        import cnnlens.bench as bench

        bench.run  # noqa: B018 - fail here, not half-way, when the engine is missing
        bench.report  # noqa: B018
    except (ImportError, AttributeError) as exc:
        raise CnnlensError(f"the benchmark engine (cnnlens.bench) is not available: {exc}") from exc
    return bench


@app.command()
def bench(
    suite: Annotated[str, typer.Option("--suite", help="smoke, standard, or a suite file (YAML/TOML/JSON).")] = "smoke",
    device: DeviceOpt = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Study folder (holds the SQLite database; a rerun resumes).")] = Path("cnnlens-bench"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a benchmark study of the toolkits and write its SQLite database."""
    engine = _bench_module()
    # The bar only on a terminal, as the other commands do: in a log or a pipe it is noise, and an
    # error must stay the one line on stderr.
    db = engine.run(suite, device=device, out=out, overwrite=overwrite, progress=sys.stderr.isatty())
    _wrote(Path(db), "study database")


@app.command()
def report(
    db: Annotated[Path, typer.Argument(help="A study database written by `cnnlens bench`.")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.md and report.html (default: next to DB).")] = None,
) -> None:
    """Write the Markdown and HTML report of a benchmark study."""
    engine = _bench_module()
    md, html = engine.report(db, out)
    _wrote(Path(md), "report")
    _wrote(Path(html), "report")


# ------------------------------------------------------------------------------------------------
# serve (the web app: cnnlens.app, an optional extra)
# ------------------------------------------------------------------------------------------------


@app.command()
def serve(
    model: ModelOpt = None,
    weights: WeightsOpt = "DEFAULT",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    study: Annotated[Path | None, typer.Option("--study", help="A study database to browse (from `cnnlens bench`).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind; anything but 127.0.0.1 has no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: a free one).")] = 7860,
) -> None:
    """Start the local web app: explore one image with several methods and backends, browse a study."""
    import cnnlens.app as webapp

    webapp.require()
    if study is not None and not study.is_file():
        raise CnnlensError(f"study database '{study}' does not exist; run `cnnlens bench --out DIR` first")
    from cnnlens.app.server import host_warning

    net = _load_model(model, weights, arch, device)
    warning = host_warning(host)
    if warning:
        _stderr().print(f"warning: {_escape(warning)}")
    _stderr().print("starting the web app (Ctrl-C stops it) ...")
    webapp.serve(net, study, host, port or None, name=_model_name(net), block=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``cnnlens`` script (exits with the command's status)."""
    command = typer.main.get_command(app)
    command.main(args=list(argv) if argv is not None else None, prog_name="cnnlens")


if __name__ == "__main__":  # pragma: no cover
    main()
