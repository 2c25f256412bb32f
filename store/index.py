"""Indexing a loaded bootstrap into the store, and reading the index back.

Occurrences never become Python objects: distinct chunk records are found with a
lexsort over 8-byte words of the CHUNK_DTYPE array, and rows are streamed to
``executemany`` in batches of ``BATCH_ROWS`` tuples built from numpy columns.

``file_offset`` is stored per occurrence in ``refs`` (not recomputed as chunk_no ×
chunk_size) so ``load_occurrences`` returns the loader's array byte for byte, except the
``reserved`` word, which is not kept and comes back as 0.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import fields
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node

from .db import BATCH_ROWS, Store, column_values, insert_sql, select_sql
from .errors import StoreError
from .schema import COLUMNS

# CHUNK_DTYPE as ten little-endian u64 words: 0-3 block_id, 4 blob_index|flags,
# 5 compressed|uncompressed size, 6 compressed_offset, 7 uncompressed_offset,
# 8 file_offset, 9 index|reserved. Two occurrences are the same chunk when every word
# but file_offset matches.
_WORDS = CHUNK_DTYPE.itemsize // 8
_KEY_WORDS = (0, 1, 2, 3, 4, 5, 6, 7, 9)
_U64_FIELDS = ("compressed_offset", "uncompressed_offset", "file_offset")
_I64_MAX = np.iinfo(np.int64).max

_KINDS = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "reg"),
    (stat.S_ISLNK, "lnk"),
    (stat.S_ISCHR, "chr"),
    (stat.S_ISBLK, "blk"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "sock"),
)

_CHUNK_COLUMNS = COLUMNS["chunks"][2:]  # after image_id, chunk_id
# chunks-table column -> CHUNK_DTYPE field
_CHUNK_FIELD = {c: ("index" if c == "idx" else c) for c in _CHUNK_COLUMNS}


def node_kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "unknown"


def dedup_chunks(chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first occurrence of each distinct chunk, in order of first appearance; chunk_id per occurrence)."""
    n = len(chunks)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    words = np.ascontiguousarray(chunks, dtype=CHUNK_DTYPE).view("<u8").reshape(n, _WORDS)
    order = np.lexsort([words[:, w] for w in _KEY_WORDS])
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    for w in _KEY_WORDS:
        col = words[order, w]
        starts[1:] |= col[1:] != col[:-1]
    group_of_sorted = np.cumsum(starts) - 1
    first = np.minimum.reduceat(order, np.flatnonzero(starts))
    # Renumber groups by first appearance so ids do not depend on the sort.
    rank = np.empty(len(first), dtype=np.int64)
    by_first = np.argsort(first, kind="stable")
    rank[by_first] = np.arange(len(first))
    chunk_id = np.empty(n, dtype=np.int64)
    chunk_id[order] = rank[group_of_sorted]
    return first[by_first], chunk_id


def _owners(path: Path, nodes: list[Node], n_occ: int) -> tuple[np.ndarray, np.ndarray]:
    """Owning node position and position within that node for every occurrence (-1 if none).

    Each name normally has its own range; if ranges overlap (names sharing one range),
    the lowest node position owns the occurrence."""
    starts = np.fromiter((nd.chunk_start for nd in nodes), dtype=np.int64, count=len(nodes))
    counts = np.fromiter((nd.chunk_count for nd in nodes), dtype=np.int64, count=len(nodes))
    if len(nodes) and ((starts < 0).any() or (counts < 0).any() or (starts + counts > n_occ).any()):
        raise StoreError(f"{path}: a node's chunk range lies outside the occurrence array")
    total = int(counts.sum())
    pos = np.repeat(np.arange(len(nodes), dtype=np.int64), counts)
    chunk_no = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    occ = np.repeat(starts, counts) + chunk_no
    owner = np.full(n_occ, -1, dtype=np.int64)
    owner_no = np.full(n_occ, -1, dtype=np.int64)
    uniq, first = np.unique(occ, return_index=True)
    owner[uniq] = pos[first]
    owner_no[uniq] = chunk_no[first]
    return owner, owner_no


def _chunk_rows(image_id: int, distinct: np.ndarray) -> Iterator[tuple]:
    for lo in range(0, len(distinct), BATCH_ROWS):
        part = distinct[lo : lo + BATCH_ROWS]
        cols = [column_values(part, _CHUNK_FIELD[c]) for c in _CHUNK_COLUMNS]
        yield from zip(repeat(image_id), range(lo, lo + len(part)), *cols)


def _nullable(values: np.ndarray) -> list[int | None]:
    out = values.tolist()
    if (values < 0).any():
        return [None if v < 0 else v for v in out]
    return out


def _ref_rows(
    image_id: int, owner: np.ndarray, owner_no: np.ndarray, chunk_id: np.ndarray, file_offset: np.ndarray
) -> Iterator[tuple]:
    for lo in range(0, len(owner), BATCH_ROWS):
        hi = lo + BATCH_ROWS
        yield from zip(
            repeat(image_id),
            range(lo, min(hi, len(owner))),
            _nullable(owner[lo:hi]),
            _nullable(owner_no[lo:hi]),
            chunk_id[lo:hi].tolist(),
            file_offset[lo:hi].tolist(),
        )


def _blob_row(image_id: int, blob_index: int, blob: BlobInfo, observed: dict[str, tuple[int, str]]) -> tuple:
    size, source = observed.get(blob.blob_id, (blob.compressed_size, "table"))
    values = {f.name: getattr(blob, f.name) for f in fields(BlobInfo)} | {
        "image_id": image_id,
        "blob_index": blob_index,
        "compressor": blob.compressor.label,
        "digester": blob.digester.label,
        "observed_size": size,
        "size_source": source,
    }
    return tuple(values[c] for c in COLUMNS["blobs"])


def _node_rows(image_id: int, nodes: list[Node]) -> Iterator[tuple]:
    for pos, nd in enumerate(nodes):
        yield (
            image_id,
            pos,
            bytes(nd.path),
            node_kind(nd.mode),
            nd.mode,
            nd.size,
            nd.nlink,
            nd.link,
            nd.chunk_start,
            nd.chunk_count,
        )


def find_image(store: Store, sha256: str) -> int | None:
    """The image id indexed for a bootstrap with this content hash, if any."""
    rows = store.fetchall('SELECT "id" FROM "images" WHERE "sha256" = ?', (sha256,))
    return rows[0][0] if rows else None


def index_bootstrap(
    store: Store,
    path: Path,
    bs: Bootstrap,
    sha256: str,
    observed_sizes: dict[str, tuple[int, str]] | None,
    *,
    size: int | None = None,
) -> int:
    """Index ``bs`` (loaded from ``path``, whose content hash is ``sha256``) and return its image id.

    An image already indexed under ``sha256`` is returned as is: the index is keyed by content.
    ``observed_sizes`` maps blob id -> (size, source) for blobs whose size was checked
    elsewhere; other blobs record their table ``compressed_size`` with source "table".
    ``size`` defaults to the size of the file at ``path``.
    """
    existing = find_image(store, sha256)
    if existing is not None:
        return existing
    if size is None:
        try:
            size = Path(path).stat().st_size
        except OSError as exc:
            raise StoreError(f"{path}: cannot stat bootstrap: {exc.strerror or exc}") from None
    chunks = np.ascontiguousarray(bs.chunks, dtype=CHUNK_DTYPE)
    for name in _U64_FIELDS:
        if len(chunks) and int(chunks[name].max()) > _I64_MAX:
            raise StoreError(f"{path}: chunk {name} exceeds 2^63-1 and cannot be indexed")
    first, chunk_id = dedup_chunks(chunks)
    owner, owner_no = _owners(path, bs.nodes, len(chunks))
    observed = observed_sizes or {}
    display_path = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    with store.bulk():
        if (raced := find_image(store, sha256)) is not None:  # indexed by another process meanwhile
            return raced
        cur = store.execute(
            insert_sql("images", COLUMNS["images"][1:]),  # id assigned by SQLite
            (
                display_path,
                sha256,
                size,
                bs.version,
                bs.chunk_size,
                bs.flags,
                bs.compressor.label,
                bs.digester.label,
                len(bs.nodes),
                len(chunks),
                store.now(),
            ),
        )
        image_id = int(cur.lastrowid)
        store.insert_many(
            "blobs", COLUMNS["blobs"], (_blob_row(image_id, i, b, observed) for i, b in enumerate(bs.blobs))
        )
        store.insert_many("nodes", COLUMNS["nodes"], _node_rows(image_id, bs.nodes))
        store.insert_many("chunks", COLUMNS["chunks"], _chunk_rows(image_id, chunks[first]))
        store.insert_many(
            "refs", COLUMNS["refs"], _ref_rows(image_id, owner, owner_no, chunk_id, chunks["file_offset"])
        )
    return image_id


def load_image(store: Store, image_id: int) -> dict[str, Any]:
    rows = store.fetch_dicts(select_sql("images", COLUMNS["images"], '"id" = ?'), (image_id,))
    if not rows:
        raise StoreError(f"{store.path}: no image {image_id}")
    return rows[0]


def load_blobs(store: Store, image_id: int) -> list[dict[str, Any]]:
    """The blob table in index order, one dict per row of ``blobs`` (every BlobInfo field,
    compressor/digester as labels, plus observed_size and size_source)."""
    return store.fetch_dicts(
        select_sql("blobs", COLUMNS["blobs"], '"image_id" = ?', '"blob_index"'), (image_id,)
    )


def load_occurrences(store: Store, image_id: int) -> np.ndarray:
    """Every chunk occurrence of the image in occurrence order, as CHUNK_DTYPE (``reserved`` = 0)."""
    image = load_image(store, image_id)
    n_distinct = store.fetchall('SELECT COUNT(*) FROM "chunks" WHERE "image_id" = ?', (image_id,))[0][0]
    columns = ("chunk_id",) + _CHUNK_COLUMNS
    table = store.fetch_array(
        select_sql("chunks", columns, '"image_id" = ?', '"chunk_id"'),
        (image_id,),
        np.dtype([(c, "V32" if c == "block_id" else "<u8") for c in columns]),
        n_distinct,
    )
    refs = store.fetch_array(
        select_sql("refs", ("occ", "chunk_id", "file_offset"), '"image_id" = ?', '"occ"'),
        (image_id,),
        np.dtype([("occ", "<u8"), ("chunk_id", "<u8"), ("file_offset", "<u8")]),
        image["occurrence_count"],
    )
    if not (
        np.array_equal(table["chunk_id"], np.arange(n_distinct))
        and np.array_equal(refs["occ"], np.arange(len(refs)))
        and (len(refs) == 0 or int(refs["chunk_id"].max()) < n_distinct)
    ):
        raise StoreError(f"{store.path}: index of image {image_id} is inconsistent (ids not dense)")
    distinct = np.zeros(n_distinct, dtype=CHUNK_DTYPE)
    for c in _CHUNK_COLUMNS:
        distinct[_CHUNK_FIELD[c]] = table[c]
    occurrences = distinct[refs["chunk_id"]]
    occurrences["file_offset"] = refs["file_offset"]
    return occurrences


def nodes_referencing(store: Store, image_id: int, blob_index: int, limit: int) -> list[tuple[bytes, int]]:
    """The files whose data lives most in blob ``blob_index``: (path bytes, compressed bytes of the
    file's occurrences in that blob), largest first, ties by node order."""
    return store.fetchall(
        'SELECT n."path", SUM(c."compressed_size") AS used'
        ' FROM "chunks" c'
        ' JOIN "refs" r ON r."image_id" = c."image_id" AND r."chunk_id" = c."chunk_id"'
        ' JOIN "nodes" n ON n."image_id" = r."image_id" AND n."pos" = r."node_pos"'
        ' WHERE c."image_id" = ? AND c."blob_index" = ?'
        ' GROUP BY n."pos" ORDER BY used DESC, n."pos" LIMIT ?',
        (image_id, blob_index, limit),
    )
