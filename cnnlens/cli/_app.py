"""The ``cnnlens`` typer app and its error contract (one line and exit code 2 for bad input)."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup, TyperOption

from cnnlens.errors import CnnlensError

DEBUG_FLAG = "--debug"
#: Exit code for bad input (usage errors and CnnlensError), as click uses for usage errors.
EXIT_BAD_INPUT = 2
#: Exit code after Ctrl-C, as a shell reports SIGINT.
EXIT_INTERRUPTED = 130


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


def _flags_as_flags(params: list[Any]) -> list[Any]:
    """Show an on/off option as a bare flag in the help: typer 0.29 labels it ``<bool>``, which reads
    as if it took a value (``--overwrite true`` would then make "true" an image name)."""
    for p in params:
        if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
            p.metavar = ""
    return params


class CnnlensCommand(TyperCommand):
    """Typer's command with flags shown as flags in its help."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))


class CnnlensGroup(TyperGroup):
    """Typer's group with cnnlens' error contract: one line and exit code 2 for bad input."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _flags_as_flags(super().get_params(ctx))

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
                error(str(exc))
                code = EXIT_BAD_INPUT
            except click.exceptions.NoArgsIsHelpError as exc:  # the help is already printed
                code = exc.exit_code
            except click.exceptions.ClickException as exc:  # usage errors: bad option, missing argument
                if debug:
                    traceback.print_exc()
                hint = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
                error(exc.format_message() + hint)
                code = exc.exit_code
            except (typer.Abort, KeyboardInterrupt):
                error("aborted")
                code = EXIT_INTERRUPTED
            except typer.Exit as exc:
                code = exc.exit_code
            except Exception as exc:
                if debug:
                    raise
                error(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
                      "(rerun with --debug for the traceback; please report it if cnnlens is at fault)")
                code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def error(message: str) -> None:
    """Print ``cnnlens: error: ...`` as one line on stderr (a message that spans lines is joined)."""
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


def command(*args: Any, **kwargs: Any) -> Any:
    """``app.command`` with flags shown as flags in the command's help."""
    kwargs.setdefault("cls", CnnlensCommand)
    return app.command(*args, **kwargs)


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
