"""v6 blob meta: the fixture blob's ci array, header, tar headers, ToC and digests against the oracle,
codec round trips, and corruptions that must be refused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.rafs import blob_meta, v6
from nydus_compact.rafs.blob_meta import CI_DTYPE, decode_ci, encode_ci, parse_tar_header, read_blob_meta, tar_header
from nydus_compact.rafs.errors import RafsFormatError

FIXTURES = Path(__file__).parent / "fixtures" / "nydus"
EXPECTED = json.loads((FIXTURES / "rafs-v6-2.2.expected.json").read_text())["blobs"][0]
BLOB = FIXTURES / EXPECTED["blob_id"]


@pytest.fixture(scope="module")
def info():
    return v6.load((FIXTURES / "rafs-v6-2.2.boot").read_bytes(), "boot").blobs[0]


def test_fixture_blob_meta_matches_oracle(info):
    meta = read_blob_meta(BLOB, info, BLOB.stat().st_size)
    assert meta.name == str(BLOB)
    ci = [
        {"index": i, "compressed_offset": int(r["compressed_offset"]), "compressed_size": int(r["compressed_size"]),
         "uncompressed_offset": int(r["uncompressed_offset"]), "uncompressed_size": int(r["uncompressed_size"]),
         "compressed": bool(r["flags"] & 1)}
        for i, r in enumerate(meta.ci)
    ]  # fmt: skip
    assert ci == EXPECTED["ci_array"]
    assert meta.ci_raw.hex() == EXPECTED["ci_raw_hex"]
    h = EXPECTED["meta_header"]
    assert (meta.header.features, meta.header.ci_compressor, meta.header.ci_entries, meta.header.ci_offset,
            meta.header.ci_compressed_size, meta.header.ci_uncompressed_size, meta.header.ci_zran_offset,
            meta.header.ci_zran_size, meta.header.ci_zran_count) == (
        int(h["features"], 16), h["ci_compressor"], h["ci_entries"], h["ci_offset"], h["ci_compressed_size"],
        h["ci_uncompressed_size"], h["ci_zran_offset"], h["ci_zran_size"], h["ci_zran_count"])  # fmt: skip
    assert meta.compressed_data_size == EXPECTED["data_region"]["size"]
    assert [meta.digest(i).hex() for i in range(2)] == EXPECTED["chunk_digests"]
    toc = [
        {"name": e.name, "flags": e.flags, "digest": e.digest.hex(), "compressed_offset": e.compressed_offset,
         "compressed_size": e.compressed_size, "uncompressed_size": e.uncompressed_size}
        for e in meta.toc
    ]  # fmt: skip
    assert toc == EXPECTED["toc"]
    # The dev-build padding garbage (blob-v6.md §0) is kept, not mistaken for data.
    assert [e.tail for e in meta.toc] == [b"\xff\xff\x00\x00"] * 3 + [b"0000"]


def test_fixture_tar_headers_are_reproduced_byte_exactly():
    data = BLOB.read_bytes()
    for h in EXPECTED["tar_headers"]:
        raw = data[h["offset"] : h["offset"] + 512]
        assert parse_tar_header(raw, "blob", h["offset"]) == (h["name"], h["size"])
        assert tar_header(h["name"], h["size"]) == raw


def test_ci_codecs_round_trip():
    raw = bytes.fromhex(EXPECTED["ci_raw_hex"])
    ci = decode_ci(raw, v2=False)
    assert encode_ci(ci, v2=False) == raw
    v2 = encode_ci(ci, v2=True)
    assert len(v2) == 48 and decode_ci(v2, v2=True).tobytes() == ci.tobytes()

    big = np.zeros(3, CI_DTYPE)
    big["uncompressed_size"] = [0x100_0000, 1, 0xFF_FFFF]
    big["compressed_size"] = [0xFF_FFFF, 1, 0xFF_FFFF]
    big["uncompressed_offset"] = [0, 0x100_0000, (1 << 44) - 4096]
    big["compressed_offset"] = [0, 0xFF_FFFF, (1 << 40) - 1]
    big["flags"] = [1, 0, 0]
    assert decode_ci(encode_ci(big, v2=False), v2=False).tobytes() == big.tobytes()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("uncompressed_offset", 100, "4K-aligned"),
        ("uncompressed_size", 0, "uncompressed_size"),
        ("compressed_offset", 1 << 40, "compressed_offset"),
    ],
)
def test_encode_ci_refuses_unrepresentable_values(field, value, match):
    ci = decode_ci(bytes.fromhex(EXPECTED["ci_raw_hex"]), v2=False)
    ci[field][0] = value
    with pytest.raises(RafsFormatError, match=match):
        encode_ci(ci, v2=False)
    ci = decode_ci(bytes.fromhex(EXPECTED["ci_raw_hex"]), v2=False)
    ci["compressed_size"][0] = ci["uncompressed_size"][0]
    with pytest.raises(RafsFormatError, match="v1 cannot hold"):
        encode_ci(ci, v2=False)


class _MemReader:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        if offset + size > len(self.data):
            raise RafsFormatError("mem", "short read", offset)
        return self.data[offset : offset + size]


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1 :]


CORRUPT = [
    ("header magic", lambda d: _flip(d, 8346), "bad magic"),
    ("header features", lambda d: _flip(d, 8346 + 4), "disagrees with the blob table"),
    ("ci entry", lambda d: _flip(d, 8314 + 16 + 2), "ci entry 1"),
    ("digest array", lambda d: _flip(d, 12954), "blob.digest sha256"),
    ("toc entry", lambda d: _flip(d, 13530 + 60), "blob_toc_digest"),
]


@pytest.mark.parametrize(("what", "corrupt", "match"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_blob_meta_is_refused(info, what, corrupt, match):
    data = corrupt(BLOB.read_bytes())
    with pytest.raises(RafsFormatError, match=match) as err:
        read_blob_meta(_MemReader(data), info, len(data), name="corrupt.blob")
    assert err.value.path == "corrupt.blob"


def test_blob_table_disagreements_and_truncation(info, tmp_path):
    size = BLOB.stat().st_size
    with pytest.raises(RafsFormatError, match="disagrees"):
        read_blob_meta(BLOB, replace(info, ci_compressor=3), size)
    with pytest.raises(RafsFormatError, match="chunk_count"):
        read_blob_meta(BLOB, replace(info, chunk_count=0), size)
    with pytest.raises(RafsFormatError, match="ci_uncompressed_size"):
        read_blob_meta(BLOB, replace(info, chunk_count=3), size)
    with pytest.raises(RafsFormatError, match="past the blob end"):
        read_blob_meta(BLOB, info, 9000)
    with pytest.raises(RafsFormatError, match="past the blob's uncompressed_size"):
        read_blob_meta(BLOB, replace(info, uncompressed_size=20480), size)
    short = tmp_path / "short.blob"
    short.write_bytes(BLOB.read_bytes()[:12000])
    with pytest.raises(RafsFormatError, match="too short") as err:
        read_blob_meta(short, info, size)
    assert err.value.path == str(short)
    # Without a ToC digest the ToC is still parsed; its tar header must name it.
    no_digest = replace(info, blob_toc_digest=bytes(32))
    data = BLOB.read_bytes()
    renamed = data[:14042] + tar_header("rafs.blob.tocX", 512) + data[14554:]
    with pytest.raises(RafsFormatError, match="ToC tar header"):
        read_blob_meta(_MemReader(renamed), no_digest, len(renamed))
    assert hashlib.sha256(data[14042 - 512 :]).digest() == info.blob_toc_digest
    assert blob_meta.compressed_data_size(info) == 7802
