"""`--max-blobs N` as a policy step (planner.max_blobs): the cheapest choice, checked by hand on
small images and against an exhaustive search over every grouping on random ones."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nydus_compact.planner.config import CompactConfig
from nydus_compact.planner.facts import DictFacts, Facts
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.layout import layout
from nydus_compact.planner.max_blobs import Item, limit_blobs, pack
from nydus_compact.planner.policy import Decisions, decide, merge_class
from nydus_compact.planner.vocab import Reason
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester

from test_policy import blob, chunks, occ

TOOL = Flags.tool_default()
BIG = 1 << 30  # a merge cap that never binds


def image(version: int, used: list[int], *, table: list[int] | None = None, compressors=None) -> Facts:
    """One chunk of ``used[i]`` bytes per blob i; the table size defaults to the used size."""
    table = table or used
    compressors = compressors or [Compressor.NONE] * len(used)
    blobs = [blob(f"b{i}", t, compressor=c) for i, (t, c) in enumerate(zip(table, compressors))]
    rows = [occ(f"c{i}", i, 0, u, 0, u) for i, u in enumerate(used)]
    return Facts(version, blobs, chunks(*rows))


def limited(facts: Facts, n: int, cap: int = BIG, cfg: CompactConfig | None = None):
    cfg = cfg or CompactConfig(compact_blob_size=0, max_compact_size=cap)
    d = decide(facts, cfg, TOOL)
    out, result = limit_blobs(d, n, cfg.max_compact_size)
    return d, out, result, layout(facts, out)


def folded(d: Decisions) -> list[int]:
    return [b.index for b in d.blobs if b.reason == Reason.MERGE_FOR_COUNT]


@pytest.mark.parametrize("version", [5, 6])
def test_a_limit_already_met_changes_nothing(version: int) -> None:
    r_only, out, result, lay = limited(image(version, [5, 7, 9]), 3)
    assert out == r_only
    assert (result.before, result.after, result.extra_bytes, result.reached) == ((3,), (3,), 0, True)
    assert len(lay.table) == 3


@pytest.mark.parametrize("version", [5, 6])
def test_without_a_binding_cap_the_cheapest_blobs_fold_into_one(version: int) -> None:
    # 6 blobs, limit 3: the 4 cheapest (10, 10, 20, 30) become one new blob.
    _, out, result, lay = limited(image(version, [50, 10, 30, 20, 40, 10]), 3)
    assert folded(out) == [1, 2, 3, 5]
    assert (result.after, result.extra_bytes, result.exact) == ((3,), 70, True)
    assert [e.blob_id or "new" for e in lay.table] == ["b0", "new", "b4"]
    g = out.groups[0]
    assert (g.target, g.members) == (1, (1, 2, 3, 5))


@pytest.mark.parametrize("version", [5, 6])
def test_ties_go_to_the_lower_table_index(version: int) -> None:
    _, out, result, _ = limited(image(version, [8, 8, 8, 8, 8]), 4)
    assert folded(out) == [0, 1]
    assert result.extra_bytes == 16


@pytest.mark.parametrize("version", [5, 6])
def test_blobs_r_rewrites_anyway_are_folded_first_at_no_cost(version: int) -> None:
    # Blob 1 uses 10 of 100 bytes: R rebuilds it (ratio 10 < 50). Folding the cheapest kept blob
    # (2, 15 bytes) into R's new blob costs 15; folding two kept blobs would cost 15 + 20.
    facts = image(version, [60, 10, 15, 20], table=[60, 100, 15, 20])
    cfg = CompactConfig(min_used_ratio=50, compact_blob_size=0, max_compact_size=BIG)
    r_only, out, result, _ = limited(facts, 3, cfg=cfg)
    assert [b.action for b in r_only.blobs] == ["keep", "rebuild", "keep", "keep"]
    assert folded(out) == [2]
    assert [(b.action, b.reason) for b in out.blobs[1:3]] == [("merge", "REBUILD_RATIO"), ("merge", Reason.MERGE_FOR_COUNT)]
    assert (result.before, result.after, result.extra_bytes) == ((4,), (3,), 15)


@pytest.mark.parametrize("version", [5, 6])
def test_r_new_blobs_fold_together_for_free(version: int) -> None:
    # Blobs 1 and 2 are both rebuilt by R (two new blobs); one fold of the two costs nothing.
    facts = image(version, [60, 10, 12, 20], table=[60, 100, 100, 20])
    cfg = CompactConfig(min_used_ratio=50, compact_blob_size=0, max_compact_size=BIG)
    _, out, result, lay = limited(facts, 3, cfg=cfg)
    assert folded(out) == []
    assert (result.after, result.extra_bytes) == ((3,), 0)
    assert [g.members for g in out.groups] == [(1, 2)]
    assert len(lay.new_blobs) == 1


@pytest.mark.parametrize("version", [5, 6])
def test_a_binding_cap_packs_two_new_blobs_rather_than_rewriting_a_big_blob(version: int) -> None:
    # Limit 4 from 6 under a cap of 100: one blob of the 3 cheapest (30+30+45 = 105) does not
    # fit, so "fold the cheapest into one" would need 30+30+45+...; two pairs (30+30, 45+50) fit
    # and cost 155, less than any single fold that fits (none of three fits).
    _, out, result, lay = limited(image(version, [30, 30, 45, 50, 90, 95]), 4, cap=100)
    assert folded(out) == [0, 1, 2, 3]
    assert (result.after, result.extra_bytes, result.exact) == ((4,), 155, True)
    assert sorted(g.members for g in out.groups) == [(0, 1), (2, 3)]
    assert len(lay.table) == 4


@pytest.mark.parametrize("version", [5, 6])
def test_incompatible_compressors_never_share_a_new_blob(version: int) -> None:
    # The two cheapest (5 and 6) cannot share a blob: one is lz4, the other uncompressed. The
    # cheapest single fold is within the lz4 class: 6 + 7.
    lz4, raw = Compressor.LZ4_BLOCK, Compressor.NONE
    facts = image(version, [5, 6, 7, 100, 200], compressors=[raw, lz4, lz4, raw, lz4])
    _, out, result, _ = limited(facts, 4)
    assert folded(out) == [1, 2]
    assert result.extra_bytes == 13
    for g in out.groups:
        assert len({merge_class(facts.blobs[i]) for i in g.members}) == 1


@pytest.mark.parametrize("version", [5, 6])
def test_no_grouping_reaches_the_limit_so_the_nearest_count_is_reached(version: int) -> None:
    # Every pair exceeds the cap of 100 except (40, 50): the best is one fold, 5 -> 4.
    _, out, result, lay = limited(image(version, [40, 50, 70, 80, 90]), 2, cap=100)
    assert (result.reached, result.after, result.extra_bytes) == (False, (4,), 90)
    assert len(lay.table) == 4


def test_exact_packing_where_first_fit_decreasing_needs_one_blob_more() -> None:
    # First-fit-decreasing packs 48 | 44 | 41 40 ... into 3 blobs of at most 100; two suffice:
    # 48 + 41 + 10 and 44 + 40 + 16. Branch and bound finds them.
    items = [Item(i, (i,), w, 1, w, (), frozenset({0})) for i, w in enumerate([44, 40, 41, 48, 10, 16])]
    bins, exact, _ = pack(items, 100, None)
    assert exact and sorted(sorted(it.weight for it in b) for b in bins) == [[10, 41, 48], [16, 40, 44]]
    # So the six fold into 2 new blobs: 8 blobs -> 4 for 199 bytes, without touching 95 or 96.
    _, out, result, _ = limited(image(5, [44, 40, 41, 48, 10, 16, 95, 96]), 4, cap=100)
    assert (result.after, result.extra_bytes, result.exact) == ((4,), 199, True)
    assert folded(out) == [0, 1, 2, 3, 4, 5]


def test_chunk_dict_blobs_count_towards_the_limit_but_never_fold() -> None:
    # Source b0..b3 with b1 also in the chunk dict (DICT_KEEP), plus dict-only d0: 5 blobs after R.
    dict_blobs = [blob("d0", 100), blob("b1", 200)]
    facts = Facts(
        5,
        [blob("b0", 300), blob("b1", 200), blob("b2", 50), blob("b3", 60)],
        chunks(
            occ("X", 0, 0, 100, 0, 100),  # served by the dict's d0
            occ("Z", 0, 100, 200, 100, 200, index=1),
            occ("Y", 1, 0, 200, 0, 200),
            occ("P", 2, 0, 50, 0, 50),
            occ("Q", 3, 0, 60, 0, 60),
        ),
        DictFacts(dict_blobs, chunks(occ("X", 0, 0, 100, 0, 100), occ("Y", 1, 0, 200, 0, 200)), Digester.SHA256),
    )
    for n, want_after, want_extra, want_folded in ((3, 3, 310, [0, 2, 3]), (2, 3, 310, [0, 2, 3])):
        r_only, out, result, lay = limited(facts, n)
        assert [b.action for b in r_only.blobs] == ["keep", "dict-keep", "keep", "keep", "dict-keep"]
        assert (result.after, result.extra_bytes, result.reached) == ((want_after,), want_extra, n >= want_after)
        assert folded(out) == want_folded and len(lay.table) == want_after
        assert [b.action for b in out.blobs if b.index in (1, 4)] == ["dict-keep", "dict-keep"]


def test_layers_to_compact_does_not_stop_a_count_over_the_limit() -> None:
    facts = image(5, [1, 2, 3, 4])
    cfg = CompactConfig(compact_blob_size=0, layers_to_compact=10, max_blobs=2)
    _, out, result, lay = limited(facts, 2, cfg=cfg)
    assert (result.after, len(lay.table)) == ((2,), 2)


# -- exhaustive search over every grouping -------------------------------------------------


def set_partitions(items: list):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in set_partitions(rest):
        yield [[first], *p]
        for k in range(len(p)):
            yield [*p[:k], [first, *p[k]], *p[k + 1 :]]


def brute_force(r_only: Decisions, facts: Facts, cap: int, n: int) -> tuple[int, int]:
    """(count, extra bytes) of the cheapest grouping reaching n, else of the nearest count."""
    by_group: dict[int, list[int]] = {}
    items, fixed = [], 0
    for b in r_only.blobs:
        if b.action == "keep":
            items.append((b.used_bytes, b.used_bytes, merge_class(facts.blobs[b.index])))
        elif b.group is not None:
            by_group.setdefault(b.group, []).append(b.index)
        elif b.action == "dict-keep":
            fixed += 1
    for members in by_group.values():
        w = sum(r_only.blobs[i].used_bytes for i in members)
        items.append((w, 0, merge_class(facts.blobs[members[0]])))
    best = None
    for p in set_partitions(items):
        ok = all(len(b) == 1 or (len({i[2] for i in b}) == 1 and sum(i[0] for i in b) <= cap) for b in p)
        if not ok:
            continue
        count = fixed + len(p)
        cost = sum(i[1] for b in p if len(b) > 1 for i in b)
        key = (max(count, n), cost)
        if best is None or key < best:
            best = key
    return best


def random_case(rng: random.Random, version: int):
    k = rng.randint(1, 8)
    used = [rng.randint(1, 60) for _ in range(k)]
    table = [u if rng.random() < 0.7 else u * rng.randint(2, 5) for u in used]
    compressors = [rng.choice([Compressor.NONE, Compressor.LZ4_BLOCK]) for _ in range(k)]
    cfg = CompactConfig(
        min_used_ratio=rng.choice([0, 50]),
        compact_blob_size=rng.choice([0, 0, 25]),
        max_compact_size=rng.choice([40, 70, 120, BIG]),
    )
    return image(version, used, table=table, compressors=compressors), cfg, rng.randint(1, k)


@pytest.mark.parametrize("version", [5, 6])
def test_no_grouping_of_up_to_8_blobs_is_cheaper_than_the_plan(version: int) -> None:
    rng = random.Random(16 + version)
    for case in range(150):
        facts, cfg, n = random_case(rng, version)
        r_only = decide(facts, cfg, TOOL)
        out, result = limit_blobs(r_only, n, cfg.max_compact_size)
        count = len(layout(facts, out).table)
        assert count == result.after[0]
        want_count, want_cost = brute_force(r_only, facts, cfg.max_compact_size, n)
        assert (max(count, n), result.extra_bytes) == (want_count, want_cost), (case, cfg, n)
        assert result.exact


# -- properties ------------------------------------------------------------------------------


def first_fit_decreasing(weights: list[int], cap: int) -> int:
    bins: list[int] = []
    for w in sorted(weights, reverse=True):
        for k, load in enumerate(bins):
            if load + w <= cap:
                bins[k] += w
                break
        else:
            bins.append(w)
    return len(bins)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    used=st.lists(st.integers(1, 1000), min_size=1, max_size=40),
    cap=st.integers(1, 5000),
    n=st.integers(1, 40),
)
def test_property_count_within_limit_when_feasible_and_never_dearer_than_one_fold(used, cap, n) -> None:
    facts = image(5, used)
    r_only, out, result, lay = limited(facts, n, cap=cap)
    assert len(lay.table) == result.after[0] <= len(used)
    # Feasible (witnessed by first-fit-decreasing over the blobs that fit a new blob at all).
    movable = [u for u in used if u <= cap]
    if len(used) - len(movable) + first_fit_decreasing(movable, cap) <= n:
        assert result.reached and result.after[0] <= n
    # Folding the cheapest M - N + 1 into one blob, when that fits the cap, bounds the cost.
    if len(used) > n:
        cheapest = sorted(used)[: len(used) - n + 1]
        if sum(cheapest) <= cap:
            assert result.reached and result.extra_bytes <= sum(cheapest)
    else:
        assert out == r_only


# -- fleets ----------------------------------------------------------------------------------


def fleet(version: int, used: list[int], images: list[list[int]]) -> tuple[Facts, list[tuple[int, int]]]:
    """A union of images (as planner.fleet.unite builds it): image k uses the blobs ``images[k]``."""
    blobs = [blob(f"b{i}", u) for i, u in enumerate(used)]
    rows, slices = [], []
    for refs in images:
        start = len(rows)
        rows += [occ(f"c{i}", i, 0, used[i], 0, used[i]) for i in refs]
        slices.append((start, len(rows)))
    return Facts(version, blobs, chunks(*rows)), slices


def fleet_counts(facts: Facts, d: Decisions, slices: list[tuple[int, int]]) -> list[int]:
    """Blobs in each image's own new table, as planner.fleet.project builds it."""
    lay = layout(facts, d)
    return [len(np.unique(lay.relocated_chunks(a, b)["blob_index"])) for a, b in slices]


@pytest.mark.parametrize("version", [5, 6])
def test_fleet_folds_the_shared_blobs_once_for_both_images(version: int) -> None:
    # Both images hold 4 blobs, the limit is 3: folding the two small blobs they share (2, 3)
    # brings both under it at 5 + 6 bytes; each image folding its own would cost 200.
    facts, slices = fleet(version, [100, 100, 5, 6, 100, 100], [[0, 1, 2, 3], [2, 3, 4, 5]])
    r_only = decide(facts, CompactConfig(compact_blob_size=0), TOOL)
    out, result = limit_blobs(r_only, 3, BIG, slices)
    assert folded(out) == [2, 3]
    assert (result.before, result.after, result.extra_bytes, result.exact) == ((4, 4), (3, 3), 11, True)
    assert fleet_counts(facts, out, slices) == [3, 3]


def fleet_brute_force(r_only: Decisions, facts: Facts, slices, n: int) -> tuple[int, int]:
    """(total excess over n, extra bytes) of the best grouping of a fleet's entries."""
    refs = [set(np.unique(r_only.resolution.home_blob[a:b]).tolist()) for a, b in slices]
    items = []
    for b in r_only.blobs:
        if b.action == "keep":
            users = frozenset(k for k, r in enumerate(refs) if b.index in r)
            items.append((b.used_bytes, b.used_bytes, merge_class(facts.blobs[b.index]), users))
    best = None
    for p in set_partitions(items):
        if not all(len(b) == 1 or (len({i[2] for i in b}) == 1) for b in p):
            continue
        counts = [sum(1 for b in p if any(k in i[3] for i in b)) for k in range(len(slices))]
        key = (sum(max(0, c - n) for c in counts), sum(i[1] for b in p if len(b) > 1 for i in b))
        if best is None or key < best:
            best = key
    return best


def test_small_fleets_have_no_cheaper_grouping_than_the_plan() -> None:
    rng = random.Random(1616)
    for case in range(60):
        k = rng.randint(2, 7)
        used = [rng.randint(1, 50) for _ in range(k)]
        images = [sorted(rng.sample(range(k), rng.randint(1, k))) for _ in range(rng.randint(2, 3))]
        covered = sorted({i for refs in images for i in refs})
        used = [used[i] if i in covered else used[i] for i in range(k)]
        facts, slices = fleet(5, used, images)
        r_only = decide(facts, CompactConfig(compact_blob_size=0), TOOL)
        n = rng.randint(1, k)
        out, result = limit_blobs(r_only, n, BIG, slices)
        counts = fleet_counts(facts, out, slices)
        assert counts == list(result.after)
        excess = sum(max(0, c - n) for c in counts)
        assert (excess, result.extra_bytes) == fleet_brute_force(r_only, facts, slices, n), (case, used, images, n)


def test_large_fleet_greedy_brings_every_image_within_the_limit() -> None:
    # Two images of 7 private blobs each plus 3 shared: 13 items, beyond the exhaustive size.
    used = [10 + i for i in range(17)]
    a = list(range(0, 7)) + [14, 15, 16]
    b = list(range(7, 14)) + [14, 15, 16]
    facts, slices = fleet(5, used, [a, b])
    r_only = decide(facts, CompactConfig(compact_blob_size=0), TOOL)
    out, result = limit_blobs(r_only, 4, BIG, slices)
    assert result.reached and not result.exact
    assert fleet_counts(facts, out, slices) == list(result.after)
    assert max(result.after) <= 4


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    used=st.lists(st.integers(1, 100), min_size=2, max_size=14),
    picks=st.lists(st.lists(st.integers(0, 13), min_size=1, max_size=10), min_size=2, max_size=3),
    n=st.integers(1, 10),
)
def test_property_fleet_folding_never_raises_an_image_count(used, picks, n) -> None:
    images = [sorted({i % len(used) for i in p}) for p in picks]
    facts, slices = fleet(5, used, images)
    r_only = decide(facts, CompactConfig(compact_blob_size=0, max_compact_size=150), TOOL)
    out, result = limit_blobs(r_only, n, 150, slices)
    assert fleet_counts(facts, out, slices) == list(result.after)
    assert all(a <= b for a, b in zip(result.after, result.before))
    if result.reached:
        assert max(result.after) <= n
