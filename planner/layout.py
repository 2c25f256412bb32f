"""From decisions to the new blob table, new-blob recipes and chunk relocations (compact.md §1.11).

``layout`` re-validates its input: decisions may come from a plan file a reviewer edited, so
every rule the policy follows by construction is checked again here.

One deviation from literal R: in RAFS v6 a new blob holds each digest once. With offset keys R
would copy a digest that two merged blobs both hold twice, but the v6 chunk-info table keeps one
entry per (digest, blob) (rafs-v6.md §14), so such an image would not load; later copies are
dropped and their occurrences use the first copy in recipe order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from nydus_compact.backends.reads import coalesce_sorted, read_extents
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.constants import BLOCK_SIZE, MAX_BLOBS, MAX_CI_ENTRIES
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.flags import BlobFeatures
from nydus_compact.rafs.model import CHUNK_DTYPE, LOCATION_FIELDS

from .errors import ChunkLostError, PlanError
from .facts import Facts
from .policy import (
    NOT_REWRITABLE,
    Decisions,
    Extended,
    MergeGroup,
    Resolution,
    digest_columns,
    first_equal,
    merge_class,
    resolve,
)
from .vocab import GROUP_ACTIONS, KEPT_ACTIONS, Action

V6_MAX_COFF = 1 << 40  # CI v1 comp_info: 40-bit compressed offset
V6_MAX_UOFF = 1 << 44  # CI v1 uncomp_info: offset bits 12..43

# One chunk of a new blob: where it is read from, and where it lands.
RECIPE_DTYPE = np.dtype(
    [
        ("source", "<u4"),  # E index of the source blob
        ("source_index", "<u4"),
        ("source_offset", "<u8"),  # compressed offset in the source blob
        ("compressed_size", "<u4"),
        ("uncompressed_size", "<u4"),
        ("digest", "V32"),
        ("flags", "<u4"),
        ("occurrence", "<u8"),  # the winning occurrence
        ("index", "<u4"),  # new index in the new blob
        ("compressed_offset", "<u8"),
        ("uncompressed_offset", "<u8"),
    ]
)

# The new location of every occurrence; the rest of its chunk record does not change.
LOCATION_DTYPE = np.dtype([(name, CHUNK_DTYPE.fields[name][0]) for name in LOCATION_FIELDS])

# Coalesced reads: chunks [first, first + count) of the recipe come from one contiguous range.
READ_DTYPE = np.dtype(
    [("source", "<u4"), ("offset", "<u8"), ("length", "<u8"), ("first", "<u8"), ("count", "<u8")]
)


@dataclass(frozen=True, slots=True)
class TableEntry:
    new_index: int
    source: int | None  # E index of a kept blob
    group: int | None  # group of a new blob
    blob_id: str | None  # None for a new blob: known only once its bytes are written


@dataclass(frozen=True, slots=True, eq=False)
class NewBlob:
    group: int
    new_index: int
    target: int
    members: tuple[int, ...]
    compressor: Compressor
    digester: Digester
    features: int
    aligned: bool
    chunks: np.ndarray  # RECIPE_DTYPE in write order
    reads: np.ndarray  # READ_DTYPE, ascending by (source, offset)
    compressed_size: int  # chunk data bytes
    uncompressed_size: int

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    version: int
    table: list[TableEntry]  # the new blob table, in order
    new_blobs: list[NewBlob]  # in table order
    source: np.ndarray  # CHUNK_DTYPE: the occurrences as they are (Facts.chunks, not a copy)
    locations: np.ndarray  # LOCATION_DTYPE: where each occurrence points in the new table
    bytes_to_read: int
    bytes_to_write: int
    reads: int  # read requests after coalescing
    occurrences_remapped: int
    deletable: list[str]  # source blob ids the new table no longer uses (never deleted by apply)
    identical: bool  # the result equals the source (I3 "no changes")
    noop_reason: str | None = None

    @property
    def chunks(self) -> np.ndarray:
        """CHUNK_DTYPE: every occurrence with its new location (a new array on each access)."""
        return self.relocated_chunks(0, len(self.source))

    def without_occurrences(self) -> Layout:
        """This layout without its per-occurrence arrays (``source``, ``locations``): for a caller
        that has taken every relocated record it needs, as large as the chunk table each."""
        return dataclasses.replace(
            self, source=self.source[:0].copy(), locations=np.empty(0, dtype=LOCATION_DTYPE)
        )

    def relocated_chunks(self, start: int, end: int, in_place: bool = False) -> np.ndarray:
        """Occurrences [start, end) with their new locations, without building the whole array.

        ``in_place`` writes the new locations over ``source[start:end]`` and returns that view, for
        a caller done with the source records (apply, writing the new bootstrap): a copy is as
        large as the chunk table. Relocating again gives the same records."""
        out = self.source[start:end] if in_place and self.source.flags.writeable else self.source[start:end].copy()
        for name in LOCATION_FIELDS:
            out[name] = self.locations[name][start:end]
        return out


def layout(facts: Facts, decisions: Decisions, in_place: bool = False) -> Layout:
    """``in_place``: the new locations are written over ``facts.chunks`` and ``locations`` is a view
    of them, for a caller that needs the source records no more (apply: the new blobs are copied
    from the recipes): no second array as long as the occurrences."""
    if decisions.version != facts.version:
        raise PlanError(f"decisions are for RAFS v{decisions.version}, the source is v{facts.version}")
    if decisions.noop_reason is not None:
        return _unchanged(facts, decisions.noop_reason)
    res = decisions.resolution
    if res is None or not res.fits(facts, decisions.flags):
        res = resolve(facts, decisions.flags)
    _validate(res.ext, decisions)

    n_e = len(res.ext.blobs)
    kept_new = np.full(n_e, -1, dtype=np.int64)
    group_new: dict[int, int] = {}
    targets = {g.target: g for g in decisions.groups}
    table: list[TableEntry] = []
    for d in decisions.blobs:  # §1.11 walk: kept blobs and group targets take their turn
        if d.action in KEPT_ACTIONS:
            kept_new[d.index] = len(table)
            table.append(TableEntry(len(table), d.index, None, d.blob_id))
        elif d.index in targets:
            g = targets[d.index]
            group_new[g.group] = len(table)
            table.append(TableEntry(len(table), None, g.group, None))
    limit = MAX_BLOBS[facts.version]
    if len(table) > limit:
        raise PlanError(f"the new blob table would have {len(table)} blobs; RAFS v{facts.version} allows {limit}")

    group_of = np.full(n_e, -1, dtype=np.int64)
    for g in decisions.groups:
        group_of[list(g.members)] = group_new[g.group]
    _check_nothing_lost(res, kept_new, group_of)

    new_blobs, alias = _recipes(facts, res, decisions, group_of, group_new)
    into = facts.chunks if in_place and facts.chunks.flags.writeable else None
    locations, changed = _relocate(res, kept_new, group_of, new_blobs, alias, facts.chunks, into)
    kept_ids = {e.blob_id for e in table if e.blob_id is not None}
    deletable = list(dict.fromkeys(b.blob_id for b in facts.blobs if b.blob_id not in kept_ids))
    source_ids = [b.blob_id for b in facts.blobs]
    return Layout(
        version=facts.version,
        table=table,
        new_blobs=new_blobs,
        source=facts.chunks,
        locations=locations,
        bytes_to_read=sum(int(nb.reads["length"].sum()) for nb in new_blobs),
        bytes_to_write=sum(nb.compressed_size for nb in new_blobs),
        reads=sum(len(nb.reads) for nb in new_blobs),
        occurrences_remapped=int(changed.sum()),
        deletable=deletable,
        identical=not new_blobs and [e.blob_id for e in table] == source_ids and not changed.any(),
    )


def _unchanged(facts: Facts, reason: str) -> Layout:
    """A no-op: the source table and records stay as they are."""
    table = [TableEntry(i, i, None, b.blob_id) for i, b in enumerate(facts.blobs)]
    locations = np.empty(len(facts.chunks), dtype=LOCATION_DTYPE)
    for name in LOCATION_FIELDS:
        locations[name] = facts.chunks[name]
    return Layout(facts.version, table, [], facts.chunks, locations, 0, 0, 0, 0, [], True, reason)


def _validate(ext: Extended, decisions: Decisions) -> None:
    """Decisions must cover E exactly, and groups must agree with the per-blob actions."""
    if len(decisions.blobs) != len(ext.blobs):
        raise PlanError(f"decisions list {len(decisions.blobs)} blobs, the inputs have {len(ext.blobs)}")
    for i, (d, b) in enumerate(zip(decisions.blobs, ext.blobs)):
        if d.index != i or d.blob_id != b.blob_id:
            raise PlanError(f"decision {i} is for blob {d.index} {d.blob_id}, the inputs have {b.blob_id} there")
        if d.action not in tuple(Action):
            raise PlanError(f"blob {d.blob_id}: unknown action {d.action!r}")
        if d.action == Action.DICT_KEEP and not ext.is_dict[i]:
            raise PlanError(f"blob {d.blob_id}: dict-keep, but it is not a chunk-dict blob")
    seen: dict[int, int] = {}
    numbers = set()
    for g in decisions.groups:
        if g.group in numbers:
            raise PlanError(f"group {g.group} is listed twice")
        numbers.add(g.group)
        if g.target not in g.members:
            raise PlanError(f"group {g.group}: target {g.target} is not one of its members")
        for i in g.members:
            if not 0 <= i < len(ext.blobs):
                raise PlanError(f"group {g.group}: member {i} is not a blob index")
            d = decisions.blobs[i]
            if i in seen:
                raise PlanError(f"blob {d.blob_id} is in groups {seen[i]} and {g.group}")
            seen[i] = g.group
            if d.action not in GROUP_ACTIONS:
                state = "deleted" if d.action == Action.DELETE else "kept"
                raise PlanError(f"blob {d.blob_id} is both {state} and in group {g.group}")
            if d.group != g.group:
                raise PlanError(f"blob {d.blob_id} is in group {g.group} but its decision names group {d.group}")
            if ext.is_dict[i]:
                raise PlanError(f"blob {d.blob_id} is a chunk-dict blob and cannot be rebuilt (group {g.group})")
            if ext.blobs[i].features & NOT_REWRITABLE:
                raise PlanError(
                    f"blob {d.blob_id} has features {ext.blobs[i].features:#x} (ZRAN, SEPARATE or inlined meta): "
                    f"its chunks cannot be copied into a new blob (group {g.group})"
                )
        if decisions.flags.i4_compatible_merges_only:
            _check_compatible(ext, g)
    for d in decisions.blobs:
        if d.action in GROUP_ACTIONS and d.index not in seen:
            raise PlanError(f"blob {d.blob_id}: action {d.action} but it is in no group")


def _check_compatible(ext: Extended, g: MergeGroup) -> None:
    want = merge_class(ext.blobs[g.target])
    for i in g.members:
        if merge_class(ext.blobs[i]) != want:
            b, t = ext.blobs[i], ext.blobs[g.target]
            raise PlanError(
                f"group {g.group}: blob {b.blob_id} ({b.compressor.label}, {b.digester.label}, features "
                f"{b.features:#x}) cannot merge with {t.blob_id} ({t.compressor.label}, {t.digester.label}, "
                f"features {t.features:#x})"
            )


def _check_nothing_lost(res: Resolution, kept_new: np.ndarray, group_of: np.ndarray) -> None:
    # Per blob first, then gathered: two per-occurrence int64 gathers set apply's peak RSS.
    lost = np.flatnonzero(((kept_new < 0) & (group_of < 0))[res.home_blob])
    if lost.size:
        o = int(lost[0])
        b = int(res.home_blob[o])
        raise ChunkLostError(res.ext.blobs[b].blob_id, o, int(res.home_coff[o]))


def _recipes(
    facts: Facts, res: Resolution, decisions: Decisions, group_of: np.ndarray, group_new: dict[int, int]
) -> tuple[list[NewBlob], np.ndarray]:
    """Each group's chunks: the winners of its members, by (source E index, offset, digest) (§1.11).

    Also returns, per occurrence position, the winner whose new slot it takes: itself, except for
    a v6 winner dropped as a same-digest copy, which takes the kept copy's; None when no winner
    was dropped (every winner takes its own slot).
    """
    ch = facts.chunks
    w = res.winners[group_of[ch["blob_index"][res.winners]] >= 0]
    wblob = ch["blob_index"][w].astype(np.int64)
    order = np.lexsort([*digest_columns(ch[w])[::-1], ch["compressed_offset"][w], wblob, group_of[wblob]])
    w, new_of_w = w[order], group_of[wblob[order]]

    out = []
    alias: np.ndarray | None = None
    for g in sorted(decisions.groups, key=lambda g: group_new[g.group]):
        new_index = group_new[g.group]
        sel = w[np.searchsorted(new_of_w, new_index, "left") : np.searchsorted(new_of_w, new_index, "right")]
        if facts.version == 6:
            sel, alias = _drop_same_digest(ch, sel, alias, res, f"new blob {new_index} (group {g.group})")
        target = res.ext.blobs[g.target]
        # F5: v6 needs 4 KiB-aligned offsets; v5 keeps the source's alignment.
        aligned = facts.version == 6 or any(res.ext.blobs[i].features & BlobFeatures.ALIGNED for i in g.members)
        recipe, uncompressed_size = _recipe(ch, sel, aligned)
        blob = NewBlob(
            group=g.group,
            new_index=new_index,
            target=g.target,
            members=tuple(sorted(g.members)),
            compressor=target.compressor,
            digester=target.digester,
            features=int(BlobFeatures.CAP_TAR_TOC | (BlobFeatures.ALIGNED if aligned else 0)),
            aligned=aligned,
            chunks=recipe,
            reads=_coalesce(recipe),
            compressed_size=int(recipe["compressed_size"].sum(dtype=np.uint64)),
            uncompressed_size=uncompressed_size,
        )
        _check_limits(facts.version, blob, decisions.flags.i5_chunk_cap)
        out.append(blob)
    return out, alias


def _drop_same_digest(
    ch: np.ndarray, sel: np.ndarray, alias: np.ndarray | None, res: Resolution, where: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The winners ``sel`` (in recipe order) less later copies of a digest, and ``alias`` mapping
    those to the first (made on the first copy dropped: an array as long as the occurrences).

    A copy may only go if it is the same chunk record-wise; otherwise the v6 chunk table cannot
    hold both and the plan is refused.
    """
    first = sel[first_equal(digest_columns(ch[sel]))]
    dropped = first != sel
    if not dropped.any():
        return sel, alias
    copies, kept = sel[dropped], first[dropped]
    for field in ("compressed_size", "uncompressed_size", "flags"):
        bad = np.flatnonzero(ch[field][copies] != ch[field][kept])
        if bad.size:
            a, b = int(kept[bad[0]]), int(copies[bad[0]])
            raise PlanError(
                f"{where}: chunk {bytes(ch['block_id'][a]).hex()} is at {_source_of(ch, res, a)} and at "
                f"{_source_of(ch, res, b)} with a different {field.replace('_', ' ')} "
                f"({int(ch[field][a])} vs {int(ch[field][b])}); the v6 chunk table holds one entry per digest and blob"
            )
    if alias is None:
        alias = np.arange(len(ch), dtype=np.int64)
    alias[copies] = kept
    return sel[~dropped], alias


def _source_of(ch: np.ndarray, res: Resolution, o: int) -> str:
    return f"blob {res.ext.blobs[int(ch['blob_index'][o])].blob_id} compressed offset {int(ch['compressed_offset'][o])}"


def _recipe(ch: np.ndarray, sel: np.ndarray, aligned: bool) -> tuple[np.ndarray, int]:
    """The recipe of the winners ``sel`` in write order, and the new blob's uncompressed size."""
    r = np.zeros(len(sel), dtype=RECIPE_DTYPE)
    r["source"] = ch["blob_index"][sel]
    r["source_index"] = ch["index"][sel]
    r["source_offset"] = ch["compressed_offset"][sel]
    r["compressed_size"] = ch["compressed_size"][sel]
    r["uncompressed_size"] = ch["uncompressed_size"][sel]
    r["digest"] = ch["block_id"][sel]
    r["flags"] = ch["flags"][sel]
    r["occurrence"] = sel
    r["index"] = np.arange(len(sel))
    r["compressed_offset"] = _exclusive_cumsum(r["compressed_size"])
    footprint = r["uncompressed_size"].astype(np.uint64)
    if aligned:
        footprint = (footprint + (BLOCK_SIZE - 1)) // BLOCK_SIZE * BLOCK_SIZE
    r["uncompressed_offset"] = _exclusive_cumsum(footprint)
    return r, int(footprint.sum())


def _exclusive_cumsum(sizes: np.ndarray) -> np.ndarray:
    out = np.zeros(len(sizes), dtype=np.uint64)
    np.cumsum(sizes[:-1], dtype=np.uint64, out=out[1:])
    return out


def _coalesce(recipe: np.ndarray) -> np.ndarray:
    """The reads of each source's runs of adjacent (or overlapping) chunks, at most MAX_READ bytes
    each (or one chunk): the recipe is grouped by source and sorted by offset within a source."""
    if not len(recipe):
        return np.zeros(0, dtype=READ_DTYPE)
    src = recipe["source"]
    start = recipe["source_offset"].astype(np.int64)
    end = start + recipe["compressed_size"]
    bounds = [0, *(np.flatnonzero(src[1:] != src[:-1]) + 1).tolist(), len(recipe)]
    firsts = np.concatenate([lo + coalesce_sorted(start[lo:hi], end[lo:hi]) for lo, hi in zip(bounds, bounds[1:])])
    offsets, lengths, counts = read_extents(start, end, firsts)
    reads = np.zeros(len(firsts), dtype=READ_DTYPE)
    reads["source"] = src[firsts]
    reads["offset"] = offsets
    reads["length"] = lengths
    reads["first"] = firsts
    reads["count"] = counts
    return reads


def _check_limits(version: int, blob: NewBlob, cap: int | None) -> None:
    where = f"new blob {blob.new_index} (group {blob.group})"
    if cap is not None and blob.chunk_count > cap:
        raise PlanError(f"{where}: {blob.chunk_count} chunks, more than the cap of {cap} (I5)")
    if version == 6:
        if blob.chunk_count > MAX_CI_ENTRIES:
            raise PlanError(f"{where}: {blob.chunk_count} chunks; v6 chunk indexes are 24-bit")
        if blob.compressed_size > V6_MAX_COFF or blob.uncompressed_size > V6_MAX_UOFF:
            raise PlanError(f"{where}: {blob.compressed_size} bytes exceed the v6 chunk-info v1 offset limits")


def _relocate(
    res: Resolution,
    kept_new: np.ndarray,
    group_of: np.ndarray,
    new_blobs: list[NewBlob],
    alias: np.ndarray | None,
    source: np.ndarray,
    into: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every occurrence moves with its home chunk: a kept blob's new index, or its winner's new slot.

    Returns the new locations (written over ``into``'s location fields if given, which may be
    ``source`` itself) and which occurrences they change against ``source``.
    """
    moved = np.flatnonzero((group_of >= 0)[res.home_blob])
    slots = np.zeros(0, dtype=LOCATION_DTYPE)
    slot = np.zeros(0, dtype=np.int64)
    if new_blobs:
        # The new slot of every winner a group copies, looked up by its occurrence position.
        occ = np.concatenate([nb.chunks["occurrence"] for nb in new_blobs])
        slots = np.empty(len(occ), dtype=LOCATION_DTYPE)
        slots["blob_index"] = np.repeat([nb.new_index for nb in new_blobs], [nb.chunk_count for nb in new_blobs])
        for name in ("index", "compressed_offset", "uncompressed_offset"):
            slots[name] = np.concatenate([nb.chunks[name] for nb in new_blobs])
        w = res.winner[moved]  # never -1: dict blobs cannot be in a group
        if alias is not None:
            w = alias[w]
        # A table by occurrence, not a search: w is as long as the moved occurrences.
        by_occ = np.full(int(occ.max()) + 1 if len(occ) else 0, -1, dtype=np.int32)
        by_occ[occ] = np.arange(len(occ), dtype=np.int32)
        slot = by_occ[w]
        del w, by_occ
        if len(slot) and int(slot.min()) < 0:
            raise AssertionError("a moved occurrence's winner is in no new blob's recipe")
    out = np.empty(len(res.home_blob), dtype=LOCATION_DTYPE) if into is None else into[list(LOCATION_FIELDS)]
    changed = np.zeros(len(res.home_blob), dtype=bool)
    homes = {"index": res.home_index, "compressed_offset": res.home_coff, "uncompressed_offset": res.home_uoff}
    # A column at a time, every row first as if its home blob were kept, then the moved rows (and
    # _check_nothing_lost: every row is one of them): no gathered copies of whole rows, and the
    # source column is compared before it may be overwritten.
    for name in LOCATION_FIELDS:
        home = np.maximum(kept_new, 0).astype(np.uint32)[res.home_blob] if name == "blob_index" else homes[name]
        new_moved = slots[name][slot]
        diff = home != source[name]
        diff[moved] = new_moved != source[name][moved]
        changed |= diff
        out[name] = home
        out[name][moved] = new_moved
        del home, new_moved, diff
    return out, changed
