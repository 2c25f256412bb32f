"""Reading chunk data of an image through a blob backend, and verifying it.

A chunk occurrence (a CHUNK_DTYPE row) says where its stored bytes are: ``compressed_size``
bytes at ``compressed_offset`` of blob ``blob_index`` if COMPRESSED, else ``uncompressed_size``
bytes there (rafs-v5.md §11.5, §14.3; blob-v6.md §2). Decoded bytes must hash to ``block_id``.
v5 uses the superblock's compressor and digester, v6 the blob-table entry's (rafs-v6.md §3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.errors import BackendError

from .blob_meta import CI_V2_COMPRESSED, BlobMeta, blob_size_problem, read_blob_meta
from .compression import Compressor, decompress
from .constants import MAX_CHUNK_SIZE
from .digest import Digester, digest
from .errors import BlobDataError, RafsError, RafsFormatError
from .flags import ChunkFlags
from .model import BlobInfo, Bootstrap, Node

# nydusd refuses to decompress a chunk larger than this (rafs-v5.md §11.5 #25); it also keeps a
# hostile uncompressed_size from becoming a huge allocation.
# Stored bytes fetched per backend call; bounds memory while keeping reads large.
BATCH_BYTES = 64 << 20
# Zero bytes yielded at once for a hole in a file.
_ZERO_BLOCK = bytes(1 << 20)

# The fields that make two chunk occurrences the same stored chunk.
_DISTINCT_DTYPE = np.dtype(
    [
        ("blob_index", "<u4"),
        ("compressed_offset", "<u8"),
        ("compressed_size", "<u4"),
        ("uncompressed_size", "<u4"),
        ("flags", "<u4"),
        ("block_id", "V32"),
    ]
)


def stored_sizes(rows: np.ndarray) -> np.ndarray:
    """Bytes each chunk occupies in its blob (uint64)."""
    compressed = (rows["flags"] & ChunkFlags.COMPRESSED) != 0
    return np.where(compressed, rows["compressed_size"], rows["uncompressed_size"]).astype(np.uint64)


def distinct_chunks(rows: np.ndarray) -> np.ndarray:
    """Positions in ``rows`` of the first occurrence of each distinct stored chunk, ascending."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.intp)
    keys = np.empty(len(rows), dtype=_DISTINCT_DTYPE)
    for name in _DISTINCT_DTYPE.names:
        keys[name] = rows[name]
    _, first = np.unique(keys.view(f"V{_DISTINCT_DTYPE.itemsize}"), return_index=True)
    return np.sort(first)


@dataclass(slots=True)
class VerifyStats:
    occurrences: int = 0
    distinct: int = 0
    checked: int = 0
    bytes_read: int = 0
    problems: int = 0


class ChunkSource:
    """Chunk data of one bootstrap, read through ``backend``."""

    def __init__(self, bs: Bootstrap, backend: BlobBackend, *, batch_bytes: int = BATCH_BYTES):
        self.bs = bs
        self.backend = backend
        self.batch_bytes = batch_bytes
        self.stats = VerifyStats()

    # -- per blob ----------------------------------------------------------------------------

    def blob(self, blob_index: int) -> BlobInfo:
        if not 0 <= blob_index < len(self.bs.blobs):
            raise BlobDataError(
                f"blob index {blob_index}", f"no such blob (the image has {len(self.bs.blobs)})"
            )
        return self.bs.blobs[blob_index]

    def compressor(self, blob: BlobInfo) -> Compressor:
        return self.bs.compressor if self.bs.version == 5 else blob.compressor

    def digester(self, blob: BlobInfo) -> Digester:
        return self.bs.digester if self.bs.version == 5 else blob.digester

    # -- reading -----------------------------------------------------------------------------

    def read_chunks(self, rows: np.ndarray) -> Iterator[tuple[int, bytes]]:
        """(position in ``rows``, stored bytes) for every row, grouped by blob, in offset order.

        Adjacent chunks of a blob are fetched with one backend read. A chunk reaching past the
        end of its blob raises BlobDataError before anything of that blob is read.
        """
        blob_indexes = rows["blob_index"]
        for blob_index in np.unique(blob_indexes):
            positions = np.nonzero(blob_indexes == blob_index)[0]
            yield from self._read_blob(int(blob_index), rows, positions)

    def _read_blob(self, blob_index: int, rows: np.ndarray, positions: np.ndarray) -> Iterator[tuple[int, bytes]]:
        blob = self.blob(blob_index)
        blob_size = self.backend.blob_size(blob.blob_id)
        selected = rows[positions]
        bad = np.nonzero(~_readable(selected, blob_size))[0]
        if len(bad):
            raise _unreadable_error(blob, selected[bad[0]], blob_size)
        offsets = selected["compressed_offset"]
        sizes = stored_sizes(selected)
        order = np.argsort(offsets, kind="stable")
        for batch in _batches(sizes[order], self.batch_bytes):
            members = order[batch]
            ranges = [(int(offsets[i]), int(sizes[i])) for i in members]
            for i, data in zip(members, self.backend.read_ranges(blob.blob_id, ranges), strict=True):
                self.stats.bytes_read += len(data)
                yield int(positions[i]), data

    def decode(self, row: np.void, stored: bytes) -> bytes:
        """The uncompressed bytes of a chunk, checked against its digest."""
        blob = self.blob(int(row["blob_index"]))
        usize = int(row["uncompressed_size"])
        if usize > MAX_CHUNK_SIZE:
            raise _chunk_error(blob, row, f"uncompressed size {usize} exceeds {MAX_CHUNK_SIZE}")
        if int(row["flags"]) & ChunkFlags.COMPRESSED:
            algo = self.compressor(blob)
            try:
                data = decompress(algo, stored, usize)
            except ValueError as exc:
                raise _chunk_error(blob, row, f"{algo.label} decompression failed: {exc}") from None
        else:
            data = stored
            if len(data) != usize:
                raise _chunk_error(blob, row, f"stored {len(data)} bytes, expected {usize}")
        expected = bytes(row["block_id"])
        actual = digest(self.digester(blob), data)
        if actual != expected:
            raise _chunk_error(blob, row, f"digest mismatch: expected {expected.hex()}, got {actual.hex()}")
        return data

    def iter_file(self, node: Node) -> Iterator[bytes]:
        """The content of a regular file in order, holes as zeros, with bounded memory."""
        if not node.is_reg:
            raise ValueError(f"{node.path!r} is not a regular file")
        rows = self.bs.node_chunks(node)
        order = np.argsort(rows["file_offset"], kind="stable")
        rows = rows[order]
        self._check_file_layout(node, rows)
        pos = 0
        for batch in _batches(stored_sizes(rows), self.batch_bytes):
            rows_batch = rows[batch]
            decoded = {i: self.decode(rows_batch[i], data) for i, data in self.read_chunks(rows_batch)}
            for i in range(len(rows_batch)):
                file_offset = int(rows_batch[i]["file_offset"])
                yield from _zeros(file_offset - pos)
                yield decoded[i]
                pos = file_offset + len(decoded[i])
        yield from _zeros(node.size - pos)

    def read_file(self, node: Node) -> bytes:
        return b"".join(self.iter_file(node))

    @staticmethod
    def _check_file_layout(node: Node, rows: np.ndarray) -> None:
        """Chunks, in file-offset order, must not overlap nor reach past i_size."""
        starts = rows["file_offset"]
        ends = starts + rows["uncompressed_size"].astype(np.uint64)
        path = node.path.decode("utf-8", "backslashreplace")
        if len(rows) and (int(ends.max()) > node.size or np.any(starts[1:] < ends[:-1])):
            raise RafsFormatError(path, f"chunks overlap or reach past the file size {node.size}")

    # -- verification ------------------------------------------------------------------------

    def verify(self, progress: Callable[[int, int], None] | None = None, limit: int = 100) -> list[str]:
        """Read every distinct chunk once and check it decodes to its digest.

        Every blob of the table must have the size the table records, or be longer only by the
        metadata the format appends (``blob_size_problem``). For v6 also validates each blob's
        meta (ci array, header, ToC) and that every chunk's location matches its ci entry. Returns at most ``limit`` problem descriptions, plus a
        final "... and N more" line when there were more; an empty list means the image is sound.
        ``progress(done, total)`` counts distinct chunks. Counters end up in ``self.stats``.
        """
        bs = self.bs
        problems: list[str] = []
        owners = _Owners(bs)

        def report(message: str, occurrence: int | None = None) -> None:
            self.stats.problems += 1
            if len(problems) < limit:
                used_by = f" (used by {owners.path(occurrence)})" if occurrence is not None else ""
                problems.append(" ".join(message.split()) + used_by)

        distinct = distinct_chunks(bs.chunks)
        rows = bs.chunks[distinct]
        self.stats = VerifyStats(occurrences=len(bs.chunks), distinct=len(rows))
        blob_indexes = rows["blob_index"]
        used = set(np.unique(blob_indexes).tolist())
        for i, blob in enumerate(bs.blobs):
            try:
                size = self.backend.blob_size(blob.blob_id)
                problem = blob_size_problem(self.backend.reader(blob.blob_id), blob, size)
            except BackendError as exc:
                if i not in used:  # the chunk walk below reports a missing blob that files use
                    report(f"blob [{i}]: {exc}")
                continue
            if problem is not None:
                report(f"blob [{i}] {blob.blob_id}: {problem}")
        for blob_index in np.unique(blob_indexes):
            positions = np.nonzero(blob_indexes == blob_index)[0]
            if blob_index >= len(bs.blobs):
                report(f"blob index {int(blob_index)}: no such blob", int(distinct[positions[0]]))
                continue
            blob = bs.blobs[int(blob_index)]
            blob_rows = rows[positions]
            try:
                blob_size = self.backend.blob_size(blob.blob_id)
            except BackendError as exc:
                report(str(exc))
                continue
            if bs.version == 6:
                try:
                    for message in self._blob_meta_problems(blob, blob_rows, blob_size):
                        report(message)
                except (BackendError, RafsError) as exc:
                    report(str(exc))
            for i, exc in _location_problems(blob, blob_rows, blob_size):
                report(str(exc), int(distinct[positions[i]]))
            readable = np.nonzero(_readable(blob_rows, blob_size))[0]
            try:
                for i, stored in self._read_blob(int(blob_index), blob_rows, readable):
                    try:
                        self.decode(blob_rows[i], stored)
                    except BlobDataError as exc:
                        report(str(exc), int(distinct[positions[i]]))
                    self.stats.checked += 1
                    if progress is not None:
                        progress(self.stats.checked, len(rows))
            except BackendError as exc:
                report(str(exc))
        if self.stats.problems > len(problems):
            more = self.stats.problems - len(problems)
            problems.append(f"... and {more} more problem{'' if more == 1 else 's'}")
        return problems

    def _blob_meta_problems(self, blob: BlobInfo, rows: np.ndarray, blob_size: int) -> Iterator[str]:
        meta = read_blob_meta(self.backend.reader(blob.blob_id), blob, blob_size)
        for i, message in ci_mismatches(rows, meta):
            yield str(_chunk_error(blob, rows[i], message))


_CI_FIELDS = ("compressed_offset", "compressed_size", "uncompressed_offset", "uncompressed_size")


def ci_mismatches(rows: np.ndarray, meta: BlobMeta) -> Iterator[tuple[int, str]]:
    """(position, problem) for chunk rows of one v6 blob that disagree with its ci array.

    nydusd reads data through the ci entry while tools read the bootstrap's record, so both must
    describe the same bytes (rafs-v6.md §13.2, blob-v6.md §4.4); with inlined digests the digest
    array must also agree with block_id.
    """
    index = rows["index"].astype(np.int64)
    known = index < len(meta.ci)
    for i in np.nonzero(~known)[0]:
        yield int(i), f"ci index beyond the blob's {len(meta.ci)} ci entries"
    positions = np.nonzero(known)[0]
    ci = meta.ci[index[positions]]
    row_compressed = (rows["flags"][positions] & ChunkFlags.COMPRESSED) != 0
    ci_compressed = (ci["flags"] & CI_V2_COMPRESSED) != 0
    ends = rows["compressed_offset"][positions] + stored_sizes(rows[positions])
    digests = np.frombuffer(meta.digests, dtype="V32") if meta.digests is not None else None
    bad = (row_compressed != ci_compressed) | (ends > meta.compressed_data_size)
    for name in _CI_FIELDS:
        bad |= rows[name][positions] != ci[name]
    if digests is not None and len(digests) == len(meta.ci):
        bad |= digests[index[positions]] != rows["block_id"][positions]
    for k in np.nonzero(bad)[0]:
        i = positions[k]
        diffs = [
            f"{name} {int(rows[name][i])} != ci {int(ci[name][k])}"
            for name in _CI_FIELDS
            if int(rows[name][i]) != int(ci[name][k])
        ]
        if row_compressed[k] != ci_compressed[k]:
            diffs.append(f"compressed {bool(row_compressed[k])} != ci {bool(ci_compressed[k])}")
        if int(ends[k]) > meta.compressed_data_size:
            diffs.append(f"data ends at {int(ends[k])}, past the data region ({meta.compressed_data_size} bytes)")
        expected = meta.digest(int(index[i]))
        if expected is not None and expected != bytes(rows["block_id"][i]):
            diffs.append(f"block_id differs from the blob's digest array ({expected.hex()})")
        yield int(i), "disagrees with the blob meta: " + "; ".join(diffs)


def _location_problems(blob: BlobInfo, rows: np.ndarray, blob_size: int) -> Iterator[tuple[int, BlobDataError]]:
    """(position, error) for chunks that cannot be where the bootstrap says."""
    if blob.chunk_count:
        for i in np.nonzero(rows["index"] >= blob.chunk_count)[0]:
            yield int(i), _chunk_error(blob, rows[i], f"index beyond the blob's {blob.chunk_count} chunks")
    for i in np.nonzero(~_readable(rows, blob_size))[0]:
        yield int(i), _unreadable_error(blob, rows[i], blob_size)


def _chunk_error(blob: BlobInfo, row: np.void, message: str) -> BlobDataError:
    where = f"chunk {int(row['index'])} at offset {int(row['compressed_offset'])}"
    return BlobDataError(blob.blob_id, f"{where}: {message}")


def _readable(rows: np.ndarray, blob_size: int) -> np.ndarray:
    """Mask of chunks whose stored range is plausible and lies inside a blob of ``blob_size`` bytes."""
    offsets = rows["compressed_offset"]
    sizes = stored_sizes(rows)
    ends = offsets + sizes
    return (sizes <= MAX_CHUNK_SIZE) & (ends >= offsets) & (ends <= blob_size)


def _unreadable_error(blob: BlobInfo, row: np.void, blob_size: int) -> BlobDataError:
    compressed = int(row["flags"]) & ChunkFlags.COMPRESSED
    size = int(row["compressed_size"] if compressed else row["uncompressed_size"])
    if size > MAX_CHUNK_SIZE:
        return _chunk_error(blob, row, f"stored size {size} exceeds {MAX_CHUNK_SIZE}")
    return _chunk_error(blob, row, f"stored range of {size} bytes ends past the blob's {blob_size} bytes")


def _batches(sizes: np.ndarray, limit: int) -> Iterator[slice]:
    """Consecutive slices of ``sizes`` summing to at most ``limit`` (at least one item each)."""
    start = 0
    while start < len(sizes):
        stop, total = start + 1, int(sizes[start])
        while stop < len(sizes) and total + int(sizes[stop]) <= limit:
            total += int(sizes[stop])
            stop += 1
        yield slice(start, stop)
        start = stop


def _zeros(n: int) -> Iterator[bytes]:
    while n > 0:
        piece = _ZERO_BLOCK if n >= len(_ZERO_BLOCK) else bytes(n)
        yield piece
        n -= len(piece)


class _Owners:
    """Names a file that uses a chunk occurrence, for problem reports."""

    def __init__(self, bs: Bootstrap):
        self.nodes = bs.nodes
        # Node order = chunk order, so range starts ascend; hard links sharing a range keep the first.
        starts: dict[int, int] = {}
        for pos, node in enumerate(bs.nodes):
            if node.chunk_count:
                starts.setdefault(node.chunk_start, pos)
        self.starts = np.fromiter(starts.keys(), dtype=np.int64, count=len(starts))
        self.positions = list(starts.values())

    def path(self, occurrence: int) -> str:
        k = int(np.searchsorted(self.starts, occurrence, side="right")) - 1
        if k < 0:
            return "no file"
        return self.nodes[self.positions[k]].path.decode("utf-8", "backslashreplace")
