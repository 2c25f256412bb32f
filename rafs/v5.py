"""RAFS v5 bootstrap reader and writer (rafs-v5.md).

``load`` parses a bootstrap into the shared model and applies every check nydusd 2.2 makes
on the superblock, the tables and the inode records (§11.1–§11.3) to every record up front,
because nydusd itself only validates inodes lazily and a compactor touches all of them.
``dump`` re-serialises a model with the nydus-image 2.2 writer recipe (§12): records are
renumbered from the tree, inode numbers, link counts and digests are recomputed.
"""

from __future__ import annotations

import itertools
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from typing import NoReturn

import numpy as np

from .digest import Digester, digest
from .errors import RafsFormatError, UnsupportedLayoutError
from .flags import (
    SUPER_FLAGS_KNOWN,
    SuperFlags,
    blob_features_valid,
    compressor_from_flags,
    digester_from_flags,
)
from .constants import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RAFS_V5_MAGIC, RAFS_V5_VERSION
from .model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node, Part, Serialized, joined

SUPERBLOCK_SIZE = 8192
ROOT_INDEX = 1
MAX_FILE_SIZE = 0x8000_0000  # nydusd maps at most 2 GiB of bootstrap
LOADER_NAME_MAX = 256  # nydusd's bound on i_name_size; the builder stops at NAME_MAX
NAME_MAX = 255
INODE_TABLE_VALUE_MIN = 1024  # exclusive: a record never starts inside the superblock
INODE_TABLE_VALUE_LIMIT = 1 << 29  # exclusive
CHUNK_SIZE = CHUNK_DTYPE.itemsize
PART_SIZE = 1 << 20  # records are handed out in parts of about this size (serialize)
XATTR_PREFIXES = (b"user.", b"security.", b"trusted.")
XATTR_ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
XATTR_KEY_MAX = 255
XATTR_VALUE_MAX = 65536
MODEL = "<model>"

SUPERBLOCK = struct.Struct("<IIIIQQQQQIIIIQ")
INODE = struct.Struct("<32sQQIIIIQQQIIIHHIIQ8s")
EXT_BLOB_ENTRY = struct.Struct("<IIQQ40s")
BLOB_ENTRY_HEAD = struct.Struct("<II")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


class InodeFlags:
    """RafsV5InodeFlags (§7.3), plain ints: they are tested on every record and IntFlag is slow."""

    SYMLINK = 0x1
    HARDLINK = 0x2
    XATTR = 0x4
    HAS_HOLE = 0x8


def align8(n: int) -> int:
    return (n + 7) & ~7


def _pad8(b: bytes) -> bytes:
    return b + bytes(align8(len(b)) - len(b))


@dataclass(slots=True)
class SuperBlock:
    s_magic: int
    s_fs_version: int
    s_sb_size: int
    s_block_size: int
    s_flags: int
    s_inodes_count: int
    s_inode_table_offset: int
    s_prefetch_table_offset: int
    s_blob_table_offset: int
    s_inode_table_entries: int
    s_prefetch_table_entries: int
    s_blob_table_size: int
    s_extended_blob_table_entries: int
    s_extended_blob_table_offset: int

    def pack(self) -> bytes:
        return SUPERBLOCK.pack(*astuple(self)).ljust(SUPERBLOCK_SIZE, b"\0")


@dataclass(slots=True)
class _Record:
    """Where the parts of one RafsV5Inode live; its fields are already in its Node."""

    node: Node
    offset: int
    end: int
    i_ino: int
    i_child_index: int
    i_child_count: int
    xattr_offset: int  # start of the pairs, -1 without an xattr block
    xattr_size: int
    chunk_offset: int


# --------------------------------------------------------------------------------------------
# Reader


def load(data: bytes | bytearray | memoryview, path: str) -> Bootstrap:
    """Parse a RAFS v5 bootstrap held in memory; ``path`` only names the file in errors."""
    return _Reader(memoryview(data), str(path)).load()


def load_owned(buf: np.ndarray, path: str, before_change: Callable[[], object] | None = None) -> Bootstrap:
    """``load`` for a whole file read into a uint8 array that the caller gives up.

    The chunk records are moved to the front of ``buf`` and ``buf`` is shrunk to them: a big
    bootstrap is then never held twice (file and chunk array) while it is parsed. ``buf`` must
    own its memory and nothing else may refer to it once ``before_change`` (if any) returns, which
    is called before the first byte of ``buf`` changes.
    """
    if buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.owndata or not buf.flags.c_contiguous:
        raise ValueError("load_owned needs a contiguous 1-d uint8 array that owns its memory")
    return _Reader(memoryview(buf), str(path), owned=buf, before_change=before_change).load()


class _Reader:
    def __init__(
        self, data: memoryview, path: str, owned: np.ndarray | None = None,
        before_change: Callable[[], object] | None = None,
    ):  # fmt: skip
        self.data = data
        self.path = path
        self.size = len(data)
        self.owned = owned
        self.before_change = before_change

    def fail(self, check: str, offset: int | None = None) -> NoReturn:
        raise RafsFormatError(self.path, check, offset)

    def load(self) -> Bootstrap:
        sb = self._superblock()
        blobs = self._blobs(sb)
        records = self._records(sb)
        order, parent_of = self._walk(records)
        position = [0] * (len(records) + 1)
        for pos, index in enumerate(order):
            position[index] = pos
        nodes, spans = self._nodes(records, order, parent_of, position)
        del records
        prefetch = self._prefetch(sb, position)
        chunks = self._chunks(spans)
        if len(chunks) and int(chunks["blob_index"].max()) >= len(blobs):
            self.fail("chunk blob_index beyond the blob table")
        return Bootstrap(
            version=5,
            flags=sb.s_flags,
            chunk_size=sb.s_block_size,
            blobs=blobs,
            nodes=nodes,
            chunks=chunks,
            prefetch=prefetch,
        )

    def _bytes(self, start: int, end: int) -> bytes:
        return bytes(self.data[start:end])

    # §11.1, §11.2
    def _superblock(self) -> SuperBlock:
        if self.size < SUPERBLOCK.size:
            self.fail("file shorter than the superblock")
        sb = SuperBlock(*SUPERBLOCK.unpack_from(self.data, 0))
        if sb.s_magic != RAFS_V5_MAGIC or sb.s_fs_version != RAFS_V5_VERSION:
            self.fail("bad magic or version: not a RAFS v5 superblock", 0)
        if sb.s_sb_size != SUPERBLOCK_SIZE:
            self.fail("s_sb_size is not 8192", 8)
        if self.size <= SUPERBLOCK_SIZE:
            self.fail("file not larger than the superblock")
        if self.size > MAX_FILE_SIZE:
            self.fail("file larger than 2 GiB")
        if self.size % 8:
            self.fail("file size not a multiple of 8")
        bsz = sb.s_block_size
        if bsz & (bsz - 1) or not MIN_CHUNK_SIZE <= bsz <= MAX_CHUNK_SIZE:
            self.fail("s_block_size not a power of two in [4 KiB, 16 MiB]", 12)
        if sb.s_flags & ~SUPER_FLAGS_KNOWN:
            self.fail("unknown s_flags bits", 16)
        if sb.s_inodes_count > sb.s_inode_table_entries:
            self.fail("s_inodes_count exceeds s_inode_table_entries", 24)
        inode = self._range("inode table", sb.s_inode_table_offset, 4 * sb.s_inode_table_entries, 32)
        blob = self._range("blob table", sb.s_blob_table_offset, sb.s_blob_table_size, 48)
        self._disjoint("blob table", blob, [inode])
        tables = [inode, blob]
        if sb.s_extended_blob_table_entries > 0:
            ext = self._range(
                "extended blob table", sb.s_extended_blob_table_offset, 64 * sb.s_extended_blob_table_entries, 72
            )
            self._disjoint("extended blob table", ext, tables)
            tables.append(ext)
        if sb.s_prefetch_table_entries > 0:
            pre = self._range("prefetch table", sb.s_prefetch_table_offset, 4 * sb.s_prefetch_table_entries, 40)
            self._disjoint("prefetch table", pre, tables)
        return sb
    def _range(self, what: str, offset: int, size: int, field_offset: int) -> tuple[int, int]:
        if offset % 8:
            self.fail(f"{what} offset not 8-aligned", field_offset)
        if offset < SUPERBLOCK_SIZE or offset + size > self.size:
            self.fail(f"{what} outside the metadata range", field_offset)
        return offset, offset + size

    def _disjoint(self, what: str, r: tuple[int, int], others: list[tuple[int, int]]) -> None:
        for o in others:
            if r[0] < o[1] and o[0] < r[1]:
                self.fail(f"{what} overlaps another table", r[0])

    # §5, §6
    def _blobs(self, sb: SuperBlock) -> list[BlobInfo]:
        ext: list[tuple[int, int, int, int]] = []
        if sb.s_extended_blob_table_entries > 0 and sb.s_extended_blob_table_offset > 0:
            for i in range(sb.s_extended_blob_table_entries):
                off = sb.s_extended_blob_table_offset + i * EXT_BLOB_ENTRY.size
                chunk_count, features, usize, csize, _ = EXT_BLOB_ENTRY.unpack_from(self.data, off)
                if not blob_features_valid(features):
                    self.fail("invalid blob feature flags", off + 4)
                ext.append((chunk_count, features, usize, csize))
        start = sb.s_blob_table_offset
        table = self._bytes(start, start + sb.s_blob_table_size)
        compressor = compressor_from_flags(sb.s_flags)
        digester = digester_from_flags(sb.s_flags)
        blobs: list[BlobInfo] = []
        pos = 0
        # nydusd's loop: an entry needs more than its 8-byte head; the last one has no NUL.
        while len(table) - pos > BLOB_ENTRY_HEAD.size:
            ra_offset, ra_size = BLOB_ENTRY_HEAD.unpack_from(table, pos)
            end = table.find(b"\0", pos + BLOB_ENTRY_HEAD.size)
            if end < 0:
                end = len(table)
            try:
                blob_id = table[pos + BLOB_ENTRY_HEAD.size : end].decode("utf-8")
            except UnicodeDecodeError:
                self.fail("blob id is not UTF-8", start + pos)
            if not blob_id:
                self.fail("empty blob id", start + pos)
            chunk_count, features, usize, csize = ext[len(blobs)] if len(blobs) < len(ext) else (0, 0, 0, 0)
            blobs.append(
                BlobInfo(
                    blob_id=blob_id,
                    chunk_count=chunk_count,
                    compressed_size=csize,
                    uncompressed_size=usize,
                    features=features,
                    compressor=compressor,
                    digester=digester,
                    chunk_size=sb.s_block_size,
                    readahead_offset=ra_offset,
                    readahead_size=ra_size,
                )
            )
            pos = end + 1
        if ext and len(ext) < len(blobs):
            self.fail("extended blob table is shorter than blob table", sb.s_extended_blob_table_offset)
        return blobs

    # §11.3 on every record, in two passes so that overlapping records are rejected before
    # any per-byte work (xattr pairs) could multiply with the number of aliases.
    def _records(self, sb: SuperBlock) -> list[_Record]:
        entries = sb.s_inode_table_entries
        if entries < ROOT_INDEX:
            self.fail("inode table has no root entry", 32)
        table = np.frombuffer(self.data, dtype="<u4", count=entries, offset=sb.s_inode_table_offset).tolist()
        records = [self._record(sb, index, value) for index, value in enumerate(table, start=1)]
        self._no_overlap(records)
        for rec in records:
            if rec.xattr_offset >= 0:
                rec.node.xattrs = self._xattrs(rec)
        return records

    def _record(self, sb: SuperBlock, index: int, value: int) -> _Record:
        entries = sb.s_inode_table_entries
        if not INODE_TABLE_VALUE_MIN < value < INODE_TABLE_VALUE_LIMIT:
            self.fail(f"inode table entry {index} out of range", sb.s_inode_table_offset + 4 * (index - 1))
        off = value << 3
        if off + INODE.size > self.size:
            self.fail(f"inode {index} header outside the file", off)
        (
            i_digest,
            i_parent,
            i_ino,
            i_uid,
            i_gid,
            _projid,
            i_mode,
            i_size,
            _blocks,
            i_flags,
            i_nlink,
            i_child_index,
            i_child_count,
            i_name_size,
            i_symlink_size,
            i_rdev,
            i_mtime_nsec,
            i_mtime,
            _reserved,
        ) = INODE.unpack_from(self.data, off)
        is_reg = stat.S_ISREG(i_mode)
        is_dir = stat.S_ISDIR(i_mode)
        problem = None
        if i_ino == 0 or i_ino > entries:
            problem = "i_ino out of range"
        elif i_parent == 0 and i_ino != ROOT_INDEX:
            problem = "i_parent is 0 for a non-root inode"
        elif i_nlink == 0:
            problem = "i_nlink is 0"
        elif not 1 <= i_name_size <= LOADER_NAME_MAX:
            problem = "i_name_size out of range"
        elif i_parent >= i_ino and not (is_reg and i_nlink > 1):
            problem = "i_parent not below i_ino for a non-hardlink"
        elif is_reg and not i_flags & InodeFlags.HAS_HOLE and -(-i_size // sb.s_block_size) != i_child_count:
            problem = "chunk count does not match i_size"
        elif is_dir and i_child_count > 0 and not (
            i_child_index > i_ino and i_child_count < entries and i_child_index + i_child_count - 1 <= entries
        ):
            problem = "directory child range invalid"
        elif stat.S_ISLNK(i_mode) and i_symlink_size == 0:
            problem = "symlink without a target"
        elif index == ROOT_INDEX and (i_ino != ROOT_INDEX or i_parent != 0 or not is_dir or i_name_size != 1):
            problem = "root is not a directory named '/' with i_ino 1"
        if problem is not None:
            if index == ROOT_INDEX:
                # §15.3: pre-public layouts put other fields here; the root is where it shows.
                raise UnsupportedLayoutError(
                    self.path, f"unsupported layout: root inode record fails validation ({problem})", off
                )
            self.fail(f"inode {index}: {problem}", off)

        pos = off + INODE.size
        name = self._bytes(pos, pos + i_name_size)
        pos += align8(i_name_size)
        symlink = None
        if i_symlink_size:
            symlink = self._bytes(pos, pos + i_symlink_size)
            pos += align8(i_symlink_size)
        xattr_offset, xattr_size = -1, 0
        if i_flags & InodeFlags.XATTR:
            if pos + U64.size > self.size:
                self.fail(f"inode {index}: xattr block outside the file", off)
            (xattr_size,) = U64.unpack_from(self.data, pos)
            xattr_offset = pos + U64.size
            pos = xattr_offset + align8(xattr_size)
        chunk_offset = pos
        if is_reg:
            pos += CHUNK_SIZE * i_child_count
        if pos > self.size:
            self.fail(f"inode {index}: record extends past the end of the file", off)
        if index == ROOT_INDEX:
            if name != b"/":
                raise UnsupportedLayoutError(self.path, "unsupported layout: root name is not '/'", off)
        elif b"/" in name or b"\0" in name or name in (b".", b".."):
            self.fail(f"inode {index}: invalid name", off)
        node = Node(
            name=name,
            path=b"",
            mode=i_mode,
            uid=i_uid,
            gid=i_gid,
            mtime=i_mtime,
            mtime_nsec=i_mtime_nsec,
            size=i_size,
            rdev=i_rdev,
            nlink=i_nlink,
            symlink=symlink,
            digest=i_digest,
            v5_flags=i_flags,
        )
        return _Record(node, off, pos, i_ino, i_child_index, i_child_count, xattr_offset, xattr_size, chunk_offset)

    def _no_overlap(self, records: list[_Record]) -> None:
        starts = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
        ends = np.fromiter((r.end for r in records), dtype=np.int64, count=len(records))
        by_start = np.argsort(starts, kind="stable")
        clash = np.nonzero(ends[by_start][:-1] > starts[by_start][1:])[0]
        if len(clash):
            self.fail("inode records overlap", int(starts[by_start][clash[0] + 1]))

    def _xattrs(self, rec: _Record) -> list[tuple[bytes, bytes]]:
        pairs = []
        pos = rec.xattr_offset
        end = pos + rec.xattr_size
        while pos < end:
            if pos + U32.size > end:
                self.fail("truncated xattr pair header", pos)
            (pair_size,) = U32.unpack_from(self.data, pos)
            pos += U32.size
            if pos + pair_size > end:
                self.fail("xattr pair beyond its block", pos)
            pair = self._bytes(pos, pos + pair_size)
            pos += pair_size
            key, nul, value = pair.partition(b"\0")
            if nul:  # nydusd's parse_xattr skips a pair without a NUL
                pairs.append((key, value))
        return pairs

    # §9.2: children are contiguous, directories expanded depth-first in child order.
    def _walk(self, records: list[_Record]) -> tuple[list[int], dict[int, int]]:
        order = [ROOT_INDEX]
        parent_of = {ROOT_INDEX: -1}
        stack = [ROOT_INDEX]
        while stack:
            index = stack.pop()
            rec = records[index - 1]
            if not rec.node.is_dir or rec.i_child_count == 0:
                continue
            first = rec.i_child_index
            kids = range(first, first + rec.i_child_count)
            prev = None
            subdirs = []
            for k in kids:
                if k in parent_of:
                    self.fail(f"inode {k} reachable twice", records[k - 1].offset)
                parent_of[k] = index
                order.append(k)
                child = records[k - 1].node
                if prev is not None and child.name <= prev:
                    self.fail(f"children of inode {index} not sorted by name", records[k - 1].offset)
                prev = child.name
                if child.is_dir:
                    subdirs.append(k)
            stack.extend(reversed(subdirs))
        if len(order) != len(records):
            missing = next(i for i in range(1, len(records) + 1) if i not in parent_of)
            self.fail(f"inode {missing} not reachable from the root", records[missing - 1].offset)
        return order, parent_of

    def _nodes(
        self, records: list[_Record], order: list[int], parent_of: dict[int, int], position: list[int]
    ) -> tuple[list[Node], list[tuple[int, int]]]:
        """The nodes in tree order, and (file offset, byte count) of each regular file's chunk records."""
        spans: list[tuple[int, int]] = []
        chunk_total = 0
        first_of_ino: dict[int, int] = {}
        nodes: list[Node] = []
        for pos, index in enumerate(order):
            rec = records[index - 1]
            node = rec.node
            if index == ROOT_INDEX:
                node.path = b"/"
            else:
                node.parent = parent = position[parent_of[index]]
                parent_path = nodes[parent].path
                node.path = (b"" if parent_path == b"/" else parent_path) + b"/" + node.name
                nodes[parent].children.append(pos)
            node.link = pos
            if node.is_reg:
                node.link = first_of_ino.setdefault(rec.i_ino, pos)
                node.chunk_start = chunk_total
                node.chunk_count = rec.i_child_count
                chunk_total += rec.i_child_count
                spans.append((rec.chunk_offset, CHUNK_SIZE * rec.i_child_count))
            nodes.append(node)
        return nodes, spans

    def _chunks(self, spans: list[tuple[int, int]]) -> np.ndarray:
        """The chunk records of ``spans`` back to back, as one array.

        An owned buffer whose spans rise through the file (as the builder writes them) is
        compacted in place: each span moves down, never over a span still to be moved.
        """
        spans = [(offset, size) for offset, size in spans if size]
        total = sum(size for _, size in spans)
        src = self.data
        in_place = self.owned is not None and all(a[0] < b[0] for a, b in itertools.pairwise(spans))
        out = self.owned if in_place else np.empty(total, dtype=np.uint8)
        if in_place and self.before_change is not None:
            self.before_change()
        with memoryview(out) as dst:
            filled = 0
            for offset, size in spans:
                dst[filled : filled + size] = src[offset : offset + size]
                filled += size
        src.release()  # any view of the file still alive would be a bug: this raises then
        if in_place:
            out.resize(total, refcheck=False)  # nothing else refers to it (load_owned's contract)
        return out.view(CHUNK_DTYPE)

    # §4: inode numbers, nydusd stops at the first 0.
    def _prefetch(self, sb: SuperBlock, position: list[int]) -> list[int | None]:
        count = sb.s_prefetch_table_entries
        if count == 0:
            return []
        inos = np.frombuffer(self.data, dtype="<u4", count=count, offset=sb.s_prefetch_table_offset).tolist()
        prefetch: list[int | None] = []
        for i, ino in enumerate(inos):
            if ino == 0:
                break
            if ino > sb.s_inode_table_entries:
                self.fail("prefetch entry beyond the inode table", sb.s_prefetch_table_offset + 4 * i)
            prefetch.append(position[ino])
        return prefetch


# --------------------------------------------------------------------------------------------
# Writer


def dump(bs: Bootstrap) -> bytearray:
    """Serialise ``bs`` as nydus-image 2.2 writes a v5 bootstrap (rafs-v5.md §12), in one buffer."""
    return joined(serialize(bs))


def serialize(bs: Bootstrap) -> Serialized:
    """``dump``'s bytes in parts of about PART_SIZE: the records are copied from the model as
    they are handed out, so a writer never holds more than one part besides the model."""
    return _Writer(bs).serialize()


def inode_digests(bs: Bootstrap) -> list[bytes]:
    """The §10 digest of every node (by position), as ``dump`` would write it."""
    writer = _Writer(bs)
    writer.prepare()
    return writer.digests()


def _model_error(check: str) -> NoReturn:
    raise RafsFormatError(MODEL, check)


def _valid_xattr_key(key: bytes) -> bool:
    if len(key) > XATTR_KEY_MAX or b"\0" in key:
        return False
    return any(key.startswith(p) and len(key) > len(p) for p in XATTR_PREFIXES) or key in XATTR_ACL_NAMES


def xattr_block(xattrs: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    """RafsV5XAttrsTable + pairs + padding, and the unpadded pair size (0 and b"" without xattrs)."""
    if not xattrs:
        return b"", 0
    payload = b"".join(U32.pack(len(k) + 1 + len(v)) + k + b"\0" + v for k, v in xattrs)
    return U64.pack(len(payload)) + _pad8(payload), len(payload)


class _Writer:
    def __init__(self, bs: Bootstrap):
        self.bs = bs
        self.nodes = bs.nodes
        n = len(bs.nodes)
        self.index = [0] * n  # record index per node position, 0 = not numbered yet
        self.child_index = [0] * n
        self.child_count = [0] * n
        self.nlink = [1] * n
        self.parent = [-1] * n  # from the children lists, which are what gets numbered
        self.ino = [0] * n
        self.order: list[int] = []  # node positions in record index order
        self.header = b""  # superblock and tables: what precedes the first record
        self.heads: list[bytes] = []  # record heads in record order
        self.size = 0

    def serialize(self) -> Serialized:
        bs = self.bs
        self.prepare()
        digests = self.digests()
        prefetch_inos = self._prefetch_inos()
        prefetch = _pad8(struct.pack(f"<{len(prefetch_inos)}I", *prefetch_inos))
        blob_table, ext_table = self._blob_tables()

        # Record heads first; each regular file's chunk records follow its head in the file.
        heads = []
        has_xattr = False
        for pos in self.order:
            heads.append(self._record_head(pos, digests[pos]))
            has_xattr |= bool(self.nodes[pos].xattrs)

        entries = len(heads)
        itable_size = align8(4 * entries)
        prefetch_off = SUPERBLOCK_SIZE + itable_size
        blob_off = prefetch_off + len(prefetch)
        ext_off = blob_off + len(blob_table)
        offsets = []
        end = ext_off + len(ext_table)
        for pos, head in zip(self.order, heads):
            offsets.append(end)
            end += len(head) + CHUNK_SIZE * self._chunk_count(pos)
        if end > MAX_FILE_SIZE:
            _model_error("bootstrap would exceed 2 GiB")
        inode_table = _pad8((np.asarray(offsets, dtype=np.int64) >> 3).astype("<u4").tobytes())

        flags = bs.flags & ~SuperFlags.HAS_XATTR
        if has_xattr:
            flags |= SuperFlags.HAS_XATTR
        sb = SuperBlock(
            s_magic=RAFS_V5_MAGIC,
            s_fs_version=RAFS_V5_VERSION,
            s_sb_size=SUPERBLOCK_SIZE,
            s_block_size=bs.chunk_size,
            s_flags=int(flags),
            s_inodes_count=len(set(self.ino)) - 1,  # the root is not in the builder's inode map
            s_inode_table_offset=SUPERBLOCK_SIZE,
            s_prefetch_table_offset=prefetch_off,
            s_blob_table_offset=blob_off,
            s_inode_table_entries=entries,
            s_prefetch_table_entries=len(prefetch_inos),
            s_blob_table_size=len(blob_table),
            s_extended_blob_table_entries=len(bs.blobs),
            s_extended_blob_table_offset=ext_off,
        )
        # The records follow the tables without a gap, each at its offset, in record order.
        self.header = b"".join((sb.pack(), inode_table, prefetch, blob_table, ext_table))
        self.heads = heads
        self.size = end
        return self

    def parts(self) -> Iterator[Part]:
        yield self.header
        records = memoryview(np.ascontiguousarray(self.bs.chunks).view(np.uint8))
        piece = bytearray()
        for pos, head in zip(self.order, self.heads):
            piece += head
            count = self._chunk_count(pos)
            if count:
                start = CHUNK_SIZE * self.nodes[pos].chunk_start
                piece += records[start : start + CHUNK_SIZE * count]
            if len(piece) >= PART_SIZE:
                yield piece
                piece = bytearray()
        if piece:
            yield piece

    def _chunk_count(self, pos: int) -> int:
        """Chunk records in the record of node ``pos`` (only regular files carry them)."""
        node = self.nodes[pos]
        return node.chunk_count if node.is_reg else 0

    def prepare(self) -> None:
        """Number the records and check what digests and records are computed from."""
        bs = self.bs
        if bs.flags & ~SUPER_FLAGS_KNOWN:
            _model_error("unknown superblock flags")
        bsz = bs.chunk_size
        if bsz <= 0 or bsz & (bsz - 1) or not MIN_CHUNK_SIZE <= bsz <= MAX_CHUNK_SIZE:
            _model_error("chunk size not a power of two in [4 KiB, 16 MiB]")
        self._number()
        self._link_groups()
        self._check_chunks()

    # §9.2
    def _number(self) -> None:
        nodes = self.nodes
        if not nodes or not nodes[0].is_dir:
            _model_error("the first node must be the root directory")
        self.index[0] = ROOT_INDEX
        self.order.append(0)
        stack = [0]
        while stack:
            d = stack.pop()
            for c in nodes[d].children:
                if not 0 < c < len(nodes):
                    _model_error(f"{nodes[d].path!r}: child position {c} out of range")
            kids = sorted(nodes[d].children, key=lambda c: nodes[c].name)
            self.child_index[d] = len(self.order) + 1
            self.child_count[d] = len(kids)
            subdirs = []
            for i, c in enumerate(kids):
                if self.index[c]:
                    _model_error(f"{nodes[c].path!r} reachable twice")
                if i and nodes[c].name == nodes[kids[i - 1]].name:
                    _model_error(f"{nodes[c].path!r}: duplicate name")
                self.index[c] = len(self.order) + 1
                self.parent[c] = d
                self.order.append(c)
                if nodes[c].is_dir:
                    subdirs.append(c)
                elif nodes[c].children:
                    _model_error(f"{nodes[c].path!r}: a non-directory has children")
            self.nlink[d] = 2 + len(subdirs)
            stack.extend(reversed(subdirs))
        if len(self.order) != len(nodes):
            _model_error("some nodes are not reachable from the root")

    # §9.3: every name of a regular file shares the index of the first name as i_ino.
    def _link_groups(self) -> None:
        nodes = self.nodes
        first: dict[int, int] = {}  # group leader -> the record index of its first name
        names: dict[int, int] = {}  # group leader -> its number of names (a count, not a list per file)
        for pos in self.order:
            node = nodes[pos]
            if not node.is_reg:
                self.ino[pos] = self.index[pos]
                continue
            leader = pos if node.link == -1 else node.link
            # A file that leads its own group (link -1 or itself) is a valid leader by construction.
            if leader != pos and (
                not 0 <= leader < len(nodes) or not nodes[leader].is_reg or nodes[leader].link not in (-1, leader)
            ):
                _model_error(f"{node.path!r}: link does not name a regular file leading its group")
            self.ino[pos] = first.setdefault(leader, self.index[pos])
            names[leader] = names.get(leader, 0) + 1
        for pos in self.order:
            node = nodes[pos]
            if node.is_reg:
                self.nlink[pos] = names[pos if node.link == -1 else node.link]

    def _check_chunks(self) -> None:
        bs = self.bs
        starts, counts = [], []
        for node in self.nodes:
            if node.is_reg and not node.v5_flags & InodeFlags.HAS_HOLE:
                if -(-node.size // bs.chunk_size) != node.chunk_count:
                    _model_error(f"{node.path!r}: chunk count does not match the size")
            if not node.chunk_count:
                continue
            if not node.is_reg:
                _model_error(f"{node.path!r}: chunks on a non-regular file")
            if node.chunk_start < 0 or node.chunk_count < 0 or node.chunk_start + node.chunk_count > len(bs.chunks):
                _model_error(f"{node.path!r}: chunk range outside the chunk array")
            starts.append(node.chunk_start)
            counts.append(node.chunk_count)
        if counts:
            # The records files use, as a mask: at 1M occurrences an index array of them (and its
            # temporaries) was the largest allocation of apply's whole bootstrap rewrite.
            depth = np.zeros(len(bs.chunks) + 1, dtype=np.int32)
            starts_a = np.asarray(starts, dtype=np.int64)
            np.add.at(depth, starts_a, 1)
            np.add.at(depth, starts_a + np.asarray(counts, dtype=np.int64), -1)
            used = np.cumsum(depth[:-1], dtype=np.int32, out=depth[:-1]) > 0
            if int(np.max(bs.chunks["blob_index"], where=used, initial=0)) >= len(bs.blobs):
                _model_error("chunk blob_index beyond the blob table")

    # §10: non-directories first, then directories in reverse index order.
    def digests(self) -> list[bytes]:
        bs = self.bs
        algo: Digester = bs.digester
        block_ids = bs.chunks["block_id"]  # a view: a copy would be as large as 32 bytes per occurrence
        out = [b""] * len(self.nodes)
        for pos in self.order:
            node = self.nodes[pos]
            if node.is_reg:
                out[pos] = digest(algo, block_ids[node.chunk_start : node.chunk_start + node.chunk_count].tobytes())
            elif node.is_symlink:
                out[pos] = digest(algo, node.symlink or b"")
            elif not node.is_dir:
                out[pos] = digest(algo, b"")
        for pos in reversed(self.order):
            if self.nodes[pos].is_dir:
                first = self.child_index[pos] - 1
                kids = self.order[first : first + self.child_count[pos]]
                out[pos] = digest(algo, b"".join(out[c] for c in kids))
        return out

    def _prefetch_inos(self) -> list[int]:
        inos = []
        for pos in self.bs.prefetch:
            if pos is None:  # an unmatched pattern contributes nothing to a v5 table
                continue
            if not 0 <= pos < len(self.nodes):
                _model_error(f"prefetch position {pos} out of range")
            inos.append(self.ino[pos])
        return inos

    def _blob_tables(self) -> tuple[bytes, bytes]:
        entries, ext = [], []
        for blob in self.bs.blobs:
            try:
                blob_id = blob.blob_id.encode("utf-8")
                entries.append(BLOB_ENTRY_HEAD.pack(blob.readahead_offset, blob.readahead_size) + blob_id)
                ext.append(
                    EXT_BLOB_ENTRY.pack(
                        blob.chunk_count, blob.features, blob.uncompressed_size, blob.compressed_size, bytes(40)
                    )
                )
            except (UnicodeEncodeError, struct.error) as exc:
                _model_error(f"blob {blob.blob_id!r} not representable: {exc}")
            if not blob_id or b"\0" in blob_id:
                _model_error(f"blob id {blob.blob_id!r} is empty or contains NUL")
            if not blob_features_valid(blob.features):
                _model_error(f"blob {blob.blob_id!r}: invalid feature flags {blob.features:#x}")
        return _pad8(b"\0".join(entries)), b"".join(ext)

    def _record_head(self, pos: int, node_digest: bytes) -> bytes:
        """RafsV5Inode, name, symlink target and xattr block: the record up to its chunks."""
        node = self.nodes[pos]
        if pos == 0:
            name = b"/"
        else:
            name = node.name
            if not 1 <= len(name) <= NAME_MAX or b"/" in name or b"\0" in name or name in (b".", b".."):
                _model_error(f"{node.path!r}: name not representable")
        symlink = b""
        flags = node.v5_flags & ~(InodeFlags.SYMLINK | InodeFlags.XATTR)
        if node.is_symlink:
            symlink = node.symlink or b""
            if not 1 <= len(symlink) <= 0xFFFF:
                _model_error(f"{node.path!r}: symlink target empty or longer than 65535 bytes")
            flags |= InodeFlags.SYMLINK
        keys = set()
        for key, value in node.xattrs:
            if not _valid_xattr_key(key) or len(value) > XATTR_VALUE_MAX or key in keys:
                _model_error(f"{node.path!r}: xattr {key!r} not representable")
            keys.add(key)
        xattrs, xattr_size = xattr_block(node.xattrs)
        if xattrs:
            flags |= InodeFlags.XATTR
        is_dir = node.is_dir
        parent = 0 if pos == 0 else self.ino[self.parent[pos]]
        try:
            header = INODE.pack(
                node_digest,
                parent,
                self.ino[pos],
                node.uid,
                node.gid,
                0,
                node.mode,
                node.size,
                -(-(node.size + align8(xattr_size)) // 512),
                flags,
                self.nlink[pos],
                self.child_index[pos] if is_dir else 0,
                self.child_count[pos] if is_dir else node.chunk_count,
                len(name),
                len(symlink),
                node.rdev,
                node.mtime_nsec,
                node.mtime,
                bytes(8),
            )
        except struct.error as exc:
            _model_error(f"{node.path!r}: field out of range: {exc}")
        return b"".join((header, _pad8(name), _pad8(symlink), xattrs))
