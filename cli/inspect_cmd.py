"""`compact inspect`: show what a bootstrap holds and optionally verify every chunk of its blobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nydus_compact.planner.formatting import plural

from . import image_opts
from .app import EXIT_ERROR, app

if TYPE_CHECKING:  # imported when the command runs (fast start-up)
    from nydus_compact.backends.base import BlobBackend
    from nydus_compact.rafs.model import Bootstrap


def _print_text(doc: dict[str, Any], with_chunks: bool) -> None:
    sb = doc["superblock"]
    boot = doc["bootstrap"]
    echo = typer.echo
    echo(f"bootstrap     {boot['path']} ({boot['size']} bytes, sha256 {boot['sha256']})")
    echo(f"version       RAFS v{sb['version']}")
    echo(f"chunk size    {sb['chunk_size']:#x}")
    echo(f"compressor    {sb['compressor']}")
    echo(f"digester      {sb['digester']}")
    echo(f"flags         {sb['flags']} ({' | '.join(sb['flags_decoded']) or '-'})")
    if sb["quirks"]:
        echo(f"quirks        {', '.join(sb['quirks'])}")
    echo(f"nodes         {sb['nodes']}")
    echo(f"chunks        {sb['chunk_occurrences']} occurrences, {sb['distinct_chunks']} distinct")
    echo(f"prefetch      {len(sb['prefetch'])} entries")
    echo("")
    echo(f"blobs ({len(doc['blobs'])}):")
    for i, blob in enumerate(doc["blobs"]):
        echo(f"  [{i}] {blob['blob_id']}")
        for key, value in blob.items():
            if key == "blob_id":
                continue
            if key == "features":
                value = f"{value:#x}"
            elif key == "features_decoded":
                value = " | ".join(value) or "-"
            echo(f"      {key:<22}{value}")
    echo("")
    echo(f"files ({len(doc['files'])}):")
    echo(f"  {'TYPE':<8} {'MODE':>8} {'SIZE':>12} {'CHUNKS':>6}  PATH")
    for f in doc["files"]:
        suffix = f" -> {f['symlink']}" if f["symlink"] is not None else ""
        if f["hardlink_of"] is not None:
            suffix = f" (hard link of {f['hardlink_of']})"
        echo(f"  {f['type']:<8} {f['mode'][2:]:>8} {f['size']:>12} {f['chunk_count']:>6}  {f['path']}{suffix}")
        if with_chunks:
            for c in f["chunks"]:
                echo(
                    f"      blob {c['blob_index']} index {c['index']} flags {c['flags']:#x}"
                    f" compressed {c['compressed_offset']}+{c['compressed_size']}"
                    f" uncompressed {c['uncompressed_offset']}+{c['uncompressed_size']}"
                    f" file_offset {c['file_offset']} digest {c['digest']}"
                )


def _verify(bs: Bootstrap, backend: BlobBackend) -> dict[str, Any]:
    from nydus_compact.rafs.blob import ChunkSource

    source = ChunkSource(bs, backend)
    problems = source.verify()
    st = source.stats
    return {
        "ok": not problems,
        "occurrences": st.occurrences,
        "distinct_chunks": st.distinct,
        "checked": st.checked,
        "bytes_read": st.bytes_read,
        "problem_count": st.problems,
        "problems": problems,
    }


@app.command(
    "inspect",
    epilog=(
        "Example: compact inspect image.boot --blobs-dir ./blobs --verify\n\n"
        "Exit status: 0 when everything is fine, 1 on an unreadable bootstrap or a failed --verify."
    ),
)
def inspect_cmd(
    bootstrap: Annotated[
        str, typer.Argument(help="RAFS v5 or v6 bootstrap file, or an image: docker://NAME[:TAG|@DIGEST], oci:DIR[:TAG].",
                            show_default=False)
    ],
    blobs_dir: Annotated[
        Path | None, typer.Option("--blobs-dir", "-D", help="Directory holding the blobs, named by blob id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    chunks: Annotated[bool, typer.Option("--chunks", help="Also list every chunk of every file.")] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Read every chunk from --blobs-dir (or the image's repository) and check sizes and digests."),
    ] = False,
    platform: Annotated[str | None, typer.Option("--platform", help="Image in an index: os/arch or os/arch/variant.")] = None,
    authfile: str | None = image_opts.AUTHFILE,
    insecure_registry: list[str] = image_opts.INSECURE,
) -> None:
    """Show the superblock, blob table and files of a bootstrap; optionally verify its blobs."""
    from nydus_compact.backends.localfs import LocalFsBackend
    from nydus_compact.image.reference import is_image_ref
    from nydus_compact.rafs.inspect import inspect_document
    from nydus_compact.rafs.loader import load_bootstrap

    if is_image_ref(bootstrap):
        from nydus_compact.image.errors import ImageUsageError
        from nydus_compact.image.fetch import fetched_image

        if blobs_dir is not None:
            raise ImageUsageError("an image's blobs are read from its repository: drop --blobs-dir")
        with fetched_image(bootstrap, image_opts.access(authfile, insecure_registry), platform) as image:
            bs = load_bootstrap(image.bootstrap)
            doc = inspect_document(image.bootstrap, bs, backend=image.backend, with_chunks=chunks)
            doc["bootstrap"]["path"] = image.ref
            doc["bootstrap"]["manifest_digest"] = image.manifest_digest
            result = _verify(bs, image.backend) if verify else None
    else:
        if verify and blobs_dir is None:
            raise typer.BadParameter("--verify needs --blobs-dir", param_hint="--verify")
        path = Path(bootstrap)
        bs = load_bootstrap(path)
        backend = LocalFsBackend(dir=blobs_dir) if blobs_dir is not None else None
        try:
            doc = inspect_document(path, bs, backend=backend, with_chunks=chunks)
            result = _verify(bs, backend) if verify and backend is not None else None
        finally:
            if backend is not None:
                backend.close()
    if result is not None:
        doc["verify"] = result
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_text(doc, chunks)
        if result is not None:
            typer.echo("")
            for problem in result["problems"]:
                typer.echo(f"problem: {problem}")
            status = "OK" if result["ok"] else f"FAILED, {plural(result['problem_count'], 'problem')}"
            typer.echo(
                f"verify: {status}: {result['checked']} of {result['distinct_chunks']} distinct chunks"
                f" ({result['occurrences']} occurrences) checked, {result['bytes_read']} bytes read"
            )
    if result is not None and not result["ok"]:
        raise typer.Exit(EXIT_ERROR)
