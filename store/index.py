"""Indexing a loaded bootstrap into the store, and reading the index back.

Chunks never become Python objects: distinct chunk records are found by sorting a hash of
the 8-byte words of the CHUNK_DTYPE array, and both the distinct chunks (``chunks``) and the
occurrences (``refs``) are stored as numpy arrays in BLOBs, a column per field. Only nodes are
streamed to ``executemany`` as rows.

``file_offset`` is stored per occurrence (not recomputed as chunk_no × chunk_size) so
``load_occurrences`` returns the loader's array byte for byte, except the ``reserved`` word,
which is not kept and comes back as 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node, kind_name

from .db import Store, insert_sql, quote, select_sql
from .errors import StoreError
from .schema import COLUMNS, SEGMENT

# CHUNK_DTYPE as ten little-endian u64 words: 0-3 block_id, 4 blob_index|flags,
# 5 compressed|uncompressed size, 6 compressed_offset, 7 uncompressed_offset,
# 8 file_offset, 9 index|reserved. Two occurrences are the same chunk when every word
# but file_offset matches.
_WORDS = CHUNK_DTYPE.itemsize // 8
_KEY_WORDS = (0, 1, 2, 3, 4, 5, 6, 7, 9)
# Odd, so each multiply is a bijection: keys differing in one word never share a hash.
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_REF_DTYPE = np.dtype("<u8")
_SORT_BLOCK = 1 << 15
_PIECE = 1 << 16  # array elements per BLOB write
_U64_FIELDS = ("compressed_offset", "uncompressed_offset", "file_offset")
_I64_MAX = np.iinfo(np.int64).max


# chunks-table BLOB column (after image_id, seg) -> CHUNK_DTYPE field
_CHUNK_FIELD = {c: ("index" if c == "idx" else c) for c in COLUMNS["chunks"][2:]}
_CHUNK_DTYPES = {c: CHUNK_DTYPE.fields[f][0] for c, f in _CHUNK_FIELD.items()}
_REF_DTYPES = {c: _REF_DTYPE for c in COLUMNS["refs"][2:]}


def _key_hash(words: np.ndarray) -> np.ndarray:
    h = words[:, _KEY_WORDS[0]].copy()
    for w in _KEY_WORDS[1:]:
        h *= _HASH_MULTIPLIER
        h ^= words[:, w]
    return h


def _group_starts(words: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Where, in ``order``, an occurrence's key differs from the previous one's. Gathering
    whole rows a block at a time beats nine column gathers and bounds the copy."""
    starts = np.ones(len(order), dtype=bool)
    for lo in range(1, len(order), _SORT_BLOCK):
        rows = words[order[lo - 1 : lo + _SORT_BLOCK]][:, _KEY_WORDS]
        starts[lo : lo + _SORT_BLOCK] = (rows[1:] != rows[:-1]).any(axis=1)
    return starts


def _sorted_groups(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An order that puts equal keys together, and where each group starts in it.

    One sort of a 64-bit hash instead of a lexsort over nine words. Equal keys hash alike,
    so the key groups equal the hash runs unless two keys collide; then the exact lexsort
    decides."""
    hashes = _key_hash(words)
    order = np.argsort(hashes)
    starts = _group_starts(words, order)
    hashes = hashes[order]
    if np.array_equal(starts[1:], hashes[1:] != hashes[:-1]):
        return order, starts
    del hashes
    order = np.lexsort([words[:, w] for w in _KEY_WORDS])
    return order, _group_starts(words, order)


def dedup_chunks(chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first occurrence of each distinct chunk, in order of first appearance; chunk_id per occurrence).

    Ids are int32 when the occurrence count allows: at a million occurrences every per-occurrence
    temporary here is then 4 MB instead of 8."""
    n = len(chunks)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    words = np.ascontiguousarray(chunks, dtype=CHUNK_DTYPE).view("<u8").reshape(n, _WORDS)
    order, starts = _sorted_groups(words)
    ids = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    group_of_sorted = np.cumsum(starts, dtype=ids)
    group_of_sorted -= 1
    first = np.minimum.reduceat(order, np.flatnonzero(starts))
    del starts
    # Renumber groups by first appearance so ids do not depend on the sort.
    by_first = np.argsort(first, kind="stable")
    rank = np.empty(len(first), dtype=ids)
    rank[by_first] = np.arange(len(first), dtype=ids)
    chunk_id = np.empty(n, dtype=ids)
    chunk_id[order] = rank[group_of_sorted]
    return first[by_first], chunk_id


def _check_node_ranges(where: Path | str, starts: np.ndarray, counts: np.ndarray, n_occ: int) -> None:
    if len(starts) and ((starts < 0).any() or (counts < 0).any() or (counts > n_occ - starts).any()):
        raise StoreError(f"{where}: a node's chunk range lies outside the occurrence array")


def _owners(starts: np.ndarray, counts: np.ndarray, n_occ: int) -> np.ndarray:
    """Owning node (row in ``starts``) of every occurrence, -1 if none; ranges already checked.

    Each name normally has its own range, but hard links share one and a malformed image may
    overlap ranges arbitrarily: the lowest node owns an occurrence. Expanding every range would
    cost the sum of their lengths; instead each range is a "min" update on a segment tree over
    the occurrences (the bottom-up walk, for all ranges at once), then minima are pushed down
    to the leaves: O((nodes + occurrences) log occurrences) whatever the overlap."""
    nobody = len(starts)
    leaves = 1 << max(n_occ - 1, 0).bit_length()
    tree = np.full(2 * leaves, nobody, dtype=np.int64)
    node = np.flatnonzero(counts > 0)
    lo, hi = starts[node] + leaves, starts[node] + counts[node] + leaves
    while len(node):
        left, right = (lo & 1) == 1, (hi & 1) == 1
        np.minimum.at(tree, lo[left], node[left])
        np.minimum.at(tree, hi[right] - 1, node[right])
        lo, hi = (lo + left) >> 1, hi >> 1
        live = lo < hi
        node, lo, hi = node[live], lo[live], hi[live]
    for level in range(leaves.bit_length() - 1):
        first = 1 << level
        children = tree[2 * first : 4 * first]
        np.minimum(children, np.repeat(tree[first : 2 * first], 2), out=children)
    owner = tree[leaves : leaves + n_occ]
    return np.where(owner == nobody, -1, owner)


def _insert_segments(
    store: Store,
    table: str,
    image_id: int,
    columns: dict[str, np.ndarray],
    dtypes: dict[str, np.dtype],
    take: np.ndarray | None = None,
) -> None:
    """Rows of ``table`` holding ``columns`` (or their elements at ``take``) as BLOBs of
    ``dtypes``, ``SEGMENT`` elements per row. Each row is inserted as zero-filled BLOBs and then
    written piece by piece: binding a segment's BLOBs would make SQLite copy them twice (bound
    value, record), and gathering ``take`` a piece at a time bounds its copy."""
    conn = store.conn
    names = list(dtypes)
    blobs = ", ".join("zeroblob(?)" for _ in names)
    sql = f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in COLUMNS[table])}) VALUES (?, ?, {blobs})"
    count = len(take) if take is not None else len(columns[names[0]])
    with store.guard():
        for seg, lo in enumerate(range(0, count, SEGMENT)):
            hi = min(lo + SEGMENT, count)
            sizes = [(hi - lo) * dtypes[c].itemsize for c in names]
            rowid = conn.execute(sql, (image_id, seg, *sizes)).lastrowid
            for c in names:
                with conn.blobopen(table, c, rowid) as blob:
                    for a in range(lo, hi, _PIECE):
                        b = min(a + _PIECE, hi)
                        piece = columns[c][a:b] if take is None else columns[c][take[a:b]]
                        blob.write(np.ascontiguousarray(piece, dtype=dtypes[c]))


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
            kind_name(nd.mode),
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
    starts = np.fromiter((nd.chunk_start for nd in bs.nodes), dtype=np.int64, count=len(bs.nodes))
    counts = np.fromiter((nd.chunk_count for nd in bs.nodes), dtype=np.int64, count=len(bs.nodes))
    _check_node_ranges(path, starts, counts, len(chunks))
    first, chunk_id = dedup_chunks(chunks)
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
        _insert_segments(
            store, "chunks", image_id, {c: chunks[f] for c, f in _CHUNK_FIELD.items()}, _CHUNK_DTYPES, first
        )
        _insert_segments(
            store, "refs", image_id, dict(zip(_REF_DTYPES, (chunk_id, chunks["file_offset"]))), _REF_DTYPES
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


def _inconsistent(store: Store, image_id: int, what: str) -> StoreError:
    return StoreError(f"{store.path}: index of image {image_id} is inconsistent ({what})")


def _distinct_count(store: Store, image_id: int) -> int:
    """How many distinct chunks the image has, from the lengths of its ``chunks`` BLOBs (every
    segment full but the last); ``_load_segments`` checks the other columns when it reads them."""
    column, dtype = next(iter(_CHUNK_DTYPES.items()))
    lengths = store.fetchall(
        f'SELECT "seg", length({quote(column)}) FROM "chunks" WHERE "image_id" = ? ORDER BY "seg"', (image_id,)
    )
    full = SEGMENT * dtype.itemsize
    for expected, (seg, length) in enumerate(lengths):
        last = expected == len(lengths) - 1
        if seg != expected or not (0 < length <= full and length % dtype.itemsize == 0 and (last or length == full)):
            raise _inconsistent(store, image_id, f"chunk row {seg} is malformed")
    return sum(length for _, length in lengths) // dtype.itemsize


def _load_segments(
    store: Store, image_id: int, table: str, dtypes: dict[str, np.dtype], count: int
) -> dict[str, np.ndarray]:
    """The ``count`` elements of each column of ``dtypes`` that ``_insert_segments`` wrote."""
    n_segs = store.fetchall(f'SELECT COUNT(*) FROM {quote(table)} WHERE "image_id" = ?', (image_id,))[0][0]
    if n_segs != -(-count // SEGMENT):
        raise _inconsistent(store, image_id, f"{n_segs} {table} rows for {count} elements")
    out = {c: np.empty(count, dtype=dt) for c, dt in dtypes.items()}
    sql = select_sql(table, ("seg", *dtypes), '"image_id" = ?', '"seg"')
    done = 0
    with store.guard():
        for expected, (seg, *blobs) in enumerate(store.conn.execute(sql, (image_id,))):
            lo = expected * SEGMENT
            n = min(SEGMENT, count - lo)
            if seg != expected or n <= 0 or not all(
                isinstance(b, bytes) and len(b) == n * dt.itemsize for b, dt in zip(blobs, dtypes.values())
            ):
                raise _inconsistent(store, image_id, f"{table} row {seg} is malformed")
            for b, (c, dt) in zip(blobs, dtypes.items()):
                out[c][lo : lo + n] = np.frombuffer(b, dtype=dt)
            done = lo + n
    if done != count:
        raise _inconsistent(store, image_id, f"{table} rows end at element {done} of {count}")
    return out


def _int_columns(store: Store, image_id: int, sql: str, params: tuple, width: int) -> np.ndarray:
    """Rows of ``width`` integers as an (n, width) int64 array."""
    rows = store.fetchall(sql, params)
    try:
        return np.array(rows, dtype=np.int64).reshape(len(rows), width)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _inconsistent(store, image_id, str(exc)) from None


def load_references(store: Store, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(chunk_id, file_offset) of every occurrence of the image in occurrence order, as u64
    arrays; ``chunk_id`` is the position of the occurrence's chunk in the ``chunks`` arrays. The
    occurrences of the node at ``pos`` are ``[chunk_start, chunk_start + chunk_count)`` of its
    ``nodes`` row."""
    n_occ = load_image(store, image_id)["occurrence_count"]
    if not isinstance(n_occ, int) or not 0 <= n_occ <= _I64_MAX:
        raise _inconsistent(store, image_id, f"occurrence count {n_occ!r}")
    n_distinct = _distinct_count(store, image_id)
    refs = _load_segments(store, image_id, "refs", _REF_DTYPES, n_occ)
    chunk_id, file_offset = (refs[c] for c in _REF_DTYPES)
    if n_occ and int(chunk_id.max()) >= n_distinct:
        raise _inconsistent(store, image_id, "an occurrence points past the chunk table")
    return chunk_id, file_offset


def _load_chunks(store: Store, image_id: int, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    dtypes = {c: _CHUNK_DTYPES[c] for c in columns}
    return _load_segments(store, image_id, "chunks", dtypes, _distinct_count(store, image_id))


def load_occurrences(store: Store, image_id: int) -> np.ndarray:
    """Every chunk occurrence of the image in occurrence order, as CHUNK_DTYPE (``reserved`` = 0)."""
    chunk_id, file_offset = load_references(store, image_id)
    table = _load_chunks(store, image_id, tuple(_CHUNK_DTYPES))
    distinct = np.zeros(len(table["blob_index"]), dtype=CHUNK_DTYPE)
    for c, values in table.items():
        distinct[_CHUNK_FIELD[c]] = values
    del table
    occurrences = distinct[chunk_id]
    occurrences["file_offset"] = file_offset
    return occurrences


def nodes_referencing(store: Store, image_id: int, blob_index: int, limit: int) -> list[tuple[bytes, int]]:
    """The files whose data lives most in blob ``blob_index``: (path bytes, compressed bytes of the
    file's occurrences in that blob), largest first, ties by node order; a negative ``limit``
    means all. An occurrence in several files' ranges (hard links) counts for the first file."""
    chunk_id, _ = load_references(store, image_id)
    table = _load_chunks(store, image_id, ("blob_index", "compressed_size"))
    size_in_blob = np.where(table["blob_index"] == blob_index, table["compressed_size"].astype(np.int64), -1)
    del table
    pos, starts, counts = _int_columns(
        store,
        image_id,
        'SELECT "pos", "chunk_start", "chunk_count" FROM "nodes" WHERE "image_id" = ? ORDER BY "pos"',
        (image_id,),
        3,
    ).T
    _check_node_ranges(store.path, starts, counts, len(chunk_id))
    owner = _owners(starts, counts, len(chunk_id))
    occ_size = size_in_blob[chunk_id]
    hit = (occ_size >= 0) & (owner >= 0)
    used = np.zeros(len(pos), dtype=np.int64)
    np.add.at(used, owner[hit], occ_size[hit])
    ranked = np.flatnonzero(np.bincount(owner[hit], minlength=len(pos)))
    ranked = ranked[np.lexsort((ranked, -used[ranked]))]
    if limit >= 0:
        ranked = ranked[:limit]
    top = pos[ranked].tolist()
    paths = dict(
        store.fetchall(
            'SELECT "pos", "path" FROM "nodes" WHERE "image_id" = ? AND "pos" IN (SELECT "value" FROM json_each(?))',
            (image_id, json.dumps(top)),
        )
    )
    return [(paths[p], u) for p, u in zip(top, used[ranked].tolist())]
