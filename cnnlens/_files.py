"""Atomic output files: written under a temporary name in the same folder, then renamed.

A write that fails half-way (a full disk, a folder that turned read-only) leaves no truncated file
behind that a rerun would refuse to overwrite, and never replaces a good file with a broken one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cnnlens.errors import OutputError

#: What an ``OSError`` means for the user, by errno.
_WHY = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose a folder path",
}


def why(exc: OSError) -> str:
    """What a failed write means and what would work, for one line of error."""
    return _WHY.get(exc.errno or 0, exc.strerror or str(exc))


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """One-line error for a failed write to ``path``."""
    return OutputError(f"cannot write '{path}': {why(exc)}")


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name keeps the suffix, so writers that pick a format by suffix still work.

    Raises:
        OutputError: The file could not be written (nothing is left behind under either name).
    """
    p = Path(path)
    # Not tempfile.mkstemp: its file is private (0600), and the rename would keep that mode.
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{p.suffix}")
    try:
        write(tmp)
        os.replace(tmp, p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise output_error(p, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return p
