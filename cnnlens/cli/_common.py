"""What the commands share: option types, parsing of option strings, consoles and progress bars.

Nothing here computes; the work is in library modules (:mod:`cnnlens.jobs`, :mod:`cnnlens.plot`, ...).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cnnlens.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from torch import nn

    from cnnlens.jobs import Progress

# ------------------------------------------------------------------------------------------------
# Option types
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
ClassesOpt = Annotated[
    Path | None,
    typer.Option("--classes", help="Text file with one class name per line, in the model's output order "
                 "(for a custom model; default: the names the model came with, or class indices)."),
]
MeanOpt = Annotated[
    str | None,
    typer.Option("--mean", help="Per-channel input normalisation mean, three numbers, e.g. 0.5,0.5,0.5 "
                 "(default: the model's, ImageNet's for a custom model)."),
]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel input normalisation std, three numbers.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or mps.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file or write into a non-empty folder.")]
DpiOpt = Annotated[int, typer.Option("--dpi", min=20, max=600, help="Resolution of the saved picture.")]
PaletteOpt = Annotated[bool, typer.Option("--palette", help="Write a 256-colour PNG, about a third of the size (for READMEs).")]
SizeOpt = Annotated[int | None, typer.Option("--size", min=8, help="Input size of the images (default: the model's).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="torch CPU threads (default: torch's, one per core). On a busy machine "
                 "1 or 2 is often several times faster."),
]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``: torch's intra-op CPU threads for the rest of the command."""
    if threads:
        import torch

        torch.set_num_threads(threads)

# ------------------------------------------------------------------------------------------------
# Consoles and progress
# ------------------------------------------------------------------------------------------------


def stdout() -> Console:
    """The console for results. In a pipe or a file, text is never wrapped or cut and carries no colour."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(soft_wrap=True)
    # Not a terminal: rich would cut table cells to 80 columns; plain lines instead.
    return Console(soft_wrap=True, width=100_000, no_color=True, highlight=False, emoji=False)


def stderr() -> Console:
    """The console for notes, warnings and progress."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def is_terminal() -> bool:
    """Whether stdout is a terminal (tables) rather than a pipe or a file (plain text)."""
    return sys.stdout.isatty()


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (never wrapped, no colour)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def plain(line: str) -> None:
    """One line of plain text on stdout."""
    sys.stdout.write(line + "\n")


#: Outside a terminal, seconds between two plain progress lines (none for work shorter than this);
#: the environment variable ``CNNLENS_PROGRESS_EVERY`` changes it (the test suite sets it high, so a
#: slow machine's progress line never joins the one-line error a test expects).
PLAIN_PROGRESS_EVERY = float(os.environ.get("CNNLENS_PROGRESS_EVERY", "10"))


@contextlib.contextmanager
def progress_bar(first: str, enabled: bool = True) -> Iterator[Progress]:
    """A progress bar on stderr, yielded as a :data:`cnnlens.jobs.Progress` callback.

    On a terminal, a live bar. In a log or a pipe a bar's ``\\r`` frames are noise, so there it
    prints a plain line (``explaining: 3/10 after 42 s (next: ...)``) at most every
    :data:`PLAIN_PROGRESS_EVERY` seconds, and none for work that ends sooner: a long run is never
    silent, and a short one (or an error before any work) keeps stderr to its one line.
    ``enabled=False`` turns both off.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = stderr()
    if enabled and not console.is_terminal:
        yield _plain_progress(first)
        return
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True,
                   disable=not (enabled and console.is_terminal))
    with bar:
        task = bar.add_task(first, total=None)

        def report(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        yield report


def _plain_progress(first: str) -> Progress:
    start = last = time.monotonic()

    def report(done: int, total: int, what: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PLAIN_PROGRESS_EVERY and not (done == total and now - start >= PLAIN_PROGRESS_EVERY):
            return
        last = now
        step = "done" if done == total else f"next: {what}"
        sys.stderr.write(f"{first}: {done}/{total} after {now - start:.0f} s ({step})\n")
        sys.stderr.flush()

    return report


def escape(text: str) -> str:
    """Text with rich markup escaped."""
    from rich.markup import escape as _escape

    return _escape(text)


def wrote(path: Path, what: str) -> None:
    """Say on stdout that a file was written."""
    stdout().print(f"wrote {escape(what)}: [bold]{escape(str(path))}[/bold]", highlight=False)


def note(text: str, kind: str = "note") -> None:
    """A note or warning on stderr."""
    colour = "yellow"
    stderr().print(f"[{colour}]{kind}:[/{colour}] {escape(text)}", highlight=False)


# ------------------------------------------------------------------------------------------------
# Parsing option strings
# ------------------------------------------------------------------------------------------------


def csv(value: str | None) -> list[str]:
    """Comma-separated items, stripped, empty ones dropped."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def ints(value: str | None, what: str) -> list[int] | None:
    """Comma-separated integers (None when empty)."""
    items = csv(value)
    if not items:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise OptionError(f"{what} must be comma-separated integers such as 0,5,9; got '{value}'") from None


def floats(value: str | None, what: str) -> list[float] | None:
    """Comma-separated numbers (None when not given)."""
    items = csv(value)
    if not items:
        return None
    try:
        return [float(v) for v in items]
    except ValueError:
        raise OptionError(f"{what} must be comma-separated numbers such as 0.485,0.456,0.406; got '{value}'") from None


def weights(value: str | None) -> str | None:
    """``--weights``: none/null/random mean random weights."""
    return None if value is None or value.strip().lower() in ("", "none", "null", "random") else value


def target(value: str | None) -> Any:
    """``--target``: an index or class name for every image, or a comma-separated list, one per image."""
    items = csv(value)
    if not items:
        return None
    parsed: list[int | str] = [int(t) if t.lstrip("-").isdigit() else t for t in items]
    return parsed[0] if len(parsed) == 1 else parsed


def options(pairs: Sequence[str]) -> dict[str, Any]:
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


def load_model(model: str | None, weights_: str, arch: str | None, device: str, *,
               classes: Path | None = None, mean: str | None = None, std: str | None = None) -> nn.Module:
    """Load the model a command's options name, with ``--classes``/``--mean``/``--std`` attached.

    The device, the class file and the numbers are checked before the model is loaded.
    """
    from cnnlens import jobs
    from cnnlens.models import load_model as _load

    jobs.check_device(device)
    names = jobs.read_classes(classes) if classes is not None else None
    mean_v, std_v = floats(mean, "--mean"), floats(std, "--std")
    jobs.check_normalisation(mean_v, std_v)
    net = _load(model, weights=weights(weights_), arch=arch, device=device)
    return jobs.label_model(net, classes=names, mean=mean_v, std=std_v)


def save_figure(fig: Any, out: Path, dpi: int, palette: bool = False) -> None:
    """Write a figure (atomically, by :func:`cnnlens.plot.save_figure`)."""
    from cnnlens.plot import save_figure as _save

    _save(fig, out, dpi, palette=palette)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = (),
          fold: Sequence[str] = (), styles: dict[str, str] | None = None) -> None:
    """Print a table on stdout: a rich table on a terminal, aligned plain text in a pipe or a file.

    Plain text is never wrapped, cut or coloured, so that ``grep``, ``cut`` and ``awk`` see whole
    names. Cells are plain strings; ``styles`` maps a cell value to a rich style on a terminal.

    Args:
        title: The caption (a line of its own).
        columns: Column headers.
        rows: Cells, one sequence per row.
        right: Columns aligned right.
        fold: Columns that may wrap on a narrow terminal (others never wrap).
        styles: Rich styles for cell values on a terminal, e.g. ``{"✓": "green"}``.
    """
    if not is_terminal():
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(columns)]

        def line(cells: Sequence[str]) -> str:
            parts = [cell.rjust(w) if col in right else cell.ljust(w) for cell, w, col in zip(cells, widths, columns, strict=True)]
            return "  ".join(parts).rstrip()

        plain(title)
        plain(line(columns))
        for r in rows:
            plain(line(r))
        sys.stdout.flush()
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(title), title_justify="left")
    for col in columns:
        t.add_column(Text(col), justify="right" if col in right else "left", no_wrap=col not in fold,
                     overflow="fold" if col in fold else "ellipsis", ratio=1 if col in fold else None)
    for r in rows:
        t.add_row(*(Text(cell, style=(styles or {}).get(cell, "")) for cell in r))
    stdout().print(t)


#: Words that read as a value given to an on/off flag (``--overwrite true``), not as an image name.
_FLAG_VALUES = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def image_paths(images: Sequence[str]) -> list[str]:
    """The image files that the IMAGES arguments name (files, folders, globs), expanded.

    A missing ``true``/``false`` is taken for a value given to a flag (``--overwrite true``): flags
    take no value, and the error says so rather than that an image is missing.
    """
    from cnnlens import images as img

    for a in images:
        if a.lower() in _FLAG_VALUES and not Path(a).exists():
            raise OptionError(f"'{a}' is not an image: on/off options such as --overwrite take no value "
                              "(write --overwrite alone)")
    return img.expand(list(images))
