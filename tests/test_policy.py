"""The compaction policy and layout against compact.md §2 (E1–E6), in upstream-oracle and tool modes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.backends.reads import MAX_READ
from nydus_compact.planner.config import CompactConfig
from nydus_compact.planner.errors import PlanError
from nydus_compact.planner.facts import DictFacts, Facts, SourceBlob
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.fleet import unite
from nydus_compact.planner.layout import Layout, layout
from nydus_compact.planner.policy import (
    Candidate,
    Decisions,
    MergeGroup,
    decide,
    digest_columns,
    first_equal,
)
from nydus_compact.rafs import blob_meta, v5
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.flags import BlobFeatures
from nydus_compact.rafs.model import CHUNK_DTYPE

FIXTURES = Path(__file__).parent / "fixtures" / "nydus"
ORACLE = Flags.upstream_oracle()
TOOL = Flags.tool_default()
NO_MERGE = CompactConfig(compact_blob_size=0)


def dig(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def blob(name: str, csize: int, *, observed: int | None = None, compressor=Compressor.NONE, features=0) -> SourceBlob:
    return SourceBlob(name, csize, observed, features, compressor, Digester.SHA256, 0, 0)


def occ(name: str, blob_index: int, coff: int, csz: int, uoff: int, usz: int, index: int = 0) -> tuple:
    """One chunk record: name@blob[coff, csz | uoff, usz], as written in compact.md §2."""
    return (dig(name), blob_index, 0, csz, usz, coff, uoff, 0, index, 0)


def chunks(*rows: tuple) -> np.ndarray:
    return np.array(list(rows), dtype=CHUNK_DTYPE)


def locations(lay: Layout) -> list[tuple[int, int, int, int]]:
    c = lay.chunks
    return [
        (int(b), int(i), int(co), int(uo))
        for b, i, co, uo in zip(c["blob_index"], c["index"], c["compressed_offset"], c["uncompressed_offset"])
    ]


def table(lay: Layout) -> list[str]:
    return [e.blob_id if e.blob_id is not None else f"NEW{e.group}" for e in lay.table]


def actions(d: Decisions) -> list[tuple[str, str, str]]:
    return [(b.blob_id, b.action, b.reason) for b in d.blobs]


def recipe(lay: Layout, k: int = 0) -> list[tuple[int, int, int, int, int]]:
    """(index, coff, csz, uoff, usz) of the k-th new blob's chunks."""
    r = lay.new_blobs[k].chunks
    return [
        (int(i), int(co), int(cs), int(uo), int(us))
        for i, co, cs, uo, us in zip(
            r["index"], r["compressed_offset"], r["compressed_size"], r["uncompressed_offset"], r["uncompressed_size"]
        )
    ]


def plan(facts: Facts, cfg: CompactConfig, flags: Flags = ORACLE) -> tuple[Decisions, Layout]:
    d = decide(facts, cfg, flags)
    return d, layout(facts, d)


def edit(d: Decisions, index: int, **changes) -> Decisions:
    blobs = list(d.blobs)
    blobs[index] = dataclasses.replace(blobs[index], **changes)
    return dataclasses.replace(d, blobs=tuple(blobs))


# ---------------------------------------------------------------------------------------------
# E1: v5 cross-blob digest dedup, delete of an emptied blob, index remap


def e1(version: int = 5) -> Facts:
    return Facts(
        version,
        [blob("A", 100), blob("B", 150), blob("C", 400)],
        chunks(
            occ("K", 1, 0, 100, 0, 200),  # /a
            occ("K", 0, 0, 100, 0, 200),  # /b
            occ("M", 1, 100, 50, 200, 80, index=1),  # /c
            occ("N", 2, 0, 400, 0, 1000),  # /d
        ),
    )


@pytest.mark.parametrize("flags", [ORACLE, TOOL], ids=["oracle", "tool"])
def test_e1_v5_dedup_deletes_emptied_blob_and_remaps(flags: Flags) -> None:
    d, lay = plan(e1(), NO_MERGE, flags)
    assert actions(d) == [("A", "delete", "UNREFERENCED"), ("B", "keep", "KEEP"), ("C", "keep", "KEEP")]
    assert [(b.used_bytes, b.ratio) for b in d.blobs] == [(0, None), (150, 100), (400, 100)]
    assert d.groups == () and d.candidates == () and d.noop_reason is None
    assert table(lay) == ["B", "C"]
    assert locations(lay) == [(0, 0, 0, 0), (0, 0, 0, 0), (0, 1, 100, 200), (1, 0, 0, 0)]
    assert lay.new_blobs == [] and lay.deletable == ["A"] and not lay.identical
    # /b moves from A (0) to B, which is now also 0: its record does not change.
    assert lay.occurrences_remapped == 3 and lay.bytes_to_read == 0 and lay.reads == 0


def test_e1_v6_offset_keys_change_nothing_upstream_rewrites() -> None:
    d, lay = plan(e1(6), NO_MERGE, ORACLE)
    assert [b.action for b in d.blobs] == ["keep", "keep", "keep"]
    assert d.noop_reason is None
    assert table(lay) == ["A", "B", "C"]
    assert lay.identical and lay.occurrences_remapped == 0 and lay.deletable == []
    assert np.array_equal(lay.chunks, e1(6).chunks)


def test_e1_v6_tool_mode_reports_no_changes() -> None:
    d, lay = plan(e1(6), NO_MERGE, TOOL)
    assert d.noop_reason == "no changes"
    assert lay.identical and lay.noop_reason == "no changes" and table(lay) == ["A", "B", "C"]


def test_e1_v6_digest_key_dedups_like_v5() -> None:
    d, lay = plan(e1(6), NO_MERGE, dataclasses.replace(ORACLE, v6_key="digest"))
    assert [b.action for b in d.blobs] == ["delete", "keep", "keep"]
    assert locations(lay) == [(0, 0, 0, 0), (0, 0, 0, 0), (0, 1, 100, 200), (1, 0, 0, 0)]


# ---------------------------------------------------------------------------------------------
# E2: used-ratio rebuild


def e2(version: int) -> Facts:
    return Facts(
        version,
        [blob("A", 10000), blob("B", 5000)],
        chunks(
            occ("c0", 0, 0, 500, 0, 1000, index=0),  # /x
            occ("c2", 0, 3500, 1500, 4000, 3000, index=2),  # /x
            occ("b0", 1, 0, 5000, 0, 9000),  # /y
        ),
    )


E2_CFG = CompactConfig(min_used_ratio=30, compact_blob_size=0)


def test_e2_v5_used_ratio_rebuild() -> None:
    d, lay = plan(e2(5), E2_CFG)
    assert actions(d) == [("A", "rebuild", "REBUILD_RATIO"), ("B", "keep", "KEEP")]
    a = d.blobs[0]
    assert (a.used_bytes, a.size, a.size_source, a.ratio, a.threshold, a.group) == (2000, 10000, "table", 20, 30, 0)
    assert d.groups == (MergeGroup(0, 0, (0,)),)
    assert table(lay) == ["NEW0", "B"]
    nb = lay.new_blobs[0]
    assert (nb.compressed_size, nb.uncompressed_size, nb.chunk_count, nb.features) == (2000, 4000, 2, 0x40000000)
    assert not nb.aligned
    assert recipe(lay) == [(0, 0, 500, 0, 1000), (1, 500, 1500, 1000, 3000)]
    assert locations(lay) == [(0, 0, 0, 0), (0, 1, 500, 1000), (1, 0, 0, 0)]
    # The id is sha256(A[0:500] ‖ A[3500:5000]): two separate reads of A.
    assert [(int(r["source"]), int(r["offset"]), int(r["length"])) for r in nb.reads] == [(0, 0, 500), (0, 3500, 1500)]
    assert (lay.bytes_to_read, lay.bytes_to_write, lay.reads) == (2000, 2000, 2)
    assert lay.deletable == ["A"] and lay.occurrences_remapped == 1


def test_e2_v6_aligned_rebuild_and_ci_entries() -> None:
    d, lay = plan(e2(6), E2_CFG)
    assert [b.action for b in d.blobs] == ["rebuild", "keep"]
    nb = lay.new_blobs[0]
    assert nb.aligned and nb.features == 0x40000001
    assert (nb.compressed_size, nb.uncompressed_size, nb.chunk_count) == (2000, 8192, 2)
    # CI entries (coff, csz, uoff, usz) of compact.md E2.
    assert recipe(lay) == [(0, 0, 500, 0, 1000), (1, 500, 1500, 4096, 3000)]
    assert locations(lay) == [(0, 0, 0, 0), (0, 1, 500, 4096), (1, 0, 0, 0)]


# ---------------------------------------------------------------------------------------------
# E3: greedy merge with cap; target = the smallest candidate


def e3(compressors: dict[str, Compressor] | None = None) -> Facts:
    comp = compressors or {}
    sizes = {"B0": 50, "B1": 30, "B2": 80, "B3": 20, "B4": 200, "B5": 60}
    return Facts(
        5,
        [blob(n, s, compressor=comp.get(n, Compressor.NONE)) for n, s in sizes.items()],
        chunks(
            occ("a", 0, 0, 20, 0, 40, index=0),  # /f0
            occ("b", 0, 20, 30, 40, 60, index=1),  # /f0
            occ("c", 1, 0, 30, 0, 60),  # /f1
            occ("e", 2, 0, 80, 0, 160),  # /f2
            occ("d", 3, 0, 20, 0, 40),  # /f3
            occ("g", 4, 0, 200, 0, 400),  # /f4
            occ("h", 5, 0, 60, 0, 120),  # /f5
        ),
    )


E3_CFG = CompactConfig(compact_blob_size=100, max_compact_size=120)


@pytest.mark.parametrize("flags", [ORACLE, TOOL], ids=["oracle", "tool"])
def test_e3_greedy_merge(flags: Flags) -> None:
    d, lay = plan(e3(), E3_CFG, flags)
    assert d.candidates == (Candidate(3, 20), Candidate(1, 30), Candidate(0, 50), Candidate(5, 60), Candidate(2, 80))
    assert actions(d) == [
        ("B0", "merge", "MERGED_INTO"),
        ("B1", "merge", "MERGED_INTO"),
        ("B2", "keep", "KEEP"),
        ("B3", "merge", "MERGE_TARGET"),
        ("B4", "keep", "KEEP"),
        ("B5", "keep", "KEEP"),
    ]
    assert d.groups == (MergeGroup(0, 3, (0, 1, 3)),)
    assert table(lay) == ["B2", "NEW0", "B4", "B5"]
    nb = lay.new_blobs[0]
    assert (nb.new_index, nb.compressed_size, nb.uncompressed_size, nb.chunk_count) == (1, 100, 200, 4)
    # The target's own chunk d comes last: chunks are ordered by original blob index.
    assert recipe(lay) == [(0, 0, 20, 0, 40), (1, 20, 30, 40, 60), (2, 50, 30, 100, 60), (3, 80, 20, 160, 40)]
    assert [bytes(x) for x in nb.chunks["digest"]] == [dig("a"), dig("b"), dig("c"), dig("d")]
    assert locations(lay) == [
        (1, 0, 0, 0),  # a
        (1, 1, 20, 40),  # b
        (1, 2, 50, 100),  # c
        (0, 0, 0, 0),  # e: B2 moved 2 -> 0
        (1, 3, 80, 160),  # d
        (2, 0, 0, 0),  # g: B4 moved 4 -> 2
        (3, 0, 0, 0),  # h: B5 moved 5 -> 3
    ]
    # B0's two chunks are adjacent: one read for them, one each for B1 and B3.
    assert [(int(r["source"]), int(r["offset"]), int(r["length"]), int(r["count"])) for r in nb.reads] == [
        (0, 0, 50, 2),
        (1, 0, 30, 1),
        (3, 0, 20, 1),
    ]
    assert lay.reads == 3 and lay.bytes_to_read == 100
    assert lay.deletable == ["B0", "B1", "B3"]


def test_merge_ties_keep_index_order_and_the_cap_is_inclusive() -> None:
    facts = Facts(
        5,
        [blob("X", 30), blob("Y", 20), blob("Z", 20)],
        chunks(occ("x", 0, 0, 30, 0, 30), occ("y", 1, 0, 20, 0, 20), occ("z", 2, 0, 20, 0, 20)),
    )
    d = decide(facts, CompactConfig(compact_blob_size=100, max_compact_size=70), ORACLE)
    assert d.candidates == (Candidate(1, 20), Candidate(2, 20), Candidate(0, 30))
    assert d.groups == (MergeGroup(0, 1, (0, 1, 2)),)  # 20 + 20 + 30 == 70 still fits
    d = decide(facts, CompactConfig(compact_blob_size=100, max_compact_size=69), ORACLE)
    assert d.groups == (MergeGroup(0, 1, (1, 2)),)


def test_i4_merges_only_within_a_compatibility_class() -> None:
    facts = e3({"B1": Compressor.ZSTD})
    oracle, _ = plan(facts, E3_CFG, ORACLE)
    assert oracle.groups == (MergeGroup(0, 3, (0, 1, 3)),)  # R ignores the compressor
    d, lay = plan(facts, E3_CFG, TOOL)
    # Class "none": B3 20, B0 50 (+B5 would make 130 > 120); class "zstd": B1 alone.
    assert d.groups == (MergeGroup(0, 3, (0, 3)),)
    assert [b.action for b in d.blobs] == ["merge", "keep", "keep", "merge", "keep", "keep"]
    assert table(lay) == ["B1", "B2", "NEW0", "B4", "B5"]


def test_i4_layout_refuses_an_edited_incompatible_group() -> None:
    facts = e3({"B1": Compressor.ZSTD})
    d = decide(facts, E3_CFG, TOOL)
    d = edit(d, 1, action="merge", reason="MERGED_INTO", group=0)
    d = dataclasses.replace(d, groups=(MergeGroup(0, 3, (0, 1, 3)),))
    with pytest.raises(PlanError, match=r"group 0: blob B1 \(zstd.*cannot merge with B3"):
        layout(facts, d)


def test_i5_chunk_cap_refuses_a_merge() -> None:
    flags = dataclasses.replace(ORACLE, i5_chunk_cap=2)
    d, lay = plan(e3(), E3_CFG, flags)
    # B3+B1 = 2 chunks; +B0 would be 4 > 2, so B0 starts a group; B0+B5 = 3 chunks > 2.
    assert d.groups == (MergeGroup(0, 3, (1, 3)),)
    assert all(nb.chunk_count <= 2 for nb in lay.new_blobs)


def test_i5_layout_refuses_an_edited_group_over_the_cap() -> None:
    d = decide(e3(), E3_CFG, ORACLE)
    with pytest.raises(PlanError, match=r"new blob 1 \(group 0\): 4 chunks, more than the cap of 3"):
        layout(e3(), dataclasses.replace(d, flags=dataclasses.replace(ORACLE, i5_chunk_cap=3)))


# ---------------------------------------------------------------------------------------------
# E4: chunk dictionary


def e4(extra_dict_blob: bool = False) -> Facts:
    dict_blobs = [blob("d0", 100), blob("b1", 200)] + ([blob("d9", 50)] if extra_dict_blob else [])
    dict_chunks = chunks(occ("X", 0, 0, 100, 0, 100), occ("Y", 1, 0, 200, 0, 400))
    return Facts(
        5,
        [blob("b0", 300), blob("b1", 200)],
        chunks(
            occ("X", 0, 0, 100, 0, 100),  # /f1
            occ("Z", 0, 100, 200, 100, 400, index=1),  # /f2
            occ("Y", 1, 0, 200, 0, 400),  # /f3
        ),
        DictFacts(dict_blobs, dict_chunks, Digester.SHA256),
    )


def test_e4a_dict_redirect_uses_the_real_index() -> None:
    d, lay = plan(e4(), CompactConfig())
    assert actions(d) == [("b0", "keep", "KEEP"), ("b1", "dict-keep", "DICT_KEEP"), ("d0", "dict-keep", "DICT_KEEP")]
    assert d.blobs[0].ratio == 66 and d.blobs[0].used_bytes == 200
    assert table(lay) == ["b0", "b1", "d0"]
    assert locations(lay) == [(2, 0, 0, 0), (0, 1, 100, 100), (1, 0, 0, 0)]
    assert lay.deletable == [] and lay.new_blobs == []


def test_e4b_dict_then_rebuild() -> None:
    d, lay = plan(e4(), CompactConfig(min_used_ratio=80))
    assert [b.action for b in d.blobs] == ["rebuild", "dict-keep", "dict-keep"]
    assert table(lay) == ["NEW0", "b1", "d0"]
    nb = lay.new_blobs[0]
    assert (nb.compressed_size, nb.uncompressed_size, nb.chunk_count) == (200, 400, 1)
    assert [(int(r["source"]), int(r["offset"]), int(r["length"])) for r in nb.reads] == [(0, 100, 200)]
    assert locations(lay) == [(2, 0, 0, 0), (0, 0, 0, 0), (1, 0, 0, 0)]
    assert lay.deletable == ["b0"]


def test_i1_drops_unused_dict_blobs_only_when_asked() -> None:
    oracle, lay = plan(e4(extra_dict_blob=True), CompactConfig())
    assert table(lay) == ["b0", "b1", "d0", "d9"]  # R keeps every dict blob
    d, lay = plan(e4(extra_dict_blob=True), CompactConfig(), dataclasses.replace(TOOL, i1_drop_unused_dict_blobs=True))
    assert actions(d)[3] == ("d9", "delete", "DICT_UNUSED")
    assert table(lay) == ["b0", "b1", "d0"]
    assert lay.deletable == []  # d9 is the dict's blob, not the source's


def test_dict_chunk_with_other_sizes_is_an_error_naming_the_digest() -> None:
    facts = e4()
    bad = facts.chunk_dict.chunks.copy()
    bad["compressed_size"][0] = 90
    facts = dataclasses.replace(facts, chunk_dict=dataclasses.replace(facts.chunk_dict, chunks=bad))
    with pytest.raises(PlanError, match=f"chunk {dig('X').hex()}: different compressed size: occurrence 0 has 100"):
        decide(facts, CompactConfig(), ORACLE)


def test_dedup_with_other_sizes_is_an_error_past_the_first_block_of_the_check() -> None:
    """300,000 occurrences of one chunk; only the last has another compressed size."""
    n = 300_000
    facts = Facts(5, [blob("A", 100)], chunks(*[occ("K", 0, 0, 50, 0, 100)] * n))
    facts.chunks["compressed_size"][n - 1] = 49
    with pytest.raises(PlanError, match=f"different compressed size: occurrence {n - 1} has 49, its first occurrence has 50"):
        decide(facts, CompactConfig(), ORACLE)


def test_dedup_with_other_sizes_is_an_error() -> None:
    facts = Facts(5, [blob("A", 100)], chunks(occ("K", 0, 0, 50, 0, 100), occ("K", 0, 50, 50, 100, 99)))
    with pytest.raises(PlanError, match="different uncompressed size: occurrence 1 has 99"):
        decide(facts, CompactConfig(), ORACLE)


# ---------------------------------------------------------------------------------------------
# E5: v6, compressed_size 0, rebuild + merge into a Rebuild target, layers_to_compact gate


def e5() -> Facts:
    return Facts(
        6,
        [blob("P", 0, observed=8192), blob("Q", 0, observed=3000)],
        chunks(
            occ("p0", 0, 0, 1024, 0, 4096, index=0),  # /p
            occ("p2", 0, 4096, 1024, 8192, 2000, index=2),  # /p
            occ("q0", 1, 0, 3000, 0, 8192),  # /q
        ),
    )


E5_CFG = CompactConfig(min_used_ratio=50, layers_to_compact=2)


@pytest.mark.parametrize("flags", [ORACLE, TOOL], ids=["oracle", "tool"])
def test_e5_backend_size_rebuild_then_merge(flags: Flags) -> None:
    d, lay = plan(e5(), E5_CFG, flags)
    p, q = d.blobs
    assert (p.used_bytes, p.size, p.size_source, p.ratio) == (2048, 8192, "backend", 25)
    assert (q.used_bytes, q.size, q.size_source, q.ratio) == (3000, 3000, "backend", 100)
    assert d.candidates == (Candidate(0, 2048), Candidate(1, 3000))
    assert actions(d) == [("P", "merge", "MERGE_TARGET"), ("Q", "merge", "MERGED_INTO")]
    assert table(lay) == ["NEW0"]
    nb = lay.new_blobs[0]
    assert (nb.compressed_size, nb.uncompressed_size, nb.chunk_count, nb.features) == (5048, 16384, 3, 0x40000001)
    assert recipe(lay) == [(0, 0, 1024, 0, 4096), (1, 1024, 1024, 4096, 2000), (2, 2048, 3000, 8192, 8192)]
    assert locations(lay) == [(0, 0, 0, 0), (0, 1, 1024, 4096), (0, 2, 2048, 8192)]
    assert lay.deletable == ["P", "Q"]


def test_e5_ci_table_matches_the_oracle_bytes() -> None:
    _, lay = plan(e5(), E5_CFG)
    r = lay.new_blobs[0].chunks
    ci = np.zeros(len(r), dtype=blob_meta.CI_DTYPE)
    for f in ("compressed_offset", "compressed_size", "uncompressed_offset", "uncompressed_size"):
        ci[f] = r[f]
    ci["flags"] = blob_meta.CI_V2_COMPRESSED
    assert blob_meta.encode_ci(ci, v2=False).hex() == (
        "0000000000f0ff000000000000f03f00" "0010000000f07c000004000000f03f00" "0020000000f0ff01000800000070bb00"
    )


def test_e5_layers_to_compact_gate_is_a_noop() -> None:
    d, lay = plan(e5(), dataclasses.replace(E5_CFG, layers_to_compact=3))
    assert d.noop_reason == "2 blobs, fewer than layers_to_compact 3"
    assert d.blobs == () and d.groups == ()
    assert lay.identical and table(lay) == ["P", "Q"] and np.array_equal(lay.chunks, e5().chunks)


# ---------------------------------------------------------------------------------------------
# Errors, flags and limits


def test_size_zero_in_table_and_backend_is_an_error() -> None:
    for observed, why in ((None, "no backend size is known"), (0, "the backend reports 0 bytes")):
        facts = dataclasses.replace(e5(), blobs=[blob("P", 0, observed=observed), blob("Q", 0, observed=3000)])
        with pytest.raises(PlanError, match=f"blob P: size 0 in the blob table and {why}"):
            decide(facts, E5_CFG, ORACLE)


def test_ratio_u8_wrap_flag() -> None:
    # A table size that understates the blob: 300 referenced bytes of a "100-byte" blob.
    facts = Facts(5, [blob("A", 100), blob("B", 10)], chunks(occ("k", 0, 0, 300, 0, 300), occ("l", 1, 0, 10, 0, 10)))
    cfg = CompactConfig(min_used_ratio=50, compact_blob_size=0)
    plain = decide(facts, cfg, ORACLE)
    assert plain.blobs[0].ratio == 300 and plain.blobs[0].action == "keep"
    wrapped = decide(facts, cfg, dataclasses.replace(ORACLE, ratio_u8_wrap=True))
    assert wrapped.blobs[0].ratio == 44 and wrapped.blobs[0].action == "rebuild"


def test_more_than_256_blobs_is_an_error() -> None:
    many = [blob(f"b{i}", 10) for i in range(257)]
    with pytest.raises(PlanError, match="too many blobs.* 257"):
        decide(Facts(5, many, chunks()), CompactConfig(), ORACLE)
    # Dict blobs count too.
    cd = DictFacts([blob(f"d{i}", 10) for i in range(57)], chunks())
    with pytest.raises(PlanError, match="too many blobs"):
        decide(Facts(5, many[:200], chunks(), cd), CompactConfig(), ORACLE)


def test_v6_table_over_255_blobs_is_refused_by_layout() -> None:
    n = 256
    facts = Facts(6, [blob(f"b{i}", 10) for i in range(n)], chunks(*(occ(f"c{i}", i, 0, 10, 0, 10) for i in range(n))))
    d = decide(facts, NO_MERGE, ORACLE)
    with pytest.raises(PlanError, match="256 blobs; RAFS v6 allows 255"):
        layout(facts, d)
    v5 = dataclasses.replace(facts, version=5)
    assert len(layout(v5, decide(v5, NO_MERGE, ORACLE)).table) == 256


def test_occurrence_outside_the_blob_table_is_an_error() -> None:
    with pytest.raises(PlanError, match="occurrence 0: blob_index 3 is outside the blob table"):
        decide(Facts(5, [blob("A", 10)], chunks(occ("k", 3, 0, 10, 0, 10))), CompactConfig(), ORACLE)


def test_edited_delete_of_a_needed_blob_names_blob_and_occurrence() -> None:
    d = decide(e1(), NO_MERGE, ORACLE)
    with pytest.raises(PlanError, match="blob B is deleted, but occurrence 0 needs its chunk at compressed offset 0"):
        layout(e1(), edit(d, 1, action="delete", reason="UNREFERENCED"))


def test_edited_keep_of_an_unreferenced_blob_is_accepted() -> None:
    d = decide(e1(), NO_MERGE, ORACLE)
    lay = layout(e1(), edit(d, 0, action="keep", reason="KEEP"))
    assert table(lay) == ["A", "B", "C"] and lay.deletable == []
    assert locations(lay) == [(1, 0, 0, 0), (1, 0, 0, 0), (1, 1, 100, 200), (2, 0, 0, 0)]


def test_blob_both_deleted_and_in_a_group_is_refused() -> None:
    d = decide(e3(), E3_CFG, ORACLE)
    with pytest.raises(PlanError, match="blob B1 is both deleted and in group 0"):
        layout(e3(), edit(d, 1, action="delete", reason="UNREFERENCED", group=None))


def test_decisions_for_other_inputs_are_refused() -> None:
    d = decide(e1(), NO_MERGE, ORACLE)
    with pytest.raises(PlanError, match="decision 0 is for blob 0 A, the inputs have X there"):
        layout(dataclasses.replace(e1(), blobs=[blob("X", 100), blob("B", 150), blob("C", 400)]), d)


def test_empty_new_table_is_a_noop() -> None:
    d, lay = plan(Facts(5, [blob("A", 10)], chunks()), CompactConfig())
    assert d.noop_reason == "the new blob table would be empty"
    assert table(lay) == ["A"] and lay.identical


def test_decide_and_layout_are_deterministic() -> None:
    facts = _synthetic(20_000, 30, seed=7)
    cfg = CompactConfig(min_used_ratio=60, compact_blob_size=40_000, max_compact_size=200_000)
    d1, l1 = plan(facts, cfg, TOOL)
    d2, l2 = plan(facts, cfg, TOOL)
    assert d1 == d2 and d1.groups  # something to compare
    assert table(l1) == table(l2)
    assert np.array_equal(l1.chunks, l2.chunks)
    for a, b in zip(l1.new_blobs, l2.new_blobs, strict=True):
        assert np.array_equal(a.chunks, b.chunks) and np.array_equal(a.reads, b.reads)


def test_flags_describe_is_stable() -> None:
    assert Flags.upstream_oracle().describe() == {
        "i1_drop_unused_dict_blobs": False,
        "i2_whole_file_id": False,
        "i3_report_no_changes": False,
        "i4_compatible_merges_only": False,
        "i5_chunk_cap": None,
        "ratio_u8_wrap": False,
        "v6_key": "offset",
    }
    tool = Flags.tool_default().describe()
    assert list(tool) == sorted(tool)
    assert (tool["i2_whole_file_id"], tool["i3_report_no_changes"], tool["i4_compatible_merges_only"]) == (
        True,
        True,
        True,
    )
    assert tool["i5_chunk_cap"] == 1 << 20 and not tool["i1_drop_unused_dict_blobs"]
    with pytest.raises(PlanError, match="v6_key"):
        Flags(v6_key="hash")


# ---------------------------------------------------------------------------------------------
# Scale: 1M occurrences over 200 blobs


def _synthetic(n_occ: int, n_blobs: int, seed: int) -> Facts:
    """Unique chunks spread over blobs (contiguous per blob), each occurring one or more times."""
    rng = np.random.default_rng(seed)
    n_unique = n_occ // 3
    ublob = np.sort(rng.integers(0, n_blobs, n_unique))
    usz = rng.integers(1, 4096, n_unique).astype(np.uint32)
    starts = np.searchsorted(ublob, np.arange(n_blobs))
    cs = np.concatenate([[0], np.cumsum(usz, dtype=np.uint64)])
    index = np.arange(n_unique) - starts[ublob]
    coff = cs[:-1] - cs[starts[ublob]]
    sizes = np.bincount(ublob, weights=usz, minlength=n_blobs).astype(np.int64)
    pick = rng.integers(0, n_unique, n_occ)
    c = np.zeros(n_occ, dtype=CHUNK_DTYPE)
    c["block_id"] = np.arange(n_unique, dtype=">u8").repeat(4).view("V32")[pick]
    c["blob_index"] = ublob[pick]
    c["compressed_size"] = c["uncompressed_size"] = usz[pick]
    c["compressed_offset"] = c["uncompressed_offset"] = coff[pick]
    c["index"] = index[pick]
    # Blob tables claim some unreferenced space, so ratios vary.
    slack = rng.integers(0, 3, n_blobs) * sizes
    return Facts(5, [blob(f"{i:064x}", int(s + x)) for i, (s, x) in enumerate(zip(sizes, slack))], c)


def test_one_million_occurrences_over_200_blobs() -> None:
    facts = _synthetic(1_000_000, 200, seed=1)
    cfg = CompactConfig(min_used_ratio=40, compact_blob_size=4_000_000, max_compact_size=10_000_000)
    d, lay = plan(facts, cfg, TOOL)
    assert {b.action for b in d.blobs} == {"keep", "merge"} and len(d.groups) > 10

    src, out = facts.chunks, lay.chunks
    for f in ("block_id", "compressed_size", "uncompressed_size", "flags", "file_offset"):
        assert np.array_equal(src[f], out[f])
    assert int(out["blob_index"].max()) < len(lay.table)
    # Every occurrence of a digest lands on one location ...
    key = np.ascontiguousarray(src["block_id"]).view(">u8")[::4]  # the synthetic digests differ in word 0
    order = np.argsort(key, kind="stable")
    loc = np.stack([out["blob_index"], out["index"], out["compressed_offset"]]).T.astype(np.int64)[order]
    same = key[order][1:] == key[order][:-1]
    assert (loc[1:][same] == loc[:-1][same]).all()
    # ... and what it reads there is its own chunk: kept blobs in place, new blobs by recipe.
    for nb in lay.new_blobs:
        mine = out["blob_index"] == nb.new_index
        r = nb.chunks[out["index"][mine]]
        assert np.array_equal(r["digest"], out["block_id"][mine])
        assert np.array_equal(r["compressed_offset"], out["compressed_offset"][mine])
        assert int(nb.reads["length"].sum()) == nb.compressed_size
    kept = {e.new_index: e.source for e in lay.table if e.source is not None}
    moved_back = np.array([kept.get(int(b), -1) for b in range(len(lay.table))])[out["blob_index"]]
    is_kept = moved_back >= 0
    assert np.array_equal(moved_back[is_kept], src["blob_index"][is_kept])
    assert np.array_equal(out["compressed_offset"][is_kept], src["compressed_offset"][is_kept])
    assert lay.bytes_to_write == sum(nb.compressed_size for nb in lay.new_blobs)


# ---------------------------------------------------------------------------------------------
# E6: the real fixture is a fixed point


def _fixture_facts() -> Facts:
    path = FIXTURES / "sha256-nocompress-repeatable"
    return unite([v5.load(path.read_bytes(), str(path))], [str(path)]).facts


def test_e6_fixture_rows() -> None:
    facts = _fixture_facts()
    assert [b.blob_id for b in facts.blobs] == ["7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"]
    assert len(facts.chunks) == 29

    gated = decide(facts, CompactConfig(min_used_ratio=5, layers_to_compact=32), TOOL)
    assert gated.noop_reason == "1 blob, fewer than layers_to_compact 32"

    d, lay = plan(facts, CompactConfig(), ORACLE)
    assert [b.action for b in d.blobs] == ["keep"] and d.blobs[0].ratio == 100
    assert lay.identical
    assert decide(facts, CompactConfig(), TOOL).noop_reason == "no changes"

    d, lay = plan(facts, CompactConfig(min_used_ratio=101), ORACLE)
    assert [b.action for b in d.blobs] == ["rebuild"]
    nb = lay.new_blobs[0]
    assert (nb.compressed_size, nb.uncompressed_size, nb.chunk_count, nb.features) == (3508766, 3508766, 23, 0x40000000)
    assert np.array_equal(lay.chunks, facts.chunks)  # every record unchanged
    assert [(int(r["offset"]), int(r["length"])) for r in nb.reads] == [(0, 3508766)]
    assert lay.occurrences_remapped == 0 and not lay.identical


# ---------------------------------------------------------------------------------------------
# Computing R at scale: one resolution for decide and layout, keys sorted by their lead column


def _first_equal_reference(columns: list[np.ndarray]) -> list[int]:
    seen: dict[tuple, int] = {}
    return [seen.setdefault(key, i) for i, key in enumerate(zip(*(c.tolist() for c in columns)))]


@pytest.mark.parametrize(
    "lower",
    [lambda lead, k: lead * (k + 7), lambda lead, k: np.random.default_rng(k).integers(0, 3, len(lead))],
    ids=["lead-decides", "lead-ties-differ-below"],
)
@pytest.mark.parametrize("rows, keys", [(300, 5), (50_000, 1000)])  # the larger one is sorted unstably
def test_first_equal_is_the_first_row_of_each_key(lower, rows, keys) -> None:
    lead = np.random.default_rng(1).integers(0, keys, rows).astype(np.uint64)
    columns = [lead, *(lower(lead, k).astype(np.uint64) for k in range(3))]
    assert first_equal(columns).tolist() == _first_equal_reference(columns)


def test_digest_columns_of_a_strided_selection() -> None:
    ch = e3().chunks
    words = [int.from_bytes(bytes(d)[8 * k : 8 * k + 8], "big") for d in ch["block_id"][::2] for k in range(4)]
    assert np.stack(digest_columns(ch[::2]), axis=1).ravel().tolist() == words


def test_layout_uses_the_resolution_of_decide_only_for_its_own_facts_and_key() -> None:
    facts = e1(6)
    d = decide(facts, NO_MERGE, ORACLE)
    assert d.resolution is not None and d.resolution.fits(facts, ORACLE)
    fresh = dataclasses.replace(d, resolution=None)
    assert locations(layout(facts, d)) == locations(layout(facts, fresh))
    # Another key, or other facts with the same blob table: resolved anew, as a hand edit would be.
    digest_keyed = dataclasses.replace(d, flags=dataclasses.replace(ORACLE, v6_key="digest"))
    moved = locations(layout(facts, digest_keyed))
    assert moved == locations(layout(facts, dataclasses.replace(digest_keyed, resolution=None)))
    assert moved != locations(layout(facts, d))
    other = Facts(6, facts.blobs, facts.chunks[::-1].copy())
    assert locations(layout(other, d)) == locations(layout(other, fresh))


def test_relocated_chunks_are_slices_of_chunks_and_leave_the_source_alone() -> None:
    facts = e1()
    before = facts.chunks.copy()
    lay = layout(facts, decide(facts, NO_MERGE, ORACLE))
    assert np.array_equal(lay.relocated_chunks(1, 3), lay.chunks[1:3])
    assert np.array_equal(facts.chunks, before) and not np.array_equal(lay.chunks, before)


@pytest.mark.parametrize("features", [BlobFeatures.ZRAN | BlobFeatures.CHUNK_INFO_V2, BlobFeatures.SEPARATE,
                                      BlobFeatures.INLINED_FS_META])  # fmt: skip
@pytest.mark.parametrize("flags", [Flags.upstream_oracle(), Flags.tool_default()])
def test_blobs_whose_chunks_are_not_plain_payloads_are_never_rewritten(features: int, flags: Flags) -> None:
    """A sparse ZRAN/SEPARATE/inline-meta blob is kept, not rebuilt or merged; editing it into a group is refused."""
    facts = e2(6)
    facts.blobs[0] = blob("A", 10000, features=int(features | BlobFeatures.ALIGNED))
    cfg = CompactConfig(min_used_ratio=30, compact_blob_size=1 << 20)
    d, lay = plan(facts, cfg, flags)
    assert actions(d)[0] == ("A", "keep", "KEEP_UNSUPPORTED")
    assert 0 not in [c.index for c in d.candidates]
    assert all(0 not in nb.members for nb in lay.new_blobs)
    edited = dataclasses.replace(
        edit(d, 0, action="rebuild", group=9), groups=(*d.groups, MergeGroup(9, 0, (0,))), noop_reason=None
    )
    with pytest.raises(PlanError, match="cannot be copied into a new blob"):
        layout(facts, edited)


def test_a_new_blob_is_read_in_pieces_of_at_most_max_read() -> None:
    # 20 adjacent 1 MiB chunks used from a 40 MiB blob: rebuilt, read as 16 + 4 MiB (backends.reads).
    mib = 1 << 20
    facts = Facts(
        5,
        [blob("A", 40 * mib), blob("B", 100)],
        chunks(*(occ(f"c{i}", 0, i * mib, mib, i * mib, mib, index=i) for i in range(20)), occ("z", 1, 0, 100, 0, 100)),
    )
    _, lay = plan(facts, CompactConfig(min_used_ratio=60, compact_blob_size=0))
    (nb,) = lay.new_blobs
    assert nb.reads[["offset", "length", "first", "count"]].tolist() == [(0, MAX_READ, 0, 16), (MAX_READ, 4 * mib, 16, 4)]
