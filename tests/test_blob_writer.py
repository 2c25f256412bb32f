"""BlobWriter: the fixture blob rebuilt from its payloads differs only in the documented 2.2-dev bytes;
layouts A/B, v1/v2, v5 packing, refusals, and the uncompressed cache."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.rafs import v6
from nydus_compact.rafs.blob_meta import TOC_ENTRY_SIZE, read_blob_meta
from nydus_compact.rafs.blob_writer import BlobWriter
from nydus_compact.rafs.cache import materialize
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.errors import BlobDataError
from nydus_compact.rafs.flags import BlobFeatures

FIXTURES = Path(__file__).parent / "fixtures" / "nydus"
EXPECTED = json.loads((FIXTURES / "rafs-v6-2.2.expected.json").read_text())["blobs"][0]
BLOB = FIXTURES / EXPECTED["blob_id"]
TOC_START = 13530  # 4 entries of 128 bytes, then the rafs.blob.toc tar header


@pytest.fixture(scope="module")
def info():
    return v6.load((FIXTURES / "rafs-v6-2.2.boot").read_bytes(), "boot").blobs[0]


def test_rebuilt_fixture_blob_differs_only_in_dev_build_bytes(info):
    original = BLOB.read_bytes()
    meta = read_blob_meta(BLOB, info, len(original))
    out = io.BytesIO()
    w = BlobWriter(out, version=6, compressor=Compressor.ZSTD, digester=Digester.BLAKE3, chunk_size=0x100000,
                   with_toc=True)  # fmt: skip
    for i, row in enumerate(meta.ci):
        coff, csize = int(row["compressed_offset"]), int(row["compressed_size"])
        got = w.add_chunk(original[coff : coff + csize], compressed=bool(row["flags"] & 1),
                          uncompressed_size=int(row["uncompressed_size"]), digest=meta.digest(i))  # fmt: skip
        assert got == (i, coff, int(row["uncompressed_offset"]))
    new_info = w.finish()
    rebuilt = out.getvalue()

    # v2.2.0 writes image.blob's compressed_offset as 0 and zero padding (blob-v6.md §0).
    expected_diff = {TOC_START + 56: (0x7A, 0), TOC_START + 57: (0x1E, 0)}
    for k, tail in enumerate([b"\xff\xff\x00\x00"] * 3 + [b"0000"]):
        for j, byte in enumerate(tail):
            if byte:
                expected_diff[TOC_START + k * TOC_ENTRY_SIZE + 124 + j] = (byte, 0)
    assert len(rebuilt) == len(original)
    diff = {i: (original[i], rebuilt[i]) for i in range(len(original)) if original[i] != rebuilt[i]}
    assert diff == expected_diff

    # What follows from those bytes: the ToC digest and the blob id; every other field is equal.
    changed = {k for k, v in asdict(new_info).items() if v != asdict(info)[k]}
    assert changed == {"blob_id", "blob_toc_digest"}
    assert new_info.blob_toc_digest == hashlib.sha256(rebuilt[TOC_START:]).digest()
    digests = slice(12954, 12954 + 64)  # the blob.digest payload is not hashed (blob-v6.md §11)
    assert new_info.blob_id == hashlib.sha256(rebuilt[: digests.start] + rebuilt[digests.stop :]).hexdigest()
    assert info.blob_id == hashlib.sha256(original[: digests.start] + original[digests.stop :]).hexdigest()
    read_blob_meta(_MemReader(rebuilt), new_info, len(rebuilt), name="rebuilt")


class _MemReader:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        assert offset + size <= len(self.data)
        return self.data[offset : offset + size]


def _chunks(n: int, size: int = 10_000) -> list[bytes]:
    rng = np.random.default_rng(n)
    return [bytes([65 + i % 26]) * (size // 2) + rng.integers(0, 256, size // 2, np.uint8).tobytes() for i in range(n)]


@pytest.mark.parametrize("ci_v2", [False, True])
def test_layout_a_without_toc(tmp_path, ci_v2):
    path = tmp_path / "blob"
    with open(path, "wb") as f:
        w = BlobWriter(f, version=6, compressor=Compressor.LZ4_BLOCK, digester=Digester.SHA256, chunk_size=0x10000,
                       ci_v2=ci_v2)  # fmt: skip
        written = [w.add_raw_chunk(c) for c in _chunks(300)]
        info = w.finish()
    data = path.read_bytes()
    assert info.blob_id == hashlib.sha256(data).hexdigest() and info.compressed_size == len(data)
    assert info.features == 0x4000_0001 | (BlobFeatures.CHUNK_INFO_V2 if ci_v2 else 0)
    assert info.ci_compressor == 3  # 300 similar entries shrink under zstd
    assert info.uncompressed_size == 300 * 12288 and info.blob_toc_size == 0
    assert info.ci_uncompressed_size == 300 * (24 if ci_v2 else 16)
    assert len(data) == info.ci_offset + info.ci_compressed_size + 4096
    meta = read_blob_meta(path, info, len(data))
    assert meta.toc is None and meta.digests is None
    assert [int(x) for x in meta.ci["compressed_offset"]] == [c.compressed_offset for c in written]
    assert [int(x) for x in meta.ci["uncompressed_offset"]] == [i * 12288 for i in range(300)]
    assert all(c.digest == digest(Digester.SHA256, raw) for c, raw in zip(written, _chunks(300)))


def test_ci_compress_off_and_v5_packing():
    out = io.BytesIO()
    w = BlobWriter(out, version=6, compressor=Compressor.NONE, digester=Digester.BLAKE3, chunk_size=0x10000,
                   ci_compress=False)  # fmt: skip
    for c in _chunks(50):
        w.add_raw_chunk(c)
    assert w.finish().ci_compressor == 0

    out = io.BytesIO()
    w = BlobWriter(out, version=5, compressor=Compressor.ZSTD, digester=Digester.BLAKE3, chunk_size=0x10000)
    offsets = [w.add_raw_chunk(c).uncompressed_offset for c in _chunks(3)]
    info = w.finish()
    assert offsets == [0, 10_000, 20_000] and info.uncompressed_size == 30_000
    assert info.features == 0x4000_0000 and info.blob_id == hashlib.sha256(out.getvalue()).hexdigest()
    assert info.ci_offset == 0 and info.compressed_size == len(out.getvalue())

    w = BlobWriter(io.BytesIO(), version=5, compressor=Compressor.ZSTD, digester=Digester.BLAKE3, chunk_size=0x10000,
                   aligned=True)  # fmt: skip
    assert [w.add_raw_chunk(c).uncompressed_offset for c in _chunks(3)] == [0, 12288, 24576]
    assert w.finish().features == 0x4000_0001


def test_writer_refusals():
    def writer(**kw) -> BlobWriter:
        args = dict(version=6, compressor=Compressor.ZSTD, digester=Digester.BLAKE3, chunk_size=0x10000)
        return BlobWriter(io.BytesIO(), **(args | kw))

    with pytest.raises(ValueError, match="0 chunks"):
        writer().finish()
    with pytest.raises(ValueError, match="aligned"):
        writer(aligned=False)
    w = writer()
    with pytest.raises(ValueError, match="uncompressed_size"):
        w.add_chunk(b"x" * 10, compressed=False, uncompressed_size=0x10001, digest=bytes(32))
    with pytest.raises(ValueError, match="stored size"):
        w.add_chunk(b"x" * 10, compressed=False, uncompressed_size=11, digest=bytes(32))
    with pytest.raises(ValueError, match="ci v1"):
        w.add_chunk(b"x" * 10, compressed=True, uncompressed_size=10, digest=bytes(32))
    w.add_chunk(b"x" * 10, compressed=False, uncompressed_size=10, digest=bytes(32))
    w.finish()
    with pytest.raises(ValueError, match="finished"):
        w.add_chunk(b"x", compressed=False, uncompressed_size=1, digest=bytes(32))


def test_materialized_cache_layout_and_errors(tmp_path):
    bs = v6.load((FIXTURES / "rafs-v6-2.2.boot").read_bytes(), "boot")
    (cache,) = materialize(bs, FIXTURES, tmp_path / "cache")
    data = cache.read_bytes()
    assert cache.name == f"{EXPECTED['blob_id']}.blob.data" and len(data) == 36864
    assert data[16931:20480] == bytes(20480 - 16931) and data[20480 + 13400 :] == bytes(36864 - 33880)
    assert digest(Digester.BLAKE3, data[:16931]).hex() == EXPECTED["chunk_digests"][0]
    assert digest(Digester.BLAKE3, data[20480:33880]).hex() == EXPECTED["chunk_digests"][1]

    broken = tmp_path / "broken"
    broken.mkdir()
    blob = bytearray(BLOB.read_bytes())
    blob[100] ^= 0xFF
    (broken / EXPECTED["blob_id"]).write_bytes(bytes(blob))
    with pytest.raises(BlobDataError, match="chunk 0"):
        materialize(bs, broken, tmp_path / "c2")
    with pytest.raises(BlobDataError, match="cannot open"):
        materialize(bs, tmp_path / "nowhere", tmp_path / "c3")


# -- runs of chunks written in one go (the apply copy path) ---------------------------------------


def _v6_writer(fp) -> BlobWriter:
    return BlobWriter(fp, version=6, compressor=Compressor.NONE, digester=Digester.SHA256, chunk_size=0x10000)


def _run_columns(chunks: list[bytes]) -> dict:
    sizes = np.array([len(c) for c in chunks], dtype=np.uint64)
    digests = b"".join(digest(Digester.SHA256, c) for c in chunks)
    compressed = np.zeros(len(chunks), dtype=bool)
    return {"compressed_sizes": sizes, "uncompressed_sizes": sizes, "compressed": compressed, "digests": digests}


def test_runs_of_chunks_equal_chunk_by_chunk_writes():
    chunks = _chunks(40)
    one_by_one = io.BytesIO()
    w = _v6_writer(one_by_one)
    for c in chunks:
        w.add_chunk(c, compressed=False, uncompressed_size=len(c), digest=digest(Digester.SHA256, c))
    expected_info, expected_ci = w.finish(), w.ci_array()

    runs = io.BytesIO()
    w = _v6_writer(runs)
    # Runs as the copier hands them over: slices of one read buffer, and a part spanning chunks.
    buffer = b"".join(chunks[:30])
    first = w.add_chunks([memoryview(buffer)[: 25_000], memoryview(buffer)[25_000 :]], **_run_columns(chunks[:30]))
    rest = w.add_chunks([b"".join(chunks[30:])], **_run_columns(chunks[30:]))
    info = w.finish()

    assert runs.getvalue() == one_by_one.getvalue()
    assert info == expected_info and info.blob_id == hashlib.sha256(runs.getvalue()).hexdigest()
    assert np.array_equal(np.concatenate([first, rest]), expected_ci)
    assert w.chunk_data_sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_large_runs_hash_in_batches_and_mutable_parts_are_hashed_at_once():
    rng = np.random.default_rng(7)
    chunks = [rng.bytes(0x10000) for _ in range(80)]  # 5 MiB: several hashing batches
    out = io.BytesIO()
    w = _v6_writer(out)
    w.add_chunks([b"".join(chunks[:40])], **_run_columns(chunks[:40]))
    mutable = [bytearray(c) for c in chunks[40:]]
    w.add_chunks(mutable, **_run_columns(chunks[40:]))
    for part in mutable:  # the caller reuses its buffers: the blob id must not see it
        part[:] = bytes(len(part))
    info = w.finish()
    data = out.getvalue()
    assert data[: 80 * 0x10000] == b"".join(chunks)
    assert info.blob_id == hashlib.sha256(data).hexdigest()
    assert w.chunk_data_sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_v5_data_hash_is_the_blob_id():
    out = io.BytesIO()
    w = BlobWriter(out, version=5, compressor=Compressor.NONE, digester=Digester.SHA256, chunk_size=0x10000)
    chunks = _chunks(5)
    w.add_chunks([b"".join(chunks)], **_run_columns(chunks))
    assert w.finish().blob_id == w.chunk_data_sha256 == hashlib.sha256(out.getvalue()).hexdigest()


@pytest.mark.parametrize(
    "parts, message",
    [
        (lambda data: [data[:-1]], "hold 9999 bytes"),
        (lambda data: [data, b"x"], "more than the 10000 bytes"),
        (lambda data: _failing([data[:5000]]), "backend went away"),
    ],
)
def test_a_run_cut_short_leaves_the_writer_unusable(parts, message):
    w = _v6_writer(io.BytesIO())
    (chunk,) = _chunks(1)
    with pytest.raises((ValueError, OSError), match=message):
        w.add_chunks(parts(chunk), **_run_columns([chunk]))
    assert w.chunk_count == 0
    for again in (lambda: w.add_chunk(chunk, compressed=False, uncompressed_size=len(chunk),
                                      digest=digest(Digester.SHA256, chunk)), w.finish):  # fmt: skip
        with pytest.raises(ValueError, match="broken"):
            again()


def _failing(parts):
    yield from parts
    raise OSError("backend went away")


def test_run_metadata_is_checked_before_any_byte_is_written():
    out = io.BytesIO()
    w = _v6_writer(out)
    chunks = _chunks(3)
    cols = _run_columns(chunks)
    cols["uncompressed_sizes"] = cols["uncompressed_sizes"].copy()
    cols["uncompressed_sizes"][2] = 0x10001
    with pytest.raises(ValueError, match="uncompressed_size 65537 outside"):
        w.add_chunks([b"".join(chunks)], **cols)
    with pytest.raises(ValueError, match="digests must be 32 bytes each"):
        w.add_chunks([b"".join(chunks)], **(_run_columns(chunks) | {"digests": bytes(64)}))
    assert out.getvalue() == b"" and w.chunk_count == 0
    w.add_chunks([b"".join(chunks)], **_run_columns(chunks))  # still usable: nothing was written
    assert w.finish().chunk_count == 3
