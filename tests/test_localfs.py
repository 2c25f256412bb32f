"""The localfs backend (compact.md §5.2) and read coalescing."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.reads import coalesce, coalesce_sorted
from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.localfs import LocalFsBackend

BLOB = "a" * 64


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_dir_wins_over_alt_dirs(tmp_path: Path) -> None:
    _write(tmp_path / "main" / BLOB, b"main")
    _write(tmp_path / "alt1" / BLOB, b"alt1")
    with LocalFsBackend(dir=tmp_path / "main", alt_dirs=[tmp_path / "alt1"]) as be:
        assert be.read_exact(BLOB, 0, 4) == b"main"
        assert be.blob_path(BLOB) == tmp_path / "main" / BLOB


def test_first_non_empty_alt_dir_wins(tmp_path: Path) -> None:
    # dir holds an empty file, alt1 nothing, alt2 and alt3 real files: upstream (B20) would pick alt3.
    _write(tmp_path / "main" / BLOB, b"")
    (tmp_path / "alt1").mkdir()
    _write(tmp_path / "alt2" / BLOB, b"second")
    _write(tmp_path / "alt3" / BLOB, b"third!")
    alts = [tmp_path / "alt1", tmp_path / "alt2", tmp_path / "alt3"]
    with LocalFsBackend(dir=tmp_path / "main", alt_dirs=alts) as be:
        assert be.blob_size(BLOB) == 6
        assert be.read_exact(BLOB, 0, 6) == b"second"


def test_blob_file_serves_every_id(tmp_path: Path) -> None:
    f = _write(tmp_path / "one.blob", b"0123456789")
    _write(tmp_path / BLOB, b"not me")
    with LocalFsBackend(dir=tmp_path, blob_file=f) as be:
        assert be.read_exact(BLOB, 2, 3) == b"234"
        assert be.read_exact("b" * 64, 7, 3) == b"789"
        assert be.blob_size("anything") == 10


def test_missing_blob_names_id_and_dirs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    with LocalFsBackend(dir=tmp_path / "d", alt_dirs=[tmp_path / "e"]) as be:
        with pytest.raises(BackendError) as info:
            be.blob_size(BLOB)
    msg = str(info.value)
    assert f"blob {BLOB} not found in" in msg
    assert str(tmp_path / "d") in msg and str(tmp_path / "e") in msg


def test_missing_blob_file(tmp_path: Path) -> None:
    with LocalFsBackend(blob_file=tmp_path / "nope") as be, pytest.raises(BackendError, match="does not exist"):
        be.read_exact(BLOB, 0, 1)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "a\0b"])
def test_blob_id_must_be_plain_name(tmp_path: Path, bad: str) -> None:
    _write(tmp_path / "x", b"secret")
    with LocalFsBackend(dir=tmp_path / "sub") as be, pytest.raises(BackendError, match="invalid blob id"):
        be.blob_size(bad)


def test_short_file_is_an_exact_read_error(tmp_path: Path) -> None:
    _write(tmp_path / BLOB, b"12345")
    with LocalFsBackend(dir=tmp_path) as be:
        assert be.read_exact(BLOB, 1, 4) == b"2345"
        with pytest.raises(BackendError) as info:
            be.read_exact(BLOB, 3, 10)
        assert BLOB in str(info.value) and "offset 3 size 10" in str(info.value)
        with pytest.raises(BackendError, match="short read"):
            be.read_ranges(BLOB, [(0, 2), (4, 2)])


def test_file_shrinking_after_open_is_a_short_read(tmp_path: Path) -> None:
    blob = _write(tmp_path / BLOB, b"x" * 100)
    with LocalFsBackend(dir=tmp_path) as be:
        assert be.blob_size(BLOB) == 100
        os.truncate(blob, 50)
        with pytest.raises(BackendError, match="short read"):
            be.read_exact(BLOB, 40, 20)


def test_fifo_is_not_a_blob(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / BLOB)
    with LocalFsBackend(dir=tmp_path) as be, pytest.raises(BackendError, match="not found"):
        be.blob_size(BLOB)


def test_read_ranges_returns_requested_order(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    _write(tmp_path / BLOB, data)
    ranges = [(100, 10), (0, 5), (5, 5), (100, 10), (1000, 24), (0, 0)]
    with LocalFsBackend(dir=tmp_path) as be:
        got = be.read_ranges(BLOB, ranges)
    assert got == [data[o : o + s] for o, s in ranges]


def test_read_ranges_coalesces_adjacent_reads(tmp_path: Path) -> None:
    _write(tmp_path / BLOB, bytes(1000))
    calls: list[tuple[int, int]] = []

    class Counting(LocalFsBackend):
        def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
            calls.append((offset, size))
            return super().read_exact(blob_id, offset, size)

    with Counting(dir=tmp_path) as be:
        be.read_ranges(BLOB, [(20, 10), (0, 10), (10, 10), (500, 1)])
    assert calls == [(0, 30), (500, 1)]


def test_describe_has_paths_only(tmp_path: Path) -> None:
    be = LocalFsBackend(dir=tmp_path, alt_dirs=[tmp_path / "a"])
    assert be.describe() == {
        "type": "localfs",
        "dir": str(tmp_path),
        "alt_dirs": [str(tmp_path / "a")],
        "blob_file": None,
    }
    assert isinstance(be, BlobBackend)


def test_needs_a_location() -> None:
    with pytest.raises(BackendError):
        LocalFsBackend()


def test_close_releases_descriptors(tmp_path: Path) -> None:
    _write(tmp_path / BLOB, b"abc")
    be = LocalFsBackend(dir=tmp_path)
    be.blob_size(BLOB)
    fd = be._fds[BLOB][0]
    be.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_coalesce() -> None:
    assert coalesce([]) == []
    assert coalesce([(0, 10), (10, 5), (20, 5)]) == [(0, 15, [0, 1]), (20, 5, [2])]
    assert coalesce([(0, 10), (10, 5), (20, 5)], max_gap=5) == [(0, 25, [0, 1, 2])]
    # overlapping and duplicate ranges share one read
    assert coalesce([(5, 10), (0, 10), (5, 10)]) == [(0, 15, [1, 0, 2])]
    # the size cap splits; a single oversized range is read alone
    assert coalesce([(0, 10), (10, 10), (20, 10)], max_size=20) == [(0, 20, [0, 1]), (20, 10, [2])]
    assert coalesce([(0, 50), (50, 1)], max_size=20) == [(0, 50, [0]), (50, 1, [1])]
    with pytest.raises(ValueError):
        coalesce([(-1, 2)])


def test_coalesce_caps_a_read_and_keeps_overlaps_and_gaps_in_one_read() -> None:
    # Contiguous ranges past the cap start a new read at a range boundary; a range bigger than the
    # cap is read alone; overlapping ranges and gaps up to max_gap share a read.
    assert coalesce([(0, 6), (6, 6), (12, 6)], max_size=12) == [(0, 12, [0, 1]), (12, 6, [2])]
    assert coalesce([(0, 30), (30, 2)], max_size=12) == [(0, 30, [0]), (30, 2, [1])]
    assert coalesce([(0, 10), (4, 10), (20, 4)], max_gap=6) == [(0, 24, [0, 1, 2])]


def _greedy_reference(ranges: list[tuple[int, int]], max_gap: int, max_size: int) -> list[int]:
    """The cap's meaning, range by range: join while within max_gap of the reach and max_size."""
    firsts, lo, hi = [0], ranges[0][0], ranges[0][0] + ranges[0][1]
    for i, (off, ln) in enumerate(ranges[1:], 1):
        reach = max(hi, off + ln)
        if off <= hi + max_gap and reach - lo <= max_size:
            hi = reach
        else:
            firsts.append(i)
            lo, hi = off, off + ln
    return firsts


@pytest.mark.parametrize("overlaps", [False, True], ids=["disjoint", "overlapping"])
def test_cutting_long_runs_matches_the_range_by_range_greedy(overlaps) -> None:
    # Disjoint runs are cut by binary search, runs with overlaps range by range: same reads.
    rng = random.Random(15)
    for _ in range(500):
        ranges, pos = [], 0
        for _ in range(rng.randint(1, 80)):
            length = rng.choice([1, 100, 4096, rng.randint(1, 9000)])
            pos = max(0, pos - rng.randint(0, length)) if overlaps and rng.random() < 0.3 else pos + rng.choice([0, 0, 5])
            ranges.append((pos, length))
            pos += length
        ranges.sort(key=lambda r: r[0])  # coalesce_sorted's input
        max_gap, max_size = rng.choice([0, 5, 64]), rng.choice([1, 4096, 10000, 50000])
        start = np.array([o for o, _ in ranges], dtype=np.int64)
        end = start + np.array([n for _, n in ranges], dtype=np.int64)
        got = coalesce_sorted(start, end, max_gap=max_gap, max_size=max_size).tolist()
        assert got == _greedy_reference(ranges, max_gap, max_size), (ranges, max_gap, max_size)
