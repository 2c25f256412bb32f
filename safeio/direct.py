"""A new file written sequentially around the page cache, for large outputs that are fsynced at once.

A new blob is written once, fsynced, and not read back by apply. Written through the page
cache, every byte is first copied into freshly allocated cache pages, which is most of a
buffered copy's CPU time, and on a virtual machine whose host takes back free guest memory it
is several times more (each new page faults on the host: the same 1 GiB write took 0.4 s or
2.4 s of system time depending on how long ago memory was freed). With O_DIRECT the device
reads the bytes from this writer's two reused, page-aligned buffers instead: one is written
on a worker thread (the GIL is released) while the caller fills the other.

O_DIRECT needs aligned offsets and lengths, so the last partial block is written zero-padded
and the file truncated to its length. Where the file system refuses O_DIRECT at open, the writer
falls back to ordinary buffered writes, and then asks the kernel to start writing back every few
MiB (sync_file_range) so that the final fsync does not have the whole file to write. Either way
``finish`` is what makes the bytes durable.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ALIGN = 4096  # satisfies both 512-byte and 4 KiB logical block sizes
# Bytes per device write. Small enough that the buffer being filled stays in the CPU cache.
BUFFER = 2 << 20
WRITEBACK_STEP = 8 << 20  # buffered mode: queue write-back every this many bytes
SYNC_FILE_RANGE_WRITE = 2


class DirectWriter:
    """Create ``path`` (which must not exist) and write it from start to end; ``finish`` makes it
    durable, ``abort`` gives up.

    ``direct=False`` writes through the page cache from the start. It is a sequential sink, not a
    general file object: ``write`` and ``tell`` are all a writer gets."""

    def __init__(self, path: Path, *, direct: bool = True):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._fd = -1
        if self.direct:
            try:
                self._fd = os.open(path, flags | os.O_DIRECT, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False
        if self._fd < 0:
            self._fd = os.open(path, flags, 0o666)
        self._size = 0  # bytes accepted by write()
        self._flushed = 0  # bytes on their way to the file (a multiple of ALIGN in direct mode)
        self._queued_writeback = 0
        self._buffers = [mmap.mmap(-1, BUFFER), mmap.mmap(-1, BUFFER)] if self.direct else []
        self._views = [memoryview(b) for b in self._buffers]
        self._current = 0
        self._fill = 0  # bytes in the current buffer
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._size

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if not self.direct:
            _write_all(self._fd, data, self._size)
            self._size += n
            self._writeback()
            return n
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), BUFFER - self._fill)
            self._views[self._current][self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == BUFFER:
                self._hand_over(BUFFER)
        self._size += n
        return n

    def finish(self) -> None:
        """Write what is buffered, cut the file to the bytes written, fsync and close it."""
        try:
            self._settle()
            if self._fill:
                # O_DIRECT writes whole blocks: pad the last one, then cut the file to its length.
                padded = -(-self._fill // ALIGN) * ALIGN
                self._views[self._current][self._fill : padded] = bytes(padded - self._fill)
                self._write_buffer(self._current, padded, self._flushed)
                os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close without writing what is buffered (after an error: the caller removes the file)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        finally:
            os.close(fd)
            for view in self._views:
                view.release()
            for buf in self._buffers:
                buf.close()

    def _hand_over(self, length: int) -> None:
        """Start writing the current buffer on the worker; the caller fills the other one."""
        self._settle()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct-write")
        self._pending = self._pool.submit(self._write_buffer, self._current, length, self._flushed)
        self._flushed += length
        self._current ^= 1
        self._fill = 0

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_buffer(self, k: int, length: int, offset: int) -> None:
        try:
            _write_all(self._fd, self._views[k][:length], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # A file system that accepted O_DIRECT at open but refuses the aligned write: the rest
            # of the file goes through the page cache (finish's fsync makes it durable all the same).
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            _write_all(self._fd, self._views[k][:length], offset)

    def _writeback(self) -> None:
        call = _sync_file_range()
        if call is not None and self._size - self._queued_writeback >= WRITEBACK_STEP:
            # Only queues the write: neither waits nor promises anything (finish's fsync does);
            # errors surface there too.
            call(self._fd, self._queued_writeback, self._size - self._queued_writeback, SYNC_FILE_RANGE_WRITE)
            self._queued_writeback = self._size


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only here: it costs start-up time and nothing else needs it

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call
