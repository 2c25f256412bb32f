"""A small deterministic multi-layer image source, shaped like a real image after a few updates.

Built with 64 KiB chunks it gives the blob table a compactor cares about:

* layer 0 (base): a few hundred KiB, most of it overwritten or deleted above → a mostly dead blob;
* layer 1 (update): replaces the big base files and whites out ``/var/cache``;
* layer 2 (shadowed): every file it adds is overwritten by layer 3 → an unreferenced blob;
* layers 3 and 4: tiny changes (an opaque dir, a file replacing a dir and vice versa, a copy of
  a base file that dedups into blob 0, symlinks) → tiny blobs.

Contents, modes and times are fixed by ``seed``; ``scale`` multiplies the data sizes and the
number of small files (for benchmarks).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from .errors import BuildError

KiB = 1024
LAYER_NAMES = ("0-base", "1-update", "2-shadowed", "3-restructure", "4-tweak")
_MTIME = 1_700_000_000
_WORDS = b"alpha beta gamma delta layer chunk blob image nydus rafs erofs cache merge compact node".split()


class _Layer:
    def __init__(self, root: Path, rng: random.Random):
        self.root = root
        self.rng = rng
        root.mkdir(parents=True)

    def _path(self, rel: str) -> Path:
        path = self.root / rel
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            self.dir(str(parent))
        return path

    def file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        path = self._path(rel)
        path.write_bytes(data)
        path.chmod(mode)

    def dir(self, rel: str, mode: int = 0o755) -> None:
        path = self.root / rel
        if not path.is_dir():
            path.mkdir()
            path.chmod(mode)

    def symlink(self, rel: str, target: str) -> None:
        os.symlink(target, self._path(rel))

    def hardlink(self, rel: str, existing: str) -> None:
        os.link(self.root / existing, self._path(rel))

    def whiteout(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")

    def opaque(self, rel: str) -> None:
        self.file(f"{rel}/.wh..wh..opq", b"")

    def random(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def text(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            out += self.rng.choice(_WORDS) + (b"\n" if self.rng.random() < 0.1 else b" ")
        return bytes(out[:size])

    def finish(self, layer: int) -> None:
        """Fix every permission and time the tree's creation left to the umask and the clock."""
        self.root.chmod(0o755)
        when = _MTIME + layer * 1000
        for dirpath, dirnames, filenames in os.walk(self.root, topdown=False):
            for name in sorted(filenames + dirnames):
                path = os.path.join(dirpath, name)
                os.utime(path, ns=(when * 10**9, when * 10**9 + 123_456_789), follow_symlinks=False)
            os.utime(dirpath, ns=(when * 10**9, when * 10**9 + 987_654_321))


def make_sample_layers(dest: Path, *, seed: int = 0, scale: int = 1) -> list[Path]:
    """Write the sample layers under ``dest`` (which must be absent or empty); returns them lower first."""
    dest = Path(dest)
    if scale < 1:
        raise BuildError(f"sample scale must be at least 1, got {scale}")
    if dest.exists() and any(dest.iterdir()):
        raise BuildError(f"{dest}: not empty, refusing to write the sample layers there")
    rng = random.Random(seed)
    layers = [_Layer(dest / name, rng) for name in LAYER_NAMES]
    base, update, shadowed, restructure, tweak = layers

    tool_a = base.random(192 * KiB * scale)
    base.file("etc/hostname", b"sample\n")
    base.file("etc/app.conf", base.text(900))
    base.file("etc/conf.d", b"# replaced by a directory in layer 3\n")
    base.file("etc/empty", b"")
    base.symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
    base.file("usr/bin/tool-a", tool_a, 0o755)
    base.hardlink("usr/sbin/tool-a", "usr/bin/tool-a")
    base.symlink("usr/bin/tool", "tool-a")
    base.file("usr/bin/tool-b", base.text(150 * KiB * scale), 0o755)
    base.file("usr/lib/libbig.so", base.random(512 * KiB * scale))
    block = base.random(64 * KiB)
    base.file("usr/lib/libdup.so", block * (3 * scale) + b"tail")
    base.file("usr/share/doc/README", base.text(10 * KiB))
    for i in range(8 * scale):
        base.file(f"usr/share/data/item-{i:04d}", base.text(1 * KiB + 731 * i % (7 * KiB)))
    base.file("var/cache/pkg.db", base.random(256 * KiB * scale))
    base.file("var/log/boot.log", base.text(3 * KiB))
    base.file("opt/app/main.py", base.text(2 * KiB), 0o755)
    base.file("opt/app/data.bin", base.random(64 * KiB * scale))
    base.file("opt/app/lib/helper.py", base.text(1 * KiB))
    base.file("srv/old/a.txt", base.text(500))
    base.file("srv/old/b.txt", base.text(700))
    base.dir("tmp", 0o1777)
    base.dir("mnt")
    base.symlink("lib", "usr/lib")

    update.file("usr/bin/tool-b", update.text(150 * KiB * scale), 0o755)
    update.file("usr/lib/libbig.so", update.random(512 * KiB * scale))
    update.file("etc/app.conf", update.text(1000))
    update.whiteout("var/cache")
    update.file("usr/share/doc/CHANGES", update.text(2 * KiB))

    shadowed.file("srv/data/a.bin", shadowed.random(96 * KiB * scale))
    shadowed.file("srv/data/b.bin", shadowed.random(96 * KiB * scale))
    shadowed.file("srv/data/notes.txt", shadowed.text(4 * KiB))

    restructure.file("srv/data/a.bin", restructure.random(3 * KiB))
    restructure.file("srv/data/b.bin", restructure.random(2 * KiB))
    restructure.file("srv/data/notes.txt", b"rewritten\n")
    restructure.opaque("opt/app")
    restructure.file("opt/app/main.py", restructure.text(1500), 0o755)
    restructure.file("etc/conf.d/10-default.conf", b"enabled = true\n")
    restructure.file("srv/old", b"srv/old is a file now\n")
    restructure.file("usr/local/bin/tool-a-copy", tool_a, 0o755)

    tweak.file("etc/hostname", b"sample-2\n")
    tweak.file("etc/motd", b"welcome\n")
    tweak.symlink("usr/bin/b", "tool-b")
    tweak.whiteout("var/log/boot.log")

    for i, layer in enumerate(layers):
        layer.finish(i)
    return [layer.root for layer in layers]
