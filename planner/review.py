"""Turning a (possibly hand-edited) plan file back into Decisions the layout step re-validates."""

from __future__ import annotations

import bisect

from nydus_compact.rafs.model import Bootstrap

from .errors import ChunkLostError, PlanError, PlanFileError
from .fleet import Union, unite
from .layout import Layout, layout
from .plan import Plan
from .policy import BlobDecision, Candidate, Decisions, MergeGroup
from .vocab import NoopReason


def group_number(name: str, key: str, source: str) -> int:
    if not (name.startswith("g") and name[1:].isdigit()):
        raise PlanFileError(f"{source}: {key}: group names look like g0, g1, ..., got {name!r}")
    return int(name[1:])


def decisions_from_plan(plan: Plan, source: str) -> Decisions:
    """The authoritative part of a plan: flags, per-blob actions and groups."""
    flags = plan.flags
    version = plan.images[0].rafs_version if plan.images else 0
    if not plan.summary.changes:
        return Decisions(version, flags, (), (), (), plan.summary.noop_reason or NoopReason.NO_CHANGES_PLANNED)
    blobs = []
    for i, b in enumerate(plan.blobs):
        if b.index != i:
            raise PlanFileError(f"{source}: blobs[{i}].index: expected {i}, got {b.index}")
        group = group_number(b.group, f"blobs[{i}].group", source) if b.group is not None else None
        blobs.append(
            BlobDecision(
                index=i,
                blob_id=b.blob_id,
                action=b.decision,
                reason=b.reason,
                used_bytes=b.used_bytes,
                used_chunks=0,
                size=b.size_for_ratio or 0,
                size_source=b.size_source or "table",
                ratio=b.ratio,
                threshold=int(plan.config.get("min_used_ratio", 0) or 0),
                group=group,
            )
        )
    groups = []
    for k, g in enumerate(plan.groups):
        members = tuple(sorted(g.members))
        groups.append(MergeGroup(group_number(g.name, f"groups[{k}].name", source), g.target, members))
    groups.sort(key=lambda g: g.target)
    candidates = tuple(Candidate(i, s) for i, s in plan.merge_candidates)
    return Decisions(version, flags, tuple(blobs), tuple(groups), candidates, None)


def path_of_occurrence(bs: Bootstrap, occurrence: int) -> str:
    """The path of a file whose chunk list holds ``occurrence`` (for error messages)."""
    starts = [(n.chunk_start, pos) for pos, n in enumerate(bs.nodes) if n.chunk_count]
    starts.sort()
    i = bisect.bisect_right(starts, (occurrence, len(bs.nodes))) - 1
    if i >= 0:
        node = bs.nodes[starts[i][1]]
        if node.chunk_start <= occurrence < node.chunk_start + node.chunk_count:
            return node.path.decode("utf-8", "backslashreplace")
    return f"<occurrence {occurrence}>"


def explain_lost(exc: ChunkLostError, bs: Bootstrap, source: str) -> PlanFileError:
    return PlanFileError(
        f"{source}: rejected: blob {exc.blob_id} would be gone, but {path_of_occurrence(bs, exc.occurrence)} "
        f"needs its chunk at compressed offset {exc.compressed_offset}; keep the blob or put it in a group"
    )


def relayout(
    plan: Plan, source: str, images: list[Bootstrap], chunk_dict: Bootstrap | None, in_place: bool = False
) -> tuple[Union, Decisions, Layout]:
    """The recipe of the plan's (possibly hand-edited) decisions over ``images``, as apply computes
    it; a PlanError (naming the blob and the file) for decisions under which a chunk is lost.
    ``in_place``: see ``layout`` (the images' chunk records then hold the new locations)."""
    observed = {b.blob_id: b.observed_size for b in plan.blobs if b.observed_size is not None}
    union = unite(images, [im.path for im in plan.images], observed, chunk_dict)
    decisions = decisions_from_plan(plan, source)
    try:
        result = layout(union.facts, decisions, in_place)
    except ChunkLostError as exc:
        k = next(k for k, (start, end) in enumerate(union.slices) if start <= exc.occurrence < end)
        local = ChunkLostError(exc.blob_id, exc.occurrence - union.slices[k][0], exc.compressed_offset)
        raise explain_lost(local, images[k], source) from None
    except PlanError as exc:
        raise PlanError(f"{source}: rejected: {exc}") from None
    return union, decisions, result
