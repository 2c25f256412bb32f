"""Planning across several images that share a blob store (one plan, one new bootstrap per image).

The images' blob tables are united by blob id (first appearance wins the position) and their
occurrences concatenated, with blob indexes rewritten to the union; R then runs once over the
union, so a blob is deleted only when no image references it and the used ratio counts the bytes
any image uses. Each image's new bootstrap gets exactly the new-table entries it references
(plus chunk-dict blobs, which R always keeps), in union-table order. With one image the union is
the image itself and the projection is the identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nydus_compact.rafs.model import Bootstrap

from .errors import PlanError
from .facts import DictFacts, Facts, SourceBlob
from .layout import Layout, TableEntry


@dataclass(frozen=True)
class Union:
    facts: Facts
    slices: list[tuple[int, int]]  # occurrence range of each image in facts.chunks
    blob_maps: list[np.ndarray]  # per image: its blob-table index -> union (E) index


def unite(
    images: list[Bootstrap],
    names: list[str],
    observed_sizes: Mapping[str, int] | None = None,
    chunk_dict: Bootstrap | None = None,
) -> Union:
    if not images:
        raise PlanError("no bootstrap to plan")
    first = images[0]
    for bs, name in zip(images[1:], names[1:]):
        for what, a, b in (
            ("RAFS version", first.version, bs.version),
            ("chunk size", first.chunk_size, bs.chunk_size),
            ("digester", first.digester.label, bs.digester.label),
        ):
            if a != b:
                raise PlanError(f"{name}: {what} {b} differs from {names[0]}'s {a}; a fleet plan needs them equal")
    observed = observed_sizes or {}
    position: dict[str, int] = {}
    blobs: list[SourceBlob] = []
    maps, parts, slices = [], [], []
    start = 0
    for bs, name in zip(images, names):
        local = np.zeros(len(bs.blobs), dtype=np.uint32)
        for i, info in enumerate(bs.blobs):
            j = position.get(info.blob_id)
            if j is None:
                j = position[info.blob_id] = len(blobs)
                blobs.append(SourceBlob.from_blob_info(info, observed.get(info.blob_id)))
            elif blobs[j].compressed_size != info.compressed_size:
                raise PlanError(
                    f"{name}: blob {info.blob_id} has compressed_size {info.compressed_size}, "
                    f"another image's table says {blobs[j].compressed_size}"
                )
            local[i] = j
        chunks = bs.chunks
        if len(chunks) and int(chunks["blob_index"].max()) >= len(local):
            raise PlanError(f"{name}: a chunk points past the blob table")
        if not np.array_equal(local, np.arange(len(local))):
            # Only an image whose blobs moved in the union needs its own copy (a single image never does).
            chunks = chunks.copy()
            chunks["blob_index"] = local[chunks["blob_index"]]
        parts.append(chunks)
        maps.append(local)
        slices.append((start, start + len(chunks)))
        start += len(chunks)
    dict_facts = DictFacts.from_bootstrap(chunk_dict, observed) if chunk_dict is not None else None
    all_chunks = parts[0] if len(parts) == 1 else np.concatenate(parts)
    facts = Facts(version=first.version, blobs=blobs, chunks=all_chunks, chunk_dict=dict_facts)
    return Union(facts, slices, maps)


@dataclass(frozen=True)
class ImageProjection:
    table: list[TableEntry]  # this image's new blob table, renumbered 0..n-1
    chunks: np.ndarray  # this image's occurrences, blob_index into ``table``


def project(union: Union, result: Layout, image: int, in_place: bool = False) -> ImageProjection:
    """``image``'s new blob table and occurrences; ``in_place``: over the layout's source records
    (see Layout.relocated_chunks), which then no longer hold the image's old locations. Of a layout
    made in place, project each image in place once only: its blob indexes are renumbered there."""
    start, end = union.slices[image]
    chunks = result.relocated_chunks(start, end, in_place)
    # bincount, not np.unique: numpy's unique imports numpy.ma, 20-50 ms of every apply.
    used = set(np.flatnonzero(np.bincount(chunks["blob_index"])).tolist()) if len(chunks) else set()
    dict_ids = {b.blob_id for b in union.facts.chunk_dict.blobs} if union.facts.chunk_dict else set()
    keep = [e for e in result.table if e.new_index in used or e.blob_id in dict_ids]
    remap = np.full(len(result.table), -1, dtype=np.int64)
    table = []
    for local, e in enumerate(keep):
        remap[e.new_index] = local
        table.append(TableEntry(local, e.source, e.group, e.blob_id))
    if len(chunks):
        chunks["blob_index"] = remap[chunks["blob_index"]]
    return ImageProjection(table, chunks)


def referenced_bytes(facts: Facts, n_blobs: int, start: int = 0, end: int | None = None) -> np.ndarray:
    """Per E index, compressed bytes of the distinct chunk locations occurrences [start, end) point at."""
    ch = facts.chunks[start:end]
    if len(ch) == 0:
        return np.zeros(n_blobs, dtype=np.int64)
    coff = ch["compressed_offset"]
    if int(coff.max()) < 1 << 40:
        # One sort of a packed (blob, offset) key is much cheaper than a two-key lexsort.
        _, first = np.unique((ch["blob_index"].astype(np.uint64) << np.uint64(40)) | coff, return_index=True)
    else:
        order = np.lexsort((coff, ch["blob_index"]))
        blob, off = ch["blob_index"][order], coff[order]
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (blob[1:] != blob[:-1]) | (off[1:] != off[:-1])
        first = order[keep]
    sizes = ch["compressed_size"][first].astype(np.int64)
    return np.bincount(ch["blob_index"][first], weights=sizes, minlength=n_blobs).astype(np.int64)
