"""Parse benchmark: how long `load_bootstrap` takes on large synthetic v5 and v6 bootstraps.

The images are built in memory as a model (directories of regular files whose chunks are drawn
from a pool of distinct chunks, so there is dedup as in real images), dumped with rafs.v5.dump /
rafs.v6.dump and cached under the temp directory keyed by their parameters. No blob is needed:
parsing never touches chunk data.

    python3 bench/parse_bench.py            # 100k files, >= 1M chunk occurrences
    python3 bench/parse_bench.py --quick    # a tiny image, for a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rafs import v5, v6
from rafs.compression import Compressor
from rafs.digest import Digester
from rafs.flags import flags_for
from rafs.loader import load_bootstrap
from rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node

CHUNK_SIZE = 1 << 20
BLOCK = 4096
CACHE_DIR = Path(tempfile.gettempdir()) / "nydus-compact-parse-bench"
FORMAT_REVISION = 1  # bump when the generator changes, to invalidate cached images


@dataclass(frozen=True)
class Shape:
    files: int
    files_per_dir: int
    chunks_per_big_file: int  # every other file has this many chunks, the rest one
    pool: int  # distinct chunks
    blobs: int

    @property
    def key(self) -> str:
        raw = f"{FORMAT_REVISION}:{self.files}:{self.files_per_dir}:{self.chunks_per_big_file}:{self.pool}:{self.blobs}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


FULL = Shape(files=100_000, files_per_dir=1000, chunks_per_big_file=19, pool=300_000, blobs=8)
QUICK = Shape(files=2_000, files_per_dir=100, chunks_per_big_file=19, pool=6_000, blobs=2)


def _chunk_counts(shape: Shape) -> np.ndarray:
    # Half the files get many chunks, half get one: 100k files -> 100k * (19 + 1) / 2 = 1M occurrences.
    counts = np.ones(shape.files, dtype=np.int64)
    counts[::2] = shape.chunks_per_big_file
    return counts


def _pool(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Distinct chunks laid out back to back in their blobs, 4K-aligned uncompressed (valid for v5 and v6)."""
    pool = np.zeros(shape.pool, dtype=CHUNK_DTYPE)
    pool["block_id"] = np.frombuffer(rng.bytes(32 * shape.pool), dtype="V32")
    blob_index = np.arange(shape.pool) * shape.blobs // shape.pool
    pool["blob_index"] = blob_index
    pool["flags"] = 1
    pool["uncompressed_size"] = CHUNK_SIZE
    csize = rng.integers(CHUNK_SIZE // 4, CHUNK_SIZE // 2, shape.pool)
    pool["compressed_size"] = csize
    for b in range(shape.blobs):
        sel = np.nonzero(blob_index == b)[0]
        pool["index"][sel] = np.arange(len(sel))
        pool["compressed_offset"][sel] = np.concatenate(([0], np.cumsum(csize[sel])[:-1]))
        pool["uncompressed_offset"][sel] = np.arange(len(sel)) * CHUNK_SIZE
    return pool


def build_model(shape: Shape, version: int) -> Bootstrap:
    rng = np.random.default_rng(20240229)
    pool = _pool(shape, rng)
    counts = _chunk_counts(shape)
    picks = rng.integers(0, shape.pool, int(counts.sum()))
    chunks = pool[picks]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # file_offset = k * chunk size within each file
    chunks["file_offset"] = (np.arange(len(chunks)) - np.repeat(starts, counts)) * CHUNK_SIZE

    dirs = -(-shape.files // shape.files_per_dir)
    root = Node(name=b"/", path=b"/", mode=0o40755, nlink=2 + dirs)
    nodes = [root]
    for d in range(dirs):
        nodes.append(Node(name=b"d%05d" % d, path=b"/d%05d" % d, mode=0o40755, nlink=2, parent=0, mtime=1))
    root.children = list(range(1, dirs + 1))
    for d in range(dirs):
        dir_pos = 1 + d
        first = d * shape.files_per_dir
        for f in range(first, min(first + shape.files_per_dir, shape.files)):
            name = b"f%07d" % f
            count = int(counts[f])
            nodes[dir_pos].children.append(len(nodes))
            nodes.append(
                Node(
                    name=name,
                    path=nodes[dir_pos].path + b"/" + name,
                    mode=0o100644,
                    size=count * CHUNK_SIZE - 100,
                    parent=dir_pos,
                    link=len(nodes),
                    chunk_start=int(starts[f]),
                    chunk_count=count,
                    mtime=1,
                )
            )
    blobs = []
    for b in range(shape.blobs):
        rows = pool[pool["blob_index"] == b]
        blobs.append(
            BlobInfo(
                blob_id=hashlib.sha256(b"bench-blob-%d" % b).hexdigest(),
                chunk_count=len(rows),
                compressed_size=int(rows["compressed_offset"][-1] + rows["compressed_size"][-1]),
                uncompressed_size=len(rows) * CHUNK_SIZE,
                features=0x4000_0001 if version == 6 else 0,
                compressor=Compressor.ZSTD,
                digester=Digester.BLAKE3,
                chunk_size=CHUNK_SIZE,
                ci_compressed_size=len(rows) * 16 if version == 6 else 0,
                ci_uncompressed_size=len(rows) * 16 if version == 6 else 0,
                ci_offset=int(rows["compressed_offset"][-1] + rows["compressed_size"][-1]) if version == 6 else 0,
            )
        )
    return Bootstrap(
        version=version,
        flags=flags_for(Compressor.ZSTD, Digester.BLAKE3),
        chunk_size=CHUNK_SIZE,
        blobs=blobs,
        nodes=nodes,
        chunks=chunks,
    )


def bootstrap_path(shape: Shape, version: int) -> Path:
    """The cached bootstrap for (shape, version), generating it on first use."""
    path = CACHE_DIR / f"v{version}-{shape.files}-{shape.key}.boot"
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        data = (v5 if version == 5 else v6).dump(build_model(shape, version))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        print(f"generated {path} ({len(data) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return path


def bench(path: Path, runs: int) -> tuple[float, Bootstrap]:
    times = []
    bs = None
    for _ in range(runs):
        start = time.perf_counter()
        bs = load_bootstrap(path)
        times.append(time.perf_counter() - start)
    assert bs is not None
    return statistics.median(times), bs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny image (smoke test)")
    parser.add_argument("--runs", type=int, default=None, help="timed loads per image (median is shown)")
    parser.add_argument("--version", type=int, choices=(5, 6), action="append", help="only this RAFS version")
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    runs = args.runs or (3 if args.quick else 5)
    rows = []
    for version in args.version or (5, 6):
        path = bootstrap_path(shape, version)
        median, bs = bench(path, runs)
        rows.append((version, path.stat().st_size, len(bs.nodes), len(bs.chunks), median))
    print(f"{'version':>7} {'size MB':>9} {'nodes':>9} {'chunks':>10} {'median s':>9} {'chunks/s':>12}")
    for version, size, nodes, chunks, median in rows:
        print(
            f"{'v' + str(version):>7} {size / 1e6:>9.1f} {nodes:>9} {chunks:>10} {median:>9.3f}"
            f" {chunks / median:>12.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
