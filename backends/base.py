"""The interface every blob backend implements (reads are coalesced by ``reads.coalesce``).

A backend maps a blob id to bytes. Reads are always exact: a backend never hands back fewer
bytes than asked for, it raises ``BackendError`` naming the blob and the range instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import BackendError
from .reads import MAX_READ, coalesce

class BlobBackend(ABC):
    """Where blobs are read from. Subclasses implement ``blob_size``, ``read_exact`` and ``describe``."""

    # Coalescing policy of ``read_ranges``; remote backends raise max_gap to save round trips.
    max_gap: int = 0
    max_read: int = MAX_READ
    # Local backends take no uploads: apply's blobs dir is itself the destination.
    accepts_uploads: bool = False
    # Reads ``read_many`` keeps in flight: remote backends overlap their round trips.
    read_concurrency: int = 1

    @abstractmethod
    def blob_size(self, blob_id: str) -> int:
        """Size in bytes of the stored blob."""

    @abstractmethod
    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``; anything less is a BackendError."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON-able fingerprint of where blobs come from. Never contains secrets."""

    def close(self) -> None:
        """Release open files and connections. The backend may not be used afterwards."""

    def readinto(self, blob_id: str, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the blob's bytes at ``offset`` (exactly ``len(buf)`` of them).

        Lets a copier reuse one buffer for every read; local backends read straight into it."""
        buf[:] = self.read_exact(blob_id, offset, len(buf))

    def upload_blob(self, blob_id: str, path: Path) -> bool:
        """Publish a finished blob file where this backend serves blobs from (only when
        ``accepts_uploads``). True: uploaded; False: the backend already had it."""
        raise BackendError(f"{type(self).__name__} takes no uploads")

    def read_ranges(self, blob_id: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, size) range, in the order given, read with coalescing."""
        out: list[bytes] = [b""] * len(ranges)
        for offset, size, members in coalesce(ranges, self.max_gap, self.max_read):
            data = memoryview(self.read_exact(blob_id, offset, size))
            for i in members:
                start = ranges[i][0] - offset
                out[i] = bytes(data[start : start + ranges[i][1]])
        return out

    def read_many(self, reads: Iterable[tuple[str, int, int]]) -> Iterator[memoryview]:
        """The bytes of each (blob id, offset, size) read, in the order given.

        Consecutive reads of one blob that start at most ``max_gap`` bytes after the previous
        one's end go out as one request of at most ``max_read`` bytes (the bytes between them are
        read and dropped), and up to ``read_concurrency`` requests are in flight, so at most that
        many requests' bytes are held in memory."""
        batches = _batches(reads, self.max_gap, self.max_read)
        if self.read_concurrency <= 1:
            for batch in batches:
                yield from self._read_batch(batch)
            return
        pool = ThreadPoolExecutor(max_workers=self.read_concurrency, thread_name_prefix="read")
        window: deque[Future[list[memoryview]]] = deque()
        try:
            for batch in batches:
                window.append(pool.submit(self._read_batch, batch))
                if len(window) >= self.read_concurrency:
                    yield from window.popleft().result()
            while window:
                yield from window.popleft().result()
        finally:
            # A consumer that stops early (an error, a closed generator) waits only for reads in flight.
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_batch(self, batch: _Batch) -> list[memoryview]:
        data = memoryview(self.read_exact(batch.blob_id, batch.start, batch.end - batch.start))
        return [data[offset - batch.start : offset - batch.start + size] for offset, size in batch.members]

    def reader(self, blob_id: str) -> BlobReader:
        return BlobReader(self, blob_id)

    def __enter__(self) -> BlobBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Batch:
    """One request of ``read_many``: bytes start..end of a blob, sliced into the reads it serves."""

    blob_id: str
    start: int
    end: int
    members: list[tuple[int, int]]


def _batches(reads: Iterable[tuple[str, int, int]], max_gap: int, max_size: int) -> Iterator[_Batch]:
    """Reads in their given order, grouped while each next one is of the same blob, starts within
    ``max_gap`` after the group's end and keeps the group within ``max_size`` bytes."""
    batch: _Batch | None = None
    for blob_id, offset, size in reads:
        if offset < 0 or size < 0:
            raise BackendError(f"blob {blob_id}: invalid range offset {offset} size {size}")
        if (
            batch is not None
            and blob_id == batch.blob_id
            and batch.start <= offset <= batch.end + max_gap
            and max(batch.end, offset + size) - batch.start <= max_size
        ):
            batch.end = max(batch.end, offset + size)
            batch.members.append((offset, size))
            continue
        if batch is not None:
            yield batch
        batch = _Batch(blob_id, offset, offset + size, [(offset, size)])
    if batch is not None:
        yield batch


class BlobReader:
    """One blob of a backend seen as ``read(offset, size) -> bytes`` (the reader rafs.blob_meta takes)."""

    def __init__(self, backend: BlobBackend, blob_id: str):
        self.backend = backend
        self.blob_id = blob_id

    def read(self, offset: int, size: int) -> bytes:
        return self.backend.read_exact(self.blob_id, offset, size)

    def size(self) -> int:
        return self.backend.blob_size(self.blob_id)

    def __str__(self) -> str:
        return self.blob_id


def read_full(f: BinaryIO, size: int, path: Path, blob_id: str) -> bytes:
    """Exactly ``size`` bytes of a staged blob file being uploaded."""
    data = f.read(size)
    if len(data) != size:
        raise BackendError(f"blob {blob_id}: {path} changed while it was uploaded")
    return data


def check_http_limits(kind: str, timeout: float, connect_timeout: float, retry_limit: int) -> None:
    """The limits every HTTP backend of nydus shares (compact.md §5.2), checked the same way for all."""
    if timeout <= 0 or connect_timeout <= 0:
        raise BackendError(f"{kind} backend: timeout and connect_timeout must be > 0")
    if retry_limit < 0:
        raise BackendError(f"{kind} backend: retry_limit must be >= 0")


def short_read_error(blob_id: str, offset: int, size: int, got: int) -> BackendError:
    return BackendError(f"blob {blob_id}: short read at offset {offset} size {size}: got {got} bytes")
