"""`compact apply`, `compact verify` and `compact gc`."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import typer

from nydus_compact.planner.formatting import human_size, plural

from nydus_compact.image.errors import ImageUsageError
from nydus_compact.image.reference import is_image_ref

from . import image_opts
from .app import EXIT_ERROR, EXIT_OK, app


@contextmanager
def progress_bar(enabled: bool):
    """A rich progress bar on a terminal; nothing otherwise (scripts get quiet, parseable output).

    A phase that counts no bytes (total 0) shows its name and a pulsing bar; byte counts and the
    rate are in binary units, as everywhere else."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, ProgressColumn, TimeElapsedColumn
    from rich.text import Text

    class Bytes(ProgressColumn):
        def render(self, task) -> Text:
            if not task.total:
                return Text("")
            rate = f" {human_size(int(task.speed))}/s" if task.speed else ""
            return Text(f"{human_size(int(task.completed))}/{human_size(int(task.total))}{rate}")

    with Progress("[progress.description]{task.description}", BarColumn(), Bytes(), TimeElapsedColumn(),
                  transient=True) as bar:
        current = [bar.add_task("starting", total=None), "starting"]

        def update(label: str, done: int, total: int) -> None:
            if label != current[1]:  # a new phase: its own bar, rate and clock
                bar.remove_task(current[0])
                current[:] = [bar.add_task(label, total=total or None), label]
            bar.update(current[0], completed=done)

        yield update


@app.command("apply")
def apply_command(
    plan_file: Path = typer.Argument(..., help="Plan written by `compact plan` (possibly reviewed and edited)."),
    output_bootstrap: Path | None = typer.Option(None, "-O", "--output-bootstrap", help="New bootstrap of a single-image plan (default: the plan's images[].output)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Write each image's new bootstrap here, named after its source (fleet plans)."),
    blobs_dir: Path | None = typer.Option(None, "--blobs-dir", "-D", help="Where new blobs are written (default: the plan's localfs dir)."),
    backend_config: Path | None = typer.Option(None, "--backend-config", help="Backend config for source blobs, when the plan's backend is not localfs."),
    backend_type: str | None = typer.Option(None, "--backend-type", help="Type of a raw --backend-config."),
    output_json: Path | None = typer.Option(None, "--output-json", "-J", help="Write the result JSON here (- for stdout)."),
    verify: bool = typer.Option(False, "--verify", help="After writing, check every chunk of the new image against its digest (an image plan: before publishing; a failed check publishes nothing)."),
    verify_sources: bool = typer.Option(True, "--verify-sources/--no-verify-sources", help="Check every copied source chunk against its digest while copying (on by default; a corrupt source publishes nothing)."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, max=64, help="New blobs written in parallel."),
    state: Path | None = typer.Option(None, "--state", help="SQLite state store (default: PLAN.state.sqlite next to the plan)."),
    force: bool = typer.Option(False, "--force", help="Image plans: replace a target tag that names another image (or the source itself)."),
    authfile: str | None = image_opts.AUTHFILE,
    insecure_registry: list[str] = image_opts.INSECURE,
) -> int:
    """Execute a plan: write new blobs and the new bootstrap. Idempotent and resumable.

    For a plan of image references, the compacted image is then published to the plan's target:
    blobs first (present ones skipped, same-registry ones mounted), bootstrap layer, config, and
    the manifest (or index) last. New blobs are staged in --blobs-dir (default PLAN.image/blobs).

    Example:

        compact apply plan.yaml -O image.compact.boot --output-json result.json
    """
    from nydus_compact.applier.run import ApplyRequest, run_apply

    from nydus_compact.planner.planfile import load_plan

    plan, recorded = load_plan(plan_file)
    if plan.images and plan.images[0].image is not None:
        from nydus_compact.applier.apply import ApplyOptions
        from nydus_compact.image.planning import work_dir
        from nydus_compact.image.publish import apply_image_plan
        from nydus_compact.store import default_state
        from nydus_compact.store.db import open_store

        if backend_config is not None or backend_type is not None:
            raise ImageUsageError("an image plan reads blobs from the source image's repository: drop --backend-config")
        opts = ApplyOptions(plan_file, blobs_dir or work_dir(plan_file) / "blobs", output_bootstrap, output_json,
                            verify, jobs, output_dir, verify_sources)
        checked: list = []
        with open_store(state or default_state(plan_file)) as store:
            with progress_bar(sys.stderr.isatty()) as progress:
                result, published = apply_image_plan(plan, recorded, opts, image_opts.access(authfile, insecure_registry),
                                                     store, force=force, progress=progress, verified=checked)
        # Status lines: stdout carries only what was asked for (the JSON with --output-json -).
        typer.echo(result.message, err=True)
        _echo_verified(checked)
        for p in published:
            typer.echo(p.line(), err=True)
        return EXIT_OK
    req = ApplyRequest(
        plan_file, blobs_dir, output_bootstrap, output_dir, output_json, backend_config, backend_type, state,
        verify, verify_sources, jobs,
    )
    with progress_bar(sys.stderr.isatty()) as progress:
        outcome = run_apply(req, progress, loaded=(plan, recorded))
    # Status lines: stdout carries only what was asked for (the JSON with --output-json -).
    typer.echo(outcome.result.message, err=True)
    _echo_verified(outcome.verified)
    return EXIT_OK if outcome.ok else EXIT_ERROR


def _echo_verified(reports: list) -> None:
    """A summary line per verified bootstrap, then its problems."""
    for bootstrap, report in reports:
        typer.echo(report.summary(bootstrap), err=True)
        for p in report.problems:
            typer.echo(f"  {p}", err=True)


@app.command("verify")
def verify_command(
    bootstrap: str = typer.Argument(..., help="Bootstrap to check, or an image: docker://NAME[:TAG|@DIGEST], oci:DIR[:TAG]."),
    blobs_dir: Path | None = typer.Option(None, "--blobs-dir", "-D", help="Directory holding the blobs."),
    backend_config: Path | None = typer.Option(None, "--backend-config", help="Backend config instead of --blobs-dir."),
    backend_type: str | None = typer.Option(None, "--backend-type", help="Type of a raw --backend-config."),
    max_problems: int = typer.Option(20, "--max-problems", min=1, help="How many problems to list."),
    platform: str | None = typer.Option(None, "--platform", help="Image in an index: os/arch or os/arch/variant."),
    authfile: str | None = image_opts.AUTHFILE,
    insecure_registry: list[str] = image_opts.INSECURE,
) -> int:
    """Check an image: every blob present with the right size, every chunk decompresses to its digest,
    v6 blob meta consistent with the bootstrap. One summary line; exit 1 on any problem.

    Example:

        compact verify image.compact.boot --blobs-dir blobs/

        compact verify docker://reg.example.com/team/app:v1-compact
    """
    from nydus_compact.applier.verify import verify_image
    from nydus_compact.backends.config import open_backend
    from nydus_compact.planner.config import CompactConfig
    from nydus_compact.rafs.loader import load_bootstrap

    from .plan_cmd import resolve_backend

    if is_image_ref(bootstrap):
        from nydus_compact.image.fetch import fetched_image

        if blobs_dir is not None or backend_config is not None:
            raise ImageUsageError("an image's blobs are read from its repository: drop --blobs-dir / --backend-config")
        with fetched_image(bootstrap, image_opts.access(authfile, insecure_registry), platform) as image:
            report = verify_image(load_bootstrap(image.bootstrap), image.backend, limit=max_problems)
    else:
        bcfg = resolve_backend(blobs_dir, backend_config, backend_type, CompactConfig())
        bs = load_bootstrap(bootstrap)
        with open_backend(bcfg) as backend:
            report = verify_image(bs, backend, limit=max_problems)
    typer.echo(report.summary(str(bootstrap)))
    for p in report.problems:
        typer.echo(f"  {p}", err=True)
    return EXIT_OK if report.ok else EXIT_ERROR


@app.command("gc")
def gc_command(
    keep: list[str] = typer.Option(..., "--keep", help="Bootstrap or image reference (docker://…, oci:…) whose blobs must stay (repeatable: --keep A --keep B)."),
    blobs_dir: Path = typer.Option(..., "--blobs-dir", "-D", help="Directory holding blob files."),
    drop: list[Path] = typer.Option([], "--drop", help="Retired bootstrap whose blobs may go (repeatable)."),
    plans: list[Path] = typer.Option([], "--plan", help="Applied plan whose `deletable` blobs may go (repeatable)."),
    state: Path | None = typer.Option(None, "--state", help="State store of the --plan (default: PLAN.state.sqlite next to it)."),
    delete: bool = typer.Option(False, "--delete", help="Really delete; without it, only list (dry run)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    authfile: str | None = image_opts.AUTHFILE,
    insecure_registry: list[str] = image_opts.INSECURE,
) -> int:
    """List (or with --delete remove) the blob files of retired images that no kept bootstrap
    references. Only blobs gc can attribute are deleted: those in the blob tables of the
    bootstraps named by --drop, or in the `deletable` list of a plan that was applied (--plan).
    Other files are listed as unknown and left alone; deleting waits for no apply (it takes the
    blobs dir's lock and fails if an apply holds it).

    Example:

        compact gc --keep image.compact.boot --drop image.boot --blobs-dir blobs/ --delete
    """
    from nydus_compact.applier.gc import collect_garbage

    if delete and not (drop or plans):
        raise typer.BadParameter(
            "gc deletes only blobs it can attribute: name the retired images with --drop OLD.boot or --plan PLAN.yaml",
            param_hint="--delete",
        )
    with ExitStack() as stack:
        kept = []
        for k in keep:
            if is_image_ref(k):
                from nydus_compact.image.fetch import fetched_image

                image = stack.enter_context(fetched_image(k, image_opts.access(authfile, insecure_registry)))
                kept.append(image.bootstrap)
            else:
                kept.append(Path(k))
        result = collect_garbage(blobs_dir, kept, drop, plans, delete=delete, state=state)
    if as_json:
        typer.echo(json.dumps(result.document(), indent=2))
        return EXIT_OK
    verb = "deleted" if result.deleted else "deletable"
    for p in result.deletable:
        typer.echo(f"{verb} {p}")
    for p in result.unknown:
        typer.echo(f"unknown, left alone {p}")
    for p in result.stale_temps:
        typer.echo(f"stale temp file, left alone {p}")
    done = "deleted" if result.deleted else "reclaimable (dry run; add --delete)"
    if not (drop or plans):
        done = "deletable (gc deletes only blobs named by --drop or --plan)"
    typer.echo(
        f"{plural(len(result.deletable), 'blob')}, {human_size(result.bytes)} {done}; "
        f"{plural(len(result.unknown), 'unknown file')} left alone"
    )
    return EXIT_OK
