"""The `vistrace` application: its command groups, the error report shared by every command, and the
global options."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from vistrace import __version__

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _plain_flag(option: Any) -> Any:
    """The help option shown without a value type: it is a flag."""
    if option is not None:
        option.metavar = ""
    return option


class Command(TyperCommand):
    """A command whose -h/--help is shown as the flag it is."""

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_flag(super().get_help_option(ctx))


class Commands(TyperGroup):
    """Reports the library's errors about the user's input (missing file, bad record, settings that
    cannot work, an optional package not installed) as one `Error:` line and exit code 1; the
    traceback is logged with --verbose."""

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_flag(super().get_help_option(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (ValueError, OSError, ImportError) as error:
            self._report(error)
        except Exception as error:
            from vistrace.compat import TransformersContractError
            from vistrace.data import DatasetError

            if not isinstance(error, (DatasetError, TransformersContractError)):
                raise
            self._report(error)

    @staticmethod
    def _report(error: Exception) -> NoReturn:
        logging.getLogger("vistrace.cli").debug("traceback", exc_info=error)
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from error


app = typer.Typer(
    cls=Commands,
    name="vistrace",
    help="How a vision-language model uses the image: attention capture and attention-knockout flow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)
plot_app = typer.Typer(
    cls=Commands, help="Draw figures from a run directory.", no_args_is_help=True, context_settings=CONTEXT
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vistrace {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version.", metavar=""),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.", metavar="")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transformers", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    """The console entry point (`vistrace`, `python -m vistrace`)."""
    # Figures are written to files: no window system needed (a notebook keeps its own backend).
    os.environ.setdefault("MPLBACKEND", "Agg")
    app(prog_name="vistrace")
