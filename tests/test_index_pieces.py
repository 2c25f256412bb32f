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

FIXTURES = Path(__file__).parent / "fixtures" / "nydus"


def _a_bootstrap_with_chunks() -> Path:
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file() and path.stat().st_size >= 8192 and not path.name.endswith(".json"):
            try:
                bs = load_bootstrap(path)
            except Exception:
                continue
            if len(bs.chunks) >= 5:
                return path
    pytest.skip("no fixture bootstrap with at least 5 chunk occurrences")


def test_refs_written_in_pieces_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = _a_bootstrap_with_chunks()
    bs = load_bootstrap(boot)
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
