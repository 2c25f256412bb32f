"""Streaming writer for a new data blob (blob-v6.md §1, §2, §13; v5: data only).

Chunks are appended one by one; ``finish`` appends the v6 blob meta (ci array + header and,
with ``with_toc``, layout B of blob-v6.md §1 with v2.2.0 semantics) and returns the blob-table
entry. The blob id is the running sha256 of every byte written except the chunk digest array
payload, which is exactly sha256(file) when there is no ToC (blob-v6.md §11).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .blob_meta import (
    CI_DTYPE,
    CI_V2_COMPRESSED,
    DIGEST_SIZE,
    HEADER_SIZE,
    MAX_CI_ENTRIES,
    BlobMetaHeader,
    TocEntry,
    compress_ci,
    encode_ci,
    tar_header,
    toc_flags,
)
from .compression import Compressor, compress
from .digest import Digester, digest
from .flags import BlobFeatures
from .model import BlobInfo

BLOCK = 4096


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
        self._hash = hashlib.sha256()
        self._pos = 0
        self._uoff = 0
        self._rows: list[tuple[int, int, int, int, int]] = []  # coff, csize, uoff, usize, flags
        self._digests = bytearray()
        self._finished = False

    @property
    def chunk_count(self) -> int:
        return len(self._rows)

    def add_chunk(
        self, stored: bytes | memoryview, *, compressed: bool, uncompressed_size: int, digest: bytes
    ) -> tuple[int, int, int]:
        """Append one chunk's stored bytes; returns (index, compressed_offset, uncompressed_offset)."""
        if self._finished:
            raise ValueError("blob already finished")
        csize = len(stored)
        if not 0 < uncompressed_size <= self.chunk_size:
            raise ValueError(f"uncompressed_size {uncompressed_size} outside 1..chunk_size {self.chunk_size}")
        if csize == 0 or (not compressed and csize != uncompressed_size):
            raise ValueError(f"stored size {csize} impossible for a chunk of {uncompressed_size} bytes")
        if len(digest) != DIGEST_SIZE:
            raise ValueError("chunk digest must be 32 bytes")
        if self.version == 6:
            if len(self._rows) >= MAX_CI_ENTRIES:
                raise ValueError("a v6 blob holds at most 2^24 chunks")
            if compressed and csize == uncompressed_size and not self.ci_v2:
                raise ValueError("ci v1 cannot tell a compressed chunk of unchanged size from a raw one")
        index = len(self._rows)
        coff, uoff = self._pos, self._uoff
        self._write(stored)
        self._rows.append((coff, csize, uoff, uncompressed_size, CI_V2_COMPRESSED if compressed else 0))
        self._digests += digest
        self._uoff += _align(uncompressed_size, BLOCK) if self.aligned else uncompressed_size
        return index, coff, uoff

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
        if self._finished:
            raise ValueError("blob already finished")
        if not self._rows:
            raise ValueError("refusing to write a blob with 0 chunks (its table entry would not load)")
        self._finished = True
        info = BlobInfo(
            blob_id="",
            chunk_count=len(self._rows),
            compressed_size=0,
            uncompressed_size=self._uoff,
            features=int(BlobFeatures.CAP_TAR_TOC | (BlobFeatures.ALIGNED if self.aligned else 0)),
            compressor=self.compressor,
            digester=self.digester,
            chunk_size=self.chunk_size,
        )
        if self.version == 6:
            self._finish_v6(info)
        info.blob_id = self._hash.hexdigest()
        info.compressed_size = self._pos
        return info

    def ci_array(self) -> np.ndarray:
        """The chunk-info entries written so far, in index order."""
        ci = np.zeros(len(self._rows), dtype=CI_DTYPE)
        if self._rows:
            rows = np.array(self._rows, dtype=np.uint64)
            ci["compressed_offset"] = rows[:, 0]
            ci["compressed_size"] = rows[:, 1]
            ci["uncompressed_offset"] = rows[:, 2]
            ci["uncompressed_size"] = rows[:, 3]
            ci["flags"] = rows[:, 4]
        return ci

    def _finish_v6(self, info: BlobInfo) -> None:
        info.uncompressed_size = _align(self._uoff, BLOCK)
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
            toc.append(TocEntry(1, "image.blob", self._hash.digest(), 0, data_len, info.uncompressed_size))

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
        self._fp.write(data)
        if hashed:
            self._hash.update(data)
        self._pos += len(data)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _align(x: int, n: int) -> int:
    return (x + n - 1) // n * n
