"""RAFS v6: a new blob holds each digest once, since the chunk-info table keys by (digest, blob) (rafs-v6.md §14)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nydus_compact.planner.config import CompactConfig
from nydus_compact.planner.errors import PlanError
from nydus_compact.planner.facts import Facts, SourceBlob
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.layout import Layout, layout
from nydus_compact.planner.policy import MergeGroup, decide
from nydus_compact.rafs import v6
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.flags import flags_for
from nydus_compact.rafs.model import CHUNK_DTYPE, LOCATION_FIELDS, BlobInfo, Bootstrap, Node

ORACLE = Flags.upstream_oracle()
MERGE_ALL = CompactConfig(compact_blob_size=10_000, max_compact_size=100_000)
CHUNK_SIZE = 0x1000


def dig(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def blob(name: str, csize: int) -> SourceBlob:
    return SourceBlob(name, csize, None, 0, Compressor.NONE, Digester.SHA256, 0, 0)


def occ(name: str, blob_index: int, coff: int, csz: int, uoff: int, usz: int, index: int) -> tuple:
    return (dig(name), blob_index, 0, csz, usz, coff, uoff, 0, index, 0)


# Occurrence ranges of the files /fa, /fb, /fc, in node order.
FILES = [("fa", 0, 2), ("fb", 2, 2), ("fc", 4, 1)]


def two_blobs(version: int, k_in_b_csz: int = 50) -> Facts:
    """A = [a0, K], B = [K, b1]; /fa = a0 K(A), /fb = K(B) b1, /fc = K(B)."""
    return Facts(
        version,
        [blob("A", 150), blob("B", k_in_b_csz + 70)],
        np.array(
            [
                occ("a0", 0, 0, 100, 0, 4096, 0),
                occ("K", 0, 100, 50, 4096, 4096, 1),
                occ("K", 1, 0, k_in_b_csz, 0, 4096, 0),
                occ("b1", 1, k_in_b_csz, 70, 4096, 3000, 1),
                occ("K", 1, 0, k_in_b_csz, 0, 4096, 0),
            ],
            dtype=CHUNK_DTYPE,
        ),
    )


def plan(facts: Facts, cfg: CompactConfig = MERGE_ALL) -> Layout:
    return layout(facts, decide(facts, cfg, ORACLE))


def recipe(lay: Layout) -> list[tuple]:
    r = lay.new_blobs[0].chunks
    return [
        (bytes(d), int(s), int(so), int(i), int(co), int(uo))
        for d, s, so, i, co, uo in zip(
            r["digest"], r["source"], r["source_offset"], r["index"], r["compressed_offset"], r["uncompressed_offset"]
        )
    ]


def locations(lay: Layout) -> list[tuple[int, ...]]:
    c = lay.chunks
    return [tuple(int(c[f][o]) for f in LOCATION_FIELDS) for o in range(len(c))]


def reads(lay: Layout) -> list[tuple[int, int, int, int, int]]:
    return [tuple(int(r[f]) for f in ("source", "offset", "length", "first", "count")) for r in lay.new_blobs[0].reads]


def test_v6_merge_writes_a_shared_digest_once() -> None:
    facts = two_blobs(6)
    d = decide(facts, MERGE_ALL, ORACLE)
    assert d.groups == (MergeGroup(0, 1, (0, 1)),)  # B is the smaller: the target
    lay = layout(facts, d)
    assert len(lay.table) == 1
    # B's copy of K (source 1, offset 0) is dropped; b1 moves up: contiguous indexes, packed coffs, 4K uoffs.
    assert recipe(lay) == [
        (dig("a0"), 0, 0, 0, 0, 0),
        (dig("K"), 0, 100, 1, 100, 4096),
        (dig("b1"), 1, 50, 2, 150, 8192),
    ]
    nb = lay.new_blobs[0]
    assert (nb.chunk_count, nb.compressed_size, nb.uncompressed_size) == (3, 220, 12288)
    k = (0, 1, 100, 4096)
    assert locations(lay) == [(0, 0, 0, 0), k, k, (0, 2, 150, 8192), k]
    # B is read only for b1: the dropped copy of K at B[0, 50) is not fetched.
    assert reads(lay) == [(0, 0, 150, 0, 2), (1, 50, 70, 2, 1)]
    assert (lay.bytes_to_read, lay.bytes_to_write, lay.reads) == (220, 220, 2)


def _bootstrap(lay: Layout) -> Bootstrap:
    root = Node(name=b"/", path=b"/", mode=0o40755, link=0)
    nodes = [root]
    for pos, (name, start, count) in enumerate(FILES, start=1):
        size = CHUNK_SIZE * (count - 1) + int(lay.chunks["uncompressed_size"][start + count - 1])
        nodes.append(Node(name=name.encode(), path=b"/" + name.encode(), mode=0o100644, size=size, parent=0,
                          link=pos, chunk_start=start, chunk_count=count))  # fmt: skip
        root.children.append(pos)
    nb = lay.new_blobs[0]
    info = BlobInfo(blob_id=hashlib.sha256(b"new").hexdigest(), chunk_count=nb.chunk_count,
                    compressed_size=nb.compressed_size, uncompressed_size=nb.uncompressed_size, features=nb.features,
                    compressor=nb.compressor, digester=nb.digester, chunk_size=CHUNK_SIZE, ci_offset=nb.compressed_size,
                    ci_compressed_size=16 * nb.chunk_count, ci_uncompressed_size=16 * nb.chunk_count)  # fmt: skip
    flags = flags_for(Compressor.NONE, Digester.SHA256)
    return Bootstrap(version=6, flags=flags, chunk_size=CHUNK_SIZE, blobs=[info], nodes=nodes, chunks=lay.chunks)


def test_v6_merged_result_dumps_and_loads() -> None:
    lay = plan(two_blobs(6))
    data = v6.dump(_bootstrap(lay))
    back = v6.load(data, "merged.boot")
    assert [n.path for n in back.nodes] == [b"/", b"/fa", b"/fb", b"/fc"]
    assert np.array_equal(back.chunks["block_id"], lay.chunks["block_id"])
    for f in LOCATION_FIELDS:
        assert np.array_equal(back.chunks[f], lay.chunks[f]), f


def test_v6_same_digest_with_other_sizes_names_the_digest_and_both_locations() -> None:
    with pytest.raises(PlanError) as err:
        plan(two_blobs(6, k_in_b_csz=60))
    msg = str(err.value)
    assert dig("K").hex() in msg and "different compressed size (50 vs 60)" in msg
    assert "blob A compressed offset 100" in msg and "blob B compressed offset 0" in msg


def test_v6_kept_blob_with_duplicate_digests_is_left_alone() -> None:
    facts = Facts(
        6,
        [blob("A", 100)],
        np.array([occ("K", 0, 0, 50, 0, 4096, 0), occ("K", 0, 50, 50, 4096, 4096, 1)], dtype=CHUNK_DTYPE),
    )
    lay = plan(facts, CompactConfig())
    assert lay.new_blobs == [] and lay.identical
    assert np.array_equal(lay.chunks, facts.chunks)


def test_v6_rebuilt_blob_with_duplicate_digests_keeps_the_first() -> None:
    facts = Facts(
        6,
        [blob("A", 1000)],
        np.array([occ("K", 0, 0, 50, 0, 4096, 0), occ("K", 0, 50, 50, 4096, 4096, 1)], dtype=CHUNK_DTYPE),
    )
    lay = plan(facts, CompactConfig(min_used_ratio=50))
    assert recipe(lay) == [(dig("K"), 0, 0, 0, 0, 0)]
    assert locations(lay) == [(0, 0, 0, 0), (0, 0, 0, 0)]
    assert reads(lay) == [(0, 0, 50, 0, 1)]


def test_v5_merge_is_unchanged() -> None:
    facts = two_blobs(5)
    lay = plan(facts)
    # v5 keys by digest: B's K was never a winner, so the recipe was K-once already.
    assert recipe(lay) == [
        (dig("a0"), 0, 0, 0, 0, 0),
        (dig("K"), 0, 100, 1, 100, 4096),
        (dig("b1"), 1, 50, 2, 150, 8192),
    ]
    k = (0, 1, 100, 4096)
    assert locations(lay) == [(0, 0, 0, 0), k, k, (0, 2, 150, 8192), k]
    assert reads(lay) == [(0, 0, 150, 0, 2), (1, 50, 70, 2, 1)]
    # The same-size rule of v5 dedup is policy's, raised before layout.
    with pytest.raises(PlanError, match="different compressed size: occurrence 2 has 60"):
        plan(two_blobs(5, k_in_b_csz=60))
