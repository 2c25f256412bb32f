"""``BlobBackend.read_many``: the read path of apply's copy for remote backends.

Consecutive reads of one blob a small gap apart become one request; order and bytes are exactly
those asked for, with several requests in flight.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.localfs import LocalFsBackend


class CountingBackend(LocalFsBackend):
    """localfs with a remote backend's read policy, recording every request it serves."""

    def __init__(self, blobs: Path, max_gap: int, max_read: int, concurrency: int):
        super().__init__(dir=blobs)
        self.max_gap, self.max_read, self.read_concurrency = max_gap, max_read, concurrency
        self.requests: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        with self._lock:
            self.requests.append((blob_id, offset, size))
        return super().read_exact(blob_id, offset, size)


@pytest.fixture
def blobs(tmp_path: Path) -> dict[str, bytes]:
    data = {name: os.urandom(1 << 16) for name in ("a" * 64, "b" * 64)}
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    return data


@pytest.mark.parametrize("concurrency", [1, 4])
def test_reads_a_small_gap_apart_share_a_request(tmp_path, blobs, concurrency):
    a, b = sorted(blobs)
    reads = [
        (a, 0, 100), (a, 150, 50),  # 50-byte gap: bridged
        (a, 1000, 10),  # 800 bytes after: a new request
        (b, 1010, 10),  # another blob: a new request
        (a, 1020, 10),  # back to a, not consecutive with the earlier a reads
        (a, 5000, 200), (a, 5100, 50), (a, 5300, 700),  # overlapping and adjacent; 1000 bytes in all
        (a, 6001, 10),  # would grow the request past max_read
    ]
    be = CountingBackend(tmp_path, max_gap=100, max_read=1000, concurrency=concurrency)

    got = [bytes(d) for d in be.read_many(iter(reads))]

    assert got == [blobs[bid][o : o + n] for bid, o, n in reads]
    assert sorted(be.requests) == sorted([(a, 0, 200), (a, 1000, 10), (b, 1010, 10), (a, 1020, 10), (a, 5000, 1000), (a, 6001, 10)])


def test_a_failed_read_is_raised_in_order_and_stops_the_rest(tmp_path, blobs):
    a = sorted(blobs)[0]
    be = CountingBackend(tmp_path, max_gap=0, max_read=1 << 20, concurrency=4)
    reads = [(a, 0, 10), (a, 1 << 16, 10)] + [(a, 20 * k, 10) for k in range(1, 50)]

    it = be.read_many(iter(reads))
    assert bytes(next(it)) == blobs[a][:10]
    with pytest.raises(BackendError, match="short read"):
        next(it)
    it.close()
    assert len(be.requests) < len(reads)  # reads not yet started were cancelled
