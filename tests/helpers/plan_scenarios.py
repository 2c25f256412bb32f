"""Builder-made images for the plan tests: small, fully deterministic, each shaped for one case.

Everything an image's bytes depend on is fixed here (contents, modes, times; uid/gid through
``repeatable``), so plans made from them can be snapshotted byte for byte. Compressors are
``none`` and ``lz4_block``, whose output does not drift between library releases as zstd's may.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from nydus_compact.mkimage.builder import BuildOptions, build_image
from nydus_compact.rafs.compression import Compressor

KiB = 1024
CHUNK = 4 * KiB
WHITEOUT = None  # a layer entry that hides the path below it
_TIME_NS = 1_700_000_000 * 10**9

V5 = BuildOptions(fs_version=5, chunk_size=CHUNK, compressor=Compressor.NONE, repeatable=True)
V6 = BuildOptions(fs_version=6, chunk_size=CHUNK, compressor=Compressor.LZ4_BLOCK, repeatable=True)


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_layer(root: Path, files: dict[str, bytes | None]) -> Path:
    """A layer directory holding ``files`` (path -> content, or WHITEOUT), with fixed modes and times."""
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is WHITEOUT:
            path, content = path.with_name(".wh." + path.name), b""
        path.write_bytes(content)
        path.chmod(0o644)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(_TIME_NS, _TIME_NS), follow_symlinks=False)
        os.chmod(dirpath, 0o755)
        os.utime(dirpath, ns=(_TIME_NS, _TIME_NS))
    return root


def build_scenarios(root: Path) -> None:
    """Write the images under ``root`` (paths below are relative to it).

    * ``v5/``, ``v6/``: four layers. Layer 0's big files are replaced by layer 1 (a partly used
      blob), layer 2 only adds ``/tmp/scratch``, which layer 3 whites out (an unreferenced blob),
      layer 3 adds one tiny file (a tiny blob).
    * ``dict5/``: a v5 chunk dict built from a layer holding two of layer 0's files unchanged.
    * ``tiny/``: twelve v6 layers of one to three small files each (everything merges).
    * ``one/``: a single-layer v6 image with nothing to compact.
    """
    layers = root / "layers"
    base = write_layer(
        layers / "base",
        {
            "bin/app": data(1, 40 * KiB),
            "lib/libc.so": data(2, 24 * KiB),
            "etc/conf": data(3, 3 * KiB),
            "share/doc": data(4, 9 * KiB),
        },
    )
    update = write_layer(layers / "update", {"bin/app": data(5, 40 * KiB), "etc/conf": data(6, 2 * KiB)})
    scratch = write_layer(layers / "scratch", {"tmp/scratch": data(7, 30 * KiB)})
    cleanup = write_layer(layers / "cleanup", {"tmp": WHITEOUT, "etc/motd": b"hello\n"})
    build_image([base, update, scratch, cleanup], root / "v5", V5)
    build_image([base, update, scratch, cleanup], root / "v6", V6)

    shared = write_layer(layers / "dict", {"lib/libc.so": data(2, 24 * KiB), "share/doc": data(4, 9 * KiB)})
    build_image([shared], root / "dict5", V5)

    tiny = [
        write_layer(
            layers / f"tiny-{i:02d}",
            {f"d{i}/f{j}": data(100 * i + j, 200 + 37 * i * j) for j in range(1 + i % 3)},
        )
        for i in range(12)
    ]
    build_image(tiny, root / "tiny", V6)

    build_image([write_layer(layers / "one", {"f": data(9, 20 * KiB)})], root / "one", V6)
