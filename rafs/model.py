"""The version-independent model of a Nydus image, shared by the v5 and v6 readers and writers.

A bootstrap is a tree of ``Node`` (one per directory entry, in the builder's node order),
a blob table of ``BlobInfo`` and one numpy array holding every chunk occurrence of every
regular file, in node order then file order. Chunk occurrences are never Python objects:
an image with millions of them stays a few dozen MB.

Node order is the 2.2 builder's order for both versions (rafs-v5.md §9.2, rafs-v6.md §16.1):
the root, then each directory's children (sorted by name bytes) listed together when the
directory is expanded, directories expanded depth-first in name order.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .compression import Compressor
from .digest import Digester

# RafsV5ChunkInfo, the 80-byte chunk record of v5 inodes and of the v6 chunk-info table
# (rafs-v5.md §8, rafs-v6.md §14). The same layout is used in memory for all occurrences,
# so a v5 inode's chunk array is read with np.frombuffer and written with .tobytes().
CHUNK_DTYPE = np.dtype(
    {
        "names": [
            "block_id",
            "blob_index",
            "flags",
            "compressed_size",
            "uncompressed_size",
            "compressed_offset",
            "uncompressed_offset",
            "file_offset",
            "index",
            "reserved",
        ],
        "formats": ["V32", "<u4", "<u4", "<u4", "<u4", "<u8", "<u8", "<u8", "<u4", "<u4"],
        "offsets": [0, 32, 36, 40, 44, 48, 56, 64, 72, 76],
        "itemsize": 80,
    }
)

# Fields a compactor may change when it moves a chunk (rafs-v5.md §13, rafs-v6.md §17).
LOCATION_FIELDS = ("blob_index", "index", "compressed_offset", "uncompressed_offset")


def expand_depth_first(expand: Callable[[int], Iterable[int]], root: int = 0) -> None:
    """Drive the builder's node order: ``expand(dir)`` lists a directory's children and returns the
    subdirectories to expand next; they are expanded depth-first, in the order returned.

    Iterative, so a deep tree cannot hit the recursion limit.
    """
    stack = [iter(expand(root))]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
        else:
            stack.append(iter(expand(nxt)))


def empty_chunks(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=CHUNK_DTYPE)


_KIND_NAMES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def kind_name(mode: int) -> str:
    """The file type of an ``st_mode`` as the CLI, JSON and the store name it."""
    return _KIND_NAMES.get(stat.S_IFMT(mode), "unknown")


class FileType:
    """File-type tests for anything with an ``st_mode`` (tree nodes, builder entries)."""

    __slots__ = ()
    mode: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass(slots=True, eq=False)
class Node(FileType):
    """One directory entry. Hard links are separate nodes that share ``link``."""

    name: bytes  # b"/" for the root
    path: bytes  # absolute, b"/" for the root
    mode: int  # st_mode including S_IFMT
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0  # i_size as stored (directories: the format's synthetic size)
    rdev: int = 0
    nlink: int = 1  # as stored in the bootstrap
    symlink: bytes | None = None  # target of a symlink
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)  # on-disk order kept
    digest: bytes = b""  # v5 i_digest (32 bytes); empty for v6, which has none
    parent: int = -1  # position of the parent in Bootstrap.nodes; -1 for the root
    children: list[int] = field(default_factory=list)  # positions, sorted by name bytes
    link: int = -1  # position of the first node of this regular file's hard-link group (own position if none)
    chunk_start: int = 0  # first occurrence in Bootstrap.chunks
    chunk_count: int = 0
    v5_flags: int = 0  # raw RafsV5InodeFlags (HAS_HOLE etc.), kept for a faithful re-dump


@dataclass(slots=True)
class BlobInfo:
    """One blob-table entry. v5 keeps its ext-table fields here; v6 its RafsV6Blob fields."""

    blob_id: str
    chunk_count: int
    compressed_size: int
    uncompressed_size: int
    features: int
    compressor: Compressor
    digester: Digester
    chunk_size: int
    # v5 blob table
    readahead_offset: int = 0
    readahead_size: int = 0
    # v6 blob meta location (blob-v6.md §5) and ToC
    blob_toc_size: int = 0
    ci_compressor: int = 0
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    blob_toc_digest: bytes = bytes(32)
    blob_meta_digest: bytes = bytes(32)
    blob_meta_size: int = 0


@dataclass(slots=True)
class Bootstrap:
    """A parsed (or to-be-written) bootstrap."""

    version: int  # 5 or 6
    flags: int  # RafsSuperFlags as stored (v5 s_flags, v6 ext s_flags)
    chunk_size: int
    blobs: list[BlobInfo]
    nodes: list[Node]  # node order; nodes[0] is the root
    chunks: np.ndarray  # CHUNK_DTYPE, every occurrence in node order
    # Prefetch entries as node positions, in table order; None for a zero (unmatched) slot.
    prefetch: list[int | None] = field(default_factory=list)
    # Byte-level habits of the builder that wrote the source, detected by the reader and
    # reproduced by the writer (e.g. "v6_mapped_blkaddr" for 2.2-dev/2.3 device slots).
    quirks: frozenset[str] = frozenset()

    @property
    def compressor(self) -> Compressor:
        from .flags import compressor_from_flags

        return compressor_from_flags(self.flags)

    @property
    def digester(self) -> Digester:
        from .flags import digester_from_flags

        return digester_from_flags(self.flags)

    def node_chunks(self, node: Node) -> np.ndarray:
        return self.chunks[node.chunk_start : node.chunk_start + node.chunk_count]


# A part of a serialised bootstrap: anything with the buffer protocol, one byte per item.
Part = bytes | bytearray | memoryview


class Serialized(Protocol):
    """A bootstrap's bytes as consecutive parts, produced on demand so that the whole file is never
    held at once (a writer hashes and writes each part, then drops it). Every check of the model is
    made before this object exists, so iterating cannot fail; ``parts()`` may be iterated again."""

    size: int  # bytes in all parts together

    def parts(self) -> Iterator[Part]: ...


def joined(serialized: Serialized) -> bytearray:
    """All parts in one buffer of the file's size (filled in place, so never held twice)."""
    out = bytearray(serialized.size)
    at = 0
    with memoryview(out) as view:
        for part in serialized.parts():
            view[at : at + len(part)] = part
            at += len(part)
    if at != serialized.size:
        raise AssertionError(f"serialised {at} bytes, announced {serialized.size}")
    return out
