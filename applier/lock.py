"""An advisory lock so two applies never write into the same blobs directory at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ApplyError

LOCK_NAME = ".compact.lock"


@contextlib.contextmanager
def blobs_dir_lock(blobs_dir: Path) -> Iterator[None]:
    path = blobs_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ApplyError(f"{blobs_dir}: another `compact apply` is writing here (lock {path} is held)") from None
        yield
    finally:
        os.close(fd)
