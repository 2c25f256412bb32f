"""Synthetic Nydus images for the benchmarks, written with the project's own writers.

``mkimage.build_image`` chunks real files from layer directories; at a million chunk
occurrences that alone takes longer than everything measured here. So the blobs are written
directly with ``rafs.blob_writer.BlobWriter`` from generated chunk bytes, and the bootstrap is a
model dumped with ``rafs.loader.dump_bootstrap``. The result is a real image: every chunk
decompresses to its digest, v6 blobs carry their chunk-info table, ``compact verify`` passes.

Each blob belongs to a class that says how much of it the files reference, which is what the
compactor acts on: "kept" (fully used, big), "sparse" (partly used: rebuilt), "tiny" (fully used,
small: merged) and "unused" (no file points at it: dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zstandard

from nydus_compact.rafs.blob_writer import BlobWriter
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.flags import ChunkFlags, flags_for
from nydus_compact.rafs.loader import dump_bootstrap
from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node

GENERATOR_REVISION = 1  # bump when the generator changes, to invalidate cached images
BOOTSTRAP_NAME = "image.boot"
BLOBS_DIR = "blobs"
META_NAME = "image.json"  # written last: its presence marks a complete cached image
SEED = 20240229
DIGESTER = Digester.BLAKE3


@dataclass(frozen=True)
class BlobClass:
    name: str
    count: int  # blobs of this class
    chunks: int  # distinct chunks per blob
    used: float  # fraction of a blob's chunks that some file references


@dataclass(frozen=True)
class Shape:
    """Everything an image is generated from; equal shapes give byte-identical images."""

    name: str
    chunk_size: int
    compressor: Compressor
    classes: tuple[BlobClass, ...]
    occurrences: int  # chunk occurrences over all files
    chunks_per_file: int  # mean
    files_per_dir: int
    tail_fraction: float  # distinct chunks that are a file's short last chunk
    # Compact config the plan is run with (flags of `compact plan`).
    min_used_ratio: int
    compact_blob_size: int
    max_compact_size: int

    @property
    def blob_count(self) -> int:
        return sum(c.count for c in self.classes)

    @property
    def distinct_chunks(self) -> int:
        return sum(c.count * c.chunks for c in self.classes)

    @property
    def files(self) -> int:
        return self.occurrences // self.chunks_per_file

    def key(self, version: int) -> str:
        raw = json.dumps([GENERATOR_REVISION, version, asdict(self)], sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def plan_flags(self) -> list[str]:
        return [
            "--min-used-ratio", str(self.min_used_ratio),
            "--compact-blob-size", str(self.compact_blob_size),
            "--max-compact-size", str(self.max_compact_size),
        ]


MiB = 1 << 20


def shapes(size: str) -> list[Shape]:
    """The two benchmark images at a size: "quick" (seconds, for CI), "small" (1/8) or "full".

    (a) "bulk": ~1 GiB of incompressible 16 KiB chunks in 72 blobs, ~66k chunks;
    (b) "many": >= 1M occurrences of small zstd chunks over 240 blobs, 100k+ files.
    """
    div, blob_div = {"quick": (64, 8), "small": (8, 1), "full": (1, 1)}[size]

    def classes(spec: list[tuple[str, int, int, float]]) -> tuple[BlobClass, ...]:
        return tuple(BlobClass(n, max(2, c // blob_div), max(4, k // div), u) for n, c, k, u in spec)

    bulk = Shape(
        name=f"bulk-{size}",
        chunk_size=16 << 10,
        compressor=Compressor.NONE,
        classes=classes(
            [("kept", 24, 1536, 1.0), ("sparse", 24, 1024, 0.4), ("tiny", 16, 64, 1.0), ("unused", 8, 512, 0.0)]
        ),
        occurrences=80_000 // div,
        chunks_per_file=10,
        files_per_dir=500,
        tail_fraction=0.1,
        min_used_ratio=50,
        compact_blob_size=10 * MiB // div,
        max_compact_size=100 * MiB // div,
    )
    many = Shape(
        name=f"many-{size}",
        chunk_size=4 << 10,
        compressor=Compressor.ZSTD,
        classes=classes(
            [("kept", 100, 1500, 1.0), ("sparse", 60, 1500, 0.3), ("tiny", 60, 200, 1.0), ("unused", 20, 500, 0.0)]
        ),
        occurrences=1_050_000 // div,
        chunks_per_file=10,
        files_per_dir=1000,
        tail_fraction=0.3,
        min_used_ratio=50,
        compact_blob_size=MiB // div,
        max_compact_size=100 * MiB // div,
    )
    return [bulk, many]


@dataclass(frozen=True)
class MergeShape:
    """The apply-speed image (issue 15): ``blobs`` blobs of ``blob_chunks`` random, uncompressed
    chunks of ``chunk_size`` bytes, sha256 digester, every chunk used by exactly one file (a file
    per blob); planned so that every blob merges into ``groups`` new blobs."""

    name: str
    blobs: int
    blob_chunks: int
    chunk_size: int
    groups: int

    @property
    def blob_data(self) -> int:
        return self.blob_chunks * self.chunk_size

    def key(self, version: int) -> str:
        raw = json.dumps([GENERATOR_REVISION, version, asdict(self)], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def plan_flags(self) -> list[str]:
        # Every blob is a merge candidate (v6 blobs are a little larger than their chunk data: the
        # blob meta), and a new blob takes exactly blobs / groups of them (a group counts chunk bytes).
        return [
            "--compact-blob-size", str(self.blob_data + MiB),
            "--max-compact-size", str(self.blob_data * self.blobs // self.groups),
        ]


def merge_shape(quick: bool) -> MergeShape:
    """128 blobs x 8 MiB of 1 MiB chunks into 4 new blobs of 256 MiB (1 GiB read and written);
    quick: 16 blobs x 1 MiB of 256 KiB chunks."""
    if quick:
        return MergeShape("merge-quick", blobs=16, blob_chunks=4, chunk_size=256 << 10, groups=4)
    return MergeShape("merge-full", blobs=128, blob_chunks=8, chunk_size=MiB, groups=4)


@dataclass(frozen=True)
class Image:
    shape: Shape | MergeShape
    version: int
    dir: Path

    @property
    def bootstrap(self) -> Path:
        return self.dir / BOOTSTRAP_NAME

    @property
    def blobs_dir(self) -> Path:
        return self.dir / BLOBS_DIR

    @property
    def meta(self) -> dict:
        return json.loads((self.dir / META_NAME).read_text())


def cached_image(shape: Shape | MergeShape, version: int, cache_dir: Path) -> tuple[Image, bool]:
    """The image for (shape, version) under ``cache_dir``, generated unless already there.

    Returns the image and whether it had to be generated.
    """
    final = cache_dir / f"{shape.name}-v{version}-{shape.key(version)}"
    if (final / META_NAME).is_file():
        return Image(shape, version, final), False
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        meta = (_generate_merge if isinstance(shape, MergeShape) else _generate)(shape, version, tmp)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Image(shape, version, final), True


def _generate(shape: Shape, version: int, out: Path) -> dict:
    rng = np.random.default_rng(SEED)
    blob_classes = _blob_order(shape, rng)
    (out / BLOBS_DIR).mkdir()
    blobs: list[BlobInfo] = []
    pools: list[np.ndarray] = []
    for index, cls in enumerate(blob_classes):
        info, rows = _write_blob(shape, version, cls, index, rng, out / BLOBS_DIR)
        blobs.append(info)
        pools.append(rows)
    pool = np.concatenate(pools)
    used = np.concatenate([_used_mask(cls, rng) for cls in blob_classes])
    chunks, counts = _occurrences(shape, pool, used, rng)
    bs = _bootstrap(shape, version, blobs, chunks, counts)
    data = dump_bootstrap(bs)
    (out / BOOTSTRAP_NAME).write_bytes(data)
    return {
        "shape": shape.name,
        "version": version,
        "blobs": len(blobs),
        "blob_classes": [c.name for c in blob_classes],
        "blob_bytes": sum(b.compressed_size for b in blobs),
        "distinct_chunks": len(pool),
        "referenced_chunks": int(used.sum()),
        "occurrences": len(chunks),
        "files": len(counts),
        "bootstrap_bytes": len(data),
    }


def _generate_merge(shape: MergeShape, version: int, out: Path) -> dict:
    rng = np.random.default_rng(SEED)
    (out / BLOBS_DIR).mkdir()
    cs, n = shape.chunk_size, shape.blob_chunks
    blobs: list[BlobInfo] = []
    rows = np.zeros(shape.blobs * n, dtype=CHUNK_DTYPE)
    for index in range(shape.blobs):
        data = rng.bytes(shape.blob_data)
        digests = b"".join(hashlib.sha256(data[k * cs : (k + 1) * cs]).digest() for k in range(n))
        tmp = out / BLOBS_DIR / f".blob-{index}"
        with open(tmp, "wb") as fp:
            writer = BlobWriter(fp, version=version, compressor=Compressor.NONE, digester=Digester.SHA256, chunk_size=cs)
            ci = writer.add_chunks([data], compressed_sizes=[cs] * n, uncompressed_sizes=[cs] * n,
                                   compressed=[False] * n, digests=digests)
            info = writer.finish()
        os.replace(tmp, out / BLOBS_DIR / info.blob_id)
        blobs.append(info)
        r = rows[index * n : (index + 1) * n]
        r["block_id"] = np.frombuffer(digests, dtype="V32")
        r["blob_index"] = index
        r["compressed_size"] = r["uncompressed_size"] = cs
        r["compressed_offset"] = ci["compressed_offset"]
        r["uncompressed_offset"] = ci["uncompressed_offset"]
        r["index"] = np.arange(n)
        r["file_offset"] = np.arange(n, dtype=np.uint64) * np.uint64(cs)
    root = Node(name=b"/", path=b"/", mode=0o40755, nlink=2, children=list(range(1, shape.blobs + 1)))
    nodes = [root]
    for f in range(shape.blobs):
        name = b"f%05d" % f
        nodes.append(Node(name=name, path=b"/" + name, mode=0o100644, size=shape.blob_data, parent=0,
                          link=len(nodes), chunk_start=f * n, chunk_count=n, mtime=1))
    bs = Bootstrap(version=version, flags=flags_for(Compressor.NONE, Digester.SHA256), chunk_size=cs,
                   blobs=blobs, nodes=nodes, chunks=rows)
    data = dump_bootstrap(bs)
    (out / BOOTSTRAP_NAME).write_bytes(data)
    return {"shape": shape.name, "version": version, "blobs": len(blobs),
            "blob_bytes": sum(b.compressed_size for b in blobs), "occurrences": len(rows), "files": shape.blobs,
            "bootstrap_bytes": len(data)}


def _blob_order(shape: Shape, rng: np.random.Generator) -> list[BlobClass]:
    """Classes interleaved in a fixed pseudo-random order, as layers of mixed kinds would be."""
    flat = [cls for cls in shape.classes for _ in range(cls.count)]
    return [flat[i] for i in rng.permutation(len(flat))]


def _write_blob(
    shape: Shape, version: int, cls: BlobClass, index: int, rng: np.random.Generator, blobs_dir: Path
) -> tuple[BlobInfo, np.ndarray]:
    """One blob of ``cls.chunks`` distinct chunks; returns its table entry and CHUNK_DTYPE rows."""
    cs = shape.chunk_size
    n = cls.chunks
    usizes = np.full(n, cs, dtype=np.int64)
    tails = rng.random(n) < shape.tail_fraction
    usizes[tails] = rng.integers(1, cs, int(tails.sum()))
    if shape.compressor == Compressor.NONE:
        payload = usizes
    else:
        # Random bytes followed by zeros: the stored size is about the random part's.
        payload = np.maximum(1, (usizes * rng.uniform(0.2, 0.5, n)).astype(np.int64))
    noise = rng.bytes(int(payload.sum()))
    zstd = zstandard.ZstdCompressor(level=1)
    rows = np.zeros(n, dtype=CHUNK_DTYPE)
    tmp = blobs_dir / f".blob-{index}"
    with open(tmp, "wb") as fp:
        writer = BlobWriter(fp, version=version, compressor=shape.compressor, digester=DIGESTER, chunk_size=cs)
        start = 0
        for i in range(n):
            usize, size = int(usizes[i]), int(payload[i])
            data = noise[start : start + size] + bytes(usize - size)
            start += size
            stored, compressed = data, False
            if shape.compressor != Compressor.NONE:
                packed = zstd.compress(data)
                if len(packed) < usize:
                    stored, compressed = packed, True
            chunk_digest = digest(DIGESTER, data)
            idx, coff, uoff = writer.add_chunk(
                stored, compressed=compressed, uncompressed_size=usize, digest=chunk_digest
            )
            rows[i] = (chunk_digest, index, int(ChunkFlags.COMPRESSED) if compressed else 0, len(stored), usize,
                       coff, uoff, 0, idx, 0)
        info = writer.finish()
    os.replace(tmp, blobs_dir / info.blob_id)
    return info, rows


def _used_mask(cls: BlobClass, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(cls.chunks, dtype=bool)
    mask[rng.choice(cls.chunks, round(cls.chunks * cls.used), replace=False)] = True
    return mask


def _occurrences(
    shape: Shape, pool: np.ndarray, used: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Every referenced chunk at least once, the rest drawn at random (dedup), cut into files.

    Only a file's last chunk may be shorter than the chunk size, so short chunks are drawn for
    last positions and full ones for the others. Returns the occurrences and chunks per file.
    """
    full = np.nonzero(used & (pool["uncompressed_size"] == shape.chunk_size))[0]
    short = np.nonzero(used & (pool["uncompressed_size"] < shape.chunk_size))[0]
    files = shape.files
    inner = shape.occurrences - files
    if files < len(short) or inner < len(full) or len(full) == 0:
        raise ValueError(
            f"{shape.name}: {shape.occurrences} occurrences in {files} files cannot use every referenced chunk"
        )
    lasts = rng.permutation(np.concatenate([short, rng.choice(np.concatenate([full, short]), files - len(short))]))
    middles = rng.permutation(np.concatenate([full, rng.choice(full, inner - len(full))]))
    counts = 1 + rng.multinomial(inner, np.full(files, 1 / files))
    ends = np.cumsum(counts)
    is_last = np.zeros(shape.occurrences, dtype=bool)
    is_last[ends - 1] = True
    picks = np.empty(shape.occurrences, dtype=np.int64)
    picks[is_last] = lasts
    picks[~is_last] = middles
    chunks = pool[picks]
    starts = np.repeat(ends - counts, counts)
    chunks["file_offset"] = (np.arange(shape.occurrences) - starts).astype(np.uint64) * np.uint64(shape.chunk_size)
    return chunks, counts


def _bootstrap(shape: Shape, version: int, blobs: list[BlobInfo], chunks: np.ndarray, counts: np.ndarray) -> Bootstrap:
    """Directories of ``files_per_dir`` files under the root, file i holding counts[i] chunks."""
    files = len(counts)
    dirs = -(-files // shape.files_per_dir)
    starts = np.cumsum(counts) - counts
    last_sizes = chunks["uncompressed_size"][np.cumsum(counts) - 1].astype(np.int64)
    sizes = (counts - 1) * shape.chunk_size + last_sizes
    root = Node(name=b"/", path=b"/", mode=0o40755, nlink=2 + dirs, children=list(range(1, dirs + 1)))
    nodes = [root]
    for d in range(dirs):
        nodes.append(Node(name=b"d%05d" % d, path=b"/d%05d" % d, mode=0o40755, nlink=2, parent=0, mtime=1))
    for f in range(files):
        dir_pos = 1 + f // shape.files_per_dir
        name = b"f%07d" % f
        nodes[dir_pos].children.append(len(nodes))
        nodes.append(
            Node(
                name=name,
                path=nodes[dir_pos].path + b"/" + name,
                mode=0o100644,
                size=int(sizes[f]),
                parent=dir_pos,
                link=len(nodes),
                chunk_start=int(starts[f]),
                chunk_count=int(counts[f]),
                mtime=1,
            )
        )
    return Bootstrap(
        version=version,
        flags=flags_for(shape.compressor, DIGESTER),
        chunk_size=shape.chunk_size,
        blobs=blobs,
        nodes=nodes,
        chunks=chunks,
    )
