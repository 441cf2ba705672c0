"""``cnnlens explain``, ``compare`` and ``demo``: explanations drawn as a comparison grid."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnnlens.cli import _common as c
from cnnlens.cli._app import command
from cnnlens.errors import OutputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from cnnlens.explanation import Explanation

ImagesArg = Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (JPEG, PNG, BMP, WebP, TIFF).")]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", help="Class index or name to explain for every image, or a comma-separated list with "
                 "one per image (default: the predicted class)."),
]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="Layer for CAM methods (default: the last feature map; see `cnnlens layers`).")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value, e.g. -o n_steps=16 (repeatable).")]
SaveOpt = Annotated[Path | None, typer.Option("--save", help="Also write each explanation's overlays, maps and manifest.json into this folder.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per backend call.")]
CmapOpt = Annotated[str | None, typer.Option("--cmap", help="Heatmap colormap, matplotlib's names (default: jet; bwr for --sign all).")]
AlphaOpt = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Heatmap weight in the overlay.")]
SignOpt = Annotated[
    str | None,
    typer.Option("--sign", metavar="absolute|positive|negative|all",
                 help="Draw the signed attribution as Captum's visualize_image_attr does: absolute, positive, negative, "
                 "or all (a diverging map centred at zero, with a colour bar). Default: the [0, 1] maps "
                 "(all for pixel maps reduced with sum or max)."),
]
OutlierOpt = Annotated[
    float,
    typer.Option("--outlier-perc",
                 help="With --sign: percent of the total attribution left above the colour scale (Captum's outlier_perc)."),
]
ReduceOpt = Annotated[
    str | None,
    typer.Option("--reduce", metavar="abs_max|abs_sum|sum|max|l2|abs_mean",
                 help="How pixel attributions become one map per image (default abs_max; sum and max keep the sign)."),
]
FitOpt = Annotated[
    str,
    typer.Option("--fit", metavar="whole|crop",
                 help="whole: the model sees the whole picture resized to its input; crop: the centre crop of "
                 "torchvision's preset. Overlays are drawn on the original picture either way."),
]


def _print_results(model: nn.Module, names: Sequence[str], expls: Sequence[Explanation]) -> None:
    from cnnlens.jobs import agreement, model_name

    first = expls[0]
    rows = []
    for i, name in enumerate(names):
        label = first.labels[i] if first.labels else str(int(first.targets[i]))
        p = f"{float(first.scores[i]):.3f}" if first.scores is not None else "(given)"
        rows.append([str(name), f"{label} ({int(first.targets[i])})", p])
    c.table(f"{model_name(model)}: explained classes", ["image", "class", "p"], rows, right=["p"])
    c.table("time per method and backend", ["method", "backend", "layer", "seconds"],
            [[e.method, e.backend, e.layer or "-", f"{e.seconds:.2f}"] for e in expls], right=["seconds"])
    agree = agreement(names, expls)
    if agree:
        cols = ["pearson", "spearman", "ssim", "iou_top5"]
        c.table("agreement between backends (contract maps; 1 = identical)", ["method", "backends", "image", *cols],
                [[r["method"], r["backends"], r["image"], *("-" if r[k] is None else f"{r[k]:.3f}" for k in cols)]
                 for r in agree], right=cols)


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
    cmap: str | None,
    alpha: float,
    dpi: int,
    palette: bool = False,
    sign: str | None = None,
    outlier_perc: float = 2.0,
    reduce: str | None = None,
    fit: str = "whole",
    title: str | None = None,
    per_pair: dict[tuple[str, str], dict[str, Any]] | None = None,
    demo: bool = False,
    json_out: bool = False,
    classes: Path | None = None,
    mean: str | None = None,
    std: str | None = None,
    threads: int | None = None,
) -> None:
    from cnnlens import images as img
    from cnnlens import jobs, plot

    # Every check before any work: how it is drawn, the output paths, the device, the model, the
    # explainers (methods, options, layers), the images and the targets.
    sign = jobs.check_picture_options(cmap=cmap, alpha=alpha, sign=sign, outlier_perc=outlier_perc, reduce=reduce,
                                      fit=fit)
    jobs.check_device(device)
    paths = img.demo_paths() if demo else c.image_paths(images)
    plot.prepare_out_file(out, overwrite, inputs=paths, option="--out")
    out_existed = out.exists()
    save_existed = save is not None and save.exists()
    if save is not None:
        plot.prepare_out_dir(save, overwrite, inputs=paths, option="--save")
    for n in notes:
        c.note(n)
    c.set_threads(threads)
    net = c.load_model(model, weights, arch, device, classes=classes, mean=mean, std=std)
    explainers = jobs.build_explainers(net, pairs, layer=layer, options=options, per_pair=per_pair, reduce=reduce)
    x = img.load_images(paths, net, size=size, fit=fit)
    with c.progress_bar("explaining") as progress:
        expls = jobs.explain_all(explainers, x, target=c.target(target), batch_size=batch_size, progress=progress)
    if not json_out:
        _print_results(net, x.names, expls)
    look = {"cmap": cmap, "alpha": alpha, "sign": sign, "outlier_perc": outlier_perc}
    fig = plot.comparison_grid(expls, x, title=title or jobs.model_name(net), **look)
    c.save_figure(fig, out, dpi, palette)
    folders: list[Path] = []
    if save is not None:
        try:
            folders = jobs.save_all(expls, save, overwrite, **look)
        except OutputError:
            # Leave nothing this run wrote that would make the rerun ask for --overwrite.
            if not out_existed:
                out.unlink(missing_ok=True)
            if not save_existed:
                with contextlib.suppress(OSError):
                    save.rmdir()
            raise
    from cnnlens._resolve import warning_lines

    for w in warning_lines([w for e in expls for w in e.warnings], cli=True):  # one line per cause
        c.note(w, "warning")
    if json_out:
        files = {"grid": str(out), "saved": [str(f) for f in folders]}
        c.print_json(jobs.summary(net, x.names, expls, files))
        return
    if save is not None:
        c.wrote(save, "overlays, maps and manifests")
    c.wrote(out, f"{len(expls)} explanation(s) of {len(x)} image(s)")


@command()
def explain(
    images: ImagesArg,
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated methods (`cnnlens methods` lists them).")] = "gradcam",
    backends: Annotated[str | None, typer.Option("--backends", "-b", help="Comma-separated backends (default: every installed one).")] = None,
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    classes: c.ClassesOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    device: c.DeviceOpt = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Output picture (.png, .pdf, .svg).")] = Path("grid.png"),
    overwrite: c.OverwriteOpt = False,
    option: OptionOpt = None,
    save: SaveOpt = None,
    size: c.SizeOpt = None,
    batch_size: BatchOpt = 8,
    cmap: CmapOpt = None,
    alpha: AlphaOpt = 0.5,
    sign: SignOpt = None,
    outlier_perc: OutlierOpt = 2.0,
    reduce: ReduceOpt = None,
    fit: FitOpt = "whole",
    dpi: c.DpiOpt = 100,
    palette: c.PaletteOpt = False,
    json_out: c.JsonOpt = False,
    threads: c.ThreadsOpt = None,
) -> None:
    """Explain images with every (method, backend) pair that exists, and draw a comparison grid."""
    from cnnlens import jobs

    pairs, notes = jobs.resolve_pairs(c.csv(methods), c.csv(backends) or None)
    _explain_job(images, pairs, notes, model=model, weights=weights, arch=arch, target=target, layer=layer,
                 device=device, out=out, overwrite=overwrite, options=c.options(option or []), save=save, size=size,
                 batch_size=batch_size, cmap=cmap, alpha=alpha, dpi=dpi, palette=palette, json_out=json_out,
                 classes=classes, mean=mean, std=std, sign=sign, outlier_perc=outlier_perc, reduce=reduce, fit=fit,
                 threads=threads)


@command()
def compare(
    images: ImagesArg,
    method: Annotated[str, typer.Option("--method", "-m", help="One method, run on every backend that has it.")] = "gradcam",
    model: c.ModelOpt = None,
    weights: c.WeightsOpt = "DEFAULT",
    arch: c.ArchOpt = None,
    classes: c.ClassesOpt = None,
    mean: c.MeanOpt = None,
    std: c.StdOpt = None,
    target: TargetOpt = None,
    layer: LayerOpt = None,
    device: c.DeviceOpt = "cpu",
    out: Annotated[Path, typer.Option("--out", help="Output picture (.png, .pdf, .svg).")] = Path("compare.png"),
    overwrite: c.OverwriteOpt = False,
    option: OptionOpt = None,
    save: SaveOpt = None,
    size: c.SizeOpt = None,
    batch_size: BatchOpt = 8,
    cmap: CmapOpt = None,
    alpha: AlphaOpt = 0.5,
    sign: SignOpt = None,
    outlier_perc: OutlierOpt = 2.0,
    reduce: ReduceOpt = None,
    fit: FitOpt = "whole",
    dpi: c.DpiOpt = 100,
    palette: c.PaletteOpt = False,
    json_out: c.JsonOpt = False,
    threads: c.ThreadsOpt = None,
) -> None:
    """One method on every installed backend that has it, side by side."""
    from cnnlens import jobs

    pairs, notes = jobs.resolve_pairs([method.strip()], None)
    _explain_job(images, pairs, notes, model=model, weights=weights, arch=arch, target=target, layer=layer,
                 device=device, out=out, overwrite=overwrite, options=c.options(option or []), save=save, size=size,
                 batch_size=batch_size, cmap=cmap, alpha=alpha, dpi=dpi, palette=palette,
                 title=f"{method} on every backend", json_out=json_out, classes=classes, mean=mean, std=std,
                 sign=sign, outlier_perc=outlier_perc, reduce=reduce, fit=fit, threads=threads)


#: What `cnnlens demo` runs: one method per backend, and one method on two backends to compare.
DEMO_PAIRS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("gradcam", "pytorch-grad-cam", {}),
    ("gradcam", "captum", {}),
    ("saliency", "flashtorch", {}),
    ("saliency", "captum", {}),
    ("integrated_gradients", "captum", {"n_steps": 12}),
)


@command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output picture.")] = Path("cnnlens-demo/grid.png"),
    overwrite: c.OverwriteOpt = False,
    device: c.DeviceOpt = "cpu",
    save: SaveOpt = None,
    dpi: c.DpiOpt = 100,
    palette: c.PaletteOpt = False,
    threads: c.ThreadsOpt = None,
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
                 out=out, overwrite=overwrite, options={}, save=save, size=None, batch_size=8, cmap=None, alpha=0.5,
                 dpi=dpi, palette=palette, per_pair=per_pair, demo=True,
                 title="cnnlens demo: EfficientNet-Lite0 (embedded, ImageNet)", threads=threads)
