"""rafs.blob.ChunkSource on the real fixture blobs: file contents, verification, damage detection."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.rafs.blob import ChunkSource, distinct_chunks
from nydus_compact.rafs.errors import BlobDataError
from nydus_compact.rafs.flags import ChunkFlags, SuperFlags
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.rafs.model import Bootstrap

V5_NAMES = ("sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable")
V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
V6_BLOB = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
LZ4_BLOB = "d7b86b1e74e316fe945741d1a9fa1b271459fe41481e304977659e0c6ecf56ac"
V6_NAME = "rafs-v6-2.2.boot"
ALL_BOOTSTRAPS = (*V5_NAMES, V6_NAME)


def _tree_md5() -> dict[str, str]:
    # repeatable.tree.json = `tree -J` output followed by `md5sum` lines.
    text = (FIXTURES / "repeatable.tree.json").read_text()
    listing_end = text.index("\n]\n") + 3
    json.loads(text[:listing_end])
    out = {}
    for line in text[listing_end:].splitlines():
        md5, path = line.split(None, 1)
        out[path] = md5
    return out


def _paths(bs: Bootstrap) -> dict[str, int]:
    return {n.path.decode(): i for i, n in enumerate(bs.nodes)}


def _blobs_copy(tmp_path: Path, blob_id: str) -> Path:
    d = tmp_path / "blobs"
    d.mkdir(exist_ok=True)
    shutil.copyfile(FIXTURES / blob_id, d / blob_id)
    return d


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", V5_NAMES)
def test_v5_files_match_oracles(name: str) -> None:
    expected = json.loads((FIXTURES / "repeatable.expected.json").read_text())[name]["inodes_by_path"]
    md5s = _tree_md5()
    bs = load_bootstrap(FIXTURES / name)
    seen = 0
    with LocalFsBackend(dir=FIXTURES) as backend:
        source = ChunkSource(bs, backend)
        for node in bs.nodes:
            if not node.is_reg:
                continue
            path = node.path.decode()
            data = source.read_file(node)
            assert len(data) == expected[path]["size"] == node.size
            assert hashlib.sha256(data).hexdigest() == expected[path]["sha256"], path
            assert hashlib.md5(data).hexdigest() == md5s[path], path
            seen += 1
    assert seen == len(md5s) == 23


def test_v6_files_match_oracle() -> None:
    expected = json.loads((FIXTURES / "rafs-v6-2.2.expected.json").read_text())["files"]
    bs = load_bootstrap(FIXTURES / V6_NAME)
    paths = _paths(bs)
    files = [f for f in expected if f["type"] == "file"]
    assert len(files) == 2
    with LocalFsBackend(dir=FIXTURES) as backend:
        source = ChunkSource(bs, backend)
        for f in files:
            data = source.read_file(bs.nodes[paths[f["path"]]])
            assert len(data) == f["size"]
            assert hashlib.sha256(data).hexdigest() == f["sha256"]


@pytest.mark.parametrize("name", ALL_BOOTSTRAPS)
def test_verify_passes_on_fixtures(name: str) -> None:
    bs = load_bootstrap(FIXTURES / name)
    with LocalFsBackend(dir=FIXTURES) as backend:
        source = ChunkSource(bs, backend)
        assert source.verify() == []
    distinct = len(distinct_chunks(bs.chunks))
    assert source.stats.checked == source.stats.distinct == distinct
    assert distinct == (23 if name in V5_NAMES else 2)


def test_v5_flipped_byte_fails_naming_chunk(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V5_NAMES[0])
    node = bs.nodes[_paths(bs)["/normal-file-test/busybox/manifest.json"]]
    (row,) = bs.node_chunks(node)
    blobs = _blobs_copy(tmp_path, V5_BLOB)
    _flip(blobs / V5_BLOB, int(row["compressed_offset"]) + 17)
    with LocalFsBackend(dir=blobs) as backend:
        source = ChunkSource(bs, backend)
        problems = source.verify()
        assert len(problems) == 1
        assert V5_BLOB in problems[0]
        assert f"chunk {int(row['index'])} at offset {int(row['compressed_offset'])}" in problems[0]
        assert "digest mismatch" in problems[0]
        assert "/normal-file-test/busybox/manifest.json" in problems[0]
        with pytest.raises(BlobDataError, match=f"chunk {int(row['index'])} "):
            source.read_file(node)
        # other files are unaffected
        other = bs.nodes[_paths(bs)["/hardlink-test/foo"]]
        assert len(source.read_file(other)) == 944


def test_v6_flipped_data_byte_fails_naming_chunk(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V6_NAME)
    blobs = _blobs_copy(tmp_path, V6_BLOB)
    _flip(blobs / V6_BLOB, 4828 + 100)  # inside chunk ci 1 (sync_io.rs, zstd)
    with LocalFsBackend(dir=blobs) as backend:
        problems = ChunkSource(bs, backend).verify()
    assert len(problems) == 1
    assert f"{V6_BLOB}: chunk 1 at offset 4828" in problems[0]
    assert "/sync_io.rs" in problems[0]


@pytest.mark.parametrize(
    ("offset", "complaint"),
    [
        (8314 + 3, "ci entry 0"),  # ci array
        (8346 + 12, "blob meta header"),  # s_ci_entries
        (12954 + 5, "blob.digest sha256 mismatch"),  # chunk digest array
        (14000, "ToC sha256 differs"),  # ToC entries
    ],
)
def test_v6_flipped_meta_byte_fails(tmp_path: Path, offset: int, complaint: str) -> None:
    bs = load_bootstrap(FIXTURES / V6_NAME)
    blobs = _blobs_copy(tmp_path, V6_BLOB)
    _flip(blobs / V6_BLOB, offset)
    with LocalFsBackend(dir=blobs) as backend:
        problems = ChunkSource(bs, backend).verify()
    assert len(problems) == 1
    assert problems[0].startswith(f"{V6_BLOB}: ") and complaint in problems[0]


def test_v6_chunk_location_must_match_ci(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V6_NAME)
    # Swap the ci indexes of the two chunks: the data still decodes, the ci cross-check must object.
    bs.chunks["index"] = 1 - bs.chunks["index"]
    with LocalFsBackend(dir=FIXTURES) as backend:
        problems = ChunkSource(bs, backend).verify()
    assert len(problems) == 2
    assert all("disagrees with the blob meta" in p for p in problems)


def test_truncated_blob(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V5_NAMES[0])
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / V5_BLOB).write_bytes((FIXTURES / V5_BLOB).read_bytes()[:3_000_000])
    tail = bs.nodes[_paths(bs)["/normal-file-test/holefiles/tail-hole-5000"]]
    with LocalFsBackend(dir=blobs) as backend:
        source = ChunkSource(bs, backend)
        problems = source.verify()
        # The blob itself is named first (shorter than its table entry), then every chunk cut off.
        assert problems[0] == f"blob [0] {V5_BLOB}: 3000000 bytes, the blob table says 3508766: the blob file is truncated"
        cut = problems[1:]
        assert cut and all("ends past the blob's 3000000 bytes" in p for p in cut)
        assert source.stats.checked == 23 - len(cut)
        with pytest.raises(BlobDataError, match="ends past"):
            source.read_file(tail)


def test_missing_blob_is_a_problem(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V5_NAMES[0])
    with LocalFsBackend(dir=tmp_path) as backend:
        problems = ChunkSource(bs, backend).verify()
    assert problems == [f"blob {V5_BLOB} not found in {tmp_path}"]


def test_problem_limit(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V5_NAMES[0])
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / V5_BLOB).write_bytes(bytes((FIXTURES / V5_BLOB).stat().st_size))
    with LocalFsBackend(dir=blobs) as backend:
        problems = ChunkSource(bs, backend).verify(limit=5)
    # 22 of the 23 chunks fail: chunk 13 is a MiB of zeros (the hole files) and still matches.
    assert len(problems) == 6
    assert problems[-1] == "... and 17 more problems"


def test_read_chunks_coalesces_and_reports_positions() -> None:
    bs = load_bootstrap(FIXTURES / V5_NAMES[0])
    rows = bs.chunks[distinct_chunks(bs.chunks)][::-1]
    calls: list[tuple[int, int]] = []

    class Counting(LocalFsBackend):
        def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
            calls.append((offset, size))
            return super().read_exact(blob_id, offset, size)

    blob = (FIXTURES / V5_BLOB).read_bytes()
    with Counting(dir=FIXTURES) as backend:
        got = dict(ChunkSource(bs, backend).read_chunks(rows))
    assert sorted(got) == list(range(len(rows)))
    for i, data in got.items():
        off = int(rows[i]["compressed_offset"])
        assert data == blob[off : off + int(rows[i]["uncompressed_size"])]
    assert calls == [(0, len(blob))]  # 23 back-to-back chunks, one read


def test_lz4_chunks_of_the_orphan_blob_decode() -> None:
    # The 2020 lz4 blob holds the same tree; its first chunk (hardlink-test/foo) is lz4 at 0..778.
    bs = load_bootstrap(FIXTURES / "blake3-lz4_block-non_repeatable")
    bs.flags = (bs.flags & ~SuperFlags.COMPRESSION_NONE) | SuperFlags.COMPRESSION_LZ4
    bs.blobs = [dataclasses.replace(bs.blobs[0], blob_id=LZ4_BLOB)]
    node = bs.nodes[_paths(bs)["/hardlink-test/foo"]]
    row = bs.chunks[node.chunk_start]
    row["flags"] = ChunkFlags.COMPRESSED
    row["compressed_size"] = 778
    bs.chunks[node.chunk_start] = row
    expected = json.loads((FIXTURES / "repeatable.expected.json").read_text())
    with LocalFsBackend(dir=FIXTURES) as backend:
        data = ChunkSource(bs, backend).read_file(node)
    sha = expected["blake3-lz4_block-non_repeatable"]["inodes_by_path"]["/hardlink-test/foo"]["sha256"]
    assert hashlib.sha256(data).hexdigest() == sha


def test_lz4_blob_is_not_referenced() -> None:
    assert (FIXTURES / LZ4_BLOB).stat().st_size == 994935
    for name in ALL_BOOTSTRAPS:
        assert LZ4_BLOB not in {b.blob_id for b in load_bootstrap(FIXTURES / name).blobs}


def test_hole_between_chunks_reads_as_zeros(tmp_path: Path) -> None:
    bs = load_bootstrap(FIXTURES / V5_NAMES[0])
    node = bs.nodes[_paths(bs)["/normal-file-test/holefiles/head-hole-1"]]
    with LocalFsBackend(dir=FIXTURES) as backend:
        whole = ChunkSource(bs, backend).read_file(node)
        # Drop the middle chunk (an all-zero MiB): the reader must fill the gap with zeros.
        assert len(whole) == node.size and not whole[1 << 20 : 2 << 20].strip(b"\0")
        bs.chunks = np.concatenate([bs.chunks[: node.chunk_start + 1], bs.chunks[node.chunk_start + 2 :]])
        node.chunk_count -= 1
        assert ChunkSource(bs, backend).read_file(node) == whole
