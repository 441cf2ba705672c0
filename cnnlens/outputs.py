"""Where cnnlens writes: one output-path policy for ``Explanation.save``, the CLI and the report.

The rules, the same everywhere:

* **No clobbering.** An existing output file, or a non-empty output folder, is written over only
  with ``overwrite=True`` (CLI: ``--overwrite``).
* **The user's images are never touched, nor mixed with results.** An output file that is one of
  the inputs is refused, even with ``overwrite``. No output, file or folder, lands in a folder that
  holds an input image or anywhere below it, and no output folder holds an input image: a picture
  written among the photos would be read as a photo by the next run over that folder (``photos/*.png``,
  a dataset walk). A study or report folder that holds pictures is refused too (its inputs are not
  known before its suite is read).
* **Names come from the inputs.** Saved files are named after the images they show
  (:func:`names_for`), sanitised for every file system (:func:`safe_name`), with ``-2``, ``-3``
  suffixes where two inputs share a name (:func:`unique_names`), and the image's index where it has
  no name.
* **Writes are atomic** (:func:`cnnlens._files.write_atomic`): a temporary name, then a rename.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from cnnlens import _files
from cnnlens.errors import OptionError, OutputError, OutputExistsError

#: Formats matplotlib can write, by file suffix.
FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
#: Longest file stem :func:`safe_name` returns (file systems allow 255 bytes; room for suffixes).
MAX_STEM = 100
#: Names Windows reserves whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _hint(option: str) -> str:
    return f" ({option})" if option else ""


def _resolved(paths: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    return [Path(p).resolve() for p in paths if p is not None]


def inputs_in(folder: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """The input files that lie in ``folder`` or below it (resolved, so links and ``..`` count)."""
    root = Path(folder).resolve()
    return [p for p in _resolved(inputs) if p.is_relative_to(root)]


def input_folders(inputs: Iterable[str | os.PathLike[str] | None]) -> dict[Path, Path]:
    """The folders that hold the input files (resolved), each with its first input."""
    out: dict[Path, Path] = {}
    for p in _resolved(inputs):
        out.setdefault(p.parent, p)
    return out


def among_inputs(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None],
                 *, folder: bool) -> str | None:
    """Why an output at ``path`` (a folder when ``folder``) would lie among the user's images, or None:
    it would be in, or below, a folder that holds an input image, or (a folder) it holds one."""
    inputs = list(inputs)
    target = Path(path).resolve()
    if folder:
        held = inputs_in(target, inputs)
        if held:
            return (f"holds input images ({held[0].name}{', ...' if len(held) > 1 else ''}); cnnlens never writes "
                    "into a folder of your images")
    where = target if folder else target.parent
    for f, first in input_folders(inputs).items():
        if where.is_relative_to(f):
            inside = "in" if where == f else "below"
            return (f"would land {inside} '{f}', the folder of input image {first.name}: cnnlens never writes among "
                    "your images, where the next run over that folder would read its output as an image")
    return None


def _pictures_in(folder: Path) -> list[str]:
    """The picture files (by suffix) directly in ``folder``."""
    return sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def check_out_dir(folder: str | os.PathLike[str], *, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike[str] | None] = (), option: str = "",
                  create: bool = True) -> Path:
    """Check (and by default create) an output folder under the policy.

    Args:
        folder: The folder; missing parents are created.
        overwrite: Allow writing into a folder that already holds files (same-named files are
            replaced, others are left alone).
        inputs: The files the command reads; a folder that holds any of them, or lies in or below
            a folder that holds one, is refused.
        option: The command-line option that chose the folder, named in errors (``--save``).
        create: Create the folder (False: only check).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``folder`` is a file, lies among input images, or is non-empty without
            ``overwrite``.
        OutputError: It cannot be created or written.
    """
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"output folder '{p}' exists and is a file; choose a folder path{_hint(option)}")
    why = among_inputs(p, inputs, folder=True)
    if why:
        raise OutputExistsError(f"output folder '{p}' {why}; choose a folder outside it{_hint(option)}")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output folder '{p}' exists and is not empty; choose another folder, or pass overwrite=True "
            "(CLI: --overwrite) to write into it"
        )
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder '{p}': {_files.why(exc, option)}") from None
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{p}' is not writable; choose a folder you can write to{_hint(option)}")
    return p


def check_out_file(path: str | os.PathLike[str], *, overwrite: bool = False,
                   inputs: Iterable[str | os.PathLike[str] | None] = (),
                   formats: Sequence[str] | None = FIGURE_FORMATS, option: str = "") -> Path:
    """Check that a file may be written to ``path`` under the policy, and create its parent folder.

    Args:
        path: The output file.
        overwrite: Allow replacing an existing file. An input is never replaced.
        inputs: The files the command reads; writing to any of them, or into or below a folder
            that holds one, is refused.
        formats: Allowed suffixes (lower case, with the dot); None allows any.
        option: The command-line option that chose the file, named in errors (``--out``).

    Raises:
        OutputExistsError: The file exists (without ``overwrite``), is a folder, is an input or
            lies among input images.
        OptionError: The suffix is not one of ``formats``.
        OutputError: The parent folder cannot be created or written.
    """
    p = Path(path)
    if formats is not None and p.suffix.lower() not in formats:
        raise OptionError(f"output '{p}' has suffix '{p.suffix}'; use one of {', '.join(formats)}{_hint(option)}")
    if p.is_dir():
        example = p / ("grid" + (formats[0] if formats else ".out"))
        raise OutputExistsError(f"output '{p}' is a folder; give a file name such as '{example}'{_hint(option)}")
    if p.resolve() in _resolved(inputs):
        raise OutputExistsError(f"output '{p}' is one of the input images; cnnlens never overwrites its inputs")
    why = among_inputs(p, inputs, folder=False)
    if why:
        raise OutputExistsError(f"output '{p}' {why}; choose a path outside that folder{_hint(option)}")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"output file '{p}' already exists; choose another name or pass --overwrite")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder '{p.parent}': {_files.why(exc, option)}") from None
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise OutputError(f"folder '{p.parent}' is not writable; choose a folder you can write to{_hint(option)}")
    return p


def safe_name(text: str, fallback: str = "image", max_len: int = MAX_STEM) -> str:
    """A file stem that is safe on every common file system.

    Accents are folded to ASCII, anything but letters, digits and ``._+-`` becomes ``_``, leading
    dots (hidden files) and trailing dots or spaces (refused on Windows) are removed, Windows'
    reserved names (``con``, ``nul``, ``com1``, ...) get a trailing ``_``, and the result is cut to
    ``max_len`` characters. An empty result is ``fallback``.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    s = _UNSAFE.sub("_", ascii_text)
    s = re.sub(r"(^|_)\.+(?=_|$)", r"\1", s)  # "." and ".." path parts
    s = re.sub(r"_+", "_", s).strip("_ ").lstrip(".").rstrip(". ")
    s = s[:max_len].rstrip(". ")
    if not s:
        s = fallback
    if s.split(".")[0].lower() in _RESERVED:
        s = s + "_"
    return s


def unique_names(stems: Sequence[str], taken: Iterable[str] = ()) -> list[str]:
    """``stems`` with ``-2``, ``-3``, ... appended where a name repeats (compared without case, as
    macOS and Windows do) or is in ``taken``; the first use keeps its name."""
    seen = {t.lower() for t in taken}
    out = []
    for stem in stems:
        name, k = stem, 1
        while name.lower() in seen:
            k += 1
            name = f"{stem}-{k}"
        seen.add(name.lower())
        out.append(name)
    return out


def names_for(n: int, names: Sequence[str | None] | None = None, taken: Iterable[str] = ()) -> list[str]:
    """One safe, distinct file stem per image: its name (e.g. ``Images.names``, the file stems),
    else its index as ``000``, ``001``, ...

    Args:
        n: Number of images.
        names: The images' names, or None; a None or empty entry falls back to the index.
        taken: Stems already used in the folder (``maps``, ``manifest``), which the names avoid.
    """
    if names is not None and len(names) != n:
        raise OptionError(f"got {len(names)} names for {n} images")
    width = max(3, len(str(max(n - 1, 0))))
    stems = [safe_name(names[i], fallback=f"{i:0{width}d}") if names is not None and names[i] else f"{i:0{width}d}"
             for i in range(n)]
    return unique_names(stems, taken)


__all__ = [
    "FIGURE_FORMATS",
    "among_inputs",
    "check_out_dir",
    "check_out_file",
    "check_report_out",
    "check_study_out",
    "input_folders",
    "inputs_in",
    "names_for",
    "safe_name",
    "unique_names",
]


#: The files and folders :func:`cnnlens.bench.reporting.write_report` writes into its folder.
REPORT_OUTPUTS: tuple[str, ...] = ("report.md", "report.html", "figures", "verdict_ranks.csv", "verdict_tests.csv",
                                   "verdict_leaders.csv", "verdict_kendall.csv", "verdict_intervals.csv")

#: Picture suffixes: a folder holding such files (other than a report's figures) is the user's.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def existing_report(folder: str | Path) -> list[str]:
    """The report files and folders (:data:`REPORT_OUTPUTS`) that already exist in ``folder``."""
    return [name for name in REPORT_OUTPUTS if (Path(folder) / name).exists()]


def check_report_out(folder: str | Path, overwrite: bool) -> Path:
    """Check that a report may be written into ``folder``, before any work.

    The report's own files are only replaced with ``overwrite``; a folder of the user's pictures
    is never written into (the report adds ``figures/`` and two pages next to them).

    Raises:
        OutputExistsError: ``folder`` is a file, holds pictures, or holds a report (without ``overwrite``).
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a folder; choose a folder for the report")
    if not out.is_dir():
        return out
    _refuse_pictures(out, "report folder")
    existing = existing_report(out)
    if existing and not overwrite:
        raise OutputExistsError(f"'{out}' already holds a report ({', '.join(existing)}); pass --overwrite to "
                                "replace it, or choose another folder with --out")
    return out


def _refuse_pictures(out: Path, what: str) -> None:
    pictures = _pictures_in(out)
    if pictures:
        raise OutputExistsError(f"{what} '{out}' holds pictures ({', '.join(pictures[:3])}"
                                f"{', ...' if len(pictures) > 3 else ''}); choose a folder of its own with --out")


def check_study_out(folder: str | Path) -> Path:
    """Check, before any work, that a study may be written into ``folder`` (``cnnlens bench --out``):
    not a file, and not a folder of the user's pictures (the rule :func:`check_report_out` applies;
    the suite's image folders are not known before the suite is read).

    Raises:
        OutputExistsError: ``folder`` is a file or holds pictures.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a folder; choose a folder for the study")
    if out.is_dir():
        _refuse_pictures(out, "study folder")
    return out
