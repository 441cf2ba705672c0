"""Writing the study's output files so that a failure leaves nothing half-written.

A report, a figure or a CSV is written to a temporary name in its folder and renamed over the
final name only when complete, so a full disk or a read-only folder leaves either the previous
file or none, never a truncated one that a rerun would trip over. The SQLite study file needs no
such care: SQLite's own transactions make each cell all or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from cnnlens.errors import OutputWriteError

_REASONS = {
    errno.ENOSPC: ("the disk is full", "free some space and run the command again"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space and run the command again"),
    errno.EROFS: ("the folder is on a read-only file system", "choose a writable output folder (--out)"),
    errno.EACCES: ("permission denied", "choose a folder you may write to (--out)"),
    errno.EPERM: ("the operation is not permitted", "choose a folder you may write to (--out)"),
}


def write_error(path: Path, exc: OSError, what: str = "") -> OutputWriteError:
    """One clear error for an output that could not be written: what, where, why and what to do."""
    reason, fix = _REASONS.get(exc.errno or 0, (exc.strerror or str(exc), "choose another output folder (--out)"))
    label = f"{what} " if what else ""
    return OutputWriteError(f"could not write {label}'{path}': {reason}; {fix}")


def writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or, if it does not exist yet, in its nearest parent).

    ``os.access`` reports a read-only file system even to root, for whom permission bits never
    refuse anything.
    """
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.access(p, os.W_OK | os.X_OK)


def ensure_folder(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` (and parents), or raise :class:`OutputWriteError` saying why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputWriteError(f"{what} '{folder}' exists and is not a folder; choose a folder path (--out)") from None
    except OSError as exc:
        raise write_error(folder, exc, what) from None


def write_atomic(path: Path, data: bytes | str, what: str = "") -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Args:
        path: The final file; an existing one is replaced only once the new content is complete.
        data: Bytes, or text (written as UTF-8).
        what: What the file is, for the error message ("report", "figure").

    Raises:
        OutputWriteError: The disk is full, the folder is read-only or not ours; the temporary file
            is removed and ``path`` is left as it was.
    """
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 honours the umask, as an ordinary open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    try:
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(path, exc, what) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
