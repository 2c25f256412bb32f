"""The compaction policy: reference semantics R of compact.md §1.15 as a pure function.

``decide`` turns Facts into per-blob Decisions (keep, delete, rebuild, merge); ``planner.layout``
turns Decisions into the new blob table and chunk relocations. Everything is vectorised over the
occurrence array: no Python object per occurrence, and every order is explicit.

One deliberate reading of R: an occurrence follows the physical chunk it points at after the
dedup/dict redirect (its "home"). R relocates through ``occ_by_key``, which gives the same result
whenever R is well defined, and would otherwise mix a kept blob's index with a new blob's offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nydus_compact.rafs.constants import MAX_EXTENDED_BLOBS
from nydus_compact.rafs.flags import BlobFeatures
from nydus_compact.rafs.model import CHUNK_DTYPE

from .config import CompactConfig
from .errors import PlanError
from .facts import DictFacts, Facts, SourceBlob
from .flags import Flags
from .vocab import KEPT_ACTIONS, Action, NoopReason, Reason

# Blobs whose chunks are not plain payloads stored back to back in the blob itself: ZRAN and
# SEPARATE chunks live in (or are decoded through) another object, INLINED_FS_META blobs carry a
# bootstrap. Copying their "compressed" ranges would write garbage, so they are never rewritten
# (compact.md §3.1 "blob kinds not handled"); this holds in every mode, upstream-oracle included.
NOT_REWRITABLE = BlobFeatures.ZRAN | BlobFeatures.SEPARATE | BlobFeatures.INLINED_FS_META

# Features that change how a blob's chunk bytes are addressed; I4 never merges across them.
MERGE_CLASS_FEATURES = (
    BlobFeatures.ZRAN | BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.SEPARATE | BlobFeatures.INLINED_FS_META
)


@dataclass(frozen=True, slots=True)
class BlobDecision:
    """What happens to E[index], and the numbers behind it."""

    index: int
    blob_id: str
    action: Action
    reason: Reason
    used_bytes: int  # compressed bytes of the chunks this blob won (set.total before any merge)
    used_chunks: int
    size: int  # the ratio's denominator
    size_source: str  # "table" or "backend"
    ratio: int | None  # used ratio in percent; None when the blob is not Original
    threshold: int  # min_used_ratio
    group: int | None = None  # the new blob this one is written into


@dataclass(frozen=True, slots=True)
class MergeGroup:
    """One new blob: ``members`` in E-index order; it takes the table slot of ``target``."""

    group: int
    target: int
    members: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Candidate:
    index: int
    size: int  # the size the greedy merge sorted by (§1.9)


@dataclass(frozen=True, slots=True)
class Decisions:
    version: int
    flags: Flags
    blobs: tuple[BlobDecision, ...]  # one per E index; empty when the gate stopped the run
    groups: tuple[MergeGroup, ...]  # in target order, i.e. new-table order
    candidates: tuple[Candidate, ...]  # merge candidates in sorted order, for audit
    noop_reason: str | None = None
    # What ``decide`` resolved, so that ``layout`` need not resolve the same facts again.
    # Not part of the decisions proper: hand-edited or re-read decisions come without it.
    resolution: Resolution | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class Extended:
    """E: the source blob table followed by the dict blobs it lacks (§1.4)."""

    blobs: list[SourceBlob]
    n_source: int
    real: np.ndarray  # dict inner blob index -> E index
    is_dict: np.ndarray  # bool per E index


@dataclass(frozen=True, slots=True, eq=False)
class Resolution:
    """Where every occurrence points after the dict redirect and the dedup (§1.5)."""

    facts: Facts  # what was resolved: the result belongs to this very object
    v6_key: str  # the only flag the resolution depends on
    ext: Extended
    home_blob: np.ndarray  # E index
    home_index: np.ndarray
    home_coff: np.ndarray
    home_uoff: np.ndarray
    winner: np.ndarray  # position of the occurrence whose chunk it uses; -1 if homed in a dict blob
    winners: np.ndarray  # ascending positions of the winning occurrences (one per key)

    def fits(self, facts: Facts, flags: Flags) -> bool:
        return self.facts is facts and self.v6_key == flags.v6_key


def extend(facts: Facts) -> Extended:
    blobs = list(facts.blobs)
    first_by_id: dict[str, int] = {}
    for i, b in enumerate(blobs):
        first_by_id.setdefault(b.blob_id, i)
    real: list[int] = []
    for db in facts.chunk_dict.blobs if facts.chunk_dict else []:
        j = first_by_id.get(db.blob_id)
        if j is None:
            j = first_by_id[db.blob_id] = len(blobs)
            blobs.append(db)
        real.append(j)
    if len(blobs) > MAX_EXTENDED_BLOBS:
        raise PlanError(
            f"too many blobs: the source table and chunk dict together have {len(blobs)}, "
            f"at most {MAX_EXTENDED_BLOBS} are supported"
        )
    is_dict = np.zeros(len(blobs), dtype=bool)
    is_dict[real] = True
    return Extended(blobs, len(facts.blobs), np.asarray(real, dtype=np.int64), is_dict)


def digest_columns(chunks: np.ndarray) -> list[np.ndarray]:
    """The 32-byte digests as four big-endian u64 columns (byte order = numeric order).

    The columns are strided views into ``chunks`` (a copy only if it is not contiguous): a million
    occurrences would otherwise cost 32 MB per call.
    """
    rows = np.ascontiguousarray(chunks).view(np.uint8).reshape(len(chunks), CHUNK_DTYPE.itemsize)
    start = CHUNK_DTYPE.fields["block_id"][1]
    words = rows[:, start : start + 32].view(">u8")
    return [words[:, k] for k in range(4)]


def first_equal(columns: list[np.ndarray]) -> np.ndarray:
    """For each row, the position of the first row with the same key (columns, most significant first)."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    # Sorting by the leading column alone is enough when rows that tie on it tie on every column,
    # as digests that share their first 8 bytes do. An unstable sort is 5 times faster than a
    # stable one; the first row of a key is then the smallest position in its run.
    order = np.argsort(columns[0], kind="quicksort")
    same = _same_as_previous(columns[0], order)
    for c in columns[1:]:
        # Some pair of adjacent rows in a run differs in c exactly when any two rows of it do.
        if np.any(same & ~_same_as_previous(c, order)):
            order = np.lexsort(columns[::-1])
            same = np.logical_and.reduce([_same_as_previous(c, order) for c in columns])
            break
    starts = np.flatnonzero(np.concatenate(([True], ~same)))  # runs of one key, in sorted order
    first = np.empty(n, dtype=np.int32)  # a 2 GiB bootstrap holds < 2^28 occurrences
    first[order] = np.repeat(np.minimum.reduceat(order, starts).astype(np.int32), np.diff(starts, append=n))
    return first


def _same_as_previous(column: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per sorted row after the first: does it equal the row before it?"""
    s = column[order]
    return s[1:] == s[:-1]


def resolve(facts: Facts, flags: Flags) -> Resolution:
    """Apply §1.5 to all occurrences at once: dict redirects (F1, F2) and first-seen winners per key."""
    ext = extend(facts)
    ch = facts.chunks
    outside = np.flatnonzero(ch["blob_index"] >= ext.n_source)
    if outside.size:
        o = int(outside[0])
        raise PlanError(
            f"occurrence {o}: blob_index {ch['blob_index'][o]} is outside the blob table ({ext.n_source} blobs)"
        )
    blob = ch["blob_index"].astype(np.int16)  # E has at most MAX_EXTENDED_BLOBS blobs
    processed = ~ext.is_dict[blob]  # F1
    digests = digest_columns(ch)

    hit = np.zeros(len(ch), dtype=bool)
    pos = dpos = np.zeros(0, dtype=np.int64)
    if facts.chunk_dict is not None:
        pos, dpos = _dict_hits(facts.chunk_dict, ch, digests, np.flatnonzero(processed))
        _require_same_sizes(ch, pos, facts.chunk_dict.chunks, dpos, "the chunk dict")
        hit[pos] = True

    contenders = np.flatnonzero(processed & ~hit)
    del processed
    if facts.version == 6 and flags.v6_key == "offset":
        keys = _location_keys(blob, ch["compressed_offset"])
    else:
        keys = digests
    if len(contenders) < len(ch):
        keys = [c[contenders] for c in keys]
    winner = np.full(len(ch), -1, dtype=np.int32)  # a 2 GiB bootstrap holds < 2^28 occurrences
    winner[contenders] = contenders[first_equal(keys)]
    del keys, digests
    # The homes are made only now, after the sort above: the peak holds one set of large arrays less.
    home_blob = blob.copy()
    home_index = ch["index"].copy()
    home_coff = ch["compressed_offset"].copy()
    home_uoff = ch["uncompressed_offset"].copy()
    if len(pos):
        dch = facts.chunk_dict.chunks
        home_blob[pos] = ext.real[dch["blob_index"][dpos]]  # F2
        home_index[pos] = dch["index"][dpos]
        home_coff[pos] = dch["compressed_offset"][dpos]
        home_uoff[pos] = dch["uncompressed_offset"][dpos]
    del pos, dpos, hit
    won = winner[contenders] == contenders
    winners, followers = contenders[won], contenders[~won]
    del contenders, won
    w = winner[followers]
    _require_same_sizes(ch, followers, ch, w, "its first occurrence")
    home_blob[followers] = blob[w]
    home_index[followers] = home_index[w]
    home_coff[followers] = home_coff[w]
    home_uoff[followers] = home_uoff[w]
    return Resolution(facts, flags.v6_key, ext, home_blob, home_index, home_coff, home_uoff, winner, winners)


def _location_keys(blob: np.ndarray, coff: np.ndarray) -> list[np.ndarray]:
    """v6 offset keys (blob, compressed offset), packed in one column when the offsets allow."""
    if len(coff) and int(coff.max()) >= 1 << 56:
        return [blob, coff]
    return [(blob.astype(np.uint64) << np.uint64(56)) | coff]


def _dict_hits(
    cd: DictFacts, ch: np.ndarray, digests: list[np.ndarray], candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(occurrence positions, dict chunk positions) of dict lookups that hit (§1.4).

    The dict map keeps the first chunk per digest; a hit also needs that chunk's uncompressed
    size to be 0 or equal to the occurrence's.
    """
    inner = cd.chunks["blob_index"].astype(np.int64)
    bad = np.flatnonzero(inner >= len(cd.blobs))
    if bad.size:
        raise PlanError(
            f"chunk dict: chunk {int(bad[0])} has blob_index {inner[bad[0]]}, "
            f"outside its blob table ({len(cd.blobs)} blobs)"
        )
    usable = np.arange(len(cd.chunks))
    if cd.digester is not None:
        same = np.array([b.digester == cd.digester for b in cd.blobs], dtype=bool)
        usable = usable[same[inner]]
    ddig = digest_columns(cd.chunks[usable])
    # Dict chunks first: the first equal row of an occurrence is then the dict's first chunk.
    first = first_equal([np.concatenate([d, o[candidates]]) for d, o in zip(ddig, digests)])[len(usable) :]
    found = first < len(usable)
    pos, dpos = candidates[found], usable[first[found]]
    dusz = cd.chunks["uncompressed_size"][dpos]
    ok = (dusz == 0) | (dusz == ch["uncompressed_size"][pos])
    return pos[ok], dpos[ok]


# The two sizes of a chunk record are adjacent u32 fields: one u64 compares both with one gather.
_SIZES = np.dtype({"names": ["sizes"], "formats": ["<u8"], "offsets": [CHUNK_DTYPE.fields["compressed_size"][1]],
                   "itemsize": CHUNK_DTYPE.itemsize})  # fmt: skip
assert CHUNK_DTYPE.fields["uncompressed_size"][1] == CHUNK_DTYPE.fields["compressed_size"][1] + 4
_BLOCK = 1 << 18  # rows per block of a check that gathers columns


def _require_same_sizes(ch: np.ndarray, pos: np.ndarray, src: np.ndarray, src_pos: np.ndarray, what: str) -> None:
    """A redirect keeps the occurrence's sizes, so they must equal those of the chunk it now uses."""
    ch_sizes, src_sizes = ch.view(_SIZES)["sizes"], src.view(_SIZES)["sizes"]
    # In blocks: at 1M occurrences the gathers of whole columns were apply's peak RSS.
    if not any(
        np.any(ch_sizes[pos[k : k + _BLOCK]] != src_sizes[src_pos[k : k + _BLOCK]]) for k in range(0, len(pos), _BLOCK)
    ):
        return
    for name in ("compressed_size", "uncompressed_size"):
        bad = np.flatnonzero(ch[name][pos] != src[name][src_pos])
        if bad.size:
            k = int(bad[0])
            o = int(pos[k])
            raise PlanError(
                f"chunk {bytes(ch['block_id'][o]).hex()}: different {name.replace('_', ' ')}: "
                f"occurrence {o} has {int(ch[name][o])}, {what} has {int(src[name][src_pos[k]])}"
            )


@dataclass(slots=True)
class _State:
    kind: str  # ORIGINAL, REBUILD, DICT, DELETE
    reason: Reason
    total: int  # set.total of the chunks this blob won (before any merge)
    count: int
    size: int
    size_source: str
    ratio: int | None = None
    merged_into: int | None = None


def decide(facts: Facts, cfg: CompactConfig, flags: Flags, resolution: Resolution | None = None) -> Decisions:
    """Per-blob decisions of R (with the I-flags in ``flags``) for ``facts`` under ``cfg``.

    ``resolution``: one made earlier for the same facts and flags, reused (it does not depend on
    ``cfg``: a search over thresholds resolves once)."""
    n_e = len(extend(facts).blobs)
    # §1.10: checked before any chunk is looked at. A table over the --max-blobs limit is
    # compacted whatever layers_to_compact says: the limit is the stronger request.
    over_limit = cfg.max_blobs is not None and n_e > cfg.max_blobs
    if n_e < cfg.layers_to_compact and not over_limit:
        reason = f"{n_e} blob{'' if n_e == 1 else 's'}, fewer than layers_to_compact {cfg.layers_to_compact}"
        return Decisions(facts.version, flags, (), (), (), reason)
    res = resolution if resolution is not None and resolution.fits(facts, flags) else resolve(facts, flags)
    E = res.ext.blobs

    ch = facts.chunks
    wblob = ch["blob_index"][res.winners].astype(np.int64)
    totals = np.zeros(len(E), dtype=np.int64)
    np.add.at(totals, wblob, ch["compressed_size"][res.winners].astype(np.int64))
    counts = np.bincount(wblob, minlength=len(E))
    referenced = np.bincount(res.home_blob, minlength=len(E)) > 0

    states = [
        _initial_state(b, res.ext.is_dict[i], bool(referenced[i]), int(totals[i]), int(counts[i]), cfg, flags)
        for i, b in enumerate(E)
    ]
    candidates = _merge_candidates(E, states, cfg)
    _greedy_merge(E, states, candidates, cfg, flags)
    blobs, groups = _finish(E, states, cfg)

    noop = None
    if all(d.action == Action.DELETE for d in blobs):
        noop = NoopReason.EMPTY_TABLE
    elif flags.i3_report_no_changes and _unchanged(facts, res, blobs):
        noop = NoopReason.NO_CHANGES
    return Decisions(facts.version, flags, tuple(blobs), tuple(groups), tuple(candidates), noop, res)


def _initial_state(
    b: SourceBlob, is_dict: bool, referenced: bool, total: int, count: int, cfg: CompactConfig, flags: Flags
) -> _State:
    """States after §1.5–§1.8: DICT, DELETE (unreferenced), or ORIGINAL/REBUILD by used ratio."""
    if is_dict:
        if flags.i1_drop_unused_dict_blobs and not referenced:
            return _State("DELETE", Reason.DICT_UNUSED, total, count, b.compressed_size, "table")
        return _State("DICT", Reason.DICT_KEEP, total, count, b.compressed_size, "table")
    if count == 0:
        return _State("DELETE", Reason.UNREFERENCED, total, count, b.compressed_size, "table")
    size, source = b.compressed_size, "table"
    if size == 0:
        if b.observed_size is None or b.observed_size <= 0:  # F7: never divide by zero
            seen = "no backend size is known"
            if b.observed_size is not None:
                seen = f"the backend reports {b.observed_size} bytes"
            raise PlanError(f"blob {b.blob_id}: size 0 in the blob table and {seen}; cannot compute its used ratio")
        size, source = b.observed_size, "backend"
    ratio = total * 100 // size
    if flags.ratio_u8_wrap:
        ratio %= 256
    if b.features & NOT_REWRITABLE:
        return _State("ORIGINAL", Reason.KEEP_UNSUPPORTED, total, count, size, source, ratio)
    kind, reason = ("REBUILD", Reason.REBUILD_RATIO) if ratio < cfg.min_used_ratio else ("ORIGINAL", Reason.KEEP)
    return _State(kind, reason, total, count, size, source, ratio)


def _merge_candidates(E: list[SourceBlob], states: list[_State], cfg: CompactConfig) -> list[Candidate]:
    """§1.9: Original blobs by table size (referenced bytes if 0), Rebuild blobs by referenced bytes."""
    cand = []
    for i, s in enumerate(states):
        if s.reason == Reason.KEEP_UNSUPPORTED:
            continue
        if s.kind == "ORIGINAL":
            cand.append(Candidate(i, E[i].compressed_size or s.total))
        elif s.kind == "REBUILD":
            cand.append(Candidate(i, s.total))
    return [c for c in sorted(cand, key=lambda c: c.size) if c.size < cfg.compact_blob_size]


def _greedy_merge(
    E: list[SourceBlob], states: list[_State], candidates: list[Candidate], cfg: CompactConfig, flags: Flags
) -> None:
    """§1.9 pseudocode; with I4 once per compatibility class, classes in order of their first candidate."""
    runs: dict[tuple[int, ...], list[int]] = {}
    for c in candidates:
        runs.setdefault(merge_class(E[c.index]) if flags.i4_compatible_merges_only else (), []).append(c.index)
    cap = flags.i5_chunk_cap
    for run in runs.values():
        target = run[0]
        # The target's current set: its own chunks plus everything merged into it so far.
        total, count = states[target].total, states[target].count
        for i in run[1:]:
            s = states[i]
            if total + s.total <= cfg.max_compact_size and (cap is None or count + s.count <= cap):
                states[target].kind = "REBUILD"  # F6
                total, count = total + s.total, count + s.count
                s.kind, s.merged_into = "DELETE", target
            else:
                target, total, count = i, s.total, s.count


def merge_class(b: SourceBlob) -> tuple[int, ...]:
    """I4: blobs merge only within one (compressor, digester, addressing features) class."""
    return (int(b.compressor), int(b.digester), int(b.features & MERGE_CLASS_FEATURES))


def _finish(
    E: list[SourceBlob], states: list[_State], cfg: CompactConfig
) -> tuple[list[BlobDecision], list[MergeGroup]]:
    """Groups (one per new blob, numbered in target order) and the per-blob decisions."""
    members: dict[int, list[int]] = {}
    for i, s in enumerate(states):
        if s.kind == "REBUILD":
            members.setdefault(i, []).append(i)
        elif s.merged_into is not None:
            members.setdefault(s.merged_into, []).append(i)
    groups = [MergeGroup(g, t, tuple(sorted(m))) for g, (t, m) in enumerate(sorted(members.items()))]
    group_of = {i: g for g in groups for i in g.members}
    blobs = []
    for i, s in enumerate(states):
        g = group_of.get(i)
        if g is None:
            action = {"ORIGINAL": Action.KEEP, "DICT": Action.DICT_KEEP, "DELETE": Action.DELETE}[s.kind]
            reason = s.reason
        elif len(g.members) == 1:
            action, reason = Action.REBUILD, Reason.REBUILD_RATIO
        else:
            action, reason = Action.MERGE, Reason.MERGE_TARGET if i == g.target else Reason.MERGED_INTO
        blobs.append(
            BlobDecision(
                index=i,
                blob_id=E[i].blob_id,
                action=action,
                reason=reason,
                used_bytes=s.total,
                used_chunks=s.count,
                size=s.size,
                size_source=s.size_source,
                ratio=s.ratio,
                threshold=cfg.min_used_ratio,
                group=None if g is None else g.group,
            )
        )
    return blobs, groups


def _unchanged(facts: Facts, res: Resolution, blobs: list[BlobDecision]) -> bool:
    """I3: every E blob is a source blob kept in place and no occurrence was redirected."""
    ch = facts.chunks
    return (
        res.ext.n_source == len(blobs)
        and all(d.action in KEPT_ACTIONS for d in blobs)
        and bool(np.array_equal(res.home_blob, ch["blob_index"]))
        and bool(np.array_equal(res.home_index, ch["index"]))
        and bool(np.array_equal(res.home_coff, ch["compressed_offset"]))
        and bool(np.array_equal(res.home_uoff, ch["uncompressed_offset"]))
    )
