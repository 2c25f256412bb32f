"""RAFS v5 reader/writer (rafs/v5.py) against the nydus-image fixtures, their oracle and hand-built models."""

from __future__ import annotations

import hashlib
import json
import random
import re
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.rafs import v5
from nydus_compact.rafs.compression import Compressor, decompress
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.errors import RafsFormatError, UnsupportedLayoutError
from nydus_compact.rafs.flags import ChunkFlags, SuperFlags, flags_for
from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node

V5_FIXTURES = ["sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable"]
BLOB_ID = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"

# Byte offsets of RafsV5Inode fields (rafs-v5.md §7.1), for corrupting records.
I_PARENT, I_INO, I_MODE, I_SIZE, I_NLINK, I_CHILD_INDEX, I_CHILD_COUNT, I_NAME_SIZE = 32, 40, 60, 64, 88, 92, 96, 100


@pytest.fixture(scope="module")
def oracle() -> dict:
    return json.loads((Path(__file__).parent / "fixtures" / "nydus" / "repeatable.expected.json").read_text())


def _read(fixtures_dir: Path, name: str) -> bytes:
    return (fixtures_dir / name).read_bytes()


def _by_path(bs: Bootstrap) -> dict[bytes, int]:
    return {node.path: pos for pos, node in enumerate(bs.nodes)}


def _type(node: Node) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}[stat.S_IFMT(node.mode)]


def _record_offset(data: bytes, index: int) -> int:
    (value,) = struct.unpack_from("<I", data, 8192 + 4 * (index - 1))
    return value << 3


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Fixtures vs oracle


@pytest.mark.parametrize("name", V5_FIXTURES)
def test_superblock_tables_and_blobs_match_oracle(fixtures_dir, oracle, name):
    data = _read(fixtures_dir, name)
    want = oracle[name]
    bs = v5.load(data, name)
    out = v5.dump(bs)
    sb = v5.SuperBlock(*v5.SUPERBLOCK.unpack_from(out, 0))
    osb = want["superblock"]
    assert (sb.s_magic, sb.s_fs_version, sb.s_sb_size) == (osb["magic"], osb["version"], osb["sb_size"])
    assert (sb.s_block_size, sb.s_flags, sb.s_inodes_count) == (osb["block_size"], osb["flags"], osb["inodes_count"])
    for key in (
        "inode_table_offset",
        "prefetch_table_offset",
        "blob_table_offset",
        "inode_table_entries",
        "prefetch_table_entries",
        "blob_table_size",
        "extended_blob_table_entries",
        "extended_blob_table_offset",
    ):
        assert getattr(sb, "s_" + key) == osb[key], key
    assert len(out) == want["file_size"]
    table = [_record_offset(out, i) for i in range(1, sb.s_inode_table_entries + 1)]
    assert table == want["inode_table"]

    assert bs.version == 5 and bs.flags == osb["flags"] and bs.chunk_size == osb["block_size"]
    assert bs.compressor.label == want["compressor"] and bs.digester.label == want["digester"]
    assert bs.prefetch == want["prefetch_table"] == []
    assert len(bs.blobs) == len(want["blob_table"])
    for blob, ob in zip(bs.blobs, want["blob_table"]):
        assert blob.blob_id == ob["blob_id"]
        assert (blob.readahead_offset, blob.readahead_size) == (ob["readahead_offset"], ob["readahead_size"])
        assert blob.chunk_count == ob["ext_chunk_count"] and blob.features == ob["ext_features"]
        assert blob.uncompressed_size == ob["ext_uncompressed_size"]
        assert blob.compressed_size == ob["ext_compressed_size"]
        assert blob.chunk_size == bs.chunk_size
        assert (blob.compressor, blob.digester) == (bs.compressor, bs.digester)


@pytest.mark.parametrize("name", V5_FIXTURES)
def test_every_inode_matches_oracle(fixtures_dir, oracle, name):
    data = _read(fixtures_dir, name)
    bs = v5.load(data, name)
    inodes = oracle[name]["inodes_by_path"]
    pos_of = _by_path(bs)
    assert set(pos_of) == {p.encode() for p in inodes}
    out = v5.dump(bs)
    for path, want in inodes.items():
        pos = pos_of[path.encode()]
        node = bs.nodes[pos]
        # Model fields (the reader).
        assert _type(node) == want["type"], path
        assert pos + 1 == want["index"], path  # builder files: node order == record index order
        # i_ino is the index of the first name; the model links every name to that node.
        assert (node.link if node.is_reg else pos) + 1 == want["ino"], path
        assert node.parent + 1 == want["parent"], path
        assert (node.mode, node.size, node.nlink) == (want["mode"], want["size"], want["nlink"]), path
        assert (node.uid, node.gid) == (want["uid"], want["gid"]), path
        assert (node.mtime, node.mtime_nsec) == (want["mtime"], want["mtime_nsec"]), path
        assert node.v5_flags == want["flags"], path
        assert node.digest.hex() == want["inode_digest"], path
        assert node.name == (b"/" if path == "/" else path.rsplit("/", 1)[1].encode())
        if node.is_dir:
            assert len(node.children) == want["child_count"], path
            if node.children:
                first = want["child_index"] - 1
                assert node.children == list(range(first, first + want["child_count"])), path
        if node.is_symlink:
            assert node.symlink == want["symlink"].encode(), path
        else:
            assert node.symlink is None
        assert node.xattrs == []
        chunks = bs.node_chunks(node)
        assert len(chunks) == len(want.get("chunks", [])), path
        for chunk, wc in zip(chunks, want.get("chunks", [])):
            assert bytes(chunk["block_id"]).hex() == wc["digest"]
            assert bool(chunk["flags"] & ChunkFlags.COMPRESSED) == wc["compressed"]
            for key in (
                "blob_index",
                "flags",
                "compressed_offset",
                "compressed_size",
                "uncompressed_offset",
                "uncompressed_size",
                "file_offset",
                "index",
            ):
                assert int(chunk[key]) == wc[key], (path, key)
            assert int(chunk["reserved"]) == 0

        # Record header as written back (the writer's recomputed fields).
        h = v5.INODE.unpack_from(out, oracle[name]["inode_table"][want["index"] - 1])
        (i_digest, i_parent, i_ino, i_uid, i_gid, _, i_mode, i_size, i_blocks, i_flags, i_nlink, ci, cc) = h[:13]
        assert i_digest.hex() == want["inode_digest"]
        assert (i_parent, i_ino, i_mode, i_size, i_blocks) == (
            want["parent"],
            want["ino"],
            want["mode"],
            want["size"],
            want["blocks"],
        ), path
        assert (i_uid, i_gid, i_flags, i_nlink) == (want["uid"], want["gid"], want["flags"], want["nlink"]), path
        if want["type"] == "dir":
            assert (ci, cc) == (want["child_index"], want["child_count"]), path
        elif want["type"] == "file":
            assert (ci, cc) == (0, len(want["chunks"])), path


def _tree_listing(fixtures_dir: Path) -> tuple[dict[str, tuple[str, str | None]], dict[str, str]]:
    """(path -> (tree type, link target)) from the `tree -J` part, (path -> md5) from the md5sum part."""
    text = (fixtures_dir / "repeatable.tree.json").read_text()
    end = text.index("\n]\n") + 3
    listing = json.loads(text[:end])
    md5 = {m[2]: m[1] for m in re.finditer(r"^([0-9a-f]{32})  (/.*)$", text[end:], re.M)}
    entries: dict[str, tuple[str, str | None]] = {}

    def walk(items: list, prefix: str) -> None:
        for item in items:
            path = f"{prefix}/{item['name']}"
            entries[path] = (item["type"], item.get("target"))
            if item["type"] == "directory":
                walk(item["contents"], path)

    walk(listing[0]["contents"], "")
    return entries, md5


def _file_content(bs: Bootstrap, node: Node, blobs: dict[str, bytes]) -> bytes:
    parts = []
    for chunk in bs.node_chunks(node):
        blob = bs.blobs[int(chunk["blob_index"])]
        raw = blobs[blob.blob_id]
        off = int(chunk["compressed_offset"])
        usize = int(chunk["uncompressed_size"])
        if chunk["flags"] & ChunkFlags.COMPRESSED:
            piece = decompress(bs.compressor, raw[off : off + int(chunk["compressed_size"])], usize)
        else:
            piece = raw[off : off + usize]
        assert digest(bs.digester, piece) == bytes(chunk["block_id"])
        assert int(chunk["file_offset"]) == sum(len(p) for p in parts)
        parts.append(piece)
    return b"".join(parts)


@pytest.mark.parametrize("name", V5_FIXTURES)
def test_file_contents_match_oracle_and_tree_listing(fixtures_dir, oracle, name):
    bs = v5.load(_read(fixtures_dir, name), name)
    blobs = {BLOB_ID: _read(fixtures_dir, BLOB_ID)}
    inodes = oracle[name]["inodes_by_path"]
    entries, md5 = _tree_listing(fixtures_dir)
    tree_type = {"dir": "directory", "file": "file", "symlink": "link"}
    assert set(entries) == {p for p in inodes if p != "/"}
    files = 0
    for node in bs.nodes[1:]:
        path = node.path.decode()
        kind, target = entries[path]
        assert kind == tree_type[_type(node)], path
        if node.is_symlink:
            assert node.symlink.decode() == target
        if node.is_reg:
            content = _file_content(bs, node, blobs)
            assert len(content) == node.size == inodes[path]["size"]
            assert hashlib.sha256(content).hexdigest() == inodes[path]["sha256"], path
            assert hashlib.md5(content).hexdigest() == md5[path], path
            files += 1
    assert files == len(md5) == 23


@pytest.mark.parametrize("name", V5_FIXTURES)
def test_dump_of_load_is_byte_identical(fixtures_dir, name):
    data = _read(fixtures_dir, name)
    assert v5.dump(v5.load(data, name)) == data


@pytest.mark.parametrize("name", V5_FIXTURES)
def test_recomputed_inode_digests_equal_stored(fixtures_dir, name):
    bs = v5.load(_read(fixtures_dir, name), name)
    assert v5.inode_digests(bs) == [node.digest for node in bs.nodes]


def test_dump_recomputes_digests_and_renumbers_from_the_tree(fixtures_dir):
    data = _read(fixtures_dir, V5_FIXTURES[0])
    bs = v5.load(data, "x")
    for node in bs.nodes:
        node.digest = bytes(32)
        node.children.reverse()  # the writer sorts children by name itself
    assert v5.dump(bs) == data

    # One chunk digest changes that record and its ancestors; the other hard-link names keep
    # their own copies of the chunk records.
    bs = v5.load(data, "x")
    pos = _by_path(bs)[b"/hardlink-test/foo"]
    bs.chunks["block_id"][bs.nodes[pos].chunk_start] = b"\x01" * 32
    fresh = v5.inode_digests(bs)
    changed = {node.path for node, d in zip(bs.nodes, fresh) if d != node.digest}
    assert changed == {b"/", b"/hardlink-test", b"/hardlink-test/foo"}


def test_order_comes_from_the_tree_not_the_table():
    bs = _small_tree()
    data = v5.dump(bs)
    # Records 4,5 are /a's children and 6,7 /b's; swap them in the table and in the child ranges.
    offs = [_record_offset(data, i) for i in range(1, 8)]
    swapped = bytearray(data)
    for index, off in zip((4, 5, 6, 7), (offs[5], offs[6], offs[3], offs[4])):
        struct.pack_into("<I", swapped, 8192 + 4 * (index - 1), off >> 3)
    struct.pack_into("<I", swapped, offs[1] + I_CHILD_INDEX, 6)
    struct.pack_into("<I", swapped, offs[2] + I_CHILD_INDEX, 4)
    loaded = v5.load(bytes(swapped), "swapped")
    assert [n.path for n in loaded.nodes] == [n.path for n in v5.load(data, "orig").nodes]
    assert v5.dump(loaded) == data


def _small_tree() -> Bootstrap:
    nodes = [Node(name=b"/", path=b"/", mode=stat.S_IFDIR | 0o755, size=4096)]
    for d in (b"a", b"b"):
        nodes.append(Node(name=d, path=b"/" + d, mode=stat.S_IFDIR | 0o755, size=4096, parent=0))
        nodes[0].children.append(len(nodes) - 1)
    for parent in (1, 2):
        for f in (b"x", b"y"):
            nodes.append(Node(name=f, path=nodes[parent].path + b"/" + f, mode=stat.S_IFREG | 0o644, parent=parent))
            nodes[parent].children.append(len(nodes) - 1)
    return Bootstrap(
        version=5,
        flags=flags_for(Compressor.NONE, Digester.SHA256),
        chunk_size=0x100000,
        blobs=[],
        nodes=nodes,
        chunks=np.zeros(0, dtype=CHUNK_DTYPE),
    )


# --------------------------------------------------------------------------------------------
# Synthetic self-consistency


class _Builder:
    def __init__(self, chunk_size: int, n_blobs: int):
        self.chunk_size = chunk_size
        self.nodes = [Node(name=b"/", path=b"/", mode=stat.S_IFDIR | 0o755, size=4096)]
        self.chunks: list[np.ndarray] = []
        self.n_chunks = 0
        self.n_blobs = n_blobs
        self.rng = random.Random(5)

    def add(self, parent: int, name: bytes, mode: int, **kw) -> int:
        ppath = self.nodes[parent].path
        node = Node(name=name, path=(b"" if ppath == b"/" else ppath) + b"/" + name, mode=mode, parent=parent, **kw)
        self.nodes.append(node)
        pos = len(self.nodes) - 1
        node.link = pos
        self.nodes[parent].children.append(pos)
        self.nodes[parent].children.sort(key=lambda c: self.nodes[c].name)
        return pos

    def file(self, parent: int, name: bytes, size: int, **kw) -> int:
        pos = self.add(parent, name, stat.S_IFREG | 0o644, size=size, **kw)
        n = -(-size // self.chunk_size)
        arr = np.zeros(n, dtype=CHUNK_DTYPE)
        for k in range(n):
            usize = min(self.chunk_size, size - k * self.chunk_size)
            arr[k]["block_id"] = self.rng.randbytes(32)
            arr[k]["blob_index"] = self.rng.randrange(self.n_blobs)
            arr[k]["flags"] = ChunkFlags.COMPRESSED if k % 2 else 0
            arr[k]["compressed_size"] = usize // 2 if k % 2 else usize
            arr[k]["uncompressed_size"] = usize
            arr[k]["compressed_offset"] = self.rng.randrange(1 << 40)
            arr[k]["uncompressed_offset"] = self.rng.randrange(1 << 40)
            arr[k]["file_offset"] = k * self.chunk_size
            arr[k]["index"] = self.rng.randrange(1 << 20)
        self.nodes[pos].chunk_start = self.n_chunks
        self.nodes[pos].chunk_count = n
        self.chunks.append(arr)
        self.n_chunks += n
        return pos

    def link(self, parent: int, name: bytes, target: int) -> int:
        t = self.nodes[target]
        pos = self.add(parent, name, t.mode, size=t.size, mtime=t.mtime, xattrs=list(t.xattrs))
        node = self.nodes[pos]
        node.link = t.link
        node.chunk_count = t.chunk_count
        node.chunk_start = self.n_chunks
        self.chunks.append(np.concatenate(self.chunks)[t.chunk_start : t.chunk_start + t.chunk_count].copy())
        self.n_chunks += t.chunk_count
        return pos


def _synthetic() -> Bootstrap:
    cs = 0x1000
    b = _Builder(cs, 3)
    lnk = stat.S_IFLNK | 0o777
    a = b.add(0, b"a-dir", stat.S_IFDIR | 0o750, size=4096, uid=1000, gid=100, mtime=1700000000, mtime_nsec=123)
    first = b.file(a, b"big", 5 * cs + 17, xattrs=[(b"user.k", b"v"), (b"security.capability", b"\x01\x02\x00")])
    b.file(a, b"empty", 0)
    b.add(a, b"empty-dir", stat.S_IFDIR | 0o700, size=4096)
    b.add(a, b"link-to-big", lnk, size=3, symlink=b"big")
    b.add(0, b"chr", stat.S_IFCHR | 0o600, rdev=0x0501)
    b.add(0, b"blk", stat.S_IFBLK | 0o600, rdev=0x0803)
    b.add(0, b"fifo", stat.S_IFIFO | 0o644)
    b.add(0, b"sock", stat.S_IFSOCK | 0o755)
    b.add(0, b"n" * 255, lnk, size=255, symlink=b"t" * 255)
    b.file(0, b"x" * 255, cs, xattrs=[(b"trusted.big", bytes(range(256)) * 40)])
    z = b.add(0, b"z-dir", stat.S_IFDIR | 0o755, size=8192, xattrs=[(b"system.posix_acl_default", b"\x02" * 28)])
    sub = b.add(z, b"sub", stat.S_IFDIR | 0o755, size=4096)
    b.link(a, b"big-2", first)
    b.link(sub, b"big-3", first)  # its parent comes after the first name: needs the hardlink exemption
    b.file(sub, b"hole", 3 * cs, v5_flags=v5.InodeFlags.HAS_HOLE)
    blobs = [
        BlobInfo(
            blob_id=f"{i}" * (60 + i),
            chunk_count=10 + i,
            compressed_size=1000 * i,
            uncompressed_size=2000 * i,
            features=0x4000_0000 if i else 0,
            compressor=Compressor.LZ4_BLOCK,
            digester=Digester.BLAKE3,
            chunk_size=cs,
            readahead_offset=i,
            readahead_size=7 * i,
        )
        for i in range(3)
    ]
    by_path = {n.path: p for p, n in enumerate(b.nodes)}
    return Bootstrap(
        version=5,
        flags=flags_for(Compressor.LZ4_BLOCK, Digester.BLAKE3) | SuperFlags.EXPLICIT_UID_GID,
        chunk_size=cs,
        blobs=blobs,
        nodes=b.nodes,
        chunks=np.concatenate(b.chunks),
        prefetch=[by_path[b"/a-dir"], by_path[b"/z-dir/sub/big-3"], by_path[b"/chr"]],
    )


def _norm(bs: Bootstrap) -> dict:
    """Everything the model says, keyed by path (positions replaced by paths)."""
    nodes = {}
    for node in bs.nodes:
        nodes[node.path] = (
            node.name,
            node.mode,
            node.uid,
            node.gid,
            node.mtime,
            node.mtime_nsec,
            node.size,
            node.rdev,
            node.symlink,
            tuple(node.xattrs),
            node.v5_flags & ~(v5.InodeFlags.SYMLINK | v5.InodeFlags.XATTR),  # the writer derives these two
            bs.nodes[node.parent].path if node.parent >= 0 else None,
            tuple(bs.nodes[c].path for c in node.children),
            bs.nodes[node.link].path if node.is_reg else None,
            bs.node_chunks(node).tobytes(),
        )
    blobs = [
        (b.blob_id, b.chunk_count, b.compressed_size, b.uncompressed_size, b.features, b.compressor, b.digester)
        + (b.chunk_size, b.readahead_offset, b.readahead_size)
        for b in bs.blobs
    ]
    prefetch = [bs.nodes[p].path for p in bs.prefetch]
    return {"nodes": nodes, "blobs": blobs, "prefetch": prefetch, "flags": bs.flags, "chunk_size": bs.chunk_size}


def test_synthetic_round_trip():
    bs = _synthetic()
    data = v5.dump(bs)
    loaded = v5.load(data, "synthetic")
    assert len(loaded.nodes) % 2 == 1  # odd record count: the inode table gets a padding entry
    # A prefetch entry is an inode number, so a later hard-link name comes back as the first one.
    want = _norm(bs) | {"flags": bs.flags | SuperFlags.HAS_XATTR, "prefetch": [b"/a-dir", b"/a-dir/big", b"/chr"]}
    assert _norm(loaded) == want
    for node in loaded.nodes:
        assert bool(node.v5_flags & v5.InodeFlags.SYMLINK) == node.is_symlink
        assert bool(node.v5_flags & v5.InodeFlags.XATTR) == bool(node.xattrs)
    assert v5.dump(loaded) == data
    want_digests = {n.path: d for n, d in zip(bs.nodes, v5.inode_digests(bs))}
    assert {n.path: n.digest for n in loaded.nodes} == want_digests

    sb = v5.SuperBlock(*v5.SUPERBLOCK.unpack_from(data, 0))
    assert sb.s_prefetch_table_entries == 3
    assert sb.s_inodes_count == len(bs.nodes) - 2 - 1  # two extra hard-link names, root excluded
    assert sb.s_blob_table_size % 8 == 0
    pos = _by_path(loaded)
    group = [pos[p] for p in (b"/a-dir/big", b"/a-dir/big-2", b"/z-dir/sub/big-3")]
    assert {loaded.nodes[p].link for p in group} == {group[0]}
    assert all(loaded.nodes[p].nlink == 3 for p in group)
    assert loaded.nodes[pos[b"/z-dir/sub/big-3"]].parent > group[0]
    assert loaded.nodes[pos[b"/a-dir"]].nlink == 3 and loaded.nodes[0].nlink == 4
    assert loaded.nodes[pos[b"/chr"]].rdev == 0x0501
    # Node order is the builder's: children listed together, directories expanded depth-first.
    assert [n.path for n in loaded.nodes][:3] == [b"/", b"/a-dir", b"/blk"]


def test_xattr_block_layout_and_i_blocks():
    bs = _synthetic()
    data = v5.dump(bs)
    loaded = v5.load(data, "s")
    pos = _by_path(loaded)[b"/a-dir/big"]
    off = _record_offset(data, pos + 1)
    h = v5.INODE.unpack_from(data, off)
    name_size = h[13]
    xoff = off + 128 + v5.align8(name_size)
    (size,) = struct.unpack_from("<Q", data, xoff)
    pairs = [(b"user.k", b"v"), (b"security.capability", b"\x01\x02\x00")]
    assert size == sum(4 + len(k) + 1 + len(v) for k, v in pairs)
    assert data[xoff + 8 : xoff + 8 + 4] == struct.pack("<I", len(b"user.k") + 2)
    assert h[8] == -(-(5 * 0x1000 + 17 + v5.align8(size)) // 512)  # i_blocks counts the aligned xattr size
    assert h[9] & v5.InodeFlags.XATTR


@pytest.mark.parametrize(
    "mutate, check",
    [
        (lambda bs: setattr(bs.nodes[1], "name", b"n" * 256), "name not representable"),
        (lambda bs: bs.nodes[1].xattrs.append((b"bogus.key", b"")), "xattr"),
        (lambda bs: bs.nodes[0].children.append(bs.nodes[0].children[0]), "reachable twice"),
        (lambda bs: setattr(bs.nodes[2], "size", 1 << 30), "chunk count"),
        (lambda bs: bs.chunks.__setitem__("blob_index", 7), "blob_index"),
        (lambda bs: setattr(bs.nodes[3], "uid", 1 << 32), "out of range"),
        (lambda bs: setattr(bs.blobs[0], "features", 0x8000_0000), "feature"),
    ],
)
def test_dump_rejects_unrepresentable_models(mutate, check):
    bs = _synthetic()
    mutate(bs)
    with pytest.raises(RafsFormatError) as exc:
        v5.dump(bs)
    assert exc.value.path == "<model>" and check in exc.value.check


def test_load_of_10k_records_with_100k_chunks():
    cs = 0x1000
    b = _Builder(cs, 1)
    arr = np.zeros(10, dtype=CHUNK_DTYPE)
    arr["uncompressed_size"] = arr["compressed_size"] = cs
    per_dir = []
    for d in range(100):
        per_dir.append(b.add(0, b"d%03d" % d, stat.S_IFDIR | 0o755, size=4096))
    for d in per_dir:
        for f in range(100):
            pos = b.add(d, b"f%03d" % f, stat.S_IFREG | 0o644, size=10 * cs)
            b.nodes[pos].chunk_start, b.nodes[pos].chunk_count = b.n_chunks, 10
            b.n_chunks += 10
    bs = Bootstrap(5, flags_for(Compressor.NONE, Digester.SHA256), cs, [], b.nodes, np.tile(arr, b.n_chunks // 10))
    bs.blobs = [BlobInfo("b" * 64, 0, 0, 0, 0, Compressor.NONE, Digester.SHA256, cs)]
    data = v5.dump(bs)
    loaded = v5.load(data, "big")
    assert len(loaded.chunks) == 100_000 and loaded.chunks.flags.writeable
    assert v5.dump(loaded) == data


def _two_dirs_of_files() -> Bootstrap:
    """/a/x, /a/y, /b/x, /b/y (records 4..7) with more chunk record bytes than the superblock."""
    cs = 0x1000
    b = _Builder(cs, 2)
    for d in (b"a", b"b"):
        parent = b.add(0, d, stat.S_IFDIR | 0o755, size=4096)
        for f in (b"x", b"y"):
            b.file(parent, f, 60 * cs - 5)
    blobs = [BlobInfo(f"{i}" * 64, 0, 0, 0, 0, Compressor.NONE, Digester.SHA256, cs) for i in range(2)]
    return Bootstrap(5, flags_for(Compressor.NONE, Digester.SHA256), cs, blobs, b.nodes, np.concatenate(b.chunks))


@pytest.mark.parametrize("swap", [False, True], ids=["file-order", "records-swapped"])
def test_chunks_come_in_tree_order_whatever_the_record_placement(tmp_path, swap):
    """A file read by load_bootstrap gets its chunk records moved within its own buffer; that is
    only safe while records lie in tree order, so records placed otherwise take a fresh buffer."""
    from nydus_compact.rafs.loader import load_bootstrap

    bs = _two_dirs_of_files()
    data = bytes(v5.dump(bs))
    if swap:  # /b's files now lie before /a's in the file; the inode table follows them
        offs = [_record_offset(data, i) for i in range(1, 8)]
        a_files, b_files = data[offs[3] : offs[5]], data[offs[5] :]
        moved = bytearray(data[: offs[3]] + b_files + a_files)
        for index in (4, 5, 6, 7):
            at = offs[index - 1] + (len(b_files) if index < 6 else -len(a_files))
            struct.pack_into("<I", moved, 8192 + 4 * (index - 1), at >> 3)
        assert bytes(moved) != data
        data = bytes(moved)
    path = tmp_path / "image.boot"
    path.write_bytes(data)
    want = {n.path: bs.node_chunks(n).tobytes() for n in bs.nodes if n.is_reg}
    for loaded in (v5.load(data, "mem"), load_bootstrap(path)):
        assert [n.path for n in loaded.nodes] == [b"/", b"/a", b"/b", b"/a/x", b"/a/y", b"/b/x", b"/b/y"]
        assert [n.chunk_start for n in loaded.nodes if n.is_reg] == [0, 60, 120, 180]
        assert {n.path: loaded.node_chunks(n).tobytes() for n in loaded.nodes if n.is_reg} == want
        assert v5.dump(loaded) == v5.dump(bs)


# --------------------------------------------------------------------------------------------
# Malformed input


def _fixture(fixtures_dir) -> bytes:
    return _read(fixtures_dir, V5_FIXTURES[0])


@pytest.mark.parametrize(
    "corrupt, check",
    [
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: _patch(d, 48, "<Q", 8412), "blob table offset not 8-aligned"),
        (lambda d: _patch(d, 32, "<Q", 8200), "overlaps"),
        (lambda d: _patch(d, 12, "<I", 0x3000), "s_block_size"),
        (lambda d: _patch(d, 16, "<Q", 0x200), "s_flags"),
        (lambda d: _patch(d, _record_offset(d, 2) + I_CHILD_INDEX, "<I", 54), "child range"),
        (lambda d: _patch(d, _record_offset(d, 3) + I_PARENT, "<Q", 3), "i_parent not below i_ino"),
        (lambda d: _patch(d, _record_offset(d, 14) + I_SIZE, "<Q", 0x100001), "chunk count does not match"),
        (lambda d: _patch(d, _record_offset(d, 14) + I_CHILD_COUNT, "<I", 2), "chunk count does not match"),
        (lambda d: _patch(d, _record_offset(d, 5) + I_NLINK, "<I", 0), "i_nlink is 0"),
        (lambda d: _patch(d, _record_offset(d, 48) + I_NAME_SIZE, "<H", 0), "i_name_size"),
        (lambda d: _patch(d, _record_offset(d, 4) + I_CHILD_INDEX, "<I", 5), "reachable twice"),
        (lambda d: _patch(d, 8192 + 4 * 53, "<I", _record_offset(d, 53) >> 3), "records overlap"),
        (lambda d: _patch(d, 8192 + 4 * 53, "<I", 1024), "inode table entry 54 out of range"),
        (lambda d: _patch(d, _record_offset(d, 14) + 128 + 8 + 32, "<I", 1), "blob_index"),
        (lambda d: _patch(d, 8416, "<B", 0xFF), "not UTF-8"),
        (lambda d: _patch(d, 8480 + 4, "<I", 0x100), "feature"),
        (lambda d: d[:-8], "past the end"),
        (lambda d: d[:-4], "multiple of 8"),
        (lambda d: d[:8192], "not larger than the superblock"),
        (lambda d: d[:50], "shorter than the superblock"),
    ],
)
def test_corruptions_raise_format_error(fixtures_dir, corrupt, check):
    with pytest.raises(RafsFormatError) as exc:
        v5.load(corrupt(_fixture(fixtures_dir)), "bad.boot")
    assert check in exc.value.check
    assert not isinstance(exc.value, UnsupportedLayoutError)
    assert "bad.boot" in str(exc.value)


def test_unreachable_record_is_rejected():
    data = v5.dump(_small_tree())
    off = _record_offset(data, 3)  # /b: drop its two children from the tree
    data = _patch(data, off + I_CHILD_COUNT, "<I", 0)
    with pytest.raises(RafsFormatError, match="not reachable from the root"):
        v5.load(data, "x")


def test_legacy_root_layout_is_unsupported(fixtures_dir):
    data = _fixture(fixtures_dir)
    root = _record_offset(data, 1)
    legacy = _patch(_patch(data, root + I_MODE, "<I", 0), root + I_NAME_SIZE, "<H", 8)
    with pytest.raises(UnsupportedLayoutError, match="unsupported layout"):
        v5.load(legacy, "old.boot")
    with pytest.raises(UnsupportedLayoutError, match="unsupported layout"):
        v5.load(_patch(data, root + I_NAME_SIZE, "<H", 8), "old.boot")


def test_random_corruption_never_escapes_the_error_type(fixtures_dir):
    data = _fixture(fixtures_dir)
    synthetic = v5.dump(_synthetic())
    rng = random.Random(1234)
    for base in (data, synthetic):
        for _ in range(1500):
            buf = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(8192 if rng.random() < 0.9 else 0, len(buf))
                buf[at] = rng.randrange(256)
            try:
                bs = v5.load(bytes(buf), "fuzz")
            except RafsFormatError:
                continue
            try:
                v5.dump(bs)
            except RafsFormatError as exc:
                assert exc.path == "<model>"
