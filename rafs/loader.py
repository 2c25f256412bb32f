"""Open a bootstrap file of either RAFS version.

Detection follows nydusd 2.2 (`RafsSuper::load`): v5 is tried first (magic and version at 0),
then v6 (EROFS magic at 1024). Both need at least 8192 bytes, because nydusd's v5 probe reads a
whole v5 superblock before anything else (rafs-v6.md §1), and at most 2 GiB (rafs-v5.md §11.2).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .constants import RAFS_V5_MAGIC, RAFS_V5_VERSION, RAFS_V6_MAGIC, RAFS_V6_SB_OFFSET
from .errors import RafsFormatError
from .model import Bootstrap, Serialized, joined

MIN_BOOTSTRAP_SIZE = 8192
MAX_BOOTSTRAP_SIZE = 0x8000_0000

_U32 = struct.Struct("<I")
_V5_HEAD = struct.Struct("<II")


def detect_version(data: bytes | bytearray | memoryview | np.ndarray) -> int | None:
    """5 or 6 by the superblock magic, None if neither (``data`` needs >= 1028 bytes to say 6)."""
    if len(data) >= _V5_HEAD.size and _V5_HEAD.unpack_from(data, 0) == (RAFS_V5_MAGIC, RAFS_V5_VERSION):
        return 5
    if len(data) >= RAFS_V6_SB_OFFSET + 4 and _U32.unpack_from(data, RAFS_V6_SB_OFFSET)[0] == RAFS_V6_MAGIC:
        return 6
    return None


def parse_bootstrap(data: bytes | bytearray | memoryview, path: str = "<memory>") -> Bootstrap:
    """Parse a bootstrap held in memory; ``path`` only names it in errors."""
    _check_size(len(data), path)
    version = detect_version(data)
    if version == 5:
        from . import v5

        return v5.load(data, path)
    if version == 6:
        from . import v6

        return v6.load(data, path)
    raise RafsFormatError(path, "not a RAFS v5/v6 bootstrap (no v5 magic at 0, no v6 magic at 1024)")


def dump_bootstrap(bs: Bootstrap) -> bytearray:
    """The bytes of ``bs`` as a bootstrap of its own RAFS version (``bs.version``)."""
    return joined(serialize_bootstrap(bs))


def serialize_bootstrap(bs: Bootstrap) -> Serialized:
    """``dump_bootstrap``'s bytes as parts, for writers that must not hold the whole file."""
    if bs.version == 5:
        from . import v5

        return v5.serialize(bs)
    from . import v6

    return v6.serialize(bs)


def load_bootstrap(path: str | Path) -> Bootstrap:
    """Read and parse the bootstrap file at ``path``.

    A file that cannot be opened raises OSError; anything wrong with its bytes RafsFormatError.
    """
    return _parse_file_buffer(_read_bootstrap(path), path)


def load_bootstrap_hashed(path: str | Path) -> tuple[Bootstrap, str]:
    """``load_bootstrap``, and the sha256 (hex) of the very bytes it parsed: no second read of the
    file, which could see other bytes. The hash runs on a thread while the records are parsed
    (hashlib releases the GIL)."""
    buf = _read_bootstrap(path)
    with ThreadPoolExecutor(1, "bootstrap-sha256") as pool:
        hashing = pool.submit(lambda: hashlib.sha256(buf).hexdigest())
        return _parse_file_buffer(buf, path, before_change=hashing.result), hashing.result()


def _parse_file_buffer(
    buf: np.ndarray, path: str | Path, before_change: Callable[[], object] | None = None
) -> Bootstrap:
    if detect_version(buf) == 5:
        from . import v5

        # The file's buffer becomes the chunk array: a big v5 bootstrap is not held twice (and is
        # hashed, if asked, before its records are moved).
        return v5.load_owned(buf, str(path), before_change=before_change)
    return parse_bootstrap(memoryview(buf), str(path))


def bootstrap_sha256(path: str | Path) -> str:
    """Lowercase hex sha256 of the bootstrap file."""
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


def _check_size(size: int, path: str) -> None:
    if size < MIN_BOOTSTRAP_SIZE:
        raise RafsFormatError(
            path, f"file is {size} bytes, a RAFS bootstrap is at least {MIN_BOOTSTRAP_SIZE} bytes"
        )
    if size > MAX_BOOTSTRAP_SIZE:
        raise RafsFormatError(path, f"file is {size} bytes, more than the 2 GiB nydusd accepts")


def _open_regular(path: str | Path) -> int:
    # O_NONBLOCK so that a FIFO given as bootstrap is refused instead of blocking the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RafsFormatError(str(path), "not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_bootstrap(path: str | Path) -> np.ndarray:
    """The whole file as a uint8 array (which, unlike bytes, can be shrunk in place)."""
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as fp:
        size = os.fstat(fd).st_size
        _check_size(size, str(path))
        buf = np.empty(size, dtype=np.uint8)
        got = fp.readinto(buf) + len(fp.read(1))
    if got != size:
        raise RafsFormatError(str(path), f"file changed size while being read ({size} -> {got}+ bytes)")
    return buf
