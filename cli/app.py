"""The typer application every command module registers on."""

import typer

app = typer.Typer(
    name="compact",
    help="Plan and apply compaction of Nydus (RAFS v5/v6) images.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

# Exit codes scripts can rely on (README "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # only with --detailed-exitcode
EXIT_USAGE = 64
EXIT_INTERNAL = 70  # a bug in nydus-compact (EX_SOFTWARE)
