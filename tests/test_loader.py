"""rafs.loader: version detection, size limits and file handling on the real fixtures."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.errors import RafsFormatError
from nydus_compact.rafs.loader import (
    MAX_BOOTSTRAP_SIZE,
    bootstrap_sha256,
    detect_version,
    load_bootstrap,
    load_bootstrap_hashed,
    parse_bootstrap,
)

V5_NAMES = ("sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable")
V6_NAME = "rafs-v6-2.2.boot"


@pytest.fixture(scope="module")
def v5_expected() -> dict:
    return json.loads((FIXTURES / "repeatable.expected.json").read_text())


@pytest.fixture(scope="module")
def v6_expected() -> dict:
    return json.loads((FIXTURES / "rafs-v6-2.2.expected.json").read_text())


@pytest.mark.parametrize("name", V5_NAMES)
def test_v5_fixtures(fixtures_dir: Path, v5_expected: dict, name: str) -> None:
    exp = v5_expected[name]
    path = fixtures_dir / name
    bs = load_bootstrap(path)
    assert bs.version == 5
    assert bs.flags == exp["superblock"]["flags"]
    assert bs.chunk_size == exp["superblock"]["block_size"]
    assert bs.digester == Digester.from_label(exp["digester"])
    assert bs.compressor == Compressor.from_label(exp["compressor"])
    # files written by nydus-image: node order == inode record index order
    by_index = sorted(exp["inodes_by_path"], key=lambda p: exp["inodes_by_path"][p]["index"])
    assert [n.path.decode() for n in bs.nodes] == by_index
    assert len(bs.chunks) == sum(len(v.get("chunks", [])) for v in exp["inodes_by_path"].values())
    assert [(b.blob_id, b.chunk_count, b.compressed_size) for b in bs.blobs] == [
        (b["blob_id"], b["ext_chunk_count"], b["ext_compressed_size"]) for b in exp["blob_table"]
    ]
    assert bootstrap_sha256(path) == exp["sha256_of_bootstrap"]
    assert parse_bootstrap(path.read_bytes(), str(path)).nodes[5].path == bs.nodes[5].path


def test_v6_fixture(fixtures_dir: Path, v6_expected: dict) -> None:
    path = fixtures_dir / V6_NAME
    bs = load_bootstrap(path)
    assert bs.version == 6
    assert bs.flags == int(v6_expected["ext_superblock"]["flags"], 16)
    assert bs.chunk_size == v6_expected["ext_superblock"]["chunk_size"]
    assert bs.compressor == Compressor.ZSTD and bs.digester == Digester.BLAKE3
    assert [n.path.decode() for n in bs.nodes] == [f["path"] for f in v6_expected["files"]]
    assert [b.blob_id for b in bs.blobs] == [b["blob_id"] for b in v6_expected["blob_table"]]
    assert len(bs.chunks) == sum(len(f["chunks"]) for f in v6_expected["files"])
    assert bootstrap_sha256(path) == v6_expected["bootstrap"]["sha256"]


def test_detect_version(fixtures_dir: Path) -> None:
    assert detect_version((fixtures_dir / V5_NAMES[0]).read_bytes()) == 5
    assert detect_version((fixtures_dir / V6_NAME).read_bytes()) == 6
    # v5 magic with another version is not v5; nydusd then probes v6
    data = bytearray((fixtures_dir / V6_NAME).read_bytes())
    data[0:8] = struct.pack("<II", 0x52414653, 0x400)
    assert detect_version(bytes(data)) == 6
    assert detect_version(b"") is None
    assert detect_version(bytes(8192)) is None


def test_too_small(tmp_path: Path, fixtures_dir: Path) -> None:
    small = tmp_path / "small.boot"
    small.write_bytes((fixtures_dir / V6_NAME).read_bytes()[:4096])
    with pytest.raises(RafsFormatError, match="at least 8192 bytes") as info:
        load_bootstrap(small)
    assert info.value.path == str(small)


def test_not_rafs(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + bytes(9000))
    with pytest.raises(RafsFormatError, match="not a RAFS v5/v6 bootstrap"):
        load_bootstrap(junk)


def test_too_large_is_refused_without_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.boot"
    with open(big, "wb") as f:
        f.truncate(MAX_BOOTSTRAP_SIZE + 8)  # sparse
    with pytest.raises(RafsFormatError, match="2 GiB"):
        load_bootstrap(big)


def test_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_bootstrap(tmp_path / "nope.boot")


def test_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RafsFormatError, match="not a regular file"):
        load_bootstrap(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(RafsFormatError, match="not a regular file"):  # and no hang waiting for a writer
        load_bootstrap(fifo)


def test_accepts_str_path(fixtures_dir: Path) -> None:
    assert load_bootstrap(str(fixtures_dir / V6_NAME)).version == 6


@pytest.mark.parametrize("name", [*V5_NAMES, V6_NAME])
def test_file_and_memory_parses_agree(fixtures_dir: Path, name: str) -> None:
    """load_bootstrap moves v5 chunk records within the file's buffer; parse_bootstrap copies them."""
    path = fixtures_dir / name
    from_file = load_bootstrap(path)
    data = path.read_bytes()
    from_bytes = parse_bootstrap(data, str(path))
    assert np.array_equal(from_file.chunks, from_bytes.chunks) and len(from_file.chunks) > 0
    assert [(n.path, n.chunk_start, n.chunk_count) for n in from_file.nodes] == [
        (n.path, n.chunk_start, n.chunk_count) for n in from_bytes.nodes
    ]
    assert path.read_bytes() == data  # parsing never writes to its input
    # The chunk array owns no more memory than its records, and can be edited like any array.
    assert from_file.chunks.base is None or from_file.chunks.base.nbytes == from_file.chunks.nbytes
    from_file.chunks["index"][0] += 1


@pytest.mark.parametrize("name", [*V5_NAMES, V6_NAME])
def test_hashed_load_hashes_the_file_as_it_was_read(fixtures_dir: Path, name: str) -> None:
    """The hash is taken before a v5 load moves the chunk records within the file's buffer."""
    path = fixtures_dir / name
    bs, sha = load_bootstrap_hashed(path)
    assert sha == bootstrap_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(bs.chunks, load_bootstrap(path).chunks)
