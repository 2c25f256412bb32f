"""`compact plan` and `compact show`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from nydus_compact.planner.formatting import human_size, limit_line, plural, summary_line
from nydus_compact.safeio import OutputGuard, is_stdout
from nydus_compact.store import default_state

from nydus_compact.image.errors import ImageUsageError

from . import image_opts
from .app import EXIT_CHANGES, EXIT_OK, app, option_values
from .progress import phases

# Each command imports what it needs when it runs: `compact --help` and `compact show` must not
# pay for numpy, SQLite or the backends (issue 11, bench/startup.py).
if TYPE_CHECKING:
    from nydus_compact.backends.config import BackendConfig
    from nydus_compact.planner.config import CompactConfig
    from nydus_compact.planner.plan import Plan


def warning(message: str) -> None:
    typer.echo(f"compact: warning: {message}", err=True)


@contextmanager
def new_state_removed_on_failure(path: Path) -> Iterator[None]:
    """A plan that fails leaves no state store behind, unless the store existed before."""
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed:
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
        raise


def plan_command_guard(
    bootstraps: list[Path], chunk_dict: Path | None, bcfg: BackendConfig, config_files: list[Path | None]
) -> OutputGuard:
    """What `compact plan` reads; the blob files themselves are added once their ids are known."""
    from nydus_compact.backends.config import local_blob_places

    guard = OutputGuard().inputs(bootstraps, "a source bootstrap").input(chunk_dict, "the chunk dict")
    for f in config_files:
        guard.input(f, "a config file")
    dirs, files = local_blob_places(bcfg.config | {"type": bcfg.type}, [])
    for d in dirs:
        guard.blob_dir(d, f"the blobs dir {d}")
    return guard.inputs(files, "the blob file")


def parse_chunk_dict(arg: str | None) -> Path | None:
    """`--chunk-dict [bootstrap=]PATH`, as nydus-image takes it."""
    from nydus_compact.planner.errors import ConfigError

    if arg is None:
        return None
    kind, sep, path = arg.partition("=")
    if not sep:
        return Path(arg)
    if kind != "bootstrap":
        raise ConfigError(f"--chunk-dict: only the `bootstrap=` type exists, got {kind!r}")
    return Path(path)


def usage_of_backend(
    blobs_dir: Path | None, backend_config: Path | None, backend_type: str | None, cfg: CompactConfig
) -> None:
    """Raise ConfigError when the options naming the blobs do not fit together."""
    from nydus_compact.planner.errors import ConfigError

    if blobs_dir is not None and backend_config is not None:
        raise ConfigError("--blobs-dir and --backend-config are exclusive: give one")
    if backend_config is None and backend_type is not None:
        raise ConfigError("--backend-type needs --backend-config FILE")
    if backend_config is None and blobs_dir is None and not cfg.blobs_dir:
        raise ConfigError("where are the blobs? give --blobs-dir DIR or --backend-config FILE")


def resolve_backend(
    blobs_dir: Path | None, backend_config: Path | None, backend_type: str | None, cfg: CompactConfig
) -> BackendConfig:
    from nydus_compact.backends.config import load_backend_config, localfs_config
    from nydus_compact.planner.errors import ConfigError

    with option_values(ConfigError):
        usage_of_backend(blobs_dir, backend_config, backend_type, cfg)
    if backend_config is not None:
        return load_backend_config(backend_config, backend_type)
    return localfs_config(blobs_dir if blobs_dir is not None else Path(cfg.blobs_dir or "."))


@app.command("plan")
def plan_command(
    bootstraps: list[str] = typer.Argument(
        ..., help="Source bootstrap (RAFS v5 or v6), or image reference docker://NAME[:TAG|@DIGEST] or "
        "oci:DIR[:TAG]; several sharing a blob store (or repository) give one fleet plan.",
    ),
    blobs_dir: Path | None = typer.Option(None, "--blobs-dir", "-D", help="Directory holding the blobs, named by id."),
    backend_config: Path | None = typer.Option(
        None, "--backend-config", help="nydus backend config (ConfigV2 JSON/TOML, nydusd v1 JSON, or raw + --backend-type)."
    ),
    backend_type: str | None = typer.Option(None, "--backend-type", help="Type of a raw backend config: localfs, registry, s3, http-proxy."),
    chunk_dict: str | None = typer.Option(None, "--chunk-dict", help="Chunk dictionary: PATH or bootstrap=PATH."),
    config: Path | None = typer.Option(None, "--config", "-C", help="nydus compact config JSON (flags override it)."),
    min_used_ratio: int | None = typer.Option(None, "--min-used-ratio", help="Rebuild blobs using less than N% (0-255, 0 disables)."),
    compact_blob_size: str | None = typer.Option(None, "--compact-blob-size", help="Merge blobs smaller than SIZE (e.g. 10MiB)."),
    max_compact_size: str | None = typer.Option(None, "--max-compact-size", help="Merged blobs hold at most SIZE of used data."),
    layers_to_compact: int | None = typer.Option(None, "--layers-to-compact", help="Do nothing below N blobs (0: always)."),
    max_blobs: int | None = typer.Option(
        None, "--max-blobs", min=1,
        help="After the size rules, merge further so the new blob table holds at most N blobs, rewriting the fewest extra bytes (v6: N <= 255, v5: N <= 256).",
    ),
    output: Path = typer.Option(Path("plan.yaml"), "-o", "--output", help="Where to write the plan (- for stdout)."),
    new_bootstrap: Path | None = typer.Option(None, "-O", "--output-bootstrap", help="Bootstrap apply will write (default: BOOTSTRAP.compact)."),
    state: Path | None = typer.Option(None, "--state", help="SQLite state store (default: next to the plan, PLAN.state.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON on stdout."),
    detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode", help="Exit 0 if nothing changes, 2 if changes are planned, 1 on error."),
    upstream_oracle: bool = typer.Option(False, "--upstream-oracle", help="Decide exactly as nydus-image 2.2 compact would (its bugs fixed), without this tool's improvements."),
    drop_unused_dict_blobs: bool = typer.Option(False, "--drop-unused-dict-blobs", help="I1: leave chunk-dict blobs no file uses out of the new table."),
    ratio_u8_wrap: bool = typer.Option(False, "--ratio-u8-wrap", help="Reproduce nydus-image 2.2's truncation of the used ratio to 0-255."),
    v6_key: str = typer.Option("offset", "--v6-key", help="How v6 chunks are identified: offset (v2.2.0) or digest (HEAD)."),
    target: str | None = typer.Option(None, "--target", help="Image sources: where apply publishes the result (docker://… or oci:DIR:TAG; default: the source's repository, tag TAG-compact)."),
    target_suffix: str | None = typer.Option(None, "--target-suffix", help="Image sources: each target is the source's tag plus this suffix (default -compact)."),
    platform: str | None = typer.Option(None, "--platform", help="Image sources: os/arch or os/arch/variant to pick from an index (default: this machine's)."),
    authfile: str | None = image_opts.AUTHFILE,
    insecure_registry: list[str] = image_opts.INSECURE,
) -> int:
    """Index a bootstrap, decide what to delete / rebuild / merge, and write a reviewable plan.

    Example:

        compact plan image.boot --blobs-dir blobs/ --min-used-ratio 5 -o plan.yaml

    Fleet (one plan for images sharing a blob store; apply writes one new bootstrap per image):

        compact plan app-v1.boot app-v2.boot app-v3.boot --blobs-dir blobs/ -o fleet.yaml

    At most 64 blobs, merging the blobs that cost the fewest extra bytes to rewrite:

        compact plan image.boot --blobs-dir blobs/ --max-blobs 64 -o plan.yaml

    Images (blobs are read from the image's own repository or layout; apply publishes the result):

        compact plan docker://reg.example.com/team/app:v1 --target docker://reg.example.com/team/app:v1-small -o plan.yaml

        compact plan oci:./layout:v1 -o plan.yaml      # target: oci:./layout:v1-compact
    """
    from nydus_compact.backends.config import local_blob_places, open_backend
    from nydus_compact.planner.config import CompactConfig, load_config_file, merge
    from nydus_compact.planner.errors import ConfigError, PlanError, UsageError
    from nydus_compact.planner.flags import V6_KEYS, Flags
    from nydus_compact.planner.pipeline import PLAN_PHASES, PlanInputs, make_plan
    from nydus_compact.planner.planfile import render, write_plan
    from nydus_compact.store.db import open_store

    cfg = load_config_file(config, warn=warning) if config is not None else CompactConfig()
    with option_values(PlanError):
        cfg = merge(
            cfg,
            {
                "min_used_ratio": min_used_ratio,
                "compact_blob_size": compact_blob_size,  # merge() parses sizes and names the flag
                "max_compact_size": max_compact_size,
                "layers_to_compact": layers_to_compact,
                "max_blobs": max_blobs,
            },
        )
        if upstream_oracle and cfg.max_blobs is not None:
            raise UsageError("--max-blobs is a tool-mode improvement: it cannot be combined with --upstream-oracle")
        if v6_key not in V6_KEYS:
            raise ConfigError(f"--v6-key: expected one of {', '.join(V6_KEYS)}, got {v6_key!r}")
        base = Flags.upstream_oracle() if upstream_oracle else Flags.tool_default()
        flags = Flags(**{**base.describe(), "i1_drop_unused_dict_blobs": drop_unused_dict_blobs,
                         "ratio_u8_wrap": ratio_u8_wrap, "v6_key": v6_key})
        dict_path = parse_chunk_dict(chunk_dict)
    plan_dir = Path(".") if is_stdout(output) else output.parent
    state_path = state or default_state(output)
    from nydus_compact.image.reference import is_image_ref

    refs = [b for b in bootstraps if is_image_ref(b)]
    if refs:
        from nydus_compact.image.planning import prepare_images, require_all_blobs

        if len(refs) != len(bootstraps):
            raise ImageUsageError("give bootstrap files or image references, not both")
        if blobs_dir is not None or backend_config is not None or backend_type is not None:
            raise ImageUsageError("image sources read blobs from their own repository: drop --blobs-dir / --backend-config")
        if is_stdout(output):
            raise ImageUsageError("an image plan keeps the images' bootstraps next to it: give -o FILE, not -")
        guard = OutputGuard().input(dict_path, "the chunk dict").input(config, "a config file")
        images = prepare_images(refs, output, image_opts.access(authfile, insecure_registry), target=target,
                                target_suffix=target_suffix, platform=platform)
        inputs = PlanInputs(images.bootstraps, dict_path, images.backend_config, cfg, flags, new_bootstrap,
                            image_sources=images.sources, plan_dir=plan_dir)
        guard.inputs(images.bootstraps, "a source bootstrap")
        opened = images.backend
    else:
        if target is not None or target_suffix is not None or platform is not None:
            raise ImageUsageError("--target, --target-suffix and --platform apply to image references only")
        paths = [Path(b) for b in bootstraps]
        bcfg = resolve_backend(blobs_dir, backend_config, backend_type, cfg)
        inputs = PlanInputs(paths, dict_path, bcfg, cfg, flags, new_bootstrap, plan_dir=plan_dir)
        guard = plan_command_guard(paths, dict_path, bcfg, [config, backend_config])
        opened = open_backend(bcfg)
    guard.output(state_path, "the state store (--state)")
    if new_bootstrap is not None:  # written by apply, refused now rather than after the review
        guard.output(new_bootstrap, "the new bootstrap (-O)")
    # Phases on a terminal: a plan of a million-occurrence image takes seconds.
    with phases(sys.stderr.isatty(), "plan", PLAN_PHASES) as progress, opened as backend, \
            new_state_removed_on_failure(state_path):
        with open_store(state_path) as store:
            outcome = make_plan(inputs, backend, store, progress)
        plan = outcome.plan
        if refs:
            require_all_blobs(plan)
        else:
            _, blob_files = local_blob_places(bcfg.config | {"type": bcfg.type}, [b.blob_id for b in plan.blobs])
            guard.inputs(blob_files, "a source blob")
        if not is_stdout(output):
            guard.output(output, "the plan (-o)")
            write_plan(plan, output)
    if as_json:
        typer.echo(json.dumps({**plan.body(), "plan_digest": plan.digest}, indent=2, sort_keys=True))
    elif is_stdout(output):
        typer.echo(render(plan, "PLAN.yaml"), nl=False)
        typer.echo(summary_line(plan), err=True)
        if (line := limit_line(plan)) is not None:
            typer.echo(line, err=True)
    else:
        typer.echo(summary_line(plan), err=True)
        if (line := limit_line(plan)) is not None:
            typer.echo(line, err=True)
        typer.echo(f"plan written to {output}", err=True)
    if detailed_exitcode and plan.summary.changes:
        return EXIT_CHANGES
    return EXIT_OK


@app.command("show")
def show_command(
    plan_file: Path = typer.Argument(..., help="A plan written by `compact plan`."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Show a plan as tables: the blob table before and after, with each decision's reason.

    Example:

        compact show plan.yaml
    """
    from nydus_compact.planner.planfile import load_plan

    written, recorded = load_plan(plan_file)
    edited = recorded is not None and recorded != written.digest
    shown, note = written, None
    if edited:  # shown as apply will carry it out: the numbers recomputed from the decisions
        from nydus_compact.planner.pipeline import rederive

        again = rederive(written, recorded, str(plan_file))
        shown, note = again.plan, again.note
    if as_json:
        typer.echo(json.dumps({**shown.body(), "plan_digest": written.digest}, indent=2, sort_keys=True))
        return
    typer.echo(render_show(shown, edited, note))


def render_show(plan: Plan, edited: bool, note: str | None = None) -> str:
    lines = []
    for im in plan.images:
        lines.append(f"image {im.path} (RAFS v{im.rafs_version}, {im.compressor}/{im.digester}, sha256 {im.sha256[:12]})")
    if edited:
        lines.append(
            "note: the plan was edited after `compact plan` wrote it (digest differs); "
            + (f"numbers below are the file's own: {note}" if note else "numbers below are recomputed from its decisions, as apply will")
        )
    lines.append(summary_line(plan))
    if (line := limit_line(plan)) is not None:
        lines.append(line)
    lines.append("")
    lines.append("before:")
    lines.append(f"  {'idx':>3}  {'blob':<14} {'size':>10} {'used':>10} {'ratio':>5}  decision   reason")
    for b in plan.blobs:
        size = b.size_for_ratio if b.size_for_ratio is not None else (b.observed_size or b.table_size)
        ratio = f"{b.ratio}%" if b.ratio is not None else "-"
        target = f" -> {b.group}" if b.group else ""
        lines.append(
            f"  {b.index:>3}  {b.blob_id[:12] + '..':<14} {human_size(size):>10} {human_size(b.used_bytes):>10} "
            f"{ratio:>5}  {b.decision:<9}  {b.reason}{target}"
        )
    lines.append("")
    lines.append("after:")
    groups = {f"new:{g.name}": g for g in plan.groups}
    for i, entry in enumerate(plan.new_table):
        g = groups.get(entry)
        if g is not None:
            members = ", ".join(str(m) for m in g.members)
            lines.append(f"  {i:>3}  new blob {g.name:<6} {human_size(g.compressed_size):>10}  {plural(g.chunk_count, 'chunk')} from [{members}]")
        else:
            lines.append(f"  {i:>3}  {entry[:12]}..  kept")
    if plan.deletable:
        lines.append("")
        lines.append(f"deletable after apply ({len(plan.deletable)}): " + ", ".join(d[:12] for d in plan.deletable))
    for f in plan.findings:
        lines.append(f"finding: {f}")
    return "\n".join(lines)
