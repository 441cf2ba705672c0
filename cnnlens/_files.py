"""Atomic output files and one clear error for a write that fails.

Every output cnnlens writes (saved explanations, figures, reports, CSV exports) goes to a
temporary name in its folder and is renamed over the final name only when complete. A full disk
or a folder that turned read-only therefore leaves either the previous file or none, never a
truncated one that a rerun would refuse to overwrite. SQLite study files need no such care: their
own transactions make each cell all or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cnnlens.errors import OutputError

#: What an ``OSError`` means for the user, and what would work, by errno.
_WHY = {
    errno.ENOSPC: ("the disk is full", "free some space and run the command again"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space and run the command again"),
    errno.EROFS: ("the folder is on a read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("the operation is not permitted", "choose a folder you can write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a folder path"),
}


def why(exc: OSError, option: str = "") -> str:
    """What a failed write means and what would work, for one line of error.

    ``option`` names the command-line option that chooses the folder (``--out``), if any.
    """
    reason, fix = _WHY.get(exc.errno or 0, (exc.strerror or str(exc), "choose another folder"))
    return f"{reason}; {fix}" + (f" ({option})" if option else "")


def output_error(path: str | Path, exc: OSError, what: str = "", option: str = "") -> OutputError:
    """One-line error for a failed write to ``path`` (``what``: "report", "figure", ...)."""
    label = f"{what} " if what else ""
    return OutputError(f"could not write {label}'{path}': {why(exc, option)}")


def writable(folder: str | Path) -> bool:
    """Whether files can be created in ``folder`` (or, if it does not exist yet, in its nearest parent).

    ``os.access`` reports a read-only file system even to root, for whom permission bits never
    refuse anything.
    """
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.access(p, os.W_OK | os.X_OK)


def ensure_folder(folder: str | Path, what: str = "output folder", option: str = "") -> None:
    """Create ``folder`` (and parents), or raise :class:`OutputError` saying why it cannot be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        hint = f" ({option})" if option else ""
        raise OutputError(f"{what} '{folder}' exists and is not a folder; choose a folder path{hint}") from None
    except OSError as exc:
        raise output_error(folder, exc, what, option) from None


def _write_data(data: bytes | str) -> Callable[[Path], None]:
    blob = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: Path) -> None:
        # os.open with 0o666 honours the umask, as an ordinary open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    return write


def write_atomic(path: str | Path, content: Callable[[Path], object] | bytes | str, what: str = "",
                 option: str = "") -> Path:
    """Write ``path`` through a temporary file next to it and an atomic rename.

    Args:
        path: The final file; an existing one is replaced only once the new content is complete.
        content: Bytes or text (UTF-8), or ``write(tmp)``, a function that writes the temporary
            file (its name keeps the suffix, so writers that pick a format by suffix still work).
        what: What the file is, for the error message ("report", "figure").
        option: The command-line option that chooses the folder, named in the error (``--out``).

    Raises:
        OutputError: The file could not be written (nothing is left behind under either name).
    """
    p = Path(path)
    write = _write_data(content) if isinstance(content, (bytes, str)) else content
    # Not tempfile.mkstemp: its file is private (0600), and the rename would keep that mode.
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{p.suffix}")
    try:
        write(tmp)
        os.replace(tmp, p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise output_error(p, exc, what, option) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return p
