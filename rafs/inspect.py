"""What `compact inspect` shows of a bootstrap: superblock, blob table and files as one JSON-able document."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum, IntFlag
from pathlib import Path
from typing import Any

from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.localfs import LocalFsBackend

from .blob import distinct_chunks
from .flags import BlobFeatures, SuperFlags
from .loader import bootstrap_sha256
from .model import BlobInfo, Bootstrap, Node, kind_name

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
            # Only local backends have a file per blob; an image's registry does not.
            where = backend.blob_path(blob.blob_id) if hasattr(backend, "blob_path") else None
            out.append({"file": str(where) if where else None, "file_size": backend.blob_size(blob.blob_id)})
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
