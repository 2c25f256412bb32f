"""`compact inspect`: show what a bootstrap holds and optionally verify every chunk of its blobs."""

from __future__ import annotations

import json
from dataclasses import fields
from enum import Enum, IntFlag
from pathlib import Path
from typing import Annotated, Any

import typer

from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.rafs.blob import ChunkSource, distinct_chunks
from nydus_compact.rafs.flags import BlobFeatures, SuperFlags
from nydus_compact.rafs.loader import bootstrap_sha256, load_bootstrap
from nydus_compact.rafs.model import BlobInfo, Bootstrap, Node, kind_name

from .app import EXIT_ERROR, app

INSPECT_FORMAT = "nydus-compact.inspect/1"

_CHUNK_FIELDS = (
    "blob_index",
    "index",
    "flags",
    "compressed_offset",
    "compressed_size",
    "uncompressed_offset",
    "uncompressed_size",
    "file_offset",
)


def _text(raw: bytes) -> str:
    # Names are bytes on disk; non-UTF-8 bytes stay visible (and unambiguous) as \xNN.
    return raw.decode("utf-8", "backslashreplace")


def _bits(value: int, flag_type: type[IntFlag]) -> list[str]:
    """Names of the set bits, unknown ones as one hex number."""
    names = [str(m.name) for m in flag_type if value & m == m]
    unknown = value & ~sum(flag_type)
    if unknown:
        names.append(f"{unknown:#x}")
    return names


def _blob_doc(blob: BlobInfo, observed: dict[str, Any] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for f in fields(BlobInfo):
        value = getattr(blob, f.name)
        if isinstance(value, Enum):
            value = value.label
        elif isinstance(value, bytes):
            value = value.hex()
        doc[f.name] = value
    doc["features_decoded"] = _bits(blob.features, BlobFeatures)
    if observed is not None:
        doc.update(observed)
    return doc


def _chunk_docs(bs: Bootstrap, node: Node) -> list[dict[str, Any]]:
    rows = bs.node_chunks(node)
    out = []
    for row in rows:
        doc = {name: int(row[name]) for name in _CHUNK_FIELDS}
        doc["digest"] = bytes(row["block_id"]).hex()
        out.append(doc)
    return out


def _node_doc(bs: Bootstrap, pos: int, node: Node, with_chunks: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "path": _text(node.path),
        "type": kind_name(node.mode),
        "mode": f"{node.mode:#o}",
        "size": node.size,
        "chunk_count": node.chunk_count,
        "uid": node.uid,
        "gid": node.gid,
        "mtime": node.mtime,
        "mtime_nsec": node.mtime_nsec,
        "nlink": node.nlink,
        "rdev": node.rdev,
        "symlink": _text(node.symlink) if node.symlink is not None else None,
        "xattrs": [[_text(k), v.hex()] for k, v in node.xattrs],
        "hardlink_of": _text(bs.nodes[node.link].path) if node.is_reg and 0 <= node.link != pos else None,
        "digest": node.digest.hex(),
    }
    if with_chunks:
        doc["chunks"] = _chunk_docs(bs, node)
    return doc


def _observed_blobs(bs: Bootstrap, backend: LocalFsBackend | None) -> list[dict[str, Any] | None]:
    if backend is None:
        return [None] * len(bs.blobs)
    out: list[dict[str, Any] | None] = []
    for blob in bs.blobs:
        try:
            out.append({"file": str(backend.blob_path(blob.blob_id)), "file_size": backend.blob_size(blob.blob_id)})
        except BackendError as exc:
            out.append({"file": None, "file_size": None, "error": str(exc)})
    return out


def inspect_document(
    path: Path, bs: Bootstrap, *, backend: LocalFsBackend | None = None, with_chunks: bool = False
) -> dict[str, Any]:
    """Everything `inspect` shows, as a JSON-able document with a fixed key order."""
    distinct = distinct_chunks(bs.chunks)
    return {
        "format": INSPECT_FORMAT,
        "bootstrap": {"path": str(path), "size": path.stat().st_size, "sha256": bootstrap_sha256(path)},
        "superblock": {
            "version": bs.version,
            "flags": f"{bs.flags:#x}",
            "flags_decoded": _bits(bs.flags, SuperFlags),
            "chunk_size": bs.chunk_size,
            "compressor": bs.compressor.label,
            "digester": bs.digester.label,
            "quirks": sorted(bs.quirks),
            "nodes": len(bs.nodes),
            "chunk_occurrences": len(bs.chunks),
            "distinct_chunks": len(distinct),
            "prefetch": [_text(bs.nodes[p].path) if p is not None else None for p in bs.prefetch],
        },
        "blobs": [_blob_doc(b, o) for b, o in zip(bs.blobs, _observed_blobs(bs, backend), strict=True)],
        "files": [_node_doc(bs, pos, node, with_chunks) for pos, node in enumerate(bs.nodes)],
    }


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


def _verify(bs: Bootstrap, backend: LocalFsBackend) -> dict[str, Any]:
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
    bootstrap: Annotated[Path, typer.Argument(help="RAFS v5 or v6 bootstrap file.", show_default=False)],
    blobs_dir: Annotated[
        Path | None, typer.Option("--blobs-dir", help="Directory holding the blobs, named by blob id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    chunks: Annotated[bool, typer.Option("--chunks", help="Also list every chunk of every file.")] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Read every chunk from --blobs-dir and check sizes and digests."),
    ] = False,
) -> None:
    """Show the superblock, blob table and files of a bootstrap; optionally verify its blobs."""
    if verify and blobs_dir is None:
        raise typer.BadParameter("--verify needs --blobs-dir", param_hint="--verify")
    bs = load_bootstrap(bootstrap)
    backend = LocalFsBackend(dir=blobs_dir) if blobs_dir is not None else None
    try:
        doc = inspect_document(bootstrap, bs, backend=backend, with_chunks=chunks)
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
            status = "OK" if result["ok"] else f"FAILED, {result['problem_count']} problem(s)"
            typer.echo(
                f"verify: {status}: {result['checked']} of {result['distinct_chunks']} distinct chunks"
                f" ({result['occurrences']} occurrences) checked, {result['bytes_read']} bytes read"
            )
    if result is not None and not result["ok"]:
        raise typer.Exit(EXIT_ERROR)
