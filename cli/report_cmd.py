"""`compact report`, `compact explain` and `compact demo`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nydus_compact.reports.errors import ReportError

from .app import EXIT_ERROR, EXIT_OK, app, click_exceptions

if TYPE_CHECKING:
    from nydus_compact.safeio import OutputGuard

DEFAULT_PLAN = Path("plan.yaml")


def _report_guard(plan_file: Path | None, state: Path | None) -> OutputGuard:
    """A report may not replace the plan, the store, nor anything the plan names."""
    from nydus_compact.planner.guard import plan_guard
    from nydus_compact.planner.planfile import load_plan
    from nydus_compact.safeio import OutputGuard

    if plan_file is None:
        return OutputGuard().input(state, "the state store")
    return plan_guard(load_plan(plan_file)[0], plan_file, state, outputs_are_inputs=True)


@app.command("report")
def report_command(
    plan_file: Path | None = typer.Argument(None, help="Plan written by `compact plan`; omit to report a run from --state."),
    state: Path | None = typer.Option(None, "--state", help="SQLite state store (default: PLAN.state.sqlite next to the plan)."),
    run_id: int | None = typer.Option(None, "--run", min=1, help="Apply run to report (default: the plan's latest run)."),
    fmt: str | None = typer.Option(None, "--format", "-f", help="md or html (default: from the -o suffix, else md)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the report here (atomically) instead of stdout (-: stdout)."),
) -> int:
    """Render an audit report of a plan and of its apply run: decisions with reasons and numbers,
    blob table before and after, merge groups, bytes to read / write / reclaim, and every apply
    step with times, throughput, resulting blobs, sha256s, verification and resumes.

    Example:

        compact report plan.yaml --format html -o report.html
        compact report --state plan.state.sqlite --run 2
    """
    from nydus_compact.reports.render import FORMATS, render_report
    from nydus_compact.reports.views import Report, report_views
    from nydus_compact.safeio import atomic_write_text, is_stdout

    if fmt is None:
        fmt = "html" if output is not None and output.suffix.lower() in (".html", ".htm") else "md"
    if fmt not in FORMATS:
        raise click_exceptions.BadParameter(f"expected one of {', '.join(FORMATS)}, got {fmt!r}", param_hint="'--format'")
    with report_views(plan_file, state, run_id) as (view, run, store):
        if output is not None and not is_stdout(output):
            _report_guard(plan_file, store.path if store is not None else state).output(output, "the report (-o)")
        text = render_report(Report(view, run), fmt)
    if output is None or is_stdout(output):
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        typer.echo(f"report written to {output}", err=True)
    return EXIT_OK


@app.command("explain")
def explain_command(
    blob_id: str = typer.Argument(
        ..., help="Blob id (a source blob, or a new blob apply wrote), a unique prefix of at least 8 characters, or a group (g0)."
    ),
    plan_file: Path | None = typer.Option(None, "--plan", help="Plan file (default: ./plan.yaml if there is no --state)."),
    state: Path | None = typer.Option(None, "--state", help="State store; alone, explains the plan of its latest apply run."),
    top: int = typer.Option(10, "--top", min=1, help="How many referencing files to list."),
) -> int:
    """Why a blob is kept, rebuilt, merged or deleted, with the numbers behind the decision,
    and which files reference its chunks (largest first). For a fleet plan: which images use it,
    how many bytes each, and each image's files.

    Example:

        compact explain 89db322f --plan plan.yaml --top 5
    """
    from nydus_compact.planner.planfile import load_plan
    from nydus_compact.reports.explain import (
        explain,
        find_new_blob,
        plan_images,
        recorded_images,
        render_explanation,
        render_new_blob,
    )
    from nydus_compact.reports.views import report_views

    if plan_file is None and state is None:
        if not DEFAULT_PLAN.is_file():
            raise ReportError(f"no ./{DEFAULT_PLAN} here: give --plan PLAN.yaml or --state PATH")
        plan_file = DEFAULT_PLAN
    with report_views(plan_file, state, None) as (view, run, store):
        if view is None:
            raise ReportError(f"{state}: the plan of the latest apply run is not recorded; pass --plan PLAN.yaml")
        new = find_new_blob(view, run, blob_id)
        if new is not None:
            typer.echo(render_new_blob(new))
            return EXIT_OK
        # A fleet plan is answered per image: from the plan file's referenced_by, else from the store.
        images = plan_images(load_plan(plan_file)[0]) if plan_file is not None else recorded_images(store, view.digest)
        typer.echo(render_explanation(explain(view, blob_id, store, top, run, images)))
    return EXIT_OK


@app.command("demo")
def demo_command(
    directory: Path = typer.Argument(..., help="Empty (or new) directory to write everything into."),
    force: bool = typer.Option(
        False, "--force", help="Start over in a non-empty directory: the demo's files there are written afresh."
    ),
) -> int:
    """Build the bundled multi-layer sample image (RAFS v6, 64 KiB chunks), plan a compaction that
    keeps, rebuilds, merges and deletes blobs, apply it, verify the new image, and write the plan,
    the apply JSON and report.md / report.html into DIRECTORY. Prints where everything went.

    Example:

        compact demo /tmp/compact-demo
    """
    from nydus_compact.walkthrough.demo import run_demo

    result = run_demo(directory, force=force)
    for line in result.lines():
        typer.echo(line)
    return EXIT_OK if result.verified.ok else EXIT_ERROR
