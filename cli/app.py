"""The typer application every command module registers on."""

from collections.abc import Iterator
from contextlib import contextmanager

import typer

try:  # typer >= 0.20 vendors its own click; its exceptions are not click's
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    import click.exceptions as click_exceptions

app = typer.Typer(
    name="compact",
    help="Plan and apply compaction of Nydus (RAFS v5/v6) images.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

# Exit codes scripts can rely on (README "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # only with --detailed-exitcode
EXIT_USAGE = 64
EXIT_INTERNAL = 70  # a bug in nydus-compact (EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


def _print_version(value: bool) -> None:
    if value:
        from nydus_compact import version

        typer.echo(f"compact (nydus-compact) {version()}")
        raise typer.Exit()


@app.callback()
def _global_options(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # --debug is taken off the command line by cli/main.py before typer sees it.
    pass


@contextmanager
def option_values(*errors: type[Exception]) -> Iterator[None]:
    """Errors of ``errors`` types raised while reading option values are usage errors (exit 64),
    whichever option it is and whether typer or the library found the value bad."""
    try:
        yield
    except errors as exc:
        raise click_exceptions.UsageError(str(exc)) from None
