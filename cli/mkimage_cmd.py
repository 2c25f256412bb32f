"""`compact mkimage`: build a multi-layer Nydus image from layer directories (or the bundled sample)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nydus_compact.mkimage.errors import BuildError
from nydus_compact.planner.formatting import human_size, plural

from .app import app, option_values

if TYPE_CHECKING:  # imported when the command runs (fast start-up)
    from nydus_compact.mkimage.builder import BuildResult

_SIZE = re.compile(r"(?i)\s*(0x[0-9a-f]+|\d+)\s*(b|k|kib|m|mib|g|gib)?\s*")
_UNITS = {None: 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
_COMPRESSORS = ("zstd", "lz4_block", "none")


def parse_size(text: str) -> int:
    """``64KiB``, ``1MiB``, ``0x100000`` or plain bytes (binary units only)."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise BuildError(f"invalid size {text!r} (expected e.g. 65536, 64KiB, 1MiB)")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1), 0) * _UNITS[unit]


@app.command(
    "mkimage",
    epilog=(
        "Examples: compact mkimage base/ update/ -o out --chunk-size 64KiB;  "
        "compact mkimage --sample -o demo --fs-version 5\n\n"
        "Writes OUT_DIR/image.boot and OUT_DIR/blobs/<blob_id>, one blob per layer that adds new chunks."
    ),
)
def mkimage_cmd(
    layers: Annotated[
        list[Path] | None,
        typer.Argument(help="Layer directories, lowest first (OCI whiteouts are applied).", show_default=False),
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory.", show_default=False)] = ...,  # type: ignore[assignment]
    fs_version: Annotated[int, typer.Option("--fs-version", help="RAFS version: 5 or 6.")] = 6,
    chunk_size: Annotated[
        str, typer.Option("--chunk-size", help="Power of two in [4KiB, 16MiB]; e.g. 64KiB, 1MiB, 1048576.")
    ] = "1MiB",
    compressor: Annotated[str, typer.Option("--compressor", help="zstd, lz4_block or none.")] = "zstd",
    digester: Annotated[str, typer.Option("--digester", help="blake3 or sha256.")] = "blake3",
    ci_version: Annotated[int, typer.Option("--ci-version", help="v6 chunk-info format: 1 or 2.")] = 1,
    blob_toc: Annotated[bool, typer.Option("--blob-toc", help="v6: add tar headers, digests and a ToC.")] = False,
    repeatable: Annotated[bool, typer.Option("--repeatable", help="Zero uid/gid (no EXPLICIT_UID_GID).")] = False,
    sample: Annotated[bool, typer.Option("--sample", help="Build the bundled sample layers instead.")] = False,
    sample_scale: Annotated[int, typer.Option("--sample-scale", help="Grow the sample's data.")] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty OUT_DIR (same-named files are replaced).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    output_image: Annotated[
        str | None, typer.Option("--output-image", help="Also write the image as an OCI layout: oci:DIR:TAG.")
    ] = None,
) -> None:
    """Build a multi-layer Nydus image: one data blob per layer, one merged bootstrap."""
    from nydus_compact.mkimage.builder import BuildOptions, build_image
    from nydus_compact.mkimage.sample import make_sample_layers
    from nydus_compact.rafs.compression import Compressor
    from nydus_compact.rafs.digest import Digester

    from nydus_compact.image.build import write_layout_image

    with option_values(BuildError, ValueError):
        if compressor not in _COMPRESSORS:
            raise BuildError(f"unknown compressor {compressor!r} (expected one of {', '.join(_COMPRESSORS)})")
        opts = BuildOptions(
            fs_version=fs_version,
            chunk_size=parse_size(chunk_size),
            compressor=Compressor.from_label(compressor),
            digester=Digester.from_label(digester),
            ci_version=ci_version,
            blob_toc=blob_toc,
            repeatable=repeatable,
        )
        opts.validate()
        if sample == bool(layers):
            raise BuildError("give either layer directories or --sample")
        if output_image is not None and blob_toc:
            raise BuildError("--output-image: blobs with a ToC have ids that are not the sha256 of their bytes and cannot be image layers")
    for layer in layers or []:
        # The image would land in (and with --force replace files of) the tree being read.
        if layer.resolve() == output.resolve() or layer.resolve() in output.resolve().parents:
            raise BuildError(f"{output}: is inside the layer directory {layer}; choose an output outside the layers")
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not force)):
        raise BuildError(f"{output}: exists and is not an empty directory (use --force to write into it)")
    if sample:
        with tempfile.TemporaryDirectory(prefix="compact-sample-") as tmp:
            result = build_image(make_sample_layers(Path(tmp), scale=sample_scale), output, opts)
    else:
        result = build_image(list(layers or []), output, opts)
    digest = None
    if output_image is not None:
        digest = write_layout_image(output_image, result.bootstrap_path.read_bytes(), opts.fs_version, result.blob_paths)
    _report(result, as_json, output_image, digest)


def _report(result: BuildResult, as_json: bool, image: str | None, digest: str | None) -> None:
    bs = result.bootstrap
    blobs = [
        {
            "blob_id": info.blob_id,
            "path": str(path),
            "chunk_count": info.chunk_count,
            "compressed_size": info.compressed_size,
            "uncompressed_size": info.uncompressed_size,
        }
        for info, path in zip(bs.blobs, result.blob_paths)
    ]
    if as_json:
        doc = {"bootstrap": str(result.bootstrap_path), "fs_version": bs.version, "nodes": len(bs.nodes), "blobs": blobs}
        if image is not None:
            doc["image"] = {"ref": image, "manifest_digest": digest}
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    typer.echo(f"bootstrap {result.bootstrap_path} (RAFS v{bs.version}, {plural(len(bs.nodes), 'node')}, {plural(len(blobs), 'blob')})", err=True)
    for blob in blobs:
        typer.echo(f"blob {blob['path']} ({plural(blob['chunk_count'], 'chunk')}, {human_size(blob['compressed_size'])})", err=True)
    if image is not None:
        typer.echo(f"image {image} ({digest})", err=True)
