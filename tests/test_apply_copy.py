"""The apply copy path (applier.blobs.write_new_blob): a recipe with adjacent, gapped, repeated and
overlapping source chunks, and reads longer than MAX_READ, is copied byte for byte with one request
per (split) read; the blob id is the file's sha256, or the data-only sha256 upstream uses (B17)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.applier.blobs import (
    CACHED_READ, PARALLEL_CHECK, CopyJob, SourceCheck, pack, split_reads, write_new_blob,
)  # fmt: skip
from nydus_compact.backends.reads import MAX_READ
from nydus_compact.applier.errors import ApplyError
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.planner.facts import SourceBlob
from nydus_compact.planner.layout import READ_DTYPE, RECIPE_DTYPE, NewBlob
from nydus_compact.rafs.blob_meta import read_blob_meta
from nydus_compact.rafs.compression import Compressor, compress
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.flags import BlobFeatures

CHUNK_SIZE = 1 << 20
SOURCE_ID = "ab" * 32


def _source(tmp_path: Path, size: int) -> tuple[bytes, LocalFsBackend, list[SourceBlob]]:
    data = np.random.default_rng(size).bytes(size)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / SOURCE_ID).write_bytes(data)
    blob = SourceBlob(SOURCE_ID, size, size, 0, Compressor.NONE, Digester.BLAKE3, 0, size)
    return data, LocalFsBackend(src_dir), [blob]


def _new_blob(data: bytes, ranges: list[tuple[int, int]], reads: list[tuple[int, int, int, int]]) -> NewBlob:
    """Raw chunks at source ``ranges`` in write order; ``reads`` as (offset, length, first, count)."""
    rec = np.zeros(len(ranges), dtype=RECIPE_DTYPE)
    rec["source_offset"] = [o for o, _ in ranges]
    rec["compressed_size"] = rec["uncompressed_size"] = [n for _, n in ranges]
    rec["digest"] = [digest(Digester.BLAKE3, data[o : o + n]) for o, n in ranges]
    rec["index"] = np.arange(len(ranges))
    sizes = rec["compressed_size"].astype(np.uint64)
    rec["compressed_offset"] = np.cumsum(sizes) - sizes
    footprint = (sizes + 4095) // 4096 * 4096
    rec["uncompressed_offset"] = np.cumsum(footprint) - footprint
    rd = np.zeros(len(reads), dtype=READ_DTYPE)
    for i, r in enumerate(reads):
        rd[i] = (0, *r)
    return NewBlob(
        group=0, new_index=0, target=0, members=(0,), compressor=Compressor.NONE, digester=Digester.BLAKE3,
        features=int(BlobFeatures.CAP_TAR_TOC | BlobFeatures.ALIGNED), aligned=True, chunks=rec, reads=rd,
        compressed_size=int(sizes.sum()), uncompressed_size=int(footprint.sum()),
    )  # fmt: skip


def _user_of(occurrence: int) -> str:
    return f"<file of occurrence {occurrence}>"


def _write(nb: NewBlob, sources, backend, out: Path, verify: bool = False, whole_file_id: bool = True, user_of=_user_of):
    out.mkdir(exist_ok=True)
    check = SourceCheck(user_of, 2) if verify else None
    job = CopyJob(sources, backend, out, 6, CHUNK_SIZE, "sha256:" + "0" * 64, whole_file_id, check)
    try:
        return write_new_blob(nb, job)
    finally:
        if check is not None:
            check.close()


# Adjacent chunks (one run), a gap (a second read), the same chunk twice and an overlapping chunk.
RANGES = [(0, 1000), (1000, 1500), (3000, 500), (3000, 500), (3200, 800), (4000, 96)]
READS = [(0, 2500, 0, 2), (3000, 1096, 2, 4)]


@pytest.mark.parametrize("verify", [False, True])
def test_recipe_is_copied_byte_for_byte(tmp_path, verify):
    data, backend, sources = _source(tmp_path, 8192)
    nb = _new_blob(data, RANGES, READS)
    wb = _write(nb, sources, backend, tmp_path / "out", verify=verify)
    blob = wb.path.read_bytes()
    chunk_data = b"".join(data[o : o + n] for o, n in RANGES)
    assert blob[: len(chunk_data)] == chunk_data
    assert wb.sha256 == wb.info.blob_id == hashlib.sha256(blob).hexdigest() == wb.path.name
    assert (wb.requests, wb.bytes_read) == (2, 2500 + 1096)
    meta = read_blob_meta(wb.path, wb.info, len(blob))
    assert meta.ci["compressed_offset"].tolist() == nb.chunks["compressed_offset"].tolist()
    assert meta.ci["uncompressed_offset"].tolist() == nb.chunks["uncompressed_offset"].tolist()


def test_upstream_ids_hash_the_chunk_data_only(tmp_path):
    data, backend, sources = _source(tmp_path, 8192)
    wb = _write(_new_blob(data, RANGES, READS), sources, backend, tmp_path / "out", whole_file_id=False)
    chunk_data = b"".join(data[o : o + n] for o, n in RANGES)
    assert wb.info.blob_id == hashlib.sha256(chunk_data).hexdigest() == wb.path.name
    assert wb.sha256 == hashlib.sha256(wb.path.read_bytes()).hexdigest() != wb.info.blob_id


def test_reads_longer_than_max_read_are_split_at_chunk_boundaries(tmp_path):
    n = MAX_READ // (256 << 10) + 8  # 256 KiB chunks, 2 MiB more than one read may hold
    size = n * (256 << 10)
    data, backend, sources = _source(tmp_path, size)
    ranges = [(i * (256 << 10), 256 << 10) for i in range(n)]
    nb = _new_blob(data, ranges, [(0, size, 0, n)])
    assert [(o, ln, f, c) for _, o, ln, f, c in split_reads(nb)] == [
        (0, MAX_READ, 0, n - 8), (MAX_READ, size - MAX_READ, n - 8, 8),
    ]  # fmt: skip
    # A local copy reads cache-sized pieces (4 chunks here), cut at chunk boundaries the same way.
    per_read = CACHED_READ // (256 << 10)
    assert [(o, ln, f, c) for _, o, ln, f, c in split_reads(nb, CACHED_READ)] == [
        (k * CACHED_READ, CACHED_READ, k * per_read, per_read) for k in range(n // per_read)
    ]
    wb = _write(nb, sources, backend, tmp_path / "out")
    blob = wb.path.read_bytes()
    assert blob[:size] == data and wb.requests == n // per_read
    assert wb.info.blob_id == hashlib.sha256(blob).hexdigest()


# Small chunks: both reads share one buffer, checked on the copying thread. Large ones: a buffer
# per read, checked on a worker.
LARGE = 256 << 10
LARGE_RANGES = [(k * LARGE, LARGE) for k in range(6)]


def _recording_thread(seen: list[str]):
    def user_of(occurrence: int) -> str:
        seen.append(threading.current_thread().name)  # the check that found the bad chunk runs here
        return _user_of(occurrence)

    return user_of


@pytest.mark.parametrize(
    "ranges, reads, bad, offset",
    [(RANGES, READS, 4, 3200), (LARGE_RANGES, [(0, 6 * LARGE, 0, 6)], 5, 5 * LARGE)],
    ids=["small-chunks-inline", "large-chunks-on-workers"],
)
def test_verify_refuses_a_chunk_that_does_not_match_its_digest(tmp_path, ranges, reads, bad, offset):
    data, backend, sources = _source(tmp_path, 8 * LARGE)
    nb = _new_blob(data, ranges, reads)
    nb.chunks["digest"][bad] = bytes(32)
    nb.chunks["occurrence"][bad] = 7
    seen: list[str] = []
    with pytest.raises(
        ApplyError,
        match=rf"blob {SOURCE_ID}: chunk at compressed offset {offset} \(used by <file of occurrence 7>\): content does not match",
    ):
        _write(nb, sources, backend, tmp_path / "out", verify=True, user_of=_recording_thread(seen))
    assert list((tmp_path / "out").iterdir()) == []  # the temp file is gone
    assert [name.startswith("verify-source") for name in seen] == [ranges[0][1] >= PARALLEL_CHECK]


def test_small_stored_chunks_of_large_content_are_checked_on_workers(tmp_path):
    """What decides where a chunk is checked is its uncompressed size (the digest's work): 256 KiB of
    zeros and a little noise store as a few hundred bytes of zstd."""
    rng = np.random.default_rng(9)
    plain = [rng.bytes(100) + bytes(LARGE - 100) for _ in range(4)]
    stored = [compress(Compressor.ZSTD, x)[0] for x in plain]
    assert max(map(len, stored)) < 1024
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / SOURCE_ID).write_bytes(b"".join(stored))
    total = sum(map(len, stored))
    sources = [SourceBlob(SOURCE_ID, total, 4 * LARGE, 0, Compressor.ZSTD, Digester.BLAKE3, 0, total)]
    nb = _new_blob(b"".join(stored), [(0, 1)] * 4, [(0, total, 0, 4)])
    rec = nb.chunks
    offsets = np.cumsum([0, *map(len, stored)])[:-1]
    rec["source_offset"] = rec["compressed_offset"] = offsets
    rec["compressed_size"] = [len(x) for x in stored]
    rec["uncompressed_size"] = LARGE
    rec["uncompressed_offset"] = np.arange(4) * LARGE
    rec["flags"] = 1  # ChunkFlags.COMPRESSED
    rec["digest"] = [digest(Digester.BLAKE3, x) for x in plain]
    rec["digest"][2] = bytes(32)
    nb = NewBlob(**{f: getattr(nb, f) for f in NewBlob.__slots__} | {"compressed_size": total, "uncompressed_size": 4 * LARGE})
    seen: list[str] = []
    with pytest.raises(ApplyError, match=rf"chunk at compressed offset {offsets[2]} .*: content does not match"):
        _write(nb, sources, LocalFsBackend(src_dir), tmp_path / "out", verify=True, user_of=_recording_thread(seen))
    assert len(seen) == 1 and seen[0].startswith("verify-source")


@pytest.mark.parametrize("verify", [False, True])
def test_many_small_reads_fill_several_buffers_and_land_in_order(tmp_path, verify):
    """2,600 one-chunk reads of 1000 bytes (each with a gap after it: nothing coalesces) fill three
    buffers; a chunk copied twice sits across the first buffer boundary. Byte for byte, one request
    per read, every chunk checked."""
    n = 2600
    data, backend, sources = _source(tmp_path, 2000 * n)
    ranges = [(2000 * k, 1000) for k in range(n)]
    per_buffer = CACHED_READ // 1000
    ranges.insert(per_buffer, ranges[per_buffer - 1])  # the last chunk of buffer 1, again first in buffer 2
    reads = [(o, ln, k, 1) for k, (o, ln) in enumerate(ranges)]
    nb = _new_blob(data, ranges, reads)
    wb = _write(nb, sources, backend, tmp_path / "out", verify=verify)
    chunk_data = b"".join(data[o : o + ln] for o, ln in ranges)
    assert wb.path.read_bytes()[: len(chunk_data)] == chunk_data
    assert (wb.requests, wb.bytes_read) == (n + 1, 1000 * (n + 1))


def test_pack_fills_a_buffer_then_starts_the_next():
    assert pack([3, 4, 2, 1, 10, 6], 10) == [0, 3, 7, 9, 0, 0]
    assert pack([10, 10], 10) == [0, 0]


def test_reads_of_two_sources_share_a_buffer_and_each_chunk_is_checked_with_its_own_compressor(tmp_path):
    """A zstd source and a raw one: their reads land back to back in one buffer, and each chunk is
    decompressed (or not) by its own blob's compressor; a bad chunk names its own blob."""
    rng = np.random.default_rng(3)
    plain = [rng.bytes(700) + bytes(2000) for _ in range(4)]
    stored = [compress(Compressor.ZSTD, p)[0] for p in plain]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    ids = ["cd" * 32, "ef" * 32]
    (src_dir / ids[0]).write_bytes(b"".join(stored))
    (src_dir / ids[1]).write_bytes(b"".join(plain))
    sizes = [len(x) for x in stored]
    sources = [
        SourceBlob(ids[0], sum(sizes), sum(map(len, plain)), 0, Compressor.ZSTD, Digester.BLAKE3, 0, sum(sizes)),
        SourceBlob(ids[1], 4 * 2700, 4 * 2700, 0, Compressor.NONE, Digester.BLAKE3, 0, 4 * 2700),
    ]
    nb = _new_blob(b"", [(0, 1)] * 4, [])  # rewritten below: chunks 0-1 from source 0, 2-3 from source 1
    rec = nb.chunks
    rec["source"] = [0, 0, 1, 1]
    rec["source_offset"] = [0, sizes[0], 2700, 5400]
    rec["compressed_size"] = [sizes[0], sizes[1], 2700, 2700]
    rec["uncompressed_size"] = 2700
    rec["flags"] = [1, 1, 0, 0]  # ChunkFlags.COMPRESSED on the zstd ones
    rec["digest"] = [digest(Digester.BLAKE3, p) for p in (plain[0], plain[1], plain[1], plain[2])]
    csize = rec["compressed_size"].astype(np.uint64)
    rec["compressed_offset"] = np.cumsum(csize) - csize
    rec["uncompressed_offset"] = np.arange(4) * 4096
    reads = np.zeros(2, dtype=READ_DTYPE)
    reads[0] = (0, 0, sizes[0] + sizes[1], 0, 2)
    reads[1] = (1, 2700, 5400, 2, 2)
    nb = NewBlob(**{f: getattr(nb, f) for f in NewBlob.__slots__} | {
        "chunks": rec, "reads": reads, "compressed_size": int(csize.sum()), "uncompressed_size": 4 * 4096,
    })  # fmt: skip
    wb = _write(nb, sources, LocalFsBackend(src_dir), tmp_path / "out", verify=True)
    assert wb.path.read_bytes()[: int(csize.sum())] == stored[0] + stored[1] + plain[1] + plain[2]
    assert wb.requests == 2
    rec["digest"][3] = bytes(32)
    with pytest.raises(ApplyError, match=rf"blob {ids[1]}: chunk at compressed offset 5400 .*: content does not match"):
        _write(nb, sources, LocalFsBackend(src_dir), tmp_path / "out2", verify=True)


def test_a_recipe_the_writer_would_lay_out_differently_is_refused(tmp_path):
    data, backend, sources = _source(tmp_path, 8192)
    nb = _new_blob(data, RANGES, READS)
    nb.chunks["compressed_offset"][3] += 1
    with pytest.raises(ApplyError, match=r"landed at \(3, 3000, 12288\), the plan's layout says \(3, 3001, 12288\)"):
        _write(nb, sources, backend, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
