"""chunks and refs BLOBs are written in pieces (store.index._insert_segments): pieces that split
a segment must still give back the loader's occurrences byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nydus_compact.store.index as store_index
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.store.db import open_store
from nydus_compact.store.index import index_bootstrap, load_occurrences

# A real nydus-image v5 bootstrap with 29 chunk occurrences: enough to split segments of 4 in pieces of 3.
BOOT = Path(__file__).parent / "fixtures" / "nydus" / "sha256-nocompress-repeatable"


def test_refs_written_in_pieces_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = BOOT
    bs = load_bootstrap(boot)
    assert len(bs.chunks) >= 5
    monkeypatch.setattr(store_index, "SEGMENT", 4)
    monkeypatch.setattr(store_index, "_PIECE", 3)  # pieces straddle nothing and end mid-segment
    with open_store(tmp_path / "s.sqlite") as store:
        image_id = index_bootstrap(store, boot, bs, "0" * 64, None)
        expected = bs.chunks.copy()
        expected["reserved"] = 0
        assert np.array_equal(load_occurrences(store, image_id), expected)
        sizes = [n for (n,) in store.fetchall('SELECT length("file_offsets") FROM "refs" ORDER BY "seg"')]
    n = len(bs.chunks)
    assert sizes == [8 * min(4, n - lo) for lo in range(0, n, 4)]
