"""Read coalescing, one way for everyone (compact.md §5.2): the backends' ``read_ranges``, the
planner's layout (the reads a plan records for each new blob) and apply's copy all group byte
ranges into reads with ``coalesce_sorted`` under the one read-size cap ``MAX_READ``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Upper bound of one coalesced read: large enough that adjacent chunks of a blob go out in few
# requests, small enough that a batch never needs much memory.
MAX_READ = 16 << 20


def coalesce_sorted(start: np.ndarray, end: np.ndarray, max_gap: int = 0, max_size: int = MAX_READ) -> np.ndarray:
    """Where each read begins, over byte ranges [start[i], end[i]) sorted by ``start``: the index
    of its first range. A range joins the read before it when it starts at most ``max_gap`` bytes
    after the furthest end so far and the read then spans at most ``max_size`` bytes; a range
    larger than that is read alone. Overlapping and repeated ranges share a read."""
    n = len(start)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    reach = np.maximum.accumulate(np.asarray(end, dtype=np.int64))
    new = np.ones(n, dtype=bool)
    new[1:] = start[1:] > reach[:-1] + max_gap
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:], n)
    too_long = np.flatnonzero(reach[lasts - 1] - start[firsts] > max_size)
    if not len(too_long):
        return firsts
    # Runs longer than the cap (~16 MiB of adjacent chunks for a plan; every local read of apply's
    # copy, which reads 1 MiB pieces) are cut greedily: the most ranges that fit, then the next read.
    cuts = [firsts]
    for k in too_long.tolist():
        f, last = int(firsts[k]), int(lasts[k])
        cuts.append(f + _greedy_cuts(start[f:last], end[f:last], max_gap, max_size))
    return np.sort(np.concatenate(cuts))


def _greedy_cuts(start: np.ndarray, end: np.ndarray, max_gap: int, max_size: int) -> np.ndarray:
    """Where the reads after the first begin, cutting one coalesced run at ``max_size``."""
    if (end[:-1] <= start[1:]).all():
        # Disjoint ranges (every run of a plan's chunks): a read's reach is its last range's end,
        # so each cut is one binary search instead of a step per range.
        found, i, n = [], 0, len(start)
        while True:
            i = max(i + 1, int(np.searchsorted(end, start[i] + max_size, side="right")))
            if i >= n:
                return np.array(found, dtype=np.int64)
            found.append(i)
    found = []
    run_start, run_end = start.tolist(), end.tolist()
    lo, hi = run_start[0], run_end[0]
    for i in range(1, len(run_start)):
        reach_i = max(hi, run_end[i])
        if run_start[i] <= hi + max_gap and reach_i - lo <= max_size:
            hi = reach_i
        else:
            found.append(i)
            lo, hi = run_start[i], run_end[i]
    return np.array(found, dtype=np.int64)


def read_extents(start: np.ndarray, end: np.ndarray, firsts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offset, length and number of ranges of each read that ``coalesce_sorted`` began at ``firsts``."""
    start, end = np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)
    counts = np.diff(np.append(firsts, len(start)))
    offsets = start[firsts]
    lengths = np.maximum.reduceat(end, firsts) - offsets if len(firsts) else offsets.copy()
    return offsets, lengths, counts


def coalesce(
    ranges: Sequence[tuple[int, int]], max_gap: int = 0, max_size: int = MAX_READ
) -> list[tuple[int, int, list[int]]]:
    """Group (offset, size) ranges given in any order into fewer reads (``coalesce_sorted``).

    Returns (offset, size, member indexes into ``ranges``) in offset order.
    """
    if max_gap < 0 or max_size <= 0:
        raise ValueError("coalesce: max_gap must be >= 0 and max_size > 0")
    for offset, size in ranges:
        if offset < 0 or size < 0:
            raise ValueError(f"coalesce: negative range ({offset}, {size})")
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0], ranges[i][1], i))
    start = np.array([ranges[i][0] for i in order], dtype=np.int64)
    end = start + np.array([ranges[i][1] for i in order], dtype=np.int64)
    firsts = coalesce_sorted(start, end, max_gap, max_size)
    offsets, lengths, counts = read_extents(start, end, firsts)
    return [
        (offset, length, order[first : first + count])
        for first, offset, length, count in zip(firsts.tolist(), offsets.tolist(), lengths.tolist(), counts.tolist())
    ]
