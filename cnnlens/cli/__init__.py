"""The ``cnnlens`` command line.

Every command answers ``--help``. Bad input (any :class:`~cnnlens.errors.CnnlensError`, or a usage
error) prints one line to stderr and exits with code 2; ``--debug`` anywhere on the command line
prints the traceback instead. Outputs never replace an input image, and an existing output file or
non-empty output folder is only written to with ``--overwrite``. In a pipe or a file, output is
plain unwrapped text; ``--json`` on ``methods``, ``layers`` and ``explain`` prints JSON.

One module per command group; the work they sequence is in :mod:`cnnlens.jobs` and the library.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import typer

from cnnlens.cli._app import EXIT_BAD_INPUT, CnnlensGroup, app

#: The command modules, in the order their commands appear in the help (importing one registers them).
COMMAND_MODULES = ("explain", "inspect", "bench", "serve")
for _name in COMMAND_MODULES:
    importlib.import_module(f"cnnlens.cli.{_name}")

__all__ = ["EXIT_BAD_INPUT", "CnnlensGroup", "app", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``cnnlens`` script (exits with the command's status)."""
    command = typer.main.get_command(app)
    command.main(args=list(argv) if argv is not None else None, prog_name="cnnlens")
