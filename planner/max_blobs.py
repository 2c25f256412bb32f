"""`--max-blobs N`: after R, merge further so that every image's new blob table holds at most N
blobs, rewriting as few extra bytes as possible (issue 16). Pure: R's decisions in, decisions out.

Model. After R, an image's new table holds kept blobs, chunk-dict blobs and the new blobs R
writes. An *item* is an entry the limit may fold into a new blob: a blob R keeps (its cost is
its referenced bytes, which folding makes rewritten) or a new blob R already writes (cost 0).
Chunk-dict blobs, blobs whose chunks cannot be copied (KEEP_UNSUPPORTED) and items heavier than
the cap on their own are fixed. A *bin* (one new blob) holds items of one I4 class whose
referenced bytes sum to at most ``max_compact_size`` and whose chunks fit the I5 cap;
``compact_blob_size`` does not restrict the limit's choice: the count is what the user asked for.
A solution's cost is the summed cost of the kept blobs that share a bin with another item.

One image, exact. Let the kept items of a class be sorted by (referenced bytes, table index).
Swapping a folded kept blob for a smaller one that stayed kept fits every bin the larger one
fitted and costs less, so some cheapest solution folds a prefix of that order together with R's
new blobs (cost 0, always worth offering); how many entries a prefix of k saves is
``k + r - bins(prefix + R's blobs)``. Bins are counted exactly (first-fit-decreasing, proven by
the Martello-Toth L2 lower bound, else branch and bound; see ``EXACT_PACK_ITEMS``). The prefix
lengths of the classes are then combined by a small dynamic programme over "entries saved".
Ties: fewer blobs rewritten, then the lowest table indexes. Once the cost is settled, R's new
blobs are offered lightest first and only as many as the count needs, so nothing changes
beyond what the limit requires.

Several images (a fleet sharing blobs; its union table is planned once, see planner.fleet):
an image references a new blob if it referenced one of its members, which replaces at least
one of its entries, so folding never raises any image's count; a blob several images share is
rewritten once and costs once. Up to ``EXACT_FLEET_ITEMS`` items every partition is tried;
beyond, the image furthest over the limit is brought under it by the exact one-image step
(over the items it uses, with already folded bins at cost 0), repeatedly.

When no grouping reaches N the result reaches the nearest count (the largest saving at the
least cost) and says so; the caller turns that into a finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .policy import Decisions, MergeGroup, merge_class
from .vocab import KEPT_ACTIONS, Action, Reason


# Bin packing instances of at most this many items are solved by exhaustive branch and bound;
# larger ones too unless the search exceeds PACK_NODE_BUDGET nodes (or the plan's whole search
# PLAN_NODE_BUDGET), when first-fit-decreasing (at most 11/9 OPT + 6/9 bins) stands.
EXACT_PACK_ITEMS = 16
PACK_NODE_BUDGET = 200_000
PLAN_NODE_BUDGET = 1_000_000
# A fleet with at most this many items is solved by trying every partition (Bell(8) = 4140).
EXACT_FLEET_ITEMS = 8


@dataclass(frozen=True, slots=True)
class Item:
    """An entry the limit may fold: a kept blob, an R new blob, or (fleet) a bin already folded."""

    index: int  # lowest E index of its members: the tie-breaker
    members: tuple[int, ...]
    weight: int  # referenced bytes
    chunks: int
    cost: int  # extra bytes rewritten when it shares a bin; 0 once it is rewritten anyway
    cls: tuple[int, ...]
    images: frozenset[int]


@dataclass(frozen=True, slots=True)
class LimitResult:
    limit: int
    before: tuple[int, ...]  # per image: blobs in its new table after R
    after: tuple[int, ...]  # per image: blobs once the limit is applied
    extra_bytes: int  # referenced bytes of blobs R kept that the limit makes rewritten
    exact: bool  # the choice is proven the cheapest
    reached: bool  # every image is within the limit

    @property
    def changed(self) -> bool:
        return self.before != self.after


def limit_blobs(
    decisions: Decisions,
    limit: int,
    max_compact_size: int,
    slices: Sequence[tuple[int, int]] | None = None,
) -> tuple[Decisions, LimitResult | None]:
    """``decisions`` changed so that each image (occurrence range in ``slices``) has <= ``limit`` blobs.

    Returns None for the result when R stopped before deciding anything (the layers_to_compact
    gate): there is no table to count.
    """
    res = decisions.resolution
    if not decisions.blobs or res is None:
        return decisions, None
    n_occ = len(res.home_blob)
    slices = list(slices) if slices is not None else [(0, n_occ)]
    referenced = [frozenset(np.unique(res.home_blob[a:b]).tolist()) for a, b in slices]
    dict_kept = frozenset(d.index for d in decisions.blobs if d.action == Action.DICT_KEEP)
    by_group: dict[int, list[int]] = {}
    for d in decisions.blobs:
        if d.group is not None:
            by_group.setdefault(d.group, []).append(d.index)

    def images_of(members: tuple[int, ...]) -> frozenset[int]:
        return frozenset(k for k, refs in enumerate(referenced) if refs.intersection(members))

    cap, chunk_cap, i4 = max_compact_size, decisions.flags.i5_chunk_cap, decisions.flags.i4_compatible_merges_only
    blobs = res.ext.blobs
    items: list[Item] = []
    fixed: list[tuple[int, ...]] = []  # entries (as member tuples) the limit cannot fold
    for d in decisions.blobs:
        if d.action == Action.KEEP:
            members = (d.index,)
            w, c, cost = d.used_bytes, d.used_chunks, d.used_bytes
            foldable = d.reason == Reason.KEEP
        elif d.group is not None and d.index == min(by_group[d.group]):
            members = tuple(by_group[d.group])
            ds = [decisions.blobs[i] for i in members]
            w, c, cost = sum(x.used_bytes for x in ds), sum(x.used_chunks for x in ds), 0
            foldable = True
        else:  # deleted, a later member of a group, or a dict blob (counted for every image below)
            continue
        foldable = foldable and w <= cap and (chunk_cap is None or c <= chunk_cap)
        if foldable:
            cls = merge_class(blobs[members[0]]) if i4 else ()
            items.append(Item(members[0], members, w, c, cost, cls, images_of(members)))
        else:
            fixed.append(members)

    # planner.fleet.project keeps every chunk-dict blob in every image's table.
    fixed_counts = [len(dict_kept) + sum(1 for m in fixed if refs.intersection(m)) for refs in referenced]
    before = tuple(f + sum(1 for it in items if k in it.images) for k, f in enumerate(fixed_counts))
    if max(before) <= limit:
        return decisions, LimitResult(limit, before, before, 0, True, True)

    problem = _Problem(cap, chunk_cap, limit, fixed_counts)
    if len(slices) == 1:
        bins, exact = problem.solve_one(items, before[0] - limit)
    elif len(items) <= EXACT_FLEET_ITEMS:
        bins, exact = problem.solve_fleet_exact(items)
    else:
        bins, exact = problem.solve_fleet_greedy(items)
    bins = [b for b in bins if len(b) > 1]
    if not bins:
        return decisions, LimitResult(limit, before, before, 0, exact, False)
    out = _apply(decisions, bins)
    after = problem.counts(_fold(items, bins))
    extra = sum(it.cost for b in bins for it in b)
    return out, LimitResult(limit, before, tuple(after), extra, exact, max(after) <= limit)


def _fold(items: list[Item], bins: list[list[Item]]) -> list[Item]:
    """The items once every bin is one item (cost 0: it is rewritten anyway)."""
    folded = {it.index for b in bins for it in b}
    out = [it for it in items if it.index not in folded]
    for b in bins:
        members = tuple(sorted(m for it in b for m in it.members))
        images = frozenset().union(*(it.images for it in b))
        out.append(Item(members[0], members, sum(it.weight for it in b), sum(it.chunks for it in b), 0, b[0].cls, images))
    return sorted(out, key=lambda it: it.index)


@dataclass
class _Problem:
    cap: int
    chunk_cap: int | None
    limit: int
    fixed: list[int]  # per image: entries the limit cannot fold
    exact: bool = True
    nodes_left: int = PLAN_NODE_BUDGET  # branch-and-bound nodes the whole plan may still spend

    def counts(self, items: list[Item]) -> list[int]:
        return [f + sum(1 for it in items if k in it.images) for k, f in enumerate(self.fixed)]

    # --- one image -------------------------------------------------------------------------

    def solve_one(self, items: list[Item], need: int) -> tuple[list[list[Item]], bool]:
        """Bins saving at least ``need`` entries (else as many as possible) at the least cost."""
        self.exact = True
        classes: dict[tuple[int, ...], list[Item]] = {}
        for it in sorted(items, key=lambda it: it.index):
            classes.setdefault(it.cls, []).append(it)
        per_class = []
        for members in classes.values():
            kept = sorted((it for it in members if it.cost > 0), key=lambda it: (it.weight, it.index))
            free = sorted((it for it in members if it.cost == 0), key=lambda it: (it.weight, it.index))
            options = []  # (k, saved, cost, indexes of the k kept)
            cost = 0
            for k in range(len(kept) + 1):
                if k:
                    cost += kept[k - 1].cost
                saved = self._saved(kept[:k] + free)
                options.append((k, saved, cost, tuple(sorted(it.index for it in kept[:k]))))
                if saved >= need:
                    break  # a longer prefix only costs more
            per_class.append((kept, free, options))

        # best[saved] = (cost, blobs rewritten, indexes, chosen option per class)
        best: dict[int, tuple[int, int, tuple[int, ...], tuple[int, ...]]] = {0: (0, 0, (), ())}
        for _, _, options in per_class:
            nxt: dict[int, tuple[int, int, tuple[int, ...], tuple[int, ...]]] = {}
            for saved, (cost, count, idx, chosen) in best.items():
                for pos, (k, s, c, ix) in enumerate(options):
                    key = (cost + c, count + k, tuple(sorted(idx + ix)), chosen + (pos,))
                    total = min(need, saved + s)
                    if total not in nxt or key[:3] < nxt[total][:3]:
                        nxt[total] = key
            best = nxt
        goal = need if need in best else max(best)
        chosen = best[goal][3]

        bins: list[list[Item]] = []
        surplus = sum(per_class[c][2][pos][1] for c, pos in enumerate(chosen)) - goal
        for (kept, free, options), pos in zip(per_class, chosen):
            k, saved = options[pos][0], options[pos][1]
            # R's new blobs only as far as the count needs them: folding them is free, not required.
            for j in range(len(free) + 1):
                part = kept[:k] + free[:j]
                got = self._saved(part)
                if got >= saved - surplus:
                    surplus -= saved - got
                    bins += self._pack(part)
                    break
        return bins, self.exact

    def _saved(self, items: list[Item]) -> int:
        return len(items) - len(self._pack(items)) if len(items) > 1 else 0

    def _pack(self, items: list[Item]) -> list[list[Item]]:
        bins, exact, nodes = pack(items, self.cap, self.chunk_cap, min(PACK_NODE_BUDGET, self.nodes_left))
        self.nodes_left = max(0, self.nodes_left - nodes)
        if not exact or (self.chunk_cap is not None and sum(it.chunks for it in items) > self.chunk_cap):
            # The prefix argument orders by bytes alone: a binding chunk cap voids the proof.
            self.exact = False
        return bins

    # --- several images ----------------------------------------------------------------------

    def solve_fleet_exact(self, items: list[Item]) -> tuple[list[list[Item]], bool]:
        """Every partition of the items: the least total excess, then the least cost."""
        items = sorted(items, key=lambda it: it.index)
        best_key, best_bins = None, []
        for labels in _partitions(len(items)):
            blocks: dict[int, list[Item]] = {}
            for it, label in zip(items, labels):
                blocks.setdefault(label, []).append(it)
            bins = [b for b in blocks.values() if len(b) > 1]
            if not all(self._fits(b) for b in bins):
                continue
            counts = self.counts(_fold(items, bins))
            rewritten = sorted(it.index for b in bins for it in b if it.cost > 0)
            key = (
                sum(max(0, c - self.limit) for c in counts),
                sum(it.cost for b in bins for it in b),
                len(rewritten),
                tuple(rewritten),
                sum(len(b) for b in bins),
            )
            if best_key is None or key < best_key:
                best_key, best_bins = key, bins
        return best_bins, True

    def _fits(self, b: list[Item]) -> bool:
        return (
            len({it.cls for it in b}) == 1
            and sum(it.weight for it in b) <= self.cap
            and (self.chunk_cap is None or sum(it.chunks for it in b) <= self.chunk_cap)
        )

    def solve_fleet_greedy(self, items: list[Item]) -> tuple[list[list[Item]], bool]:
        """Bring the image furthest over the limit under it, exactly for that image; repeat."""
        current = sorted(items, key=lambda it: it.index)
        origin = {it.index: it for it in items}
        stuck: set[int] = set()
        while True:
            counts = self.counts(current)
            over = [(c - self.limit, -k) for k, c in enumerate(counts) if c > self.limit and k not in stuck]
            if not over:
                break
            image = -max(over)[1]
            mine = [it for it in current if image in it.images]
            bins, _ = self.solve_one(mine, counts[image] - self.limit)
            bins = [b for b in bins if len(b) > 1]
            if not bins:
                stuck.add(image)
                continue
            current = _fold(current, bins)
        # Express the result as bins of the original items.
        bins = []
        for it in current:
            if it.index not in origin or origin[it.index].members != it.members:
                bins.append([origin[i] for i in sorted(origin) if set(origin[i].members) <= set(it.members)])
        return bins, False


def _partitions(n: int):
    """Every set partition of range(n) as restricted growth strings, in lexicographic order."""
    labels = [0] * n

    def rec(i: int, top: int):
        if i == n:
            yield tuple(labels)
            return
        for label in range(top + 2):
            labels[i] = label
            yield from rec(i + 1, max(top, label))

    if n == 0:
        yield ()
        return
    yield from rec(1, 0)


def pack(
    items: list[Item], cap: int, chunk_cap: int | None, budget: int = PACK_NODE_BUDGET
) -> tuple[list[list[Item]], bool, int]:
    """The fewest bins of at most ``cap`` bytes (and ``chunk_cap`` chunks) holding ``items``,
    whether that number is proven minimal, and the search nodes spent (at most ``budget`` beyond
    EXACT_PACK_ITEMS items). Every item fits a bin on its own."""
    if not items:
        return [], True, 0
    order = sorted(items, key=lambda it: (-it.weight, -it.chunks, it.index))
    bins = _first_fit(order, cap, chunk_cap)
    lower = _lower_bound(order, cap, chunk_cap)
    if len(bins) <= lower:
        return bins, True, 0
    limit = None if len(order) <= EXACT_PACK_ITEMS else budget
    better, complete, nodes = _branch_and_bound(order, cap, chunk_cap, len(bins), lower, limit)
    return (better if better is not None else bins), complete, nodes


def _first_fit(order: list[Item], cap: int, chunk_cap: int | None) -> list[list[Item]]:
    bins: list[list[Item]] = []
    loads: list[list[int]] = []
    for it in order:
        for b, (w, c) in enumerate(loads):
            if w + it.weight <= cap and (chunk_cap is None or c + it.chunks <= chunk_cap):
                bins[b].append(it)
                loads[b] = [w + it.weight, c + it.chunks]
                break
        else:
            bins.append([it])
            loads.append([it.weight, it.chunks])
    return bins


def _lower_bound(order: list[Item], cap: int, chunk_cap: int | None) -> int:
    """max(L2 of Martello and Toth on bytes, the chunk volume bound); all thresholds at once."""
    w = np.sort(np.array([it.weight for it in order], dtype=np.int64))
    prefix = np.concatenate(([0], np.cumsum(w)))
    bound = int(-(-prefix[-1] // cap))
    if chunk_cap is not None:
        bound = max(bound, -(-sum(it.chunks for it in order) // chunk_cap))
    half = cap // 2  # w <= cap/2 exactly when w <= cap // 2 for integers
    alphas = np.unique(np.concatenate(([0], w[w <= half])))
    big = np.searchsorted(w, half, "right")  # first weight above cap/2
    top = np.searchsorted(w, cap - alphas, "right")  # first weight above cap - alpha
    low = np.searchsorted(w, alphas, "left")  # first weight >= alpha
    j1 = len(w) - top
    j2 = top - big
    j2_sum = prefix[top] - prefix[big]
    j3_sum = prefix[big] - prefix[low]
    rest = j3_sum - (j2 * cap - j2_sum)
    l2 = j1 + j2 + np.maximum(0, -(-rest // cap))
    return max(bound, int(l2.max()))


def _branch_and_bound(
    order: list[Item], cap: int, chunk_cap: int | None, upper: int, lower: int, budget: int | None
) -> tuple[list[list[Item]] | None, bool, int]:
    """A packing in fewer than ``upper`` bins if one exists (None otherwise), whether the search
    was complete, and its nodes. Items are placed largest first; bins of equal load are tried once."""
    n = len(order)
    rest = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        rest[i] = rest[i + 1] + order[i].weight
    loads: list[int] = []
    chunks: list[int] = []
    where = [0] * n
    best: list[int] | None = None
    best_n = upper
    nodes = 0
    complete = True

    def visit(i: int) -> None:
        nonlocal best, best_n, nodes, complete
        if best_n <= lower or not complete:
            return
        nodes += 1
        if budget is not None and nodes > budget:
            complete = False
            return
        if i == n:
            best, best_n = list(where), len(loads)
            return
        free = len(loads) * cap - sum(loads)
        if len(loads) + max(0, -(-(rest[i] - free) // cap)) >= best_n:
            return
        it = order[i]
        tried = set()
        for b in range(len(loads)):
            if loads[b] + it.weight > cap or (chunk_cap is not None and chunks[b] + it.chunks > chunk_cap):
                continue
            if (loads[b], chunks[b]) in tried:
                continue
            tried.add((loads[b], chunks[b]))
            loads[b] += it.weight
            chunks[b] += it.chunks
            where[i] = b
            visit(i + 1)
            loads[b] -= it.weight
            chunks[b] -= it.chunks
        if len(loads) + 1 < best_n:
            loads.append(it.weight)
            chunks.append(it.chunks)
            where[i] = len(loads) - 1
            visit(i + 1)
            loads.pop()
            chunks.pop()

    visit(0)
    if best is None:
        return None, complete, nodes
    bins: list[list[Item]] = [[] for _ in range(best_n)]
    for it, b in zip(order, best):
        bins[b].append(it)
    return bins, complete, nodes


def _apply(decisions: Decisions, bins: list[list[Item]]) -> Decisions:
    """R's decisions with each bin as one new blob; groups renumbered in target order."""
    folded: dict[int, tuple[int, ...]] = {}  # E index -> members of its new group
    for b in bins:
        members = tuple(sorted(m for it in b for m in it.members))
        for m in members:
            folded[m] = members
    groups: list[tuple[int, tuple[int, ...]]] = []  # (target, members)
    for g in decisions.groups:
        if g.target not in folded:
            groups.append((g.target, g.members))
    for members in dict.fromkeys(folded.values()):
        groups.append((members[0], members))  # a folded blob takes the slot of its lowest index
    groups.sort()
    number = {m: n for n, (_, members) in enumerate(groups) for m in members}
    target_of = {m: t for t, members in groups for m in members}
    size_of = {m: len(members) for _, members in groups for m in members}
    blobs = []
    for d in decisions.blobs:
        if d.index not in number:
            blobs.append(d)
            continue
        if d.index in folded and d.action in KEPT_ACTIONS:
            reason = Reason.MERGE_FOR_COUNT
        elif d.reason == Reason.MERGE_TARGET and target_of[d.index] != d.index:
            reason = Reason.MERGED_INTO
        else:
            reason = d.reason
        action = Action.MERGE if size_of[d.index] > 1 else Action.REBUILD
        blobs.append(replace(d, action=action, reason=reason, group=number[d.index]))
    new_groups = tuple(MergeGroup(n, t, members) for n, (t, members) in enumerate(groups))
    return replace(decisions, blobs=tuple(blobs), groups=new_groups, noop_reason=None)
