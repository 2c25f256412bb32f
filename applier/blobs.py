"""Writing one new blob from its recipe: coalesced exact reads, verbatim chunk copies, blob meta.

Compressed chunk bytes are copied, never recompressed (compressed output differs between
library versions, rafs-v5.md §14.2). The temp file has a name derived from the plan digest and
the group, so a resumed apply finds and removes its own leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.reads import MAX_READ, coalesce_sorted, read_extents
from nydus_compact.planner.facts import SourceBlob
from nydus_compact.planner.layout import NewBlob
from nydus_compact.rafs.blob_writer import BlobWriter
from nydus_compact.rafs.compression import decompress
from nydus_compact.rafs.digest import digest
from nydus_compact.rafs.flags import ChunkFlags
from nydus_compact.rafs.model import BlobInfo
from nydus_compact.safeio import TMP_PREFIX, fsync_dir
from nydus_compact.safeio.direct import DirectWriter

from .errors import ApplyCancelled, ApplyError, SourceCorruptError
from nydus_compact.safeio.faults import fault_point

# Read buffers per new blob being written: one being written while the checks of the two reads
# before it run.
RING = 3
CACHED_READ = 1 << 20  # bytes per local read


@dataclass
class WrittenBlob:
    info: BlobInfo
    path: Path
    sha256: str  # of the whole file
    bytes_read: int
    requests: int
    reused: bool  # the final file already existed with identical content


def temp_prefix(plan_digest: str) -> str:
    """Names every temp file an apply of this plan writes, so a rerun finds exactly its own leftovers."""
    return f"{TMP_PREFIX}{plan_digest.removeprefix('sha256:')[:16]}."


def temp_name(plan_digest: str, group: int) -> str:
    return f"{temp_prefix(plan_digest)}g{group}"


def split_reads(nb: NewBlob, max_read: int = MAX_READ) -> Iterator[tuple[int, int, int, int, int]]:
    """(source, offset, length, first chunk, count) reads of at most ``max_read`` bytes (or one
    chunk), cutting the planner's reads (backends.reads) with the same coalescer."""
    rec = nb.chunks
    start = rec["source_offset"].astype(np.int64)
    end = start + rec["compressed_size"]
    for src, offset, length, first, count in nb.reads.tolist():
        if length <= max_read:
            yield src, offset, length, first, count
            continue
        s, e = start[first : first + count], end[first : first + count]
        firsts = coalesce_sorted(s, e, max_size=max_read)
        for f, lo, ln, c in zip(firsts.tolist(), *(x.tolist() for x in read_extents(s, e, firsts))):
            yield src, lo, ln, first + f, c


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


def same_file(path: Path, size: int, sha: str) -> bool:
    """``path`` exists with exactly this size and sha256 (an output a rerun may keep)."""
    return path.is_file() and path.stat().st_size == size and file_sha256(path) == sha


class SourceCheck:
    """Checks copied source chunks against their digests on worker threads (decompress + digest
    release the GIL), so the check overlaps the copy instead of adding to it.

    ``user_of`` names a file that uses a recipe occurrence, for the error message."""

    def __init__(self, user_of: Callable[[int], str], workers: int):
        self._user_of = user_of
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify-source")

    def submit(self, rows: np.ndarray, data: memoryview, base: int, blob: SourceBlob) -> Future:
        return self._pool.submit(self._check, rows, data, base, blob)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _check(self, rows: np.ndarray, data: memoryview, base: int, blob: SourceBlob) -> None:
        """Every chunk of one read decompresses to its digest; else SourceCorruptError."""
        digests = rows["digest"].tobytes()
        compressed = (rows["flags"] & ChunkFlags.COMPRESSED) != 0
        for k, (offset, size, usize, packed) in enumerate(
            zip(rows["source_offset"].tolist(), rows["compressed_size"].tolist(),
                rows["uncompressed_size"].tolist(), compressed.tolist())
        ):  # fmt: skip
            stored = data[offset - base : offset - base + size]
            try:
                plain = decompress(blob.compressor, stored, usize) if packed else stored
            except ValueError as exc:
                raise self._corrupt(blob, offset, rows[k], f"does not decompress: {exc}") from None
            if digest(blob.digester, plain) != digests[32 * k : 32 * k + 32]:
                raise self._corrupt(blob, offset, rows[k], "content does not match its digest")

    def _corrupt(self, blob: SourceBlob, offset: int, row: np.void, what: str) -> SourceCorruptError:
        user = self._user_of(int(row["occurrence"]))
        return SourceCorruptError(f"blob {blob.blob_id}: chunk at compressed offset {offset} (used by {user}): {what}")


@dataclass
class CopyJob:
    """What every new blob of one apply shares."""

    sources: list[SourceBlob]
    backend: BlobBackend
    out_dir: Path
    version: int
    chunk_size: int
    plan_digest: str
    whole_file_id: bool
    check: SourceCheck | None = None  # None: source chunks are copied unchecked
    progress: Callable[[int], None] | None = None  # bytes read
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop at the next read

    def stop_if_cancelled(self) -> None:
        if self.cancel.is_set():
            raise ApplyCancelled("stopped: another part of this apply failed or was interrupted")


class _Buffers:
    """A ring of reusable read buffers; a slot is reused once the check of its last read is done."""

    def __init__(self, size: int):
        self._size = size
        self._slots: list[memoryview] = []
        self._checks: list[Future | None] = [None] * RING
        self._next = 0

    def take(self, length: int) -> tuple[int, memoryview]:
        k = self._next
        self._next = (k + 1) % RING
        self._settle(k)
        if k == len(self._slots):
            self._slots.append(memoryview(bytearray(self._size)))
        return k, self._slots[k][:length]

    def hold(self, k: int, check: Future) -> None:
        self._checks[k] = check

    def drain(self) -> None:
        for k in range(RING):
            self._settle(k)

    def _settle(self, k: int) -> None:
        check, self._checks[k] = self._checks[k], None
        if check is not None:
            check.result()


def write_new_blob(nb: NewBlob, job: CopyJob) -> WrittenBlob:
    group = f"g{nb.group}"
    out_dir = job.out_dir
    tmp = out_dir / temp_name(job.plan_digest, nb.group)
    rec = nb.chunks
    counts = [0, 0]  # bytes read, requests
    # A local read goes to the page cache: small pieces stay in the CPU cache while they are
    # checked, hashed and copied (MAX_READ-sized ones made the copy memory-bound).
    pieces = list(split_reads(nb, MAX_READ if job.backend.read_concurrency > 1 else CACHED_READ))
    half = len(pieces) // 2

    def runs() -> Iterator[memoryview]:
        """The recipe's stored bytes in write order: one slice of a read per run of chunks that are
        adjacent in the source, so a read of adjacent chunks is written in one go."""
        piece_first = np.array([p[3] for p in pieces], dtype=np.int64)
        starts = rec["source_offset"]
        ends = starts + rec["compressed_size"]
        cut = np.ones(len(rec), dtype=bool)
        cut[1:] = starts[1:] != ends[:-1]
        cut[piece_first] = True
        last = np.ones(len(rec), dtype=bool)
        last[:-1] = cut[1:]
        run_first = np.flatnonzero(cut)
        run_lo, run_hi = starts[cut].tolist(), ends[last].tolist()
        piece_runs = [*np.searchsorted(run_first, piece_first).tolist(), len(run_first)]
        buffers = _Buffers(max(p[2] for p in pieces))
        # A remote backend keeps several reads in flight while earlier ones are checked and written,
        # and bridges small gaps between them; a local one reads straight into the ring's buffers.
        ahead = None
        if job.backend.read_concurrency > 1:
            ahead = job.backend.read_many((job.sources[p[0]].blob_id, p[1], p[2]) for p in pieces)
        for n, (src, offset, length, first, count) in enumerate(pieces):
            job.stop_if_cancelled()
            if n == half:
                fault_point(f"blob-mid:{group}")
            blob = job.sources[src]
            slot, data = buffers.take(length)
            if ahead is not None:
                data[:] = next(ahead)
            else:
                job.backend.readinto(blob.blob_id, offset, data)
            counts[0] += length
            counts[1] += 1
            if job.check is not None:
                buffers.hold(slot, job.check.submit(rec[first : first + count], data, offset, blob))
            for r in range(piece_runs[n], piece_runs[n + 1]):
                yield data[run_lo[r] - offset : run_hi[r] - offset]
            if job.progress is not None:
                job.progress(length)
        buffers.drain()  # nothing is published before every chunk passed its check

    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover of this plan's killed run
        out = DirectWriter(tmp)
        try:
            writer = BlobWriter(
                out, version=job.version, compressor=nb.compressor, digester=nb.digester,
                chunk_size=job.chunk_size, aligned=nb.aligned,
            )
            ci = writer.add_chunks(
                runs(), compressed_sizes=rec["compressed_size"], uncompressed_sizes=rec["uncompressed_size"],
                compressed=(rec["flags"] & ChunkFlags.COMPRESSED) != 0, digests=rec["digest"].tobytes(),
            )
            _check_landed(ci, rec)
            info = writer.finish()
        except BaseException:
            out.abort()
            raise
        out.finish()
        sha = info.blob_id  # no ToC: the blob id is the whole file's sha256 (blob-v6.md §11)
        if not job.whole_file_id:
            # Upstream names a new blob by the sha256 of its chunk data only (B17).
            info.blob_id = writer.chunk_data_sha256
        fault_point(f"blob-written:{group}")
        job.stop_if_cancelled()  # an interrupted apply publishes no blob it was still writing
        final = out_dir / info.blob_id
        reused = _publish(tmp, final, info.compressed_size, sha)
        fsync_dir(out_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return WrittenBlob(info, final, sha, counts[0], counts[1], reused)


def _check_landed(ci: np.ndarray, rec: np.ndarray) -> None:
    """The writer put every chunk where the plan's layout says (index, compressed and uncompressed offset)."""
    wrong = (ci["compressed_offset"] != rec["compressed_offset"]) | (
        ci["uncompressed_offset"] != rec["uncompressed_offset"]
    )
    wrong |= rec["index"] != np.arange(len(rec))
    if wrong.any():
        i = int(wrong.argmax())
        got = (i, int(ci["compressed_offset"][i]), int(ci["uncompressed_offset"][i]))
        want = (int(rec["index"][i]), int(rec["compressed_offset"][i]), int(rec["uncompressed_offset"][i]))
        raise ApplyError(f"new blob chunk landed at {got}, the plan's layout says {want}")


def _publish(tmp: Path, final: Path, size: int, sha: str) -> bool:
    """Rename the finished temp file to its id; an identical existing file is kept instead."""
    if final.exists():
        if same_file(final, size, sha):
            tmp.unlink()
            return True
        raise ApplyError(f"{final} already exists with different content; refusing to overwrite it")
    os.replace(tmp, final)
    return False
