"""Writing one new blob from its recipe: coalesced exact reads, verbatim chunk copies, blob meta.

Compressed chunk bytes are copied, never recompressed (compressed output differs between
library versions, rafs-v5.md §14.2). The temp file has a name derived from the plan digest and
the group, so a resumed apply finds and removes its own leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.base import BlobBackend
from planner.facts import SourceBlob
from planner.layout import NewBlob
from rafs.blob_writer import BlobWriter
from rafs.compression import decompress
from rafs.digest import digest
from rafs.flags import ChunkFlags
from rafs.model import BlobInfo
from safeio import TMP_PREFIX, fsync_dir

from .errors import ApplyError
from .faults import fault_point

# Reads are split at chunk boundaries so no single request holds more than this in memory.
MAX_READ = 16 << 20
COPY_BLOCK = 1 << 20


@dataclass
class WrittenBlob:
    info: BlobInfo
    path: Path
    sha256: str  # of the whole file
    bytes_read: int
    requests: int
    reused: bool  # the final file already existed with identical content


class _HashingFile:
    """Passes writes through to ``fp`` and hashes every byte (the file's sha256)."""

    def __init__(self, fp):
        self._fp = fp
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._fp.write(data)


def temp_prefix(plan_digest: str) -> str:
    """Names every temp file an apply of this plan writes, so a rerun finds exactly its own leftovers."""
    return f"{TMP_PREFIX}{plan_digest.removeprefix('sha256:')[:16]}."


def temp_name(plan_digest: str, group: int) -> str:
    return f"{temp_prefix(plan_digest)}g{group}"


def split_reads(nb: NewBlob) -> Iterator[tuple[int, int, int, int]]:
    """(source, offset, length, first chunk, count) reads of at most MAX_READ bytes (or one chunk)."""
    rec = nb.chunks
    for r in nb.reads:
        first, count = int(r["first"]), int(r["count"])
        src = int(r["source"])
        i = first
        while i < first + count:
            start = int(rec["source_offset"][i])
            j = i + 1
            end = start + int(rec["compressed_size"][i])
            while j < first + count:
                nxt_end = max(end, int(rec["source_offset"][j]) + int(rec["compressed_size"][j]))
                if nxt_end - start > MAX_READ:
                    break
                end = nxt_end
                j += 1
            yield src, start, end - start, i, j - i
            i = j


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        while block := fp.read(COPY_BLOCK):
            h.update(block)
    return h.hexdigest()


def write_new_blob(
    nb: NewBlob,
    sources: list[SourceBlob],
    backend: BlobBackend,
    out_dir: Path,
    *,
    version: int,
    chunk_size: int,
    plan_digest: str,
    whole_file_id: bool,
    verify: bool,
    progress: Callable[[int], None] | None = None,
) -> WrittenBlob:
    group = f"g{nb.group}"
    tmp = out_dir / temp_name(plan_digest, nb.group)
    rec = nb.chunks
    bytes_read = requests = 0
    data_hash = hashlib.sha256()
    half = len(nb.reads) // 2
    try:
        with open(tmp, "wb") as raw:
            out = _HashingFile(raw)
            writer = BlobWriter(
                out, version=version, compressor=nb.compressor, digester=nb.digester,
                chunk_size=chunk_size, aligned=nb.aligned,
            )
            for n, (src, offset, length, first, count) in enumerate(split_reads(nb)):
                if n == half:
                    fault_point(f"blob-mid:{group}")
                blob = sources[src]
                data = memoryview(backend.read_exact(blob.blob_id, offset, length))
                bytes_read += length
                requests += 1
                for i in range(first, first + count):
                    _copy_chunk(writer, rec[i], data, offset, blob, verify, data_hash)
                if progress is not None:
                    progress(length)
            info = writer.finish()
            raw.flush()
            os.fsync(raw.fileno())
        if not whole_file_id:
            # Upstream names a new blob by the sha256 of its chunk data only (B17).
            info.blob_id = data_hash.hexdigest()
        fault_point(f"blob-written:{group}")
        final = out_dir / info.blob_id
        sha = out.sha256.hexdigest()
        reused = _publish(tmp, final, info.compressed_size, sha)
        fsync_dir(out_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return WrittenBlob(info, final, sha, bytes_read, requests, reused)


def _copy_chunk(
    writer: BlobWriter, row: np.void, data: memoryview, base: int, blob: SourceBlob, verify: bool, data_hash
) -> None:
    start = int(row["source_offset"]) - base
    stored = data[start : start + int(row["compressed_size"])]
    compressed = bool(int(row["flags"]) & ChunkFlags.COMPRESSED)
    usize = int(row["uncompressed_size"])
    chunk_digest = bytes(row["digest"])
    if verify:
        where = f"blob {blob.blob_id}: chunk at compressed offset {int(row['source_offset'])}"
        try:
            plain = decompress(blob.compressor, bytes(stored), usize) if compressed else bytes(stored)
        except ValueError as exc:
            raise ApplyError(f"{where}: does not decompress: {exc}") from None
        if digest(blob.digester, plain) != chunk_digest:
            raise ApplyError(f"{where}: content does not match its digest")
    data_hash.update(stored)
    index, coff, uoff = writer.add_chunk(stored, compressed=compressed, uncompressed_size=usize, digest=chunk_digest)
    want = (int(row["index"]), int(row["compressed_offset"]), int(row["uncompressed_offset"]))
    if (index, coff, uoff) != want:
        raise ApplyError(f"new blob chunk landed at {(index, coff, uoff)}, the plan's layout says {want}")


def _publish(tmp: Path, final: Path, size: int, sha: str) -> bool:
    """Rename the finished temp file to its id; an identical existing file is kept instead."""
    if final.exists():
        if final.stat().st_size == size and file_sha256(final) == sha:
            tmp.unlink()
            return True
        raise ApplyError(f"{final} already exists with different content; refusing to overwrite it")
    os.replace(tmp, final)
    return False
