"""Advisory locks on blobs directories, so that no two compact processes step on each other.

apply holds the lock of every local blobs directory it reads from (shared) or writes to
(exclusive); gc holds the exclusive lock of the directory it deletes from. So gc never deletes a
blob under a running apply, and two applies never write into one directory at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ApplyError

LOCK_NAME = ".compact.lock"


@contextlib.contextmanager
def blobs_dir_lock(blobs_dir: Path, shared: bool = False) -> Iterator[None]:
    path = blobs_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        # A directory we may not write to (a read-only mirror) is read without a lock: nothing
        # running as this user can delete from it either.
        if shared and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield
            return
        raise
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ApplyError(
                f"{blobs_dir}: another compact process (apply or gc) is using this blobs dir (lock {path} is held)"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def blobs_dirs_locked(write: Path, read: Iterable[Path] = ()) -> Iterator[None]:
    """The exclusive lock of ``write`` and a shared lock of every other directory in ``read``."""
    target = write.resolve()
    others = dict.fromkeys(d.resolve() for d in read if d.is_dir())
    others.pop(target, None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(blobs_dir_lock(write))
        for directory in others:
            stack.enter_context(blobs_dir_lock(directory, shared=True))
        yield
