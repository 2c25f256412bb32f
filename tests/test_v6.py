"""RAFS v6 reader/writer: the nydus fixture against its oracle, byte-exact round trips, synthetic
images checked by fsck.erofs, corruptions and model refusals."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from helpers.erofs import check_v6_image
from nydus_compact.rafs import v6
from nydus_compact.rafs.blob_writer import BlobWriter
from nydus_compact.rafs.cache import materialize
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.errors import RafsFormatError
from nydus_compact.rafs.flags import SuperFlags, flags_for
from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node, expand_depth_first

BOOT = "rafs-v6-2.2.boot"


@pytest.fixture(scope="module")
def fixture_bytes() -> bytes:
    return (Path(__file__).parent / "fixtures" / "nydus" / BOOT).read_bytes()


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((Path(__file__).parent / "fixtures" / "nydus" / "rafs-v6-2.2.expected.json").read_text())


# ---------------------------------------------------------------------------------------
# The fixture against rafs-v6-2.2.expected.json


def test_fixture_superblocks_and_tables(fixture_bytes, expected):
    sb = v6.SUPERBLOCK.unpack_from(fixture_bytes, v6.RAFS_V6_SB_OFFSET)
    want = expected["superblock"]
    assert sb[:12] == (
        int(want["magic"], 16), want["checksum"], int(want["feature_compat"], 16), want["blkszbits"],
        want["extslots"], want["root_nid"], want["inos"], want["build_time"], want["build_time_nsec"],
        want["blocks"], want["meta_blkaddr"], want["xattr_blkaddr"],
    )  # fmt: skip
    assert sb[12].hex() == want["uuid"] and sb[13].hex() == want["volume_name"]
    assert sb[14:18] == (int(want["feature_incompat"], 16), want["s_u"], want["extra_devices"], want["devt_slotoff"])

    ext = v6.EXT_SUPERBLOCK.unpack_from(fixture_bytes, v6.EXT_OFFSET)
    w = expected["ext_superblock"]
    assert ext[:8] == (int(w["flags"], 16), w["blob_table_offset"], w["blob_table_size"], w["chunk_size"],
                       w["chunk_table_offset"], w["chunk_table_size"], w["prefetch_table_offset"],
                       w["prefetch_table_size"])  # fmt: skip

    for slot in expected["device_table"]:
        blob_id, blocks, mapped, _ = v6.DEVICE_SLOT.unpack_from(fixture_bytes, slot["offset"])
        assert (blob_id.decode(), blocks, mapped) == (slot["blob_id"], slot["blocks"], slot["mapped_blkaddr"])

    bs = v6.load(fixture_bytes, BOOT)
    assert bs.version == 6 and bs.flags == int(w["flags"], 16) and bs.chunk_size == w["chunk_size"]
    assert bs.prefetch == expected["prefetch_table"] == []
    assert bs.quirks == {"v6_mapped_blkaddr"}
    assert len(bs.blobs) == len(expected["blob_table"])
    for blob, b in zip(bs.blobs, expected["blob_table"]):
        assert blob == BlobInfo(
            blob_id=b["blob_id"], chunk_count=b["chunk_count"], compressed_size=b["compressed_size"],
            uncompressed_size=b["uncompressed_size"], features=int(b["features"], 16),
            compressor=Compressor(b["compression_algo"]), digester=Digester(b["digest_algo"]),
            chunk_size=b["chunk_size"], blob_toc_size=b["blob_toc_size"], ci_compressor=b["ci_compressor"],
            ci_offset=b["ci_offset"], ci_compressed_size=b["ci_compressed_size"],
            ci_uncompressed_size=b["ci_uncompressed_size"], blob_toc_digest=bytes.fromhex(b["blob_toc_digest"]),
            blob_meta_digest=bytes.fromhex(b["blob_meta_digest"]), blob_meta_size=b["blob_meta_size"],
        )  # fmt: skip

    table = np.frombuffer(fixture_bytes, CHUNK_DTYPE, w["chunk_table_size"] // 80, w["chunk_table_offset"])
    assert [_chunk_json(r) for r in table] == expected["chunk_table"]


def _chunk_json(r: np.void) -> dict:
    return {
        "digest": bytes(r["block_id"]).hex(),
        **{k: int(r[k]) for k in ("blob_index", "flags", "compressed_size", "uncompressed_size",
                                  "compressed_offset", "uncompressed_offset", "file_offset", "index")},
    }  # fmt: skip


def test_fixture_files_inodes_and_contents(fixture_bytes, expected, tmp_path):
    bs = v6.load(fixture_bytes, BOOT)
    nids = v6.node_nids(fixture_bytes, BOOT)
    meta = expected["superblock"]["meta_blkaddr"] * 4096
    caches = materialize(bs, Path(__file__).parent / "fixtures" / "nydus", tmp_path)
    cache = caches[0].read_bytes()
    by_path = {n.path.decode(): (pos, n) for pos, n in enumerate(bs.nodes)}
    assert sorted(by_path) == sorted(f["path"] for f in expected["files"])
    layouts = {"FLAT_PLAIN": 0, "FLAT_INLINE": 2, "CHUNK_BASED": 4}
    for f in expected["files"]:
        pos, node = by_path[f["path"]]
        assert nids[pos] == f["nid"]
        assert (node.mode, node.size, node.nlink, node.uid, node.gid, node.mtime, node.mtime_nsec) == (
            f["mode"], f["size"], f["nlink"], f["uid"], f["gid"], f["mtime"], f["mtime_nsec"])  # fmt: skip
        assert dict(node.xattrs) == f["xattrs"] and node.symlink == f["symlink_target"]
        ino = v6.INODE_EXTENDED.unpack_from(fixture_bytes, meta + f["nid"] * 32)
        assert f["inode_format"] == "extended" and ino[0] == 1 | layouts[f["data_layout"]] << 1
        assert (ino[5], ino[6]) == (int(f["i_u"], 16), f["i_ino"])
        if node.is_dir:
            names = {bs.nodes[c].name.decode(): nids[c] for c in node.children}
            want = {d["name"]: d["nid"] for d in f["dirents"] if d["name"] not in (".", "..")}
            assert names == want
            continue
        rows = bs.node_chunks(node)
        addr = np.frombuffer(fixture_bytes, v6.CHUNK_ADDR_DTYPE, len(rows), (meta + f["nid"] * 32 + 64 + 7) // 8 * 8)
        for r, a, c in zip(rows, addr, f["chunks"]):
            assert int(a["hi"]) & 0xFF == c["blob_index"] + 1 and int(a["lo"]) == c["blob_ci_index"]
            assert int(a["blk"]) == c["block_addr"]
            assert (int(r["blob_index"]), int(r["index"]), int(r["compressed_offset"]), int(r["compressed_size"]),
                    int(r["uncompressed_offset"]), int(r["uncompressed_size"]), bool(r["flags"] & 1),
                    int(r["file_offset"]), bytes(r["block_id"]).hex()) == (
                c["blob_index"], c["blob_ci_index"], c["compressed_offset"], c["compressed_size"],
                c["uncompressed_offset"], c["uncompressed_size"], c["compressed"], c["file_offset"],
                c["digest"])  # fmt: skip
        content = b"".join(
            cache[int(r["uncompressed_offset"]) : int(r["uncompressed_offset"]) + int(r["uncompressed_size"])]
            for r in rows
        )
        assert hashlib.sha256(content).hexdigest() == f["sha256"]


def test_fixture_passes_fsck_erofs(fixtures_dir, tmp_path):
    check_v6_image(fixtures_dir / BOOT, fixtures_dir, None, tmp_path)


def test_fixture_round_trip_with_and_without_quirk(fixture_bytes):
    bs = v6.load(fixture_bytes, BOOT)
    assert v6.dump(bs) == fixture_bytes
    bs.quirks = frozenset()
    out = v6.dump(bs)
    diff = [(i, fixture_bytes[i], out[i]) for i in range(len(out)) if out[i] != fixture_bytes[i]]
    assert len(out) == len(fixture_bytes) and diff == [(0x5C5, 0x02, 0x00)]
    assert v6.load(out, "v2.2.0").quirks == frozenset()


# ---------------------------------------------------------------------------------------
# Synthetic images from a real directory tree


@dataclass(frozen=True)
class Options:
    compressor: Compressor
    digester: Digester
    chunk_size: int
    ci_v2: bool
    toc: bool
    nblobs: int


def make_tree(root: Path) -> None:
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello world\n" * 200)
    (root / "empty").write_bytes(b"")
    big = np.random.default_rng(7).integers(0, 256, 2_113_152, dtype=np.uint8).tobytes()
    (root / "big.bin").write_bytes(big)  # > 2 chunks at 1 MiB: the contiguity trick (§13.1)
    (root / "zeros.bin").write_bytes(bytes(0x200000) + b"tail")  # repeated chunks: dedup'd, not contiguous
    (root / "copy.txt").write_bytes(b"hello world\n" * 200)  # dedup'd with hello.txt
    os.link(root / "hello.txt", root / "hardlink.txt")
    os.symlink("hello.txt", root / "short-link")
    os.symlink("x" * 4050, root / "long-link")  # inode + target > 4096: FLAT_PLAIN symlink
    os.mkfifo(root / "fifo")
    (root / "empty-dir").mkdir()
    many = root / "many"
    many.mkdir()
    for name in ("!bang", "#hash", "-dash", "+plus", " space"):  # sort before "." and ".."
        (many / name).write_bytes(name.encode())
    for i in range(320):
        (many / f"entry-with-a-longish-name-{i:04d}").write_bytes(b"" if i % 3 else f"file {i}\n".encode() * 50)
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "deep.txt").write_bytes(b"deep\n" * 1000)
    (root / "a" / "sibling").write_bytes(b"sibling data")
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789 + len(p.name)))


def build_image(tree: Path, blobs_dir: Path, opts: Options, xattrs: dict[bytes, list] | None = None) -> Bootstrap:
    """A minimal directory builder: nodes in §16.1 order, chunks written with BlobWriter."""
    blobs_dir.mkdir(exist_ok=True)
    files = [open(blobs_dir / f"tmp-{i}", "w+b") for i in range(opts.nblobs)]
    writers = [
        BlobWriter(f, version=6, compressor=opts.compressor, digester=opts.digester, chunk_size=opts.chunk_size,
                   ci_v2=opts.ci_v2, with_toc=opts.toc)  # fmt: skip
        for f in files
    ]
    st = tree.lstat()
    nodes = [Node(name=b"/", path=b"/", mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, link=0)]
    records: list[tuple] = []
    dedup: dict[tuple[bytes, int], tuple] = {}
    links: dict[tuple[int, int], int] = {}
    data_files = 0

    def add_file(node: Node, pos: int, data: bytes) -> None:
        nonlocal data_files
        blob = data_files % opts.nblobs
        data_files += 1
        node.chunk_start, node.chunk_count = len(records), 0
        for k in range(0, len(data), opts.chunk_size):
            piece = data[k : k + opts.chunk_size]
            key = (digest(opts.digester, piece), len(piece))
            if key not in dedup:
                w = writers[blob].add_raw_chunk(piece)
                dedup[key] = (w.digest, blob, 1 if w.compressed else 0, w.compressed_size, w.uncompressed_size,
                              w.compressed_offset, w.uncompressed_offset, w.index)  # fmt: skip
            d = dedup[key]
            records.append((d[0], d[1], d[2], d[3], d[4], d[5], d[6], k, d[7], 0))
            node.chunk_count += 1

    def expand(pos: int) -> list[int]:
        base = tree / os.fsdecode(nodes[pos].path.lstrip(b"/"))
        subdirs = []
        for name in sorted(os.listdir(os.fsencode(base))):
            p = base / os.fsdecode(name)
            s = p.lstat()
            child_pos = len(nodes)
            node = Node(
                name=name, path=(nodes[pos].path if pos else b"") + b"/" + name, mode=s.st_mode, uid=s.st_uid,
                gid=s.st_gid, mtime=s.st_mtime_ns // 10**9, mtime_nsec=s.st_mtime_ns % 10**9, nlink=s.st_nlink,
                parent=pos, link=child_pos,
            )  # fmt: skip
            if stat.S_ISREG(s.st_mode):
                node.size = s.st_size
                first = links.get((s.st_dev, s.st_ino))
                if first is not None:
                    head = nodes[first]
                    node.link, node.chunk_start, node.chunk_count = first, head.chunk_start, head.chunk_count
                else:
                    links[(s.st_dev, s.st_ino)] = child_pos
                    add_file(node, child_pos, p.read_bytes())
            elif stat.S_ISLNK(s.st_mode):
                node.symlink = os.readlink(os.fsencode(p))
                node.size = len(node.symlink)
            elif stat.S_ISDIR(s.st_mode):
                subdirs.append(child_pos)
            else:
                node.rdev = s.st_rdev
            node.xattrs = list((xattrs or {}).get(node.path, []))
            nodes.append(node)
            nodes[pos].children.append(child_pos)
        return subdirs

    expand_depth_first(expand)
    nodes[0].xattrs = list((xattrs or {}).get(b"/", []))

    blobs = []
    for f, w in zip(files, writers):
        info = w.finish()
        f.close()
        os.replace(f.name, blobs_dir / info.blob_id)
        blobs.append(info)
    return Bootstrap(
        version=6,
        flags=flags_for(opts.compressor, opts.digester) | SuperFlags.EXPLICIT_UID_GID,
        chunk_size=opts.chunk_size,
        blobs=blobs,
        nodes=nodes,
        chunks=np.array(records, dtype=CHUNK_DTYPE),
    )


def _node_facts(node: Node) -> tuple:
    facts = astuple(replace(node, children=sorted(node.children)))
    if node.is_dir:  # dump computes these (§12.4, §8.5)
        return facts[:7] + facts[8:9] + facts[10:]
    return facts


COMBOS = [
    pytest.param(Options(Compressor.ZSTD, Digester.BLAKE3, 0x100000, False, True, 2), id="zstd-blake3-v1-toc-1M"),
    pytest.param(Options(Compressor.LZ4_BLOCK, Digester.SHA256, 0x10000, True, False, 3), id="lz4-sha256-v2-64K"),
    pytest.param(Options(Compressor.NONE, Digester.BLAKE3, 0x10000, True, True, 1), id="none-blake3-v2-toc-64K"),
]


@pytest.mark.parametrize("opts", COMBOS)
def test_synthetic_image_round_trips_and_passes_fsck(opts, tmp_path):
    tree = tmp_path / "tree"
    make_tree(tree)
    xattrs = {
        b"/hello.txt": [(b"user.color", b"blue"), (b"trusted.note", b"")],
        b"/hardlink.txt": [(b"user.color", b"blue"), (b"trusted.note", b"")],
        b"/a": [(b"user.big", b"v" * 4000)],  # inode + xattrs + tail > 4096: FLAT_PLAIN directory
        b"/": [(b"security.label", b"root")],
    }
    bs = build_image(tree, tmp_path / "blobs", opts, xattrs)
    by_path = {n.path: pos for pos, n in enumerate(bs.nodes)}
    bs.prefetch = [by_path[b"/big.bin"], None, by_path[b"/a/b"]]
    data = v6.dump(bs)
    (tmp_path / "image.boot").write_bytes(data)

    loaded = v6.load(data, "image.boot")
    assert [_node_facts(n) for n in loaded.nodes] == [_node_facts(n) for n in bs.nodes]
    assert loaded.blobs == bs.blobs and loaded.prefetch == bs.prefetch
    assert loaded.chunks.tobytes() == bs.chunks.tobytes()
    assert loaded.flags == bs.flags | SuperFlags.HAS_XATTR | (SuperFlags.INLINED_CHUNK_DIGEST if opts.toc else 0)
    assert v6.dump(loaded) == data

    check_v6_image(tmp_path / "image.boot", tmp_path / "blobs", tree, tmp_path, all_mtimes=True)
    _assert_layouts(data, loaded, opts)
    # Negative control: the helper notices a source that no longer matches the image.
    (tree / "a" / "sibling").write_bytes(b"sibling dat4")
    with pytest.raises(AssertionError, match="a/sibling"):
        check_v6_image(tmp_path / "image.boot", tmp_path / "blobs", tree, tmp_path)


def _assert_layouts(data: bytes, bs: Bootstrap, opts: Options) -> None:
    """The image really exercises the layouts the test names."""
    nids = v6.node_nids(data, "image.boot")
    meta = v6.SUPERBLOCK.unpack_from(data, v6.RAFS_V6_SB_OFFSET).s_meta_blkaddr * v6.BLOCK_SIZE
    inode = {n.path: v6.INODE_EXTENDED.unpack_from(data, meta + nid * 32) for n, nid in zip(bs.nodes, nids)}
    by_path = {n.path: n for n in bs.nodes}
    assert inode[b"/long-link"][0] == 1 and inode[b"/short-link"][0] == 5  # FLAT_PLAIN vs FLAT_INLINE
    assert inode[b"/a"][0] == 1 and inode[b"/fifo"][0] == 1
    assert by_path[b"/many"].size > 8192  # three dirent blocks
    assert nids[bs.nodes.index(by_path[b"/hardlink.txt"])] == nids[bs.nodes.index(by_path[b"/hello.txt"])]
    assert inode[b"/hello.txt"][11] == 2  # i_nlink of the shared inode
    # 2,113,152 contiguous bytes in one blob: one 4 MiB "chunk" for the kernel (§13.1)
    assert inode[b"/big.bin"][5] == 0x20 | (22 - 12)
    zeros = bs.node_chunks(by_path[b"/zeros.bin"])
    assert len(set(zeros["index"].tolist())) < len(zeros)  # dedup inside the file
    assert inode[b"/zeros.bin"][5] == 0x20 | (opts.chunk_size.bit_length() - 1 - 12)
    assert len(bs.blobs) == opts.nblobs


# ---------------------------------------------------------------------------------------
# Corruptions and refusals


def _patch(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw) :]


CORRUPTIONS = [
    ("too-small", "nydusd needs at least", lambda d: d[:4096]),
    ("size-multiple", "file size is not a multiple of 4096", lambda d: d + b"\0" * 100),
    ("checksum", "s_checksum must be 0", lambda d: _patch(d, 0x404, b"\x01")),
    ("incompat", "s_feature_incompat", lambda d: _patch(d, 0x450, b"\x0d")),
    ("chunk-size", "chunk size 0xbb8 invalid", lambda d: _patch(d, 0x494, (3000).to_bytes(4, "little"))),
    ("super-flags", "unknown superblock flags", lambda d: _patch(d, 0x481, b"\x03")),
    ("blob-index", "blob_index differs from its position", lambda d: _patch(d, 0x1000 + 64, b"\x01")),
    ("aligned", "blob lacks the ALIGNED feature", lambda d: _patch(d, 0x1000 + 84, b"\x20")),
    ("inode-outside", "outside the file", lambda d: _patch(d, 0x40E, b"\xff\xff")),
    ("i_format", "i_format", lambda d: _patch(d, 0x3000, b"\x15")),
    ("dirent", "e_nameoff", lambda d: _patch(d, 0x3040 + 8, b"\x0d")),
    ("device-id", "chunk address with device id", lambda d: _patch(d, 0x3000 + 133 * 32 - 128 * 32 + 64 + 2, b"\x02")),
    ("chunk-table", "has no chunk-table entry", lambda d: _patch(d, 0x4A0, (80).to_bytes(8, "little"))),
]


@pytest.mark.parametrize(("name", "says", "corrupt"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corruptions_name_the_check(fixture_bytes, name, says, corrupt):
    with pytest.raises(RafsFormatError) as err:
        v6.load(corrupt(fixture_bytes), "bad.boot")
    assert err.value.path == "bad.boot" and says in err.value.check, err.value.check
    assert "§" not in str(err.value)


def _tiny_model() -> Bootstrap:
    root = Node(name=b"/", path=b"/", mode=0o40755, children=[1], link=0)
    sub = Node(name=b"a", path=b"/a", mode=0o40755, parent=0, link=1)
    flags = flags_for(Compressor.ZSTD, Digester.BLAKE3)
    return Bootstrap(version=6, flags=flags, chunk_size=0x100000, blobs=[], nodes=[root, sub],
                     chunks=np.zeros(0, CHUNK_DTYPE))  # fmt: skip


def test_image_without_blobs_and_directory_cycle():
    data = v6.dump(_tiny_model())
    assert len(data) == 8192
    bs = v6.load(data, "tiny")
    assert [n.path for n in bs.nodes] == [b"/", b"/a"] and bs.blobs == []
    # Point the root's dirent for "a" back at the root: a cycle must fail, not hang.
    nids = v6.node_nids(data, "tiny")
    needle = v6.DIRENT.pack(nids[1], 0, 2, 0)[:8]
    at = data.index(needle, 4096)
    with pytest.raises(RafsFormatError, match="reachable twice"):
        v6.load(_patch(data, at, (128).to_bytes(8, "little")), "cycle")


def _blob(i: int) -> BlobInfo:
    return BlobInfo(blob_id=f"{i:064x}", chunk_count=1, compressed_size=10, uncompressed_size=4096,
                    features=0x4000_0001, compressor=Compressor.ZSTD, digester=Digester.BLAKE3,
                    chunk_size=0x100000)  # fmt: skip


def test_dump_refuses_what_v6_cannot_hold():
    bs = _tiny_model()
    bs.blobs = [_blob(i) for i in range(256)]
    with pytest.raises(RafsFormatError, match="at most 255") as err:
        v6.dump(bs)
    assert err.value.path == "<model>"

    bs = _tiny_model()
    bs.nodes[1].name = b"n" * 256
    with pytest.raises(RafsFormatError, match="1..255 bytes"):
        v6.dump(bs)

    bs = _tiny_model()
    bs.blobs = [_blob(0)]
    bs.nodes.append(Node(name=b"f", path=b"/f", mode=0o100644, size=5, parent=0, link=2, chunk_count=1))
    bs.nodes[0].children.append(2)
    bs.chunks = np.zeros(1, CHUNK_DTYPE)
    bs.chunks["index"] = 1 << 24
    with pytest.raises(RafsFormatError, match="2\\^24"):
        v6.dump(bs)

    bs.chunks["index"] = 0
    bs.nodes[1].xattrs = [(b"system.posix_acl_access", b"x")]
    with pytest.raises(RafsFormatError, match="cannot be stored"):
        v6.dump(bs)


# ---------------------------------------------------------------------------------------
# The chunk-info table dump writes (§14): one record per (digest, blob), last insertion wins


def _files_model(records: list[list[tuple]]) -> Bootstrap:
    """Root with files f0, f1, ...; file k holds the chunk records ``records[k]`` (digest byte, blob, index)."""
    cs = 0x1000
    nodes = [Node(name=b"/", path=b"/", mode=0o40755, link=0)]
    rows = []
    for k, recs in enumerate(records):
        pos = len(nodes)
        nodes.append(Node(name=b"f%d" % k, path=b"/f%d" % k, mode=0o100644, size=cs * len(recs), parent=0, link=pos,
                          chunk_start=len(rows), chunk_count=len(recs)))  # fmt: skip
        nodes[0].children.append(pos)
        for j, (d, blob, index) in enumerate(recs):
            rows.append((bytes([d]) * 32, blob, 0, 100, cs, 100 * index, cs * index, cs * j, index, 0))
    blobs = [replace(_blob(i), chunk_count=8, uncompressed_size=8 * 4096, chunk_size=cs) for i in range(2)]
    flags = flags_for(Compressor.ZSTD, Digester.BLAKE3)
    return Bootstrap(6, flags, cs, blobs, nodes, np.array(rows, dtype=CHUNK_DTYPE))


def _table_in(data: bytes) -> np.ndarray:
    ext = v6.EXT_SUPERBLOCK.unpack_from(data, v6.EXT_OFFSET)
    return np.frombuffer(data, dtype=CHUNK_DTYPE, count=ext.s_chunk_table_size // v6.CHUNK_INFO_SIZE, offset=ext.s_chunk_table_offset)


def _reference_table(bs: Bootstrap) -> list[bytes]:
    last: dict[tuple[bytes, int], np.void] = {}
    for node in bs.nodes:
        for rec in bs.node_chunks(node):
            last[(bytes(rec["block_id"]), int(rec["blob_index"]))] = rec
    return [last[key].tobytes() for key in sorted(last)]


@pytest.mark.parametrize(
    "records",
    [
        # shared chunks: f1 repeats f0's second chunk first, so its file_offset must win
        [[(9, 0, 0), (3, 0, 1)], [(3, 0, 1), (5, 1, 0)], [(9, 0, 0)]],
        # one digest in two blobs: two entries
        [[(4, 0, 2)], [(4, 1, 2)], [(4, 0, 2)]],
        # one (blob, index) under two digests: the model is odd, each digest still gets its entry
        [[(7, 0, 3)], [(2, 0, 3)], [(7, 0, 3), (2, 0, 3)]],
    ],
    ids=["dedup", "digest-in-two-blobs", "index-under-two-digests"],
)
def test_chunk_table_has_the_last_record_of_each_digest_and_blob(records):
    bs = _files_model(records)
    table = _table_in(bytes(v6.dump(bs)))
    assert [r.tobytes() for r in table] == _reference_table(bs)


def test_chunk_table_refuses_a_digest_at_two_indexes_of_one_blob():
    bs = _files_model([[(6, 1, 0)], [(6, 1, 1)]])
    with pytest.raises(RafsFormatError, match=f"digest {'06' * 32} sits at two locations in blob 1"):
        v6.dump(bs)


def test_on_disk_records_are_packed_by_name_and_refuse_a_missing_field():
    entry = v6.BLOB_ENTRY.unpack_from(v6.BLOB_ENTRY.pack(**{**dict.fromkeys(v6.BLOB_ENTRY.fields[1:-1], 7),
                                                            "blob_id": b"a" * 64, "blob_toc_digest": bytes(32),
                                                            "blob_meta_digest": bytes(32)}))
    assert entry.blob_id == b"a" * 64 and entry.blob_meta_size == 7 and entry.reserved2 == bytes(48)
    with pytest.raises(TypeError, match="missing fields \\['blocks'\\]"):
        v6.DEVICE_SLOT.pack(blob_id=b"x", mapped_blkaddr=0)
