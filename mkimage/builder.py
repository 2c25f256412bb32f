"""Builds a multi-layer Nydus image the way a registry image ends up after `nydusify convert`:
one data blob per layer, one merged bootstrap over all of them.

Each layer's blob holds the chunks of every regular file present in that layer directory, even
files an upper layer hides; that is what leaves partly used and unreferenced blobs behind, the
input a compactor exists for. Chunks are deduplicated image-wide on (digest, size) like the 2.2
builder with a parent bootstrap: a repeated chunk points at its first copy's (blob, index).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nydus_compact.rafs.blob_writer import BlobWriter
from nydus_compact.rafs.compression import Compressor, compress
from nydus_compact.rafs.constants import BLOCK_SIZE, MAX_BLOBS, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.flags import ChunkFlags, SuperFlags, flags_for
from nydus_compact.rafs.loader import dump_bootstrap, parse_bootstrap
from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node
from nydus_compact.safeio import atomic_write_bytes, fsync_dir, temp_file

from .errors import BuildError
from .layers import Entry, node_order, read_layers

BOOTSTRAP_NAME = "image.boot"
BLOBS_DIR = "blobs"
# Blob-table limits: a v6 chunk address holds blob_index + 1 in one byte (rafs-v6.md §13.2);
# compact.md caps v5 tables at 256 entries.


@dataclass(frozen=True, slots=True)
class BuildOptions:
    fs_version: int = 6
    chunk_size: int = 1 << 20
    compressor: Compressor = Compressor.ZSTD
    digester: Digester = Digester.BLAKE3
    ci_version: int = 1
    blob_toc: bool = False
    repeatable: bool = False

    def validate(self) -> None:
        if self.fs_version not in (5, 6):
            raise BuildError(f"fs version must be 5 or 6, got {self.fs_version}")
        size = self.chunk_size
        if not (MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE and size & (size - 1) == 0):
            raise BuildError(f"chunk size must be a power of two between 4 KiB and 16 MiB, got {size}")
        if self.compressor not in (Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.ZSTD):
            # gzip chunks are read as legacy stargz by nydusd (rafs-v5.md §14.2); dir builds never use it.
            raise BuildError(f"compressor {Compressor(self.compressor).label} is not supported for built images")
        if self.ci_version not in (1, 2):
            raise BuildError(f"chunk-info version must be 1 or 2, got {self.ci_version}")
        if self.fs_version == 5 and (self.ci_version != 1 or self.blob_toc):
            raise BuildError("--ci-version 2 and --blob-toc need fs version 6 (v5 blobs carry no blob meta)")

    @property
    def super_flags(self) -> int:
        explicit = 0 if self.repeatable else SuperFlags.EXPLICIT_UID_GID
        return flags_for(self.compressor, self.digester) | int(explicit)


@dataclass(slots=True)
class BuildResult:
    bootstrap_path: Path
    blob_paths: list[Path]  # in blob-table order
    bootstrap: Bootstrap  # parsed back from the written bootstrap


def build_image(layers: list[Path], out_dir: Path, opts: BuildOptions | None = None) -> BuildResult:
    """Build ``out_dir/image.boot`` and ``out_dir/blobs/<blob_id>`` from layer directories (lower first)."""
    opts = opts or BuildOptions()
    opts.validate()
    tree = read_layers([Path(p) for p in layers])
    blobs_dir = Path(out_dir) / BLOBS_DIR
    blobs_dir.mkdir(parents=True, exist_ok=True)
    store = _ChunkStore(opts, blobs_dir)
    for layer_tree in tree.trees:
        store.add_layer(layer_tree)
    bs = _bootstrap(tree.merged, store, opts)
    data = dump_bootstrap(bs)
    bootstrap_path = Path(out_dir) / BOOTSTRAP_NAME
    atomic_write_bytes(bootstrap_path, data)
    return BuildResult(
        bootstrap_path=bootstrap_path,
        blob_paths=store.blob_paths,
        bootstrap=parse_bootstrap(data, str(bootstrap_path)),
    )


class _ChunkStore:
    """Writes the layer blobs and remembers every distinct chunk and every file's chunk list."""

    def __init__(self, opts: BuildOptions, blobs_dir: Path):
        self.opts = opts
        self.blobs_dir = blobs_dir
        self.blobs: list[BlobInfo] = []
        self.blob_paths: list[Path] = []
        # Distinct chunks: (block_id, blob_index, flags, compressed_size, uncompressed_size,
        # compressed_offset, uncompressed_offset, index), in write order.
        self.records: list[tuple[bytes, int, int, int, int, int, int, int]] = []
        self._seen: dict[tuple[bytes, int], int] = {}
        # (layer, image path) of every regular file of every layer → its distinct-chunk ids.
        self.files: dict[tuple[int, bytes], list[int]] = {}

    def add_layer(self, tree: Entry) -> None:
        """Chunk every regular file of one layer; new chunks go to a new blob."""
        fp: BinaryIO | None = None
        writer: BlobWriter | None = None
        first_name: dict[tuple[int, int, int], bytes] = {}
        try:
            for entry, _ in node_order(tree):
                if not entry.is_reg:
                    continue
                if entry.link_key is not None:
                    first = first_name.setdefault(entry.link_key, entry.path)
                    if first != entry.path:
                        self.files[(entry.layer, entry.path)] = self.files[(entry.layer, first)]
                        continue
                ids: list[int] = []
                for data in _read_chunks(entry, self.opts.chunk_size):
                    chunk_digest = digest(self.opts.digester, data)
                    key = (chunk_digest, len(data))
                    known = self._seen.get(key)
                    if known is None:
                        if writer is None:
                            fp, writer = self._open_blob()
                        known = self._write_chunk(writer, chunk_digest, data)
                        self._seen[key] = known
                    ids.append(known)
                self.files[(entry.layer, entry.path)] = ids
            if writer is not None:
                assert fp is not None
                self._commit_blob(fp, writer.finish())
        except BaseException:
            if fp is not None:
                _discard(fp)
            raise

    def _open_blob(self) -> tuple[BinaryIO, BlobWriter]:
        limit = MAX_BLOBS[self.opts.fs_version]
        if len(self.blobs) >= limit:
            raise BuildError(f"more than {limit} layers contribute data: RAFS v{self.opts.fs_version} cannot hold the blobs")
        fp = temp_file(self.blobs_dir)
        opts = self.opts
        writer = BlobWriter(
            fp,
            version=opts.fs_version,
            compressor=opts.compressor,
            digester=opts.digester,
            chunk_size=opts.chunk_size,
            ci_v2=opts.ci_version == 2,
            with_toc=opts.blob_toc,
        )
        return fp, writer  # type: ignore[return-value]

    def _write_chunk(self, writer: BlobWriter, chunk_digest: bytes, data: bytes) -> int:
        stored, compressed = compress(self.opts.compressor, data)
        index, coff, uoff = writer.add_chunk(
            stored, compressed=compressed, uncompressed_size=len(data), digest=chunk_digest
        )
        flags = int(ChunkFlags.COMPRESSED) if compressed else 0
        self.records.append((chunk_digest, len(self.blobs), flags, len(stored), len(data), coff, uoff, index))
        return len(self.records) - 1

    def _commit_blob(self, fp: BinaryIO, info: BlobInfo) -> None:
        final = self.blobs_dir / info.blob_id
        _commit(fp, final)
        self.blobs.append(info)
        self.blob_paths.append(final)

    def table(self) -> np.ndarray:
        """The distinct chunks as CHUNK_DTYPE records (file_offset 0)."""
        out = np.zeros(len(self.records), dtype=CHUNK_DTYPE)
        if not self.records:
            return out
        cols = list(zip(*self.records))
        out["block_id"] = np.frombuffer(b"".join(cols[0]), dtype="V32")
        names = ("blob_index", "flags", "compressed_size", "uncompressed_size")
        names += ("compressed_offset", "uncompressed_offset", "index")
        for name, col in zip(names, cols[1:]):
            out[name] = col
        return out


def _read_chunks(entry: Entry, chunk_size: int) -> Iterator[bytes]:
    """The file's bytes in chunk_size pieces; exactly entry.size bytes or a BuildError."""
    remaining = entry.size
    with open(entry.source, "rb", buffering=0) as f:
        while remaining:
            want = min(chunk_size, remaining)
            parts = []
            got = 0
            while got < want:
                part = f.read(want - got)
                if not part:
                    raise BuildError(f"{os.fsdecode(entry.source)}: file shrank while it was read")
                parts.append(part)
                got += len(part)
            remaining -= want
            yield b"".join(parts)


def _bootstrap(root: Entry, store: _ChunkStore, opts: BuildOptions) -> Bootstrap:
    entries: list[Entry] = []
    nodes: list[Node] = []
    first_of: dict[tuple[int, int, int], int] = {}
    for entry, parent in node_order(root):
        pos = len(nodes)
        link = first_of.setdefault(entry.link_key, pos) if entry.link_key is not None else pos
        is_root = parent < 0
        nodes.append(
            Node(
                name=entry.name,
                path=entry.path,
                mode=entry.mode,
                uid=0 if opts.repeatable else entry.uid,
                gid=0 if opts.repeatable else entry.gid,
                mtime=0 if is_root else entry.mtime,
                mtime_nsec=0 if is_root else entry.mtime_nsec,
                size=entry.size,
                rdev=entry.rdev,
                symlink=entry.symlink,
                xattrs=list(entry.xattrs),
                parent=parent,
                link=link,
            )
        )
        entries.append(entry)
        if parent >= 0:
            nodes[parent].children.append(pos)

    # Chunk occurrences in node order; later names of a hard link share the first name's range.
    table = store.table()
    ids: list[int] = []
    counts: list[int] = []
    for pos, (node, entry) in enumerate(zip(nodes, entries)):
        if stat.S_ISDIR(node.mode):
            subdirs = sum(1 for c in node.children if stat.S_ISDIR(nodes[c].mode))
            node.nlink = 2 + subdirs
            # v6.dump sizes directories from their real dirent blocks (rafs-v6.md §12.4).
            if opts.fs_version == 5:
                node.size = _v5_dir_size(nodes[c].name for c in node.children)
        if not node.is_reg:
            continue
        if node.link != pos:
            first = nodes[node.link]
            first.nlink += 1
            node.chunk_start, node.chunk_count = first.chunk_start, first.chunk_count
            continue
        file_ids = store.files[(entry.layer, entry.path)]
        node.chunk_start, node.chunk_count = len(ids), len(file_ids)
        ids.extend(file_ids)
        counts.append(len(file_ids))
    for pos, node in enumerate(nodes):
        if node.is_reg and node.link != pos:
            node.nlink = nodes[node.link].nlink
    chunks = table[np.asarray(ids, dtype=np.int64)] if ids else np.zeros(0, dtype=CHUNK_DTYPE)
    if ids:
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        chunks["file_offset"] = (np.arange(len(ids), dtype=np.uint64) - starts.astype(np.uint64)) * np.uint64(
            opts.chunk_size
        )
    return Bootstrap(
        version=opts.fs_version,
        flags=opts.super_flags,
        chunk_size=opts.chunk_size,
        blobs=list(store.blobs),
        nodes=nodes,
        chunks=chunks,
    )


def _v5_dir_size(names) -> int:
    """rafs-v5.md §7.2: Σ(name length + 8) rounded up to 4 KiB, at least 4 KiB."""
    total = sum(len(n) + 8 for n in names)
    return max(BLOCK_SIZE, -(-total // BLOCK_SIZE) * BLOCK_SIZE)


def _discard(fp: BinaryIO) -> None:
    fp.close()
    if os.path.exists(fp.name):
        os.unlink(fp.name)


def _commit(fp: BinaryIO, final: Path) -> None:
    """Make a finished temp file durable under its final name."""
    fp.flush()
    os.fsync(fp.fileno())
    fp.close()
    os.replace(fp.name, final)
    fsync_dir(final.parent)
