"""The typer application every command module registers on."""

import typer

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
