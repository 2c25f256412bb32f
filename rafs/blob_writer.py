"""Streaming writer for a new data blob (blob-v6.md §1, §2, §13; v5: data only).

Chunks are appended one by one or as runs already stored back to back; ``finish`` appends the
v6 blob meta (ci array + header and, with ``with_toc``, layout B of blob-v6.md §1 with v2.2.0
semantics) and returns the blob-table entry. The blob id is the running sha256 of every byte
written except the chunk digest array payload, which is exactly sha256(file) when there is no
ToC (blob-v6.md §11).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from .blob_meta import (
    CI_DTYPE,
    CI_V2_COMPRESSED,
    DIGEST_SIZE,
    HEADER_SIZE,
    BlobMetaHeader,
    TocEntry,
    compress_ci,
    encode_ci,
    tar_header,
    toc_flags,
)
from .compression import Compressor, compress
from .constants import BLOCK_SIZE, MAX_CI_ENTRIES
from .digest import Digester, digest
from .flags import BlobFeatures
from .model import BlobInfo

# Written bytes are handed to the hashing thread in batches of this size: fewer hand-overs than
# chunks, yet small enough that hashing keeps pace with the writes.
HASH_BATCH = 1 << 20


@dataclass(frozen=True, slots=True)
class WrittenChunk:
    """Where ``add_raw_chunk`` put a chunk, with everything a CHUNK_DTYPE record needs."""

    index: int
    compressed_offset: int
    uncompressed_offset: int
    compressed_size: int
    uncompressed_size: int
    compressed: bool
    digest: bytes


class _Sha256:
    """sha256 of a byte stream, hashed on a worker thread in batches of at least HASH_BATCH bytes.

    hashlib releases the GIL while it hashes, so the caller's next write and read proceed while
    the previous batch is hashed. One batch is in flight at most, so updates apply in order. Only
    buffers backed by immutable ``bytes`` wait in a batch: the caller may reuse anything else as
    soon as ``update`` returns, so such a buffer is hashed at once.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._batch: list[bytes | memoryview] = []
        self._batch_bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def update(self, data: bytes | memoryview) -> None:
        if isinstance(data, bytes) or (isinstance(data, memoryview) and isinstance(data.obj, bytes)):
            self._batch.append(data)
            self._batch_bytes += len(data)
            if self._batch_bytes >= HASH_BATCH:
                self._hand_over()
        else:
            self._drain()
            self._hash.update(data)

    def copy(self):
        self._drain()
        return self._hash.copy()

    def close(self) -> None:
        """Hash what is left and stop the worker; the hash stays readable through ``copy``."""
        try:
            self._drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _take_batch(self) -> list[bytes | memoryview]:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        return batch

    def _hand_over(self) -> None:
        batch = self._take_batch()
        self._settle()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-sha256")
        self._pending = self._pool.submit(_update_all, self._hash, batch)

    def _drain(self) -> None:
        self._settle()
        _update_all(self._hash, self._take_batch())

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def _update_all(h, batch: list[bytes | memoryview]) -> None:
    for data in batch:
        h.update(data)


class BlobWriter:
    """Writes one new blob to ``fp`` (a binary file positioned at 0, written sequentially)."""

    def __init__(
        self,
        fp: BinaryIO,
        *,
        version: int,
        compressor: Compressor,
        digester: Digester,
        chunk_size: int,
        ci_v2: bool = False,
        with_toc: bool = False,
        ci_compress: bool = True,
        aligned: bool | None = None,
    ):
        if version not in (5, 6):
            raise ValueError(f"unknown RAFS version {version}")
        if aligned is None:
            aligned = version == 6
        if version == 6 and not aligned:
            raise ValueError("v6 blobs need 4K-aligned uncompressed offsets")
        if version == 5 and (ci_v2 or with_toc):
            raise ValueError("v5 blobs carry no chunk-info array or ToC")
        self._fp = fp
        self.version = version
        self.compressor = compressor
        self.digester = digester
        self.chunk_size = chunk_size
        self.ci_v2 = ci_v2
        self.with_toc = with_toc
        self.ci_compress = ci_compress
        self.aligned = aligned
        self._hash = _Sha256()
        self._pos = 0
        self._uoff = 0
        self._ci = np.zeros(64, dtype=CI_DTYPE)  # grown by doubling; the first chunk_count rows are used
        self._count = 0
        self._digests = bytearray()
        self._closed: str | None = None  # why no chunk may be added any more
        # sha256 of the chunk data section alone (upstream's new-blob id, B17); set by finish().
        self.chunk_data_sha256: str | None = None

    @property
    def chunk_count(self) -> int:
        return self._count

    def add_chunk(
        self, stored: bytes | memoryview, *, compressed: bool, uncompressed_size: int, digest: bytes
    ) -> tuple[int, int, int]:
        """Append one chunk's stored bytes; returns (index, compressed_offset, uncompressed_offset)."""
        index = self._count
        (row,) = self.add_chunks(
            [stored],
            compressed_sizes=[len(stored)],
            uncompressed_sizes=[uncompressed_size],
            compressed=[compressed],
            digests=digest,
        )
        return index, int(row["compressed_offset"]), int(row["uncompressed_offset"])

    def add_chunks(
        self,
        parts: Iterable[bytes | memoryview],
        *,
        compressed_sizes: ArrayLike,
        uncompressed_sizes: ArrayLike,
        compressed: ArrayLike,
        digests: bytes,
    ) -> np.ndarray:
        """Append chunks whose stored bytes, back to back, are the concatenation of ``parts``.

        Each part goes out in one write, so a caller hands over a whole run of chunks that were
        adjacent in their source as one slice of its read buffer. ``digests`` is the chunks' 32-byte
        digests concatenated. Returns the new chunks' CI_DTYPE entries: entry k is chunk index
        ``chunk_count`` (before the call) + k. The metadata is checked before any byte is written;
        a byte count that then disagrees with ``compressed_sizes`` leaves the writer unusable.
        """
        if self._closed:
            raise ValueError(f"blob already {self._closed}")
        csize = np.asarray(compressed_sizes, dtype=np.int64)
        usize = np.asarray(uncompressed_sizes, dtype=np.int64)
        comp = np.asarray(compressed, dtype=bool)
        n = len(csize)
        if len(usize) != n or len(comp) != n:
            raise ValueError(f"{n} compressed sizes, {len(usize)} uncompressed sizes, {len(comp)} compressed flags")
        if len(digests) != n * DIGEST_SIZE:
            raise ValueError(f"chunk digests must be {DIGEST_SIZE} bytes each: got {len(digests)} bytes for {n} chunks")
        self._check_chunks(csize, usize, comp)
        footprint = (usize + (BLOCK_SIZE - 1)) // BLOCK_SIZE * BLOCK_SIZE if self.aligned else usize
        expected = int(csize.sum())
        coff, uoff = self._pos, self._uoff
        try:
            for part in parts:
                if self._pos - coff + len(part) > expected:
                    raise ValueError(f"the parts hold more than the {expected} bytes the chunk sizes add up to")
                self._write(part)
            if self._pos - coff != expected:
                raise ValueError(f"the parts hold {self._pos - coff} bytes, the chunk sizes add up to {expected}")
        except BaseException:
            self._closed = "broken (a run of chunks was cut short)"
            self._hash.close()
            raise
        first, end = self._count, self._count + n
        if end > len(self._ci):
            grown = np.zeros(max(2 * len(self._ci), end), dtype=CI_DTYPE)
            grown[:first] = self._ci[:first]
            self._ci = grown
        rows = self._ci[first:end]
        rows["compressed_offset"] = np.cumsum(csize) - csize + coff
        rows["compressed_size"] = csize
        rows["uncompressed_offset"] = np.cumsum(footprint) - footprint + uoff
        rows["uncompressed_size"] = usize
        rows["flags"] = np.where(comp, CI_V2_COMPRESSED, 0)
        self._count = end
        self._digests += digests
        self._uoff += int(footprint.sum())
        return rows.copy()

    def _check_chunks(self, csize: np.ndarray, usize: np.ndarray, comp: np.ndarray) -> None:
        bad = (usize < 1) | (usize > self.chunk_size)
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(f"uncompressed_size {int(usize[i])} outside 1..chunk_size {self.chunk_size}")
        bad = (csize < 1) | (~comp & (csize != usize))
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(f"stored size {int(csize[i])} impossible for a chunk of {int(usize[i])} bytes")
        if self.version == 6:
            if self._count + len(csize) > MAX_CI_ENTRIES:
                raise ValueError("a v6 blob holds at most 2^24 chunks")
            if not self.ci_v2 and (comp & (csize == usize)).any():
                raise ValueError("ci v1 cannot tell a compressed chunk of unchanged size from a raw one")

    def add_raw_chunk(self, data: bytes) -> WrittenChunk:
        """Digest, compress (raw if not smaller, as the builder does) and append ``data``."""
        stored, compressed = compress(self.compressor, data)
        chunk_digest = digest(self.digester, data)
        index, coff, uoff = self.add_chunk(
            stored, compressed=compressed, uncompressed_size=len(data), digest=chunk_digest
        )
        return WrittenChunk(index, coff, uoff, len(stored), len(data), compressed, chunk_digest)

    def finish(self) -> BlobInfo:
        """Append the blob meta (v6) and return the complete blob-table entry."""
        if self._closed:
            raise ValueError(f"blob already {self._closed}")
        if not self._count:
            raise ValueError("refusing to write a blob with 0 chunks (its table entry would not load)")
        self._closed = "finished"
        try:
            self.chunk_data_sha256 = self._hash.copy().hexdigest()
            info = BlobInfo(
                blob_id="",
                chunk_count=self._count,
                compressed_size=0,
                uncompressed_size=self._uoff,
                features=int(BlobFeatures.CAP_TAR_TOC | (BlobFeatures.ALIGNED if self.aligned else 0)),
                compressor=self.compressor,
                digester=self.digester,
                chunk_size=self.chunk_size,
            )
            if self.version == 6:
                self._finish_v6(info)
        finally:
            self._hash.close()
        info.blob_id = self._hash.copy().hexdigest()
        info.compressed_size = self._pos
        return info

    def ci_array(self) -> np.ndarray:
        """The chunk-info entries written so far, in index order."""
        return self._ci[: self._count].copy()

    def _finish_v6(self, info: BlobInfo) -> None:
        info.uncompressed_size = _align(self._uoff, BLOCK_SIZE)
        features = BlobFeatures.CAP_TAR_TOC | BlobFeatures.ALIGNED
        if self.ci_v2:
            features |= BlobFeatures.CHUNK_INFO_V2
        if self.with_toc:
            features |= BlobFeatures.HAS_TOC | BlobFeatures.HAS_TAR_HEADER | BlobFeatures.INLINED_CHUNK_DIGEST
        info.features = int(features)
        toc: list[TocEntry] = []

        if self.with_toc:
            data_len = self._pos
            self._write(tar_header("image.blob", data_len))
            # v2.2.0 records offset 0 here (the 2.2-dev fixture has the data length, blob-v6.md §0).
            toc.append(TocEntry(1, "image.blob", self._hash.copy().digest(), 0, data_len, info.uncompressed_size))

        ci_raw = encode_ci(self.ci_array(), v2=self.ci_v2, name="<blob writer>")
        ci_stored, ci_compressor = compress_ci(ci_raw, self.ci_compress)
        info.ci_compressor = ci_compressor
        info.ci_offset = self._pos
        info.ci_compressed_size = len(ci_stored)
        info.ci_uncompressed_size = len(ci_raw)
        header = BlobMetaHeader(
            features=info.features,
            ci_compressor=ci_compressor,
            ci_entries=info.chunk_count,
            ci_offset=info.ci_offset,
            ci_compressed_size=info.ci_compressed_size,
            ci_uncompressed_size=info.ci_uncompressed_size,
        ).pack()
        self._write(ci_stored)
        self._write(header)
        if not self.with_toc:
            return

        self._write(tar_header("blob.meta", len(ci_stored) + HEADER_SIZE))
        ci_flags = toc_flags(ci_compressor)
        toc.append(TocEntry(ci_flags, "blob.meta", _sha256(ci_raw), info.ci_offset, len(ci_stored), len(ci_raw)))
        header_off = info.ci_offset + len(ci_stored)
        toc.append(TocEntry(1, "blob.meta.header", _sha256(header), header_off, HEADER_SIZE, HEADER_SIZE))

        digests = bytes(self._digests)
        digests_off = self._pos
        self._write(digests, hashed=False)
        self._write(tar_header("blob.digest", len(digests)))
        toc.append(TocEntry(1, "blob.digest", _sha256(digests), digests_off, len(digests), len(digests)))

        toc_bytes = b"".join(e.pack() for e in toc)
        toc_region = toc_bytes + tar_header("rafs.blob.toc", len(toc_bytes))
        self._write(toc_region)
        info.blob_toc_size = len(toc_region)
        info.blob_toc_digest = _sha256(toc_region)

    def _write(self, data: bytes | memoryview, *, hashed: bool = True) -> None:
        if hashed:
            self._hash.update(data)  # first: the batch it completes is hashed while it is written
        self._fp.write(data)
        self._pos += len(data)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _align(x: int, n: int) -> int:
    return (x + n - 1) // n * n

