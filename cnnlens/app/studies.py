"""Which study databases the web app may open: the one given at start (``--study DB``) and those under
the folder given at start (``--studies DIR``), nothing else.

The page names a study by a short name (the file name, or its path under the folder) and never sees a
server path. Any other name is refused with one message that is the same whether or not such a file
exists, so the Study tab cannot be used to probe the server's files or read other SQLite files.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlens.errors import InputError

#: Extensions of study databases (``cnnlens bench`` writes ``<name>.sqlite``).
SUFFIXES = (".sqlite", ".sqlite3", ".db")
#: At most this many studies are listed from a folder (and the walk stops there).
MAX_LISTED = 500

REFUSED = ("that study is not one this app serves; choose one from the list "
           "(`cnnlens serve --study DB` or `--studies DIR` decides which studies the app offers)")


class StudyAccessError(InputError):
    """A study name that is not one the app was given."""


class Studies:
    """The study databases the app offers.

    Args:
        study: One database, offered under its file name.
        folder: A folder whose databases (``*.sqlite``, ``*.sqlite3``, ``*.db``, in sub-folders too,
            without following links out of it) are offered under their path relative to it; listed
            again on each request, so studies written while the app runs appear.
    """

    def __init__(self, study: str | os.PathLike[str] | None = None,
                 folder: str | os.PathLike[str] | None = None) -> None:
        self.study = Path(study).resolve() if study is not None else None
        self.folder = Path(folder).resolve() if folder is not None else None

    def __bool__(self) -> bool:
        return self.study is not None or self.folder is not None

    @property
    def default(self) -> str | None:
        """The name of the study opened when the page loads (the one given with ``--study``)."""
        return self.study.name if self.study is not None else None

    def _listed(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        if self.study is not None:
            out[self.study.name] = self.study
        if self.folder is None or not self.folder.is_dir():
            return out
        for root, dirs, files in os.walk(self.folder, followlinks=False):
            dirs.sort()
            for f in sorted(files):
                if not f.lower().endswith(SUFFIXES):
                    continue
                path = Path(root) / f
                real = path.resolve()
                if not real.is_relative_to(self.folder) or not real.is_file():
                    continue  # a link out of the folder
                out.setdefault(path.relative_to(self.folder).as_posix(), real)
                if len(out) >= MAX_LISTED:
                    return out
        return out

    def names(self) -> list[str]:
        """The names the page may open, in listing order."""
        return list(self._listed())

    def resolve(self, name: str | None) -> Path:
        """The database behind ``name``; :class:`StudyAccessError` for any other name."""
        path = self._listed().get((name or "").strip())
        if path is None:
            raise StudyAccessError(REFUSED)
        return path


__all__ = ["REFUSED", "Studies", "StudyAccessError"]
