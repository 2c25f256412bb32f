"""RAFS v6 bootstrap reader and writer (rafs-v6.md).

``load`` applies every nydusd 2.2 load-time check (§15.1–7) and, eagerly, the access-time checks
(§15.8–13) to every inode, dirent and chunk address reachable from the root. ``dump`` lays a
model out with the 2.2 directory builder's algorithm (§16), so a builder-made bootstrap
round-trips byte for byte.
"""

from __future__ import annotations

import dataclasses
import stat
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .compression import Compressor
from .constants import (
    BLOCK_SIZE,
    MAX_BLOBS,
    MAX_CHUNK_SIZE,
    MAX_CI_ENTRIES,
    MIN_CHUNK_SIZE,
    RAFS_V5_MAGIC,
    RAFS_V5_VERSION,
    RAFS_V6_MAGIC,
    RAFS_V6_SB_OFFSET,
)
from .digest import Digester
from .errors import RafsFormatError
from .flags import SUPER_FLAGS_KNOWN, BlobFeatures, SuperFlags, blob_features_valid
from .model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node, Part, Serialized, empty_chunks, expand_depth_first, joined
from .record import Record

SLOT = 32  # EROFS inode slot
MIN_FILE_SIZE = 8192  # nydusd probes v5 first with an 8192-byte read (§1)
EXT_OFFSET = 1152
DEVT_SLOTOFF = 11
FEATURE_COMPAT_RAFS_V6 = 0x4000_0000
FEATURE_INCOMPAT = 0x0C  # CHUNKED_FILE | DEVICE_TABLE
ROOT_OFFSET = BLOCK_SIZE  # the builder's root always lands here, so s_root_nid is 128 (§7)
MAX_NAME = 255
QUIRK_MAPPED_BLKADDR = "v6_mapped_blkaddr"
MAPPED_ALIGN = 512  # blocks: 2 MiB, the 2.3 device-slot rule (§4)

FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED = 0, 2, 4
CHUNK_FORMAT_INDEXES = 0x20

# §2 RafsV6SuperBlock (the EROFS superblock)
SUPERBLOCK = Record("RafsV6SuperBlock", [
    ("s_magic", "I"), ("s_checksum", "I"), ("s_feature_compat", "I"), ("s_blkszbits", "B"), ("s_extslots", "B"),
    ("s_root_nid", "H"), ("s_inos", "Q"), ("s_build_time", "Q"), ("s_build_time_nsec", "I"), ("s_blocks", "I"),
    ("s_meta_blkaddr", "I"), ("s_xattr_blkaddr", "I"), ("s_uuid", "16s"), ("s_volume_name", "16s"),
    ("s_feature_incompat", "I"), ("s_u", "H"), ("s_extra_devices", "H"), ("s_devt_slotoff", "H"),
    ("s_reserved", "38s"),
], 128)  # fmt: skip
# §3 RafsV6SuperBlockExt
EXT_SUPERBLOCK = Record("RafsV6SuperBlockExt", [
    ("s_flags", "Q"), ("s_blob_table_offset", "Q"), ("s_blob_table_size", "I"), ("s_chunk_size", "I"),
    ("s_chunk_table_offset", "Q"), ("s_chunk_table_size", "Q"), ("s_prefetch_table_offset", "Q"),
    ("s_prefetch_table_size", "I"), ("s_padding", "I"), ("s_reserved", "200s"),
], 256)  # fmt: skip
# §4 RafsV6Device, one slot per blob
DEVICE_SLOT = Record("RafsV6Device", [("blob_id", "64s"), ("blocks", "I"), ("mapped_blkaddr", "I"), ("reserved", "56s")], 128)
# §5 RafsV6Blob, one blob-table entry per blob
BLOB_ENTRY = Record("RafsV6Blob", [
    ("blob_id", "64s"), ("blob_index", "I"), ("chunk_size", "I"), ("chunk_count", "I"), ("compression_algo", "I"),
    ("digest_algo", "I"), ("features", "I"), ("compressed_size", "Q"), ("uncompressed_size", "Q"),
    ("blob_toc_size", "I"), ("ci_compressor", "I"), ("ci_offset", "Q"), ("ci_compressed_size", "Q"),
    ("ci_uncompressed_size", "Q"), ("blob_toc_digest", "32s"), ("blob_meta_digest", "32s"), ("blob_meta_size", "Q"),
    ("reserved2", "48s"),
], 256)  # fmt: skip
# BlobInfo fields a blob-table entry stores as they are, under the same name (the rest is converted).
_BLOB_ENTRY_SAME_NAMES = tuple(f.name for f in dataclasses.fields(BlobInfo) if f.name in BLOB_ENTRY.fields and f.name != "blob_id")
CHUNK_INFO_SIZE = CHUNK_DTYPE.itemsize  # §6 RafsV5ChunkInfo, shared by v6
TABLE_PART = (1 << 20) // CHUNK_INFO_SIZE  # chunk-info records per part handed out by serialize
DEVT_OFFSET = DEVT_SLOTOFF * DEVICE_SLOT.size
INODE_EXTENDED = struct.Struct("<HHHHQIIIIQII16s")
INODE_COMPACT = struct.Struct("<HHHHIIIIHHI")
DIRENT = struct.Struct("<QHBB")
XATTR_HEADER = struct.Struct("<IB7s")
XATTR_ENTRY = struct.Struct("<BBH")
_U32 = struct.Struct("<I")
CHUNK_ADDR_DTYPE = np.dtype([("lo", "<u2"), ("hi", "<u2"), ("blk", "<u4")])
assert CHUNK_INFO_SIZE == 80
assert (INODE_EXTENDED.size, INODE_COMPACT.size, CHUNK_ADDR_DTYPE.itemsize) == (64, 32, 8)

_FILE_TYPES = {
    stat.S_IFREG: 1,
    stat.S_IFDIR: 2,
    stat.S_IFCHR: 3,
    stat.S_IFBLK: 4,
    stat.S_IFIFO: 5,
    stat.S_IFSOCK: 6,
    stat.S_IFLNK: 7,
}
# RAFSV6_XATTR_TYPES (§9); the ACL entries come first so they win over no other prefix.
_XATTR_PREFIXES = {
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    1: b"user.",
    4: b"trusted.",
    6: b"security.",
}
_COMPRESSION_FLAGS = (SuperFlags.COMPRESSION_NONE, SuperFlags.COMPRESSION_LZ4, SuperFlags.COMPRESSION_GZIP,
                      SuperFlags.COMPRESSION_ZSTD)  # fmt: skip
_HASH_FLAGS = (SuperFlags.HASH_BLAKE3, SuperFlags.HASH_SHA256)
MODEL = "<model>"


def _align(x: int, n: int) -> int:
    return (x + n - 1) // n * n


def _chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def _valid_chunk_size(size: int) -> bool:
    return MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE and size & (size - 1) == 0


def _mapped_blkaddrs(blobs: list[BlobInfo], file_size: int) -> list[int]:
    """The 2.3 (commit 753890bb) device-slot rule: each blob mapped at the next 2 MiB boundary."""
    out = []
    addr = _align(file_size // BLOCK_SIZE, MAPPED_ALIGN)
    for blob in blobs:
        out.append(addr)
        addr = _align(addr + blob.uncompressed_size // BLOCK_SIZE, MAPPED_ALIGN)
    return out


# =======================================================================================
# Reader


@dataclass(slots=True)
class _Inode:
    offset: int
    layout: int
    mode: int
    nlink: int
    size: int
    i_u: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    extended: bool
    xattrs: list[tuple[bytes, bytes]]
    data_offset: int  # first byte after inode + xattrs


def load(data: bytes | bytearray | memoryview | np.ndarray, path: str) -> Bootstrap:
    """Parse and fully validate a RAFS v6 bootstrap held in memory (``path`` names it in errors)."""
    return _Reader(memoryview(data), str(path)).load()


def node_nids(data: bytes | bytearray | memoryview | np.ndarray, path: str) -> list[int]:
    """The nid of every node of ``load(data, path).nodes``, in the same order (hard links share one)."""
    reader = _Reader(memoryview(data), str(path))
    reader.load()
    return reader.nids


class _Reader:
    def __init__(self, data: memoryview, path: str):
        self.data = data
        self.path = path
        self.size = len(data)
        # Many dirents may name one non-directory inode: parse it (and its target) once.
        self._inodes: dict[int, _Inode] = {}
        self._symlinks: dict[int, bytes] = {}
        # In a well-formed image directory data regions are disjoint, so they fit in the file;
        # shared dirent blocks could otherwise multiply the node count without bound.
        self._dir_bytes = 0

    def fail(self, check: str, offset: int | None = None) -> RafsFormatError:
        return RafsFormatError(self.path, check, offset)

    def load(self) -> Bootstrap:
        self._superblock()
        self._ext_superblock()
        self.blobs = self._blob_table()
        self.table = self._chunk_table()
        nodes, self.nids, addrs, owners = self._walk()
        self._inodes.clear()
        self._symlinks.clear()
        chunks = self._join_chunks(addrs, owners)
        prefetch = self._prefetch(self.nids)
        quirks = frozenset()
        if self.blobs and self._mapped == _mapped_blkaddrs(self.blobs, self.size):
            quirks = frozenset({QUIRK_MAPPED_BLKADDR})
        return Bootstrap(
            version=6,
            flags=self.flags,
            chunk_size=self.chunk_size,
            blobs=self.blobs,
            nodes=nodes,
            chunks=chunks,
            prefetch=prefetch,
            quirks=quirks,
        )

    # --- superblocks and tables (§15.1–7) -------------------------------------------

    def _superblock(self) -> None:
        d = self.data
        if self.size < MIN_FILE_SIZE:
            raise self.fail(f"file is {self.size} bytes, nydusd needs at least {MIN_FILE_SIZE}")  # §15.1
        if struct.unpack_from("<II", d, 0) == (RAFS_V5_MAGIC, RAFS_V5_VERSION):
            raise self.fail("this is a RAFS v5 bootstrap", 0)  # §15.1
        sb = SUPERBLOCK.unpack_from(d, RAFS_V6_SB_OFFSET)
        checks = [
            (self.size % BLOCK_SIZE == 0, "file size is not a multiple of 4096"),  # §15.3a
            (sb.s_magic == RAFS_V6_MAGIC, "bad EROFS magic"),  # §15.3b
            (sb.s_checksum == 0, "s_checksum must be 0"),  # §15.3c
            (sb.s_blkszbits == 12, "s_blkszbits must be 12"),  # §15.3d
            (sb.s_inos != 0, "s_inos is 0"),  # §15.3e
            (sb.s_extslots == 0, "s_extslots must be 0"),  # §15.3f
            (sb.s_u == 0, "s_u must be 0"),  # §15.3g
            (sb.s_xattr_blkaddr == 0, "s_xattr_blkaddr must be 0"),  # §15.3h
            (sb.s_extra_devices != 0 or sb.s_blocks in (0, BLOCK_SIZE), "s_blocks is set but the image has no extra devices"),  # §15.3i
            (sb.s_devt_slotoff == DEVT_SLOTOFF, "s_devt_slotoff must be 11"),  # §15.3j
            (sb.s_feature_incompat == FEATURE_INCOMPAT, "s_feature_incompat must be 0x0C"),  # §15.3k
            (sb.s_feature_compat & FEATURE_COMPAT_RAFS_V6, "s_feature_compat lacks RAFS_V6"),  # §15.3l
        ]
        for ok, check in checks:
            if not ok:
                raise self.fail(check, RAFS_V6_SB_OFFSET)
        self.root_nid = sb.s_root_nid
        self.meta_base = sb.s_meta_blkaddr * BLOCK_SIZE
        self.extra_devices = sb.s_extra_devices

    def _ext_superblock(self) -> None:
        ext = EXT_SUPERBLOCK.unpack_from(self.data, EXT_OFFSET)
        flags, chunk_size = ext.s_flags, ext.s_chunk_size
        bt_off, bt_size = ext.s_blob_table_offset, ext.s_blob_table_size
        ct_off, ct_size = ext.s_chunk_table_offset, ext.s_chunk_table_size
        pf_off, pf_size = ext.s_prefetch_table_offset, ext.s_prefetch_table_size
        size = self.size
        if sum(1 for f in _COMPRESSION_FLAGS if flags & f) != 1:
            raise self.fail("exactly one compression flag must be set", EXT_OFFSET)  # §15.4a
        if sum(1 for f in _HASH_FLAGS if flags & f) != 1:
            raise self.fail("exactly one hash flag must be set", EXT_OFFSET)  # §15.4b
        if not _valid_chunk_size(chunk_size):
            raise self.fail(f"chunk size {chunk_size:#x} invalid", EXT_OFFSET)  # §15.4c
        if (bt_off % BLOCK_SIZE or bt_off < BLOCK_SIZE or bt_size % BLOB_ENTRY.size or bt_off + bt_size > size or bt_off % 8
                or bt_size % 8):  # fmt: skip
            raise self.fail("blob table out of bounds or misaligned", EXT_OFFSET)  # §15.4d/6
        if ct_size and (ct_off < BLOCK_SIZE or ct_off % BLOCK_SIZE or ct_size % CHUNK_INFO_SIZE or ct_off + ct_size > size
                        or _overlap(ct_off, ct_size, bt_off, bt_size)):  # fmt: skip
            raise self.fail("chunk table out of bounds, misaligned or overlapping", EXT_OFFSET)  # §15.4e
        if pf_size and pf_off and (pf_off < BLOCK_SIZE or pf_size % 4 or pf_off + pf_size > size or pf_off % 8
                                   or _overlap(pf_off, pf_size, bt_off, bt_size)):  # fmt: skip
            raise self.fail("prefetch table out of bounds, misaligned or overlapping", EXT_OFFSET)  # §15.4f
        if flags & ~SUPER_FLAGS_KNOWN:
            raise self.fail(f"unknown superblock flags {flags & ~SUPER_FLAGS_KNOWN:#x}", EXT_OFFSET)  # §15.5
        nblobs = bt_size // BLOB_ENTRY.size
        if self.extra_devices != nblobs or DEVT_OFFSET + DEVICE_SLOT.size * nblobs > bt_off:
            raise self.fail(f"{self.extra_devices} device slots for {nblobs} blobs", RAFS_V6_SB_OFFSET)
        self.flags = flags
        self.chunk_size = chunk_size
        self.bt_off, self.nblobs = bt_off, nblobs
        self.ct_off, self.ct_size = ct_off, ct_size
        self.pf_off, self.pf_size = (pf_off, pf_size) if pf_off else (0, 0)

    def _blob_table(self) -> list[BlobInfo]:
        blobs = []
        self._mapped = []
        for idx in range(self.nblobs):
            off = self.bt_off + BLOB_ENTRY.size * idx
            e = BLOB_ENTRY.unpack_from(self.data, off)
            chunk_count, features = e.chunk_count, e.features
            try:
                blob_id = e.blob_id.decode().rstrip("\x00")
            except UnicodeDecodeError:
                raise self.fail("blob id is not UTF-8", off) from None  # §15.7a
            count_ok = chunk_count * 16
            if features & BlobFeatures.CHUNK_INFO_V2:
                count_ok = chunk_count * 24
            v2, zran = features & BlobFeatures.CHUNK_INFO_V2, features & BlobFeatures.ZRAN
            ci_usize = e.ci_uncompressed_size
            ci_size_ok = (ci_usize >= count_ok) if (v2 and zran) else (not zran and ci_usize == count_ok)
            checks = [
                (e.blob_index == idx, "blob_index differs from its position"),  # §15.7b
                (e.chunk_size == self.chunk_size and _valid_chunk_size(e.chunk_size), "blob chunk_size differs from the superblock's or is invalid"),  # §15.7c
                (chunk_count <= MAX_CI_ENTRIES, "chunk_count above 2^24"),  # §15.7d
                (e.compression_algo <= 3 and e.ci_compressor <= 3 and e.digest_algo <= 1,
                 "unknown compression or digest algorithm"),  # §15.7e
                (e.uncompressed_size <= 1 << 44 and e.compressed_size <= 1 << 40, "blob sizes out of range"),  # §15.7f
                (blob_features_valid(features), "invalid blob features"),  # §15.7g
                (features & BlobFeatures.ALIGNED, "blob lacks the ALIGNED feature"),  # §15.7h
                (e.ci_offset + e.ci_compressed_size < 1 << 64 and e.ci_compressed_size <= ci_usize,
                 "blob meta offset or compressed size (ci_offset, ci_compressed_size) out of range"),  # §15.7i
                (ci_size_ok, "ci_uncompressed_size does not fit chunk_count"),  # §15.7j
            ]
            for ok, check in checks:
                if not ok:
                    raise self.fail(check, off)
            blobs.append(
                BlobInfo(
                    blob_id=blob_id,
                    compressor=Compressor(e.compression_algo),
                    digester=Digester(e.digest_algo),
                    **{name: getattr(e, name) for name in _BLOB_ENTRY_SAME_NAMES},
                )
            )
            self._mapped.append(DEVICE_SLOT.unpack_from(self.data, DEVT_OFFSET + DEVICE_SLOT.size * idx).mapped_blkaddr)
        return blobs

    def _chunk_table(self) -> np.ndarray:
        """A view of the file: chunks are gathered from it, so it is never copied whole."""
        return np.frombuffer(self.data, dtype=CHUNK_DTYPE, count=self.ct_size // CHUNK_INFO_SIZE, offset=self.ct_off)

    def _prefetch(self, nids: list[int]) -> list[int | None]:
        if not self.pf_size:
            return []
        first: dict[int, int] = {}
        for pos, nid in enumerate(nids):
            first.setdefault(nid, pos)
        out: list[int | None] = []
        table = np.frombuffer(self.data, dtype="<u4", count=self.pf_size // 4, offset=self.pf_off)
        for k, nid in enumerate(table.tolist()):
            if nid == 0:
                out.append(None)
            elif nid in first:
                out.append(first[nid])
            else:
                raise self.fail(f"prefetch entry {k} names nid {nid}, which is not in the tree", self.pf_off + 4 * k)
        return out

    # --- inodes and data (§15.8–12) -------------------------------------------------

    def _inode(self, nid: int) -> _Inode:
        ino = self._inodes.get(nid)
        if ino is None:
            ino = self._parse_inode(nid)
            # Parsing is pure, so only inodes that several dirents should name are worth keeping:
            # caching all of them held ~25 MB per 100k files through the walk.
            if ino.nlink > 1:
                self._inodes[nid] = ino
        return ino

    def _parse_inode(self, nid: int) -> _Inode:
        off = self.meta_base + nid * SLOT
        d = self.data
        if off + 32 > self.size:
            raise self.fail(f"inode of nid {nid} outside the file", off)  # §15.8
        i_format = struct.unpack_from("<H", d, off)[0]
        extended = bool(i_format & 1)
        if extended:
            if off + 64 > self.size:
                raise self.fail(f"inode of nid {nid} outside the file", off)  # §15.8
            fields = INODE_EXTENDED.unpack_from(d, off)
            (_, icount, mode, _, size, i_u, _, uid, gid, mtime, mtime_nsec, nlink, _) = fields
            isize = 64
        else:
            (_, icount, mode, nlink, size, _, i_u, _, uid, gid, _) = INODE_COMPACT.unpack_from(d, off)
            mtime = mtime_nsec = 0
            isize = 32
        if i_format & ~0xF:
            raise self.fail(f"i_format {i_format:#x} uses bits above 3", off)  # §15.9
        layout = (i_format >> 1) & 7
        if layout not in (FLAT_PLAIN, FLAT_INLINE, CHUNK_BASED):
            raise self.fail(f"unsupported data layout {layout}", off)  # §15.9
        xattrs: list[tuple[bytes, bytes]] = []
        data_offset = off + isize
        if icount:
            xsize = 12 + (icount - 1) * 4
            if data_offset + xsize > self.size:
                raise self.fail("xattr area outside the file", data_offset)  # §15.12
            xattrs = self._xattrs(data_offset + 12, data_offset + xsize)
            data_offset += xsize
        return _Inode(off, layout, mode, nlink, size, i_u, uid, gid, mtime, mtime_nsec, extended, xattrs, data_offset)

    def _xattrs(self, pos: int, end: int) -> list[tuple[bytes, bytes]]:
        out = []
        while pos < end:
            if pos + 4 > end:
                raise self.fail("truncated xattr entry", pos)  # §15.12
            name_len, index, value_size = XATTR_ENTRY.unpack_from(self.data, pos)
            if name_len + value_size > end - pos - 4:
                raise self.fail("xattr entry larger than the xattr area", pos)  # §15.12
            prefix = _XATTR_PREFIXES.get(index)
            if prefix is None:
                raise self.fail(f"unknown xattr prefix index {index}", pos)  # §15.12
            name = bytes(self.data[pos + 4 : pos + 4 + name_len])
            value = bytes(self.data[pos + 4 + name_len : pos + 4 + name_len + value_size])
            out.append((prefix + name, value))
            pos += _align(4 + name_len + value_size, 4)
        return out

    def _flat_data(self, ino: _Inode) -> bytes:
        """The bytes of a FLAT_PLAIN / FLAT_INLINE inode (§10), bounds-checked."""
        if ino.layout == CHUNK_BASED:
            raise self.fail("reading a CHUNK_BASED inode as flat data", ino.offset)  # §15.9
        size = ino.size
        nblocks = _chunk_count(size, BLOCK_SIZE)
        full = nblocks - 1 if ino.layout == FLAT_INLINE and nblocks else nblocks
        start = ino.i_u * BLOCK_SIZE
        body_len = min(size, full * BLOCK_SIZE)
        if start + body_len > self.size:
            raise self.fail("flat data blocks outside the file", ino.offset)
        body = bytes(self.data[start : start + body_len])
        tail = size - body_len
        if not tail:
            return body
        pos = ino.data_offset
        if pos % BLOCK_SIZE + tail > BLOCK_SIZE or pos + tail > self.size:
            raise self.fail("inline tail crosses a block boundary or the file end", ino.offset)
        return body + bytes(self.data[pos : pos + tail])

    def _dirents(self, ino: _Inode) -> list[tuple[bytes, int]]:
        self._dir_bytes += ino.size
        if self._dir_bytes > self.size:
            raise self.fail("directory data exceeds the file size (shared dirent blocks?)", ino.offset)
        content = self._flat_data(ino)
        entries: list[tuple[bytes, int]] = []
        for bstart in range(0, len(content), BLOCK_SIZE):
            blk = content[bstart : bstart + BLOCK_SIZE]
            if len(blk) < DIRENT.size:
                raise self.fail("directory block too short for a dirent", ino.offset)  # §15.10
            first_nameoff = DIRENT.unpack_from(blk, 0)[1]
            if first_nameoff % 12 or not 0 < first_nameoff < len(blk):
                raise self.fail(f"bad first e_nameoff {first_nameoff}", ino.offset)  # §15.10
            raw = list(DIRENT.iter_unpack(blk[:first_nameoff]))
            for j, (nid, nameoff, _, _) in enumerate(raw):
                end = raw[j + 1][1] if j + 1 < len(raw) else len(blk)
                if not first_nameoff <= nameoff <= end <= len(blk):
                    raise self.fail(f"e_nameoff {nameoff} not monotonic", ino.offset)  # §15.10
                name = blk[nameoff:end]
                if j + 1 == len(raw):
                    name = name.split(b"\x00", 1)[0]
                if not name or b"/" in name or b"\x00" in name:
                    raise self.fail(f"invalid dirent name {name!r}", ino.offset)
                if entries and name <= entries[-1][0]:
                    raise self.fail(f"dirents not strictly sorted at {name!r}", ino.offset)
                entries.append((name, nid))
        return entries

    def _node(self, ino: _Inode, name: bytes, path: bytes, parent: int) -> Node:
        fmt = stat.S_IFMT(ino.mode)
        if fmt not in _FILE_TYPES:
            raise self.fail(f"unknown file type in mode {ino.mode:#o}", ino.offset)
        node = Node(
            name=name,
            path=path,
            mode=ino.mode,
            uid=ino.uid,
            gid=ino.gid,
            mtime=ino.mtime,
            mtime_nsec=ino.mtime_nsec,
            size=ino.size,
            nlink=ino.nlink,
            xattrs=ino.xattrs,
            parent=parent,
        )
        if fmt == stat.S_IFLNK:
            if ino.size > BLOCK_SIZE:
                raise self.fail(f"symlink i_size {ino.size} above 4096", ino.offset)  # §15.11
            target = self._symlinks.get(ino.offset)
            if target is None:
                target = self._symlinks[ino.offset] = self._flat_data(ino)
            node.symlink = target
        elif fmt == stat.S_IFREG:
            if ino.layout != CHUNK_BASED:
                raise self.fail("regular file is not CHUNK_BASED", ino.offset)
        elif fmt != stat.S_IFDIR and ino.extended:
            node.rdev = ino.i_u
        return node

    def _chunk_addrs(self, ino: _Inode) -> tuple[int, int]:
        """(file offset, count) of a regular file's chunk address array."""
        count = _chunk_count(ino.size, self.chunk_size)
        start = _align(ino.data_offset, 8)
        if start + 8 * count > self.size:
            raise self.fail(f"chunk address array of {count} entries outside the file", ino.offset)
        return start, count

    def _walk(self) -> tuple[list[Node], list[int], list[tuple[int, int]], list[int]]:
        """Nodes in builder order (§16.1), their nids, and each file's chunk address array with its inode offset."""
        root_ino = self._inode(self.root_nid)
        if not stat.S_ISDIR(root_ino.mode):
            raise self.fail("root inode is not a directory", root_ino.offset)
        root = self._node(root_ino, b"/", b"/", -1)
        root.link = 0
        nodes, nids, inodes = [root], [self.root_nid], {0: root_ino}
        seen_dirs = {self.root_nid}
        first_link: dict[int, int] = {}  # regular-file nid -> first node position
        addrs: list[tuple[int, int]] = []
        owners: list[int] = []
        chunk_total = 0

        def expand(pos: int) -> list[int]:
            nonlocal chunk_total
            parent = nodes[pos]
            prefix = parent.path if pos else b""
            subdirs = []
            for name, nid in self._dirents(inodes.pop(pos)):
                if name in (b".", b".."):
                    continue
                child_pos = len(nodes)
                ino = self._inode(nid)
                child = self._node(ino, name, prefix + b"/" + name, pos)
                child.link = child_pos
                if child.is_dir:
                    if nid in seen_dirs:
                        raise self.fail(f"directory nid {nid} reachable twice (cycle?)", ino.offset)
                    seen_dirs.add(nid)
                    inodes[child_pos] = ino
                    subdirs.append(child_pos)
                elif child.is_reg and nid in first_link:
                    head = nodes[first_link[nid]]
                    child.link, child.chunk_start, child.chunk_count = head.link, head.chunk_start, head.chunk_count
                elif child.is_reg:
                    first_link[nid] = child_pos
                    start, count = self._chunk_addrs(ino)
                    child.chunk_start, child.chunk_count = chunk_total, count
                    chunk_total += count
                    addrs.append((start, count))
                    owners.append(ino.offset)
                nodes.append(child)
                nids.append(nid)
                parent.children.append(child_pos)
            return subdirs

        expand_depth_first(expand)
        return nodes, nids, addrs, owners

    # --- chunks (§13, §14, §15.13) --------------------------------------------------

    def _join_chunks(self, addrs: list[tuple[int, int]], owners: list[int]) -> np.ndarray:
        counts = np.array([c for _, c in addrs], dtype=np.int64)
        total = int(counts.sum())
        if total == 0:
            return empty_chunks()
        ends = np.cumsum(counts)

        def owner(i: int) -> int:
            return owners[int(np.searchsorted(ends, i, side="right"))]

        # Chunk address arrays are 8-aligned in a file whose size is a 4096 multiple.
        file_addrs = np.frombuffer(self.data, dtype=CHUNK_ADDR_DTYPE)
        all_addrs = file_addrs[_gather_index([(start // 8, count) for start, count in addrs])]
        del file_addrs
        blob_index = (all_addrs["hi"] & 0xFF).astype(np.int16) - 1  # device id - 1
        ci_index = ((all_addrs["hi"] >> 8).astype(np.uint32) << 16) | all_addrs["lo"]
        bad = np.flatnonzero((blob_index < 0) | (blob_index >= len(self.blobs)))
        if len(bad):
            raise self.fail(f"chunk address with device id {int(blob_index[bad[0]]) + 1}", owner(bad[0]))  # §15.13
        chunk_counts = np.array([b.chunk_count for b in self.blobs], dtype=np.uint32)
        bad = np.flatnonzero(ci_index >= chunk_counts[blob_index])
        if len(bad):
            raise self.fail("chunk address ci index beyond its blob's chunk_count", owner(bad[0]))  # §15.13
        keys = _address_keys(blob_index, ci_index, all_addrs["blk"])
        del blob_index, ci_index

        table = self.table
        t_uoff = table["uncompressed_offset"]
        usable = (table["blob_index"] < 256) & (table["index"] < MAX_CI_ENTRIES) & (t_uoff % BLOCK_SIZE == 0)
        usable &= t_uoff < np.uint64(BLOCK_SIZE << 32)
        rows = np.flatnonzero(usable)
        t_keys = _address_keys(table["blob_index"][rows], table["index"][rows], t_uoff[rows] // np.uint64(BLOCK_SIZE))
        order = np.argsort(t_keys, kind="stable")
        sorted_keys = t_keys[order]
        # nydusd's chunk map is a HashMap filled in table order: the last duplicate wins.
        pos = np.searchsorted(sorted_keys, keys, side="right") - 1
        found = pos >= 0
        found[found] = sorted_keys[pos[found]] == keys[found]
        bad = np.flatnonzero(~found)
        if len(bad):
            i = int(bad[0])
            key = int(keys[i])
            raise self.fail(
                f"chunk address (blob {key >> 56}, ci {(key >> 32) & 0xFF_FFFF}, blk {key & 0xFFFF_FFFF})"  # §14
                " has no chunk-table entry",
                owner(i),
            )
        del keys, found, all_addrs
        # One index array alive at a time: next to the 80-byte chunk records each extra one is 8 bytes per occurrence.
        pos = order[pos]
        pos = rows[pos]
        chunks = table[pos]
        del pos
        # Computed in the records themselves, so at most one 8-byte temporary per occurrence lives at a time.
        file_offset = chunks["file_offset"]
        file_offset[:] = np.arange(total, dtype=np.uint64)
        file_offset -= np.repeat((ends - counts).astype(np.uint64), counts)
        file_offset *= np.uint64(self.chunk_size)
        return chunks


def _address_keys(blob_index: np.ndarray, ci_index: np.ndarray, blkaddr: np.ndarray) -> np.ndarray:
    """One u64 per chunk address: blob (8 bits), ci index (24 bits), 4K block address (32 bits)."""
    keys = blob_index.astype(np.uint64) << np.uint64(56)
    keys |= ci_index.astype(np.uint64) << np.uint64(32)
    keys |= blkaddr
    return keys


def _gather_index(ranges: list[tuple[int, int]]) -> np.ndarray:
    """Positions start..start+count-1 of every (start, count) range, concatenated."""
    starts = np.array([s for s, _ in ranges], dtype=np.int64)
    counts = np.array([c for _, c in ranges], dtype=np.int64)
    firsts = np.cumsum(counts) - counts
    return np.repeat(starts - firsts, counts) + np.arange(int(counts.sum()), dtype=np.int64)


def _overlap(a_off: int, a_size: int, b_off: int, b_size: int) -> bool:
    return a_off < b_off + b_size and b_off < a_off + a_size


# =======================================================================================
# Writer


class _Allocator:
    """The builder's metadata cursor with its queues of partly used blocks (§16.2)."""

    def __init__(self) -> None:
        self.cursor = ROOT_OFFSET
        self.available: list[deque[int]] = [deque() for _ in range(BLOCK_SIZE // SLOT)]
        self.nonempty = 0  # bit k set iff available[k] is not empty

    def append_available(self, off: int) -> None:
        if off % BLOCK_SIZE:
            k = (BLOCK_SIZE - off % BLOCK_SIZE) // SLOT
            self.available[k].append(off - off % BLOCK_SIZE)
            self.nonempty |= 1 << k

    def allocate_available(self, size: int) -> int:
        """An offset in a reused block with room for ``size`` bytes, or 0 (the first queue k >= need wins)."""
        if size >= BLOCK_SIZE:
            return 0
        need = _chunk_count(size, SLOT)
        candidates = self.nonempty >> need
        if not candidates:
            return 0
        k = need + (candidates & -candidates).bit_length() - 1
        queue = self.available[k]
        off = queue.popleft() + BLOCK_SIZE - SLOT * k
        if not queue:
            self.nonempty &= ~(1 << k)
        self.append_available(off + SLOT * need)
        return off

    def align(self, n: int) -> None:
        self.cursor = _align(self.cursor, n)

    def take(self, size: int) -> int:
        off = self.cursor
        self.cursor += size
        return off


@dataclass(slots=True)
class _Placed:
    offset: int = 0  # relative to orig_meta_addr = 0
    layout: int = FLAT_PLAIN
    data_offset: int = 0  # dirents_offset: start of the full flat blocks
    xattr_blob: bytes = b""
    inode_size: int = 64
    links: int = 1  # regular files: names of the inode written here; 0 for a later hard link to it


def dump(bs: Bootstrap) -> bytearray:
    """Serialize ``bs`` as the 2.2 directory builder would (extended inodes only, §16), in one buffer."""
    return joined(serialize(bs))


def serialize(bs: Bootstrap) -> Serialized:
    """``dump``'s bytes in three parts: the metadata blocks (built in place: their layout is not
    sequential), the chunk-info table straight from its array, and the padding of the last block."""
    return _Writer(bs).serialize()


class _Writer:
    def __init__(self, bs: Bootstrap):
        self.bs = bs
        self.nodes = bs.nodes
        self.buf = bytearray()  # the metadata, up to the chunk-info table
        self.table = np.zeros(0, dtype=np.int64)  # the chunk-info table: its records' positions in bs.chunks
        self.size = 0

    def serialize(self) -> Serialized:
        try:
            self._layout()
        except struct.error as exc:
            raise RafsFormatError(MODEL, f"a value does not fit its on-disk field: {exc}") from None
        return self

    def parts(self) -> Iterator[Part]:
        yield self.buf
        # The table is copied out of the chunk array a part at a time: it is never held whole.
        for at in range(0, len(self.table), TABLE_PART):
            records = self.bs.chunks[self.table[at : at + TABLE_PART]]
            records["reserved"] = 0
            yield memoryview(records.view(np.uint8))
        yield bytes(self.size - len(self.buf) - CHUNK_INFO_SIZE * len(self.table))

    def _layout(self) -> None:
        bs = self.bs
        self._check_model()
        # The table first: its sort's temporaries then do not sit on top of the metadata.
        table = self.table = self._chunk_table()
        n = len(self.nodes)
        # One shared empty tuple for the childless (most nodes): not one empty list each.
        self.children = [
            sorted(n.children, key=lambda c: self.nodes[c].name) if n.children else () for n in self.nodes
        ]
        self.placed = [_Placed() for _ in range(n)]
        self.dir_blocks: dict[int, list[list[tuple[bytes, int]]]] = {}
        self.dir_size: dict[int, int] = {}
        self._allocate()

        nblobs = len(bs.blobs)
        bt_off = _align(DEVT_OFFSET + DEVICE_SLOT.size * nblobs, BLOCK_SIZE)
        bt_size = BLOB_ENTRY.size * nblobs
        # With no blob the metadata starts at 0 and the root would overlap a prefetch table.
        prefetch = bs.prefetch if nblobs else []
        pf_off = bt_off + bt_size if prefetch else 0
        pf_size = 4 * len(prefetch)
        self.shift = _align(bt_off + bt_size + pf_size, BLOCK_SIZE) if nblobs else 0

        self._put(0, bytes(BLOCK_SIZE))
        has_xattr = self._write_nodes()
        for k, pos in enumerate(prefetch):
            nid = 0 if pos is None else self.placed[pos].offset // SLOT
            self._put(pf_off + 4 * k, _U32.pack(nid))

        ct_off = _align(len(self.buf), BLOCK_SIZE)
        self.buf.extend(bytes(ct_off - len(self.buf)))
        file_size = self.size = _align(ct_off + len(table) * CHUNK_INFO_SIZE, BLOCK_SIZE)

        flags = bs.flags & ~(SuperFlags.INLINED_CHUNK_DIGEST | SuperFlags.HAS_XATTR)
        if all(b.features & BlobFeatures.INLINED_CHUNK_DIGEST for b in bs.blobs):
            flags |= SuperFlags.INLINED_CHUNK_DIGEST
        if has_xattr:
            flags |= SuperFlags.HAS_XATTR
        blocks = [b.uncompressed_size // BLOCK_SIZE for b in bs.blobs]
        sb = SUPERBLOCK.pack(
            s_magic=RAFS_V6_MAGIC, s_checksum=0, s_feature_compat=FEATURE_COMPAT_RAFS_V6, s_blkszbits=12,
            s_extslots=0, s_root_nid=ROOT_OFFSET // SLOT, s_inos=n, s_build_time=0, s_build_time_nsec=0,
            s_blocks=sum(blocks), s_meta_blkaddr=self.shift // BLOCK_SIZE, s_xattr_blkaddr=0, s_uuid=bytes(16),
            s_volume_name=bytes(16), s_feature_incompat=FEATURE_INCOMPAT, s_u=0, s_extra_devices=nblobs,
            s_devt_slotoff=DEVT_SLOTOFF,
        )  # fmt: skip
        ext = EXT_SUPERBLOCK.pack(
            s_flags=int(flags), s_blob_table_offset=bt_off, s_blob_table_size=bt_size, s_chunk_size=bs.chunk_size,
            s_chunk_table_offset=ct_off, s_chunk_table_size=len(table) * CHUNK_INFO_SIZE,
            s_prefetch_table_offset=pf_off, s_prefetch_table_size=pf_size,
        )  # fmt: skip
        self._put(RAFS_V6_SB_OFFSET, sb)
        self._put(EXT_OFFSET, ext)
        mapped = [0] * nblobs
        if QUIRK_MAPPED_BLKADDR in bs.quirks:
            mapped = _mapped_blkaddrs(bs.blobs, file_size)
        for idx, blob in enumerate(bs.blobs):
            slot = DEVICE_SLOT.pack(blob_id=blob.blob_id.encode(), blocks=blocks[idx], mapped_blkaddr=mapped[idx])
            self._put(DEVT_OFFSET + DEVICE_SLOT.size * idx, slot)
            self._put(bt_off + BLOB_ENTRY.size * idx, _pack_blob(idx, blob))
        if len(self.buf) != ct_off:
            raise AssertionError("metadata written past the chunk-info table")

    def _put(self, off: int, data: bytes) -> None:
        end = off + len(data)
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[off:end] = data

    # --- model checks -----------------------------------------------------------------

    def _check_model(self) -> None:
        bs, nodes = self.bs, self.nodes

        def refuse(check: str) -> RafsFormatError:
            return RafsFormatError(MODEL, check)

        if not _valid_chunk_size(bs.chunk_size):
            raise refuse(f"chunk size {bs.chunk_size:#x} is not a power of two in 4 KiB..16 MiB")
        if sum(1 for f in _COMPRESSION_FLAGS if bs.flags & f) != 1 or sum(1 for f in _HASH_FLAGS if bs.flags & f) != 1:
            raise refuse(f"flags {bs.flags:#x} need exactly one compression and one hash bit")
        if bs.flags & ~SUPER_FLAGS_KNOWN:
            raise refuse(f"unknown superblock flags {bs.flags & ~SUPER_FLAGS_KNOWN:#x}")
        if len(bs.blobs) > MAX_BLOBS[6]:
            raise refuse(f"{len(bs.blobs)} blobs: RAFS v6 holds at most {MAX_BLOBS[6]}")
        for idx, blob in enumerate(bs.blobs):
            if len(blob.blob_id.encode()) > 64:
                raise refuse(f"blob {idx}: id longer than 64 bytes")
            if blob.chunk_size != bs.chunk_size:
                raise refuse(f"blob {idx}: chunk_size {blob.chunk_size:#x} differs from the image's")
            if blob.uncompressed_size % BLOCK_SIZE or blob.uncompressed_size // BLOCK_SIZE >= 1 << 32:
                raise refuse(f"blob {idx}: uncompressed_size {blob.uncompressed_size} is not a 4K block count")
            if not blob.features & BlobFeatures.ALIGNED or not blob_features_valid(blob.features):
                raise refuse(f"blob {idx}: features {blob.features:#x} do not load in v6 (ALIGNED needed)")
            if not 0 < blob.chunk_count <= MAX_CI_ENTRIES:
                raise refuse(f"blob {idx}: chunk_count {blob.chunk_count} outside 1..2^24")
        if not nodes or not nodes[0].is_dir:
            raise refuse("the root must be a directory")
        seen = [False] * len(nodes)
        seen[0] = True
        for pos, node in enumerate(nodes):
            for c in node.children:
                if not 0 < c < len(nodes) or seen[c] or nodes[c].parent != pos:
                    raise refuse(f"{node.path!r}: inconsistent child {c}")
                seen[c] = True
            if len({nodes[c].name for c in node.children}) != len(node.children):
                raise refuse(f"{node.path!r}: two children share a name")
            if pos and (not 0 < len(node.name) <= MAX_NAME or node.name in (b".", b"..")
                        or b"/" in node.name or b"\x00" in node.name):  # fmt: skip
                raise refuse(f"{node.path!r}: name must be 1..255 bytes without '/' or NUL")
            if node.children and not node.is_dir:
                raise refuse(f"{node.path!r}: only directories have children")
            if stat.S_IFMT(node.mode) not in _FILE_TYPES:
                raise refuse(f"{node.path!r}: unknown file type {node.mode:#o}")
            if node.is_symlink and (not node.symlink or len(node.symlink) > BLOCK_SIZE):
                raise refuse(f"{node.path!r}: symlink target must be 1..4096 bytes")
            if node.is_reg and (
                node.chunk_count != _chunk_count(node.size, bs.chunk_size)
                or node.chunk_start < 0
                or node.chunk_start + node.chunk_count > len(bs.chunks)
            ):
                raise refuse(f"{node.path!r}: chunk range does not cover i_size {node.size}")
            for name, value in node.xattrs:
                _split_xattr(name, node.path)
                if len(value) > 0xFFFF:
                    raise refuse(f"{node.path!r}: xattr value of {len(value)} bytes")
        if not all(seen):
            raise refuse(f"node {seen.index(False)} is not reachable from the root")
        chunks = bs.chunks
        if len(chunks):
            uoff = chunks["uncompressed_offset"]
            if np.any(chunks["blob_index"] >= len(bs.blobs)):
                raise refuse("a chunk names a blob outside the blob table")
            if np.any(chunks["index"] >= MAX_CI_ENTRIES):
                raise refuse("a chunk index is 2^24 or more (v6 stores 24 bits)")
            if np.any(uoff % BLOCK_SIZE) or np.any(uoff >= np.uint64(BLOCK_SIZE << 32)):
                raise refuse("a chunk's uncompressed offset is not a 32-bit 4K block address")
        for pos in bs.prefetch:
            if pos is not None and not 0 <= pos < len(nodes):
                raise refuse(f"prefetch entry {pos} is not a node")

    # --- layout (§16.1, §16.2) --------------------------------------------------------

    def _inode_size(self, pos: int) -> int:
        placed = self.placed[pos]
        placed.xattr_blob = _encode_xattrs(self.nodes[pos].xattrs)
        placed.inode_size = 64 + len(placed.xattr_blob)
        return placed.inode_size

    def _place_with_tail(self, pos: int, d: int) -> None:
        alloc, placed = self.alloc, self.placed[pos]
        isz = self._inode_size(pos)
        tail = d % BLOCK_SIZE
        if tail and isz + tail <= BLOCK_SIZE:
            off = alloc.allocate_available(isz + tail)
            if not off:
                if BLOCK_SIZE - alloc.cursor % BLOCK_SIZE < isz + tail:
                    alloc.append_available(alloc.cursor)
                    alloc.align(BLOCK_SIZE)
                off = alloc.take(isz + tail)
            if d != tail:
                alloc.append_available(alloc.cursor)
                alloc.align(BLOCK_SIZE)
            placed.data_offset = alloc.take(d - tail)
            placed.layout = FLAT_INLINE
        else:
            off = alloc.allocate_available(isz) or alloc.take(isz)
            alloc.append_available(alloc.cursor)
            alloc.align(BLOCK_SIZE)
            placed.data_offset = alloc.take(d)
            alloc.align(BLOCK_SIZE)
            placed.layout = FLAT_PLAIN
        placed.offset = off

    def _place_dir(self, pos: int) -> None:
        entries = [(b".", pos), (b"..", max(self.nodes[pos].parent, 0))]
        entries += [(self.nodes[c].name, c) for c in self.children[pos]]
        entries.sort()
        blocks: list[list[tuple[bytes, int]]] = [[]]
        used = 0
        for name, target in entries:
            if used + 12 + len(name) > BLOCK_SIZE:
                blocks.append([])
                used = 0
            blocks[-1].append((name, target))
            used += 12 + len(name)
        self.dir_blocks[pos] = blocks
        self.dir_size[pos] = BLOCK_SIZE * (len(blocks) - 1) + used
        self._place_with_tail(pos, self.dir_size[pos])
        self.alloc.align(SLOT)

    def _place_non_dir(self, pos: int, groups: dict[int, int]) -> None:
        node, alloc, placed = self.nodes[pos], self.alloc, self.placed[pos]
        if node.is_reg:
            group = node.link if 0 <= node.link < len(self.nodes) else pos
            if group in groups:
                if _inode_facts(node) != _inode_facts(self.nodes[groups[group]]):
                    raise RafsFormatError(MODEL, f"{node.path!r}: hard links of one inode carry different metadata")
                first = self.placed[groups[group]]
                placed.offset, placed.inode_size, placed.xattr_blob = first.offset, first.inode_size, first.xattr_blob
                placed.layout = CHUNK_BASED
                placed.links = 0
                first.links += 1
                return
            groups[group] = pos
            isz = self._inode_size(pos)
            placed.layout = CHUNK_BASED
            total = _align(isz, 8) + 8 * node.chunk_count
            off = alloc.allocate_available(total)
            if not off:
                off = alloc.take(isz)
                alloc.align(8)
                alloc.take(8 * node.chunk_count)
            placed.offset = off
        elif node.is_symlink:
            self._place_with_tail(pos, len(node.symlink or b""))
        else:
            placed.offset = alloc.take(self._inode_size(pos))
        alloc.align(SLOT)

    def _allocate(self) -> None:
        self.alloc = _Allocator()
        groups: dict[int, int] = {}

        def expand(pos: int) -> list[int]:
            self._place_dir(pos)
            for c in self.children[pos]:
                if not self.nodes[c].is_dir:
                    self._place_non_dir(c, groups)
            return [c for c in self.children[pos] if self.nodes[c].is_dir]

        expand_depth_first(expand)

    # --- serialization (§16.3) --------------------------------------------------------

    def _write_nodes(self) -> bool:
        nodes, shift, bs = self.nodes, self.shift, self.bs
        subdirs = [0] * len(nodes)
        for pos, node in enumerate(nodes):
            if node.is_dir and pos:
                subdirs[node.parent] += 1
        chunk_words = self._chunk_format_words()
        addr_bytes = _chunk_addresses(bs.chunks)
        has_xattr = False
        for pos, node in enumerate(nodes):
            placed = self.placed[pos]
            if not placed.links:
                # A later name of an inode already placed: every field of the shared inode is
                # the same from either name (_place_non_dir checks), so the name placed first writes it.
                continue
            has_xattr |= bool(placed.xattr_blob)
            off = placed.offset + shift
            inode_end = off + placed.inode_size
            if node.is_dir:
                size, nlink, i_u = self.dir_size[pos], 2 + subdirs[pos], (placed.data_offset + shift) // BLOCK_SIZE
                self._write_dir(pos, placed.data_offset + shift, inode_end)
            elif node.is_symlink:
                target = node.symlink or b""
                size, nlink, i_u = len(target), node.nlink, (placed.data_offset + shift) // BLOCK_SIZE
                self._put(inode_end if placed.layout == FLAT_INLINE else placed.data_offset + shift, target)
            elif node.is_reg:
                size, nlink, i_u = node.size, placed.links, chunk_words[pos]
                start = node.chunk_start * 8
                self._put(_align(inode_end, 8), addr_bytes[start : start + node.chunk_count * 8])
            else:
                size, nlink, i_u = node.size, node.nlink, node.rdev & 0xFFFF_FFFF
            link = node.link if node.is_reg and 0 <= node.link < len(nodes) else pos
            i_ino = link + 1 if pos else 0
            icount = (len(placed.xattr_blob) - 12) // 4 + 1 if placed.xattr_blob else 0
            inode = INODE_EXTENDED.pack(1 | placed.layout << 1, icount, node.mode, 0, size, i_u, i_ino, node.uid,
                                    node.gid, node.mtime, node.mtime_nsec, nlink, bytes(16))  # fmt: skip
            self._put(off, inode + placed.xattr_blob)
        return has_xattr

    def _write_dir(self, pos: int, blocks_off: int, inode_end: int) -> None:
        placed, blocks = self.placed[pos], self.dir_blocks[pos]
        for k, block in enumerate(blocks):
            nameoff = 12 * len(block)
            dirents, names = bytearray(), bytearray()
            for name, target in block:
                ftype = _FILE_TYPES[stat.S_IFMT(self.nodes[target].mode)]
                dirents += DIRENT.pack(self.placed[target].offset // SLOT, nameoff + len(names), ftype, 0)
                names += name
            last_inline = placed.layout == FLAT_INLINE and k == len(blocks) - 1
            self._put(inode_end if last_inline else blocks_off + BLOCK_SIZE * k, bytes(dirents + names))

    def _chunk_format_words(self) -> list[int]:
        """i_u of each regular file by position (§13.1), with the builder's contiguity trick."""
        bs, cs = self.bs, self.bs.chunk_size
        chunks = bs.chunks
        uoff = chunks["uncompressed_offset"]
        blob = chunks["blob_index"]
        step_ok = np.ones(len(chunks), dtype=bool)
        if len(chunks) > 1:
            # u64 differences: a step down wraps to a huge value, which is not cs either.
            step_ok[1:] = (blob[1:] == blob[:-1]) & (uoff[1:] - uoff[:-1] == cs)
        bad_before = np.zeros(len(chunks) + 1, dtype=np.int32)  # a chunk array stays below 2^31 records
        np.cumsum(~step_ok, dtype=np.int32, out=bad_before[1:])
        del step_ok
        words = [0] * len(self.nodes)
        base = CHUNK_FORMAT_INDEXES | ((cs.bit_length() - 1 - 12) & 0x1F)
        for pos, node in enumerate(self.nodes):
            if not node.is_reg:
                continue
            s, c = node.chunk_start, node.chunk_count
            word = base
            if node.size > cs and c > 1 and bad_before[s + c] - bad_before[s + 1] == 0:
                big = 1 << (node.size - 1).bit_length()
                word = CHUNK_FORMAT_INDEXES | ((big.bit_length() - 1 - 12) & 0x1F)
            words[pos] = word
        return words

    def _chunk_table(self) -> np.ndarray:
        """One record per distinct (digest, blob_index), sorted, last insertion wins (§14): the
        positions of the table's records in the chunk array, in table order.

        In a loadable model a (blob_index, index) pair names one chunk record wherever it occurs,
        so the table is built from the last insertion of each pair; only a model where a pair
        names two different records needs the sort over every occurrence.
        """
        ranges = [(n.chunk_start, n.chunk_count) for n in self.nodes if n.is_reg and n.chunk_count]
        if not ranges:
            return np.zeros(0, dtype=np.int64)
        chunks = self.bs.chunks
        # Files that take the chunk array in order, each once (no hard links), insert it as it is:
        # no index array as long as the occurrences is needed to read them in insertion order.
        occ = None if _tiles(ranges, len(chunks)) else _gather_index(ranges)
        blob, index = chunks["blob_index"], chunks["index"]
        if occ is not None:
            blob, index = blob[occ], index[occ]
        pair = (blob.astype(np.uint64) << np.uint64(32)) | index
        del blob, index
        order = np.argsort(pair, kind="stable")
        same_pair = pair[order]
        del pair
        same_pair = same_pair[1:] == same_pair[:-1]
        if occ is not None:
            order = occ[order]
            del occ
        for word in _record_words(chunks):
            w = word[order]
            if np.any(same_pair & (w[1:] != w[:-1])):
                del order
                return _table_of(chunks, _gather_index(ranges))
        last_of_pair = order[np.append(~same_pair, True)]
        del order, same_pair
        return _table_of(chunks, last_of_pair)


def _record_words(chunks: np.ndarray) -> list[np.ndarray]:
    """Bytes 0..63 of each chunk record (all but file_offset, index and reserved) as eight u64 views."""
    rows = np.ascontiguousarray(chunks).view(np.uint8).reshape(len(chunks), CHUNK_DTYPE.itemsize)
    words = rows[:, : CHUNK_DTYPE.fields["file_offset"][1]].view("<u8")
    return [words[:, k] for k in range(words.shape[1])]


def _tiles(ranges: list[tuple[int, int]], n: int) -> bool:
    """(start, count) ranges cover 0..n-1 in order, each position once."""
    at = 0
    for start, count in ranges:
        if start != at:
            return False
        at += count
    return at == n


def _table_of(chunks: np.ndarray, occ: np.ndarray) -> np.ndarray:
    """The chunk table of the records ``chunks[occ]`` in insertion order: sorted by (digest,
    blob_index), last wins; as positions in ``chunks``, so that no record is copied."""
    rows = np.ascontiguousarray(chunks).view(np.uint8).reshape(len(chunks), CHUNK_DTYPE.itemsize)
    start = CHUNK_DTYPE.fields["block_id"][1]
    words = rows[occ, start : start + 32].view(">u8")
    blob = chunks["blob_index"][occ]
    order = np.lexsort((blob, words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
    sw = words[order]
    del words
    same_next = np.zeros(len(order), dtype=bool)
    same_next[:-1] = np.all(sw[1:] == sw[:-1], axis=1) & (blob[order[1:]] == blob[order[:-1]])
    del sw, blob
    srt = occ[order]  # positions in chunks, in table order before the last of each digest is kept
    del order
    last = np.flatnonzero(~same_next)
    group_last = last[np.searchsorted(last, np.arange(len(srt)))]
    loc = ("index", "uncompressed_offset", "compressed_offset", "compressed_size", "uncompressed_size", "flags")
    for field in loc:
        values = chunks[field][srt]
        moved = np.flatnonzero(values != values[group_last])
        if moved.size:
            i = int(srt[moved[0]])
            raise RafsFormatError(
                MODEL,
                f"digest {bytes(chunks['block_id'][i]).hex()} sits at two locations in blob "
                f"{int(chunks['blob_index'][i])}: the v6 chunk table can hold only one",
            )
    return srt[last]


def _inode_facts(node: Node) -> tuple:
    return (node.mode, node.uid, node.gid, node.mtime, node.mtime_nsec, node.size, node.xattrs, node.chunk_start,
            node.chunk_count)  # fmt: skip


def _chunk_addresses(chunks: np.ndarray) -> memoryview:
    """Every occurrence's 8-byte chunk address, as bytes (a view of the array, not a copy of it)."""
    addr = np.zeros(len(chunks), dtype=CHUNK_ADDR_DTYPE)
    index = chunks["index"].astype(np.uint32)
    addr["lo"] = index & 0xFFFF
    addr["hi"] = (chunks["blob_index"].astype(np.uint32) + 1) | ((index >> 16) << 8)
    del index
    addr["blk"] = chunks["uncompressed_offset"] // np.uint64(BLOCK_SIZE)
    return memoryview(addr.view(np.uint8))


def _split_xattr(name: bytes, path: bytes) -> tuple[int, bytes]:
    for index, prefix in _XATTR_PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            suffix = name[len(prefix) :]
            if len(suffix) > 0xFF:
                break
            return index, suffix
    raise RafsFormatError(MODEL, f"{path!r}: xattr {name!r} cannot be stored in RAFS v6")


def _encode_xattrs(xattrs: list[tuple[bytes, bytes]]) -> bytes:
    if not xattrs:
        return b""
    out = bytearray(XATTR_HEADER.pack(0, 0, bytes(7)))
    for name, value in xattrs:
        index, suffix = _split_xattr(name, b"")
        entry = XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        out += entry + bytes(_align(len(entry), 4) - len(entry))
    if (len(out) - 12) // 4 + 1 > 0xFFFF:
        raise RafsFormatError(MODEL, "xattrs too large for i_xattr_icount")
    return bytes(out)


def _pack_blob(idx: int, blob: BlobInfo) -> bytes:
    return BLOB_ENTRY.pack(
        blob_id=blob.blob_id.encode(),
        blob_index=idx,
        compression_algo=int(blob.compressor),
        digest_algo=int(blob.digester),
        **{name: getattr(blob, name) for name in _BLOB_ENTRY_SAME_NAMES},
    )
