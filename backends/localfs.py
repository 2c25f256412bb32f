"""The localfs backend: blobs are files in local directories (compact.md §5.2 "localfs").

Lookup order for a blob id: ``blob_file`` for every id if set; otherwise ``dir/<id>`` if it is a
non-empty regular file, else the first ``alt_dirs[k]/<id>`` that is. (nydus 2.2's check joins
the id twice, so upstream ends up on the last alt dir, never ``dir`` — bug B20, not copied.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import BlobBackend, short_read_error
from .errors import BackendError, BlobNotFoundError


def check_blob_id(blob_id: str) -> None:
    """Blob ids become file names: a plain, non-empty name with no path syntax."""
    if (
        not blob_id
        or blob_id in (".", "..")
        or "/" in blob_id
        or "\\" in blob_id
        or "\0" in blob_id
    ):
        raise BackendError(f"invalid blob id {blob_id!r}: must be a plain file name")


class LocalFsBackend(BlobBackend):
    def __init__(
        self,
        dir: str | Path | None = None,
        alt_dirs: Sequence[str | Path] = (),
        blob_file: str | Path | None = None,
    ):
        if blob_file is None and dir is None and not alt_dirs:
            raise BackendError("localfs backend: needs blob_file or dir")
        self.dir = Path(dir) if dir is not None else None
        self.alt_dirs = [Path(d) for d in alt_dirs]
        self.blob_file = Path(blob_file) if blob_file is not None else None
        self._fds: dict[str, tuple[int, int, Path]] = {}  # blob id -> (fd, size, path)

    def _candidates(self, blob_id: str) -> list[Path]:
        dirs = ([self.dir] if self.dir is not None else []) + self.alt_dirs
        return [d / blob_id for d in dirs]

    def _open(self, blob_id: str) -> tuple[int, int, Path]:
        key = blob_id if self.blob_file is None else ""  # one shared descriptor for blob_file
        entry = self._fds.get(key)
        if entry is not None:
            return entry
        if self.blob_file is not None:
            entry = self._open_file(self.blob_file, blob_id, allow_empty=True)
        else:
            check_blob_id(blob_id)
            candidates = self._candidates(blob_id)
            for path in candidates:
                entry = self._open_file(path, blob_id, allow_empty=False)
                if entry is not None:
                    break
            if entry is None:
                where = ", ".join(str(p.parent) for p in candidates)
                raise BlobNotFoundError(f"blob {blob_id} not found in {where}")
        self._fds[key] = entry
        return entry

    @staticmethod
    def _open_file(path: Path, blob_id: str, *, allow_empty: bool) -> tuple[int, int, Path] | None:
        """Open ``path`` if it is a usable blob file; None if a lookup should move on."""
        try:
            # O_NONBLOCK: a FIFO planted under a blob's name must not block the open.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            if allow_empty:
                raise BackendError(f"blob {blob_id}: blob file {path} does not exist") from None
            return None
        except OSError as exc:
            raise BackendError(f"blob {blob_id}: cannot open {path}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_size == 0 and not allow_empty):
            os.close(fd)
            if allow_empty:
                raise BackendError(f"blob {blob_id}: {path} is not a regular file")
            return None
        os.set_blocking(fd, True)
        return fd, st.st_size, path

    def blob_path(self, blob_id: str) -> Path:
        """The file a blob id resolves to (opening it)."""
        return self._open(blob_id)[2]

    def blob_size(self, blob_id: str) -> int:
        return self._open(blob_id)[1]

    def _checked(self, blob_id: str, offset: int, size: int) -> tuple[int, Path]:
        fd, file_size, path = self._open(blob_id)
        if offset < 0 or size < 0:
            raise BackendError(f"blob {blob_id}: invalid range offset {offset} size {size}")
        # Checked against the size seen at open so a bogus size never turns into a huge buffer.
        if offset + size > file_size:
            raise short_read_error(blob_id, offset, size, max(0, min(size, file_size - offset)))
        return fd, path

    def readinto(self, blob_id: str, offset: int, buf: memoryview) -> None:
        size = len(buf)
        fd, path = self._checked(blob_id, offset, size)
        done = 0
        while done < size:
            try:
                n = os.preadv(fd, [buf[done:]], offset + done)
            except OSError as exc:
                raise BackendError(f"blob {blob_id}: read error in {path}: {exc.strerror or exc}") from None
            if not n:
                raise short_read_error(blob_id, offset, size, done)
            done += n

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        fd, path = self._checked(blob_id, offset, size)
        if size == 0:
            return b""
        parts: list[bytes] = []
        done = 0
        while done < size:
            try:
                part = os.pread(fd, size - done, offset + done)
            except OSError as exc:
                raise BackendError(f"blob {blob_id}: read error in {path}: {exc.strerror or exc}") from None
            if not part:
                raise short_read_error(blob_id, offset, size, done)
            parts.append(part)
            done += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "localfs",
            "dir": os.path.abspath(self.dir) if self.dir is not None else None,
            "alt_dirs": [os.path.abspath(d) for d in self.alt_dirs],
            "blob_file": os.path.abspath(self.blob_file) if self.blob_file is not None else None,
        }

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd, _size, _path in fds.values():
            os.close(fd)
