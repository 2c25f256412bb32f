"""Images, plans and `compact` runs shared by the apply, crash/resume and verify/gc tests.

Images come from the real builder (the bundled sample plus xattrs, and a chunk-dict layer);
plans and applies go through the real CLI, in-process (``cli``) or as a subprocess
(``compact``) where exit status, signals or stderr of a separate process matter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nydus_compact.mkimage.builder import BuildOptions, build_image
from nydus_compact.mkimage.sample import make_sample_layers
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester

from .cli import Run, cli, compact  # noqa: F401  (the tests import them from here too)

CHUNK = 64 * 1024
# Gives every kind of decision at once on the sample: blob 0 rebuilt (ratio 23 %), blob 1 kept,
# blob 2 deleted (unreferenced), blobs 3 and 4 merged; two new blobs.
REBUILD_AND_MERGE = ("--min-used-ratio", "50", "--compact-blob-size", "64KiB")
# The default merge cap swallows everything: one new blob from four sources, one deletable.
MERGE_ALL = ("--min-used-ratio", "50")
OPTIONS = {
    5: BuildOptions(fs_version=5, chunk_size=CHUNK, compressor=Compressor.LZ4_BLOCK, digester=Digester.SHA256),
    6: BuildOptions(fs_version=6, chunk_size=CHUNK, compressor=Compressor.ZSTD, digester=Digester.BLAKE3),
}


@dataclass
class Image:
    root: Path

    @property
    def boot(self) -> Path:
        return self.root / "image.boot"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def new_boot(self) -> Path:
        return self.root / "image.boot.compact"

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"


def make_layers(dest: Path) -> list[Path]:
    """The sample layers, with xattrs on a file, a directory and a hard-linked file."""
    layers = make_sample_layers(dest / "layers")
    os.setxattr(layers[0] / "usr/bin/tool-a", "user.origin", b"base")  # hard-linked as usr/sbin/tool-a
    os.setxattr(layers[0] / "usr/share/doc", "user.dir", b"docs")
    os.setxattr(layers[4] / "etc/motd", "user.greeting", b"\x00binary\xff")
    os.setxattr(layers[4] / "etc/motd", "trusted.second", b"2")
    return layers


def make_dict_layer(layers: list[Path], dest: Path) -> Path:
    """A chunk-dict source holding a copy of the sample's tool-a (so image chunks hit it) and its own data."""
    (dest / "dict").mkdir(parents=True)
    shutil.copyfile(layers[0] / "usr/bin/tool-a", dest / "dict/tool-a")
    (dest / "dict/own").write_bytes(b"only in the dict " * 2000)
    return dest


def build(layers: list[Path], root: Path, version: int) -> Image:
    build_image(layers, root, OPTIONS[version])
    return Image(root)


def build_with_dict(layers: list[Path], dict_layer: Path, root: Path, version: int) -> tuple[Image, Path]:
    """The image plus a chunk dict built with the same options; dict blobs live in the image's blobs dir."""
    image = build(layers, root / "image", version)
    d = build_image([dict_layer], root / "dict", OPTIONS[version])
    for blob in d.blob_paths:
        shutil.copyfile(blob, image.blobs / blob.name)
    return image, d.bootstrap_path


def plan(image: Image, *options: str | Path) -> Run:
    r = cli("plan", image.boot, "--blobs-dir", image.blobs, "-o", image.plan, *options)
    assert r.rc == 0, r.err
    return r


def file_hashes(directory: Path, pattern: str = "*") -> dict[str, str]:
    """name -> sha256 of every regular file matching ``pattern`` (hidden ones included)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob(pattern))
        if p.is_file()
    }
