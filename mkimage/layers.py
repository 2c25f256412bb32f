"""Layer directories → one merged tree, applied the way an OCI image's layers are.

Each layer directory is read into a tree of ``Entry`` holding only lstat facts; OCI whiteouts
(``.wh.NAME``, ``.wh..wh..opq``) are recorded on their directory instead of as entries, so that
nothing downstream can mistake one for a file. ``merge_layers`` then applies the layers lower
first without touching the layer trees: the builder still needs every layer tree as read, to
write each layer's blob from all of its files, including the ones an upper layer hides.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from nydus_compact.rafs.model import FileType

from .errors import BuildError

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
# Names starting with this are reserved by the OCI spec for markers; only the opaque one exists.
_RESERVED_PREFIX = b".wh..wh."

# Namespaces both RAFS versions can store (rafs-v5.md §7.4, rafs-v6.md §9). Other xattrs (e.g.
# system.*) are skipped: nydus-image 2.2 has no place for them either.
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 0xFFFF  # v6 e_value_size is a u16; v5 allows one more byte, keep the common limit

_NSEC = 1_000_000_000


@dataclass(slots=True, eq=False)
class Entry(FileType):
    """One directory entry of a layer tree or of the merged tree."""

    name: bytes  # b"/" for the root
    path: bytes  # absolute in the image, b"/" for the root
    layer: int  # the layer this entry (and, for a regular file, its data) comes from
    source: bytes  # where it is on the local filesystem
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    size: int
    rdev: int
    symlink: bytes | None = None
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # sorted by key
    # (layer, st_dev, st_ino) of a regular file with more than one name in its layer.
    link_key: tuple[int, int, int] | None = None
    children: dict[bytes, Entry] | None = None  # directories only
    # Layer trees only: names this directory whites out, and whether it is opaque.
    whiteouts: frozenset[bytes] = frozenset()
    opaque: bool = False

    def sorted_children(self) -> list[Entry]:
        return [self.children[k] for k in sorted(self.children)] if self.children else []


@dataclass(slots=True)
class Layers:
    trees: list[Entry]  # one per layer, lower first, as read
    merged: Entry


def read_layers(paths: list[Path]) -> Layers:
    if not paths:
        raise BuildError("no layer directories given")
    trees = [read_layer(p, i) for i, p in enumerate(paths)]
    return Layers(trees=trees, merged=merge_layers(trees))


def read_layer(root: Path, layer: int) -> Entry:
    """Read one layer directory (symlinks inside it are never followed)."""
    src = os.fsencode(root)
    try:
        st = os.stat(src)
    except OSError as exc:
        raise BuildError(f"layer {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"layer {root}: not a directory")
    top = _entry(b"/", b"/", src, st, layer)
    pending = [top]
    while pending:
        parent = pending.pop()
        _read_dir(parent, layer, pending)
    return top


def _read_dir(parent: Entry, layer: int, pending: list[Entry]) -> None:
    children: dict[bytes, Entry] = {}
    whiteouts: list[bytes] = []
    with os.scandir(parent.source) as it:
        names = sorted(de.name for de in it)
    for name in names:
        if name == OPAQUE_MARKER:
            parent.opaque = True
            continue
        if name.startswith(_RESERVED_PREFIX):
            continue
        if name.startswith(WHITEOUT_PREFIX):
            whiteouts.append(name[len(WHITEOUT_PREFIX) :])
            continue
        source = os.path.join(parent.source, name)
        path = (parent.path if parent.path != b"/" else b"") + b"/" + name
        child = _entry(name, path, source, os.lstat(source), layer)
        children[name] = child
        if child.is_dir:
            pending.append(child)
    parent.children = children
    parent.whiteouts = frozenset(whiteouts)


def _entry(name: bytes, path: bytes, source: bytes, st: os.stat_result, layer: int) -> Entry:
    mode = st.st_mode
    kind = stat.S_IFMT(mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        raise BuildError(f"{os.fsdecode(source)}: unsupported file type {kind:#o}")
    mtime, mtime_nsec = divmod(st.st_mtime_ns, _NSEC)
    if mtime < 0:
        raise BuildError(f"{os.fsdecode(source)}: mtime before 1970 cannot be stored")
    symlink = os.readlink(source) if kind == stat.S_IFLNK else None
    return Entry(
        name=name,
        path=path,
        layer=layer,
        source=source,
        mode=mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=mtime,
        mtime_nsec=mtime_nsec,
        # A symlink's size is its target length, whatever the filesystem reports (rafs-v5.md §7.2).
        size=len(symlink) if symlink is not None else (st.st_size if kind == stat.S_IFREG else 0),
        rdev=st.st_rdev & 0xFFFF_FFFF if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
        symlink=symlink,
        xattrs=_xattrs(source),
        link_key=(layer, st.st_dev, st.st_ino) if kind == stat.S_IFREG and st.st_nlink > 1 else None,
        children={} if kind == stat.S_IFDIR else None,
    )


def _xattrs(source: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (getattr(os, "ENOTSUP", -1), getattr(os, "EOPNOTSUPP", -1)):
            return ()
        raise
    out = []
    for name in names:
        key = os.fsencode(name)
        prefix = next((p for p in XATTR_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            continue
        value = os.getxattr(source, name, follow_symlinks=False)
        where = f"{os.fsdecode(source)}: xattr {name!r}"
        if len(key) == len(prefix):
            raise BuildError(f"{where}: a name equal to its namespace prefix cannot be stored")
        if len(key) > XATTR_NAME_MAX:
            raise BuildError(f"{where}: name longer than {XATTR_NAME_MAX} bytes")
        if len(value) > XATTR_VALUE_MAX:
            raise BuildError(f"{where}: value longer than {XATTR_VALUE_MAX} bytes")
        out.append((key, value))
    return tuple(sorted(out))


def merge_layers(trees: list[Entry]) -> Entry:
    """Apply the layer trees lower first; returns a new tree sharing the non-directory entries."""
    merged = _apply(None, trees[0])
    for tree in trees[1:]:
        merged = _apply(merged, tree)
    return merged


def _apply(lower: Entry | None, upper: Entry) -> Entry:
    """Layer directory ``upper`` applied over merged directory ``lower`` (None: nothing below).

    Whiteouts and opacity hide only lower content (OCI image-spec, "Whiteouts"), so they are
    applied before the layer's own entries. Iterative, like every tree walk here.
    """
    top = replace(upper, children={}, whiteouts=frozenset(), opaque=False)
    stack = [(top, lower, upper)]
    while stack:
        out, below_dir, layer_dir = stack.pop()
        assert layer_dir.children is not None
        if below_dir is None or layer_dir.opaque:
            kept: dict[bytes, Entry] = {}
        else:
            assert below_dir.children is not None
            kept = {n: c for n, c in below_dir.children.items() if n not in layer_dir.whiteouts}
        for name, child in layer_dir.children.items():
            if not child.is_dir:
                kept[name] = child
                continue
            below = kept.get(name)
            merged_child = replace(child, children={}, whiteouts=frozenset(), opaque=False)
            kept[name] = merged_child
            stack.append((merged_child, below if below is not None and below.is_dir else None, child))
        out.children = kept
    return top


def node_order(root: Entry) -> Iterator[tuple[Entry, int]]:
    """(entry, position of its parent) in the 2.2 builder's node order (rafs-v5.md §9.2,
    rafs-v6.md §16.1): the root, then each directory's children listed together when the
    directory is expanded, directories expanded depth-first in name order. The root's parent
    is -1. Iterative, so deep trees cannot exhaust the recursion limit."""
    yield root, -1
    count = 1
    stack: list[Iterator[tuple[Entry, int]]] = [iter([(root, 0)])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        directory, pos = item
        subdirs = []
        for child in directory.sorted_children():
            yield child, pos
            if child.is_dir:
                subdirs.append((child, count))
            count += 1
        stack.append(iter(subdirs))

