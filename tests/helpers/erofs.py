"""The one fsck.erofs check every RAFS v6 test uses.

``check_v6_image`` loads the bootstrap with our reader, materializes an uncompressed cache per
blob (blob-v6.md §12), runs ``fsck.erofs`` (erofs-utils 1.5) on it with one ``--device`` per blob
in blob-table order, extracts the tree with ``--extract`` and, given a source tree, compares the
two.

What the comparison covers, for every entry below the root: the set of paths, file types,
permission bits, regular-file contents and mtimes (s + ns), symlink targets, directory listings,
device numbers, and (when running as root, where fsck.erofs preserves ownership) uid/gid. With
``all_mtimes=True`` directory and symlink mtimes too (fsck.erofs restores them, but a source tree
assembled with shutil usually does not keep them).

What it cannot cover, because fsck.erofs 1.5 does not reproduce it: xattrs (not extracted),
hard-link identity (each name is extracted as its own file), uid/gid when not root, and the root
directory's own metadata (it is the extraction target; the builder also sets the root mtime to 0).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from nydus_compact.rafs import v6
from nydus_compact.rafs.cache import materialize

FSCK = "fsck.erofs"


def check_v6_image(
    bootstrap_path: Path, blobs_dir: Path, source_tree: Path | None, tmp_path: Path, *, all_mtimes: bool = False
) -> None:
    bootstrap_path = Path(bootstrap_path)
    assert shutil.which(FSCK), f"{FSCK} (erofs-utils) is not installed"
    bs = v6.load(bootstrap_path.read_bytes(), str(bootstrap_path))
    work = Path(tmp_path) / f"erofs-{bootstrap_path.stem}"
    suffix = 0
    while work.exists():
        suffix += 1
        work = Path(tmp_path) / f"erofs-{bootstrap_path.stem}-{suffix}"
    caches = materialize(bs, Path(blobs_dir), work / "cache")
    devices = [f"--device={c}" for c in caches]

    check = subprocess.run([FSCK, *devices, str(bootstrap_path)], capture_output=True, text=True)
    assert check.returncode == 0, f"fsck.erofs failed ({check.returncode}): {check.stdout}{check.stderr}"
    extracted = work / "extract"
    run = subprocess.run([FSCK, *devices, f"--extract={extracted}", str(bootstrap_path)], capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 0, f"fsck.erofs --extract failed ({run.returncode}): {run.stdout}{run.stderr}"
    if source_tree is not None:
        assert_trees_equal(Path(source_tree), extracted, all_mtimes=all_mtimes)


def _snapshot(root: Path, all_mtimes: bool) -> dict[str, tuple]:
    """relative path -> comparable facts, for every entry below ``root``."""
    out: dict[str, tuple] = {}
    as_root = os.geteuid() == 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            facts: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
            if as_root:
                facts += (st.st_uid, st.st_gid)
            if all_mtimes or stat.S_ISREG(st.st_mode):
                facts += (st.st_mtime_ns,)
            if stat.S_ISREG(st.st_mode):
                facts += (p.read_bytes(),)
            elif stat.S_ISLNK(st.st_mode):
                facts += (os.readlink(p),)
            elif stat.S_ISDIR(st.st_mode):
                facts += (tuple(sorted(os.listdir(p))),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                facts += (st.st_rdev,)
            out[rel] = facts
    return out


def assert_trees_equal(source: Path, extracted: Path, *, all_mtimes: bool = False) -> None:
    want, got = _snapshot(source, all_mtimes), _snapshot(extracted, all_mtimes)
    assert sorted(got) == sorted(want), f"paths differ: missing {set(want) - set(got)}, extra {set(got) - set(want)}"
    for rel in sorted(want):
        assert got[rel] == want[rel], f"{rel}: extracted {got[rel]!r:.200} != source {want[rel]!r:.200}"
