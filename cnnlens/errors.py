"""The cnnlens error hierarchy.

Every error a user can provoke is a :class:`CnnlensError`. Messages say what was wrong and what
would be right; the CLI prints ``str(error)`` as one line and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlensWarning(UserWarning):
    """A result is valid but has a caveat the user should know about."""


class CnnlensError(Exception):
    """Root of every error cnnlens raises on purpose."""


class UnknownMethodError(CnnlensError, KeyError):
    """The method name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(CnnlensError, ImportError):
    """The backend's toolkit is not installed (the message carries the install command)."""


class UnsupportedMethodError(CnnlensError):
    """The backend exists but does not implement this method."""


class LayerError(CnnlensError):
    """A layer name or module could not be resolved, or is unsuitable for the method."""


class TargetError(CnnlensError):
    """A target class is out of range, of the wrong length, or an unknown class name."""


class InputError(CnnlensError):
    """The input tensor is unusable (rank, channels, dtype, values, size)."""


class OptionError(CnnlensError):
    """An option is unknown for the method, or its value is invalid."""


class ModelError(CnnlensError):
    """The model cannot be loaded or used (unknown name, wrong weights, unsupported output)."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are neither cached locally nor downloadable."""


class UnsafeFileError(ModelError):
    """A file would need arbitrary code execution (pickle) to load, and was refused."""


class ImageLoadError(CnnlensError):
    """An image file is missing, unreadable or in an unsupported format."""


class BackendError(CnnlensError):
    """A backend toolkit failed; the message names the toolkit, the method and the cause."""


class SuiteError(CnnlensError):
    """A benchmark suite file is malformed or names something that does not exist."""


class OutputError(CnnlensError):
    """An output could not be written (read-only folder, full disk, a path through a file)."""


class OutputExistsError(OutputError):
    """An output path exists and would be overwritten without ``overwrite=True``."""



class StoreError(CnnlensError):
    """A study database is corrupt, belongs to another program, or cannot be opened as asked."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Format the closest candidate names for an error message ("" when none are close)."""
    pool = list(dict.fromkeys(candidates))
    hits = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not hits:
        # substring matches help for dotted layer names ("layer4" -> "layer4.1")
        hits = [c for c in pool if name and (name in c or c in name)][:n]
    return ", ".join(hits)


def install_hint(extra: str | None = None) -> str:
    """The one install line cnnlens gives: from its checkout, with the extra that pins the package.

    cnnlens is installed from its checkout (it is not on PyPI), and an extra carries cnnlens's version
    cap on the toolkit (``torchcam>=0.5,<0.6``), which installing the bare package would skip.
    """
    return f"pip install -e '.[{extra}]' in the cnnlens checkout" if extra else "pip install -e . in the cnnlens checkout"
