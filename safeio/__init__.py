"""Crash-safe file writes: temp file in the target directory, fsync, rename, fsync the directory.

Every output of nydus-compact (plans, blobs, bootstraps, reports, JSON) goes through here, so
a crash or an error never leaves a half-written file under the final name. Files are created
with mode 0666 minus the umask, like other tools' outputs. Which outputs a command may write
at all is decided by the output guard (guard.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from .direct import DirectWriter
from .errors import OutputRefusedError, SafeIOError
from .guard import BLOB_NAME, STDOUT, OutputGuard, check_regular, is_stdout

__all__ = [
    "BLOB_NAME", "STDOUT", "TMP_PREFIX", "OutputGuard", "OutputRefusedError", "SafeIOError", "atomic_write_bytes",
    "atomic_write_text", "atomic_writer", "check_regular", "create_file", "fsync_dir", "is_stdout",
    "remove_stale_temps", "stale_temps", "temp_file", "write_text_output",
]

TMP_PREFIX = ".compact-tmp."
_File = TypeVar("_File", BinaryIO, DirectWriter)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file(path: Path) -> BinaryIO:
    """Create a new file for writing with mode 0666 minus the umask (mkstemp would make it 0600).
    Exclusive: an existing file, or a symlink planted under the name, is an error."""
    return open(path, "xb")


def temp_file(directory: Path, prefix: str = TMP_PREFIX) -> BinaryIO:
    """A new uniquely named file in ``directory`` (its path is ``.name``), for writers that learn
    the final name only at the end (a blob named by its digest); rename it with os.replace."""
    return _unique_temp(directory, prefix, create_file)


def _unique_temp(directory: Path, prefix: str, opener: Callable[[Path], _File]) -> _File:
    while True:
        try:
            return opener(directory / f"{prefix}{secrets.token_hex(6)}")
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_writer(
    path: str | Path, *, tmp_name: str | None = None, direct: bool = False
) -> Iterator[BinaryIO | DirectWriter]:
    """Yield a binary file that replaces ``path`` only if the block completes.

    ``tmp_name`` fixes the temp file's name (used by resumable writers to find their own
    leftovers); by default a unique name with TMP_PREFIX is used. An existing ``path`` that is
    not a regular file is refused (the rename would replace a device node or FIFO). ``direct``
    writes around the page cache (a large output written once and not read back soon: see
    safeio.direct); that writer has only ``write`` and ``tell``.
    """
    path = Path(path)
    check_regular(path, "an output")
    directory = path.parent if str(path.parent) else Path(".")
    opener = DirectWriter if direct else create_file
    if tmp_name is None:
        fp = _unique_temp(directory, TMP_PREFIX, opener)
    else:
        with contextlib.suppress(FileNotFoundError):
            (directory / tmp_name).unlink()  # a leftover of this writer's killed run
        fp = opener(directory / tmp_name)
    tmp_path = Path(fp.path if isinstance(fp, DirectWriter) else fp.name)
    try:
        if isinstance(fp, DirectWriter):
            try:
                yield fp
            except BaseException:
                fp.abort()
                raise
            fp.finish()
        else:
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


def write_text_output(path: str | Path, text: str) -> None:
    """A text output: stdout for ``-``, else written atomically."""
    if is_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)


def stale_temps(directory: Path, prefix: str = TMP_PREFIX) -> list[Path]:
    """Leftovers of interrupted atomic writes in ``directory`` (regular files only)."""
    return sorted(p for p in directory.glob(prefix + "*") if p.is_file() and not p.is_symlink())


def remove_stale_temps(directory: Path, prefix: str = TMP_PREFIX) -> list[Path]:
    """Delete leftovers of interrupted atomic writes; returns what was removed."""
    removed = []
    for entry in sorted(directory.glob(prefix + "*")):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed
