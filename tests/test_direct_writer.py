"""safeio.direct.DirectWriter: a new blob's bytes reach the file exactly, through O_DIRECT or not; and
safeio.atomic_writer on top of it (the bootstrap writer) replaces its output only when complete."""

from __future__ import annotations

import errno
import fcntl
import os
import random

import pytest

from nydus_compact.safeio import TMP_PREFIX, OutputRefusedError, atomic_writer
from nydus_compact.safeio.direct import ALIGN, BUFFER, DirectWriter

# Write patterns that cross every boundary the writer has: the block (ALIGN), its buffer
# (BUFFER, where a buffer goes to the worker thread) and the swap back to the first buffer.
PATTERNS = {
    "empty": [],
    "one byte": [1],
    "one block short": [ALIGN - 1],
    "one block": [ALIGN],
    "buffer minus one": [BUFFER - 1],
    "exactly one buffer": [BUFFER],
    "buffer plus one": [BUFFER + 1],
    "three buffers and a tail": [3 * BUFFER + 123],
    "small writes across buffers": [4097] * ((2 * BUFFER) // 4097 + 3),
    "mixed": [7, BUFFER - 3, 0, 5, ALIGN, 2 * BUFFER + 1, 1],
}


@pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "buffered"])
@pytest.mark.parametrize("sizes", PATTERNS.values(), ids=PATTERNS.keys())
def test_bytes_land_exactly(tmp_path, sizes, direct):
    rng = random.Random(len(sizes) * 31 + sum(sizes))
    parts = [rng.randbytes(n) for n in sizes]
    path = tmp_path / "blob"
    out = DirectWriter(path, direct=direct)
    for k, part in enumerate(parts):
        # Writers hand over memoryviews of reused buffers as well as bytes.
        assert out.write(memoryview(bytearray(part)) if k % 2 else part) == len(part)
    assert out.tell() == sum(sizes)
    out.finish()
    assert path.read_bytes() == b"".join(parts)


def test_direct_mode_is_used_where_the_file_system_allows_it(tmp_path):
    try:
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        allowed = True
    except OSError:
        allowed = False
    out = DirectWriter(tmp_path / "blob")
    try:
        assert out.direct == allowed
        assert bool(fcntl.fcntl(out.fileno(), fcntl.F_GETFL) & os.O_DIRECT) == allowed
    finally:
        out.abort()


def test_refuses_an_existing_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        DirectWriter(path)
    assert path.read_bytes() == b"someone else's"


def test_abort_writes_nothing_more(tmp_path):
    path = tmp_path / "blob"
    out = DirectWriter(path)
    out.write(b"x" * (BUFFER + 10))
    out.abort()
    out.abort()  # a second abort (an error path calling it again) is harmless
    # The full buffer went to the worker; the 10 buffered bytes were dropped, not padded in.
    assert path.stat().st_size == BUFFER


@pytest.mark.parametrize("tmp_name", [None, TMP_PREFIX + "fixed"], ids=["unique-temp", "named-temp"])
def test_direct_atomic_writer_replaces_the_output_only_when_complete(tmp_path, tmp_name):
    path = tmp_path / "image.boot"
    path.write_bytes(b"the previous bootstrap")
    data = random.Random(5).randbytes(BUFFER + 777)
    with pytest.raises(RuntimeError):
        with atomic_writer(path, tmp_name=tmp_name, direct=True) as fp:
            fp.write(data[:BUFFER + 1])  # a full buffer already went to the file
            raise RuntimeError("serialising failed")
    assert path.read_bytes() == b"the previous bootstrap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.boot"]  # the temp file is gone

    with atomic_writer(path, tmp_name=tmp_name, direct=True) as fp:
        assert isinstance(fp, DirectWriter)
        fp.write(data[:5])
        fp.write(memoryview(data)[5:])
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.boot"]


def test_direct_atomic_writer_refuses_a_special_file_as_output(tmp_path):
    fifo = tmp_path / "out.boot"
    os.mkfifo(fifo)
    with pytest.raises(OutputRefusedError, match="it is a FIFO; refusing to replace it"):
        with atomic_writer(fifo, direct=True) as fp:
            fp.write(b"x")
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["out.boot"]


def test_a_direct_write_the_file_system_refuses_goes_through_the_page_cache(tmp_path, monkeypatch):
    """Some file systems accept O_DIRECT at open and refuse the write (EINVAL): the writer clears
    O_DIRECT on the file and writes the same bytes buffered."""
    refused = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(3).randbytes(2 * BUFFER + 555)
    path = tmp_path / "blob"
    out = DirectWriter(path)
    if not out.direct:
        out.abort()
        pytest.skip("this file system refuses O_DIRECT at open already")
    out.write(data)
    out.finish()
    assert refused == [0] and path.read_bytes() == data
