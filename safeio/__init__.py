"""Crash-safe file writes: temp file in the target directory, fsync, rename, fsync the directory.

Every output of nydus-compact (plans, blobs, bootstraps, reports, JSON) goes through here, so
a crash or an error never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".compact-tmp."


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, *, tmp_name: str | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block completes.

    ``tmp_name`` fixes the temp file's name (used by resumable writers to find their own
    leftovers); by default a unique name with TMP_PREFIX is used.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if tmp_name is None:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
        fp = os.fdopen(fd, "wb")
        tmp_path = Path(tmp)
    else:
        tmp_path = directory / tmp_name
        fp = open(tmp_path, "wb")
    try:
        with fp:
            yield fp
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path) as fp:
        fp.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(directory: Path, prefix: str = TMP_PREFIX) -> list[Path]:
    """Delete leftovers of interrupted atomic writes; returns what was removed."""
    removed = []
    for entry in sorted(directory.glob(prefix + "*")):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed
