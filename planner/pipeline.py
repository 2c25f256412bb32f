"""`compact plan` end to end: read inputs, index them, decide, and describe the result as a Plan.

I/O lives at the edges of this module (bootstrap files, the backend's blob sizes, the store);
the decisions themselves come from the pure ``policy.decide`` / ``layout.layout``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nydus_compact import version
from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.config import BackendConfig
from nydus_compact.backends.errors import BlobNotFoundError
from nydus_compact.rafs.constants import MAX_BLOBS
from nydus_compact.rafs.flags import SuperFlags
from nydus_compact.rafs.loader import bootstrap_sha256, load_bootstrap
from nydus_compact.rafs.model import Bootstrap
from nydus_compact.store.db import Store
from nydus_compact.store.index import index_bootstrap
from nydus_compact.store.plans import READ_RANGE_DTYPE, save_plan

from .config import CompactConfig, canonical_json
from .errors import PlanError, UsageError
from .facts import Facts
from .flags import Flags
from .fleet import Union, referenced_bytes, unite
from .layout import Layout, layout
from .max_blobs import LimitResult, limit_blobs
from .plan import Group, ImageSource, InputFile, InputImage, MaxBlobs, Plan, PlanBlob, Summary, stored_path
from .policy import Decisions, decide
from .vocab import Action, NoopReason, Reason
from .review import relayout

PLAN_PHASES = ("parse", "index", "decide", "write")  # what make_plan tells its progress callback


@dataclass
class PlanInputs:
    bootstraps: list[Path]  # one image, or a fleet sharing a blob store
    chunk_dict: Path | None
    backend_config: BackendConfig
    config: CompactConfig
    flags: Flags
    output: Path | None = None  # new bootstrap path of a single image; default <bootstrap>.compact
    image_sources: list[ImageSource] | None = None  # per bootstrap, when the inputs were image references
    plan_dir: Path = Path(".")  # where the plan file goes: the plan stores paths relative to it


@dataclass
class PlanOutcome:
    plan: Plan
    decisions: Decisions
    layout: Layout
    image_ids: list[int]
    limit: LimitResult | None = None


def default_output(bootstrap: Path) -> Path:
    return bootstrap.with_name(bootstrap.name + ".compact")


def check_dict_compatible(src: Bootstrap, dict_bs: Bootstrap, dict_path: Path) -> None:
    """The chunk dict must describe chunks the source could point at (compact.md §1.4)."""
    problems = []
    if dict_bs.version != src.version:
        problems.append(f"RAFS v{dict_bs.version}, the image is v{src.version}")
    if dict_bs.chunk_size != src.chunk_size:
        problems.append(f"chunk size {dict_bs.chunk_size}, the image has {src.chunk_size}")
    if (dict_bs.flags ^ src.flags) & SuperFlags.EXPLICIT_UID_GID:
        problems.append("a different EXPLICIT_UID_GID flag")
    if src.version == 5 and dict_bs.digester != src.digester:
        problems.append(f"digester {dict_bs.digester.label}, the image uses {src.digester.label}")
    if problems:
        raise PlanError(f"{dict_path}: chunk dict is incompatible with the image: {'; '.join(problems)}")


def observe_sizes(backend: BlobBackend, blob_ids: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Size of every blob the backend has; blobs it cannot find are returned with the reason.

    Only "not found" makes a blob missing: a refusing or unreachable backend is an error.
    """
    sizes: dict[str, int] = {}
    missing: dict[str, str] = {}
    for blob_id in dict.fromkeys(blob_ids):
        try:
            sizes[blob_id] = backend.blob_size(blob_id)
        except BlobNotFoundError as exc:
            missing[blob_id] = str(exc)
    return sizes, missing


def make_plan(
    inputs: PlanInputs, backend: BlobBackend, store: Store, progress: Callable[[str], None] | None = None
) -> PlanOutcome:
    """The plan of ``inputs``; ``progress(phase)`` is told when each of PLAN_PHASES starts."""
    phase = progress or (lambda _: None)
    paths = inputs.bootstraps
    if not paths:
        raise PlanError("no bootstrap given")
    if len({p.resolve() for p in paths}) != len(paths):
        raise PlanError("the same bootstrap is given twice")
    if inputs.output is not None and len(paths) > 1:
        raise PlanError("-O names the output of one image; a fleet plan writes BOOTSTRAP.compact for each")
    phase("parse")
    # Hashing (which releases the GIL) overlaps parsing: the two together cost about the parse alone.
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = [pool.submit(bootstrap_sha256, p) for p in paths]
        sources = [load_bootstrap(p) for p in paths]
        shas = [h.result() for h in hashing]
    check_max_blobs(inputs.config, sources[0].version)
    dict_bs = dict_file = None
    if inputs.chunk_dict is not None:
        dict_bs = load_bootstrap(inputs.chunk_dict)
        check_dict_compatible(sources[0], dict_bs, inputs.chunk_dict)
        dict_file = InputFile(
            stored_path(inputs.chunk_dict, inputs.plan_dir), bootstrap_sha256(inputs.chunk_dict), inputs.chunk_dict.stat().st_size
        )

    phase("index")
    all_ids = [b.blob_id for bs in sources for b in bs.blobs] + ([b.blob_id for b in dict_bs.blobs] if dict_bs else [])
    sizes, missing = observe_sizes(backend, all_ids)
    union = unite(sources, [str(p) for p in paths], sizes, dict_bs)
    observed = {bid: (size, "backend") for bid, size in sizes.items()}
    image_ids = [index_bootstrap(store, p, bs, sha, observed) for p, bs, sha in zip(paths, sources, shas)]
    outputs = [inputs.output or default_output(p) for p in paths]
    images = [
        InputImage(
            path=stored_path(p, inputs.plan_dir),
            sha256=sha,
            size=p.stat().st_size,
            rafs_version=bs.version,
            chunk_size=bs.chunk_size,
            compressor=bs.compressor.label,
            digester=bs.digester.label,
            blob_count=len(bs.blobs),
            output=stored_path(out, inputs.plan_dir),
            image=inputs.image_sources[k] if inputs.image_sources else None,
        )
        for k, (p, bs, sha, out) in enumerate(zip(paths, sources, shas, outputs))
    ]
    # From here on only the union's blob tables and chunk arrays matter: the trees (~1 KB of
    # Python objects per node) would otherwise stay resident through decide and layout.
    del sources, dict_bs
    facts = union.facts
    phase("decide")
    decisions = decide(facts, inputs.config, inputs.flags)
    limit = None
    if inputs.config.max_blobs is not None:
        decisions, limit = limit_blobs(decisions, inputs.config.max_blobs, inputs.config.max_compact_size, union.slices)
        if limit is None:  # R stopped at the layers_to_compact gate: the tables stay as they are
            before = [len(bs) for bs in union.blob_maps]
            limit = LimitResult(inputs.config.max_blobs, tuple(before), tuple(before), 0, True, True)
    result = layout(facts, decisions)
    _check_readable(decisions, result, missing, sizes, facts)

    phase("write")
    header = {
        "tool_version": version(),
        "flags": inputs.flags,
        "config": json.loads(canonical_json(inputs.config)),
        "config_sha256": hashlib.sha256(canonical_json(inputs.config)).hexdigest(),
        "backend": inputs.backend_config.fingerprint(lambda p: stored_path(p, inputs.plan_dir)),
    }
    plan = _describe(header, inputs.flags, images, union, dict_file, decisions, result, sizes, missing, limit)
    plan.base_dir = inputs.plan_dir
    _save_recipe(store, plan, image_ids, inputs, decisions, result)
    return PlanOutcome(plan, decisions, result, image_ids, limit)


def check_max_blobs(cfg: CompactConfig, version: int) -> None:
    """--max-blobs must be a count the image's format can hold."""
    if cfg.max_blobs is not None and cfg.max_blobs > MAX_BLOBS[version]:
        raise UsageError(
            f"--max-blobs {cfg.max_blobs}: a RAFS v{version} blob table holds at most {MAX_BLOBS[version]} blobs"
        )


def limit_findings(limit: LimitResult, images: list[InputImage]) -> list[str]:
    """What a reviewer must know about the limit: images it could not reach, an unproven choice."""
    out = [
        f"max_blobs {limit.limit}: no grouping of compatible blobs within max_compact_size brings {im.path} "
        f"to {limit.limit} blobs; the plan reaches {after}, the nearest it can (from {before})"
        for im, before, after in zip(images, limit.before, limit.after)
        if after > limit.limit
    ]
    if limit.changed and not limit.exact:
        out.append(
            f"max_blobs {limit.limit}: the blobs merged for the count are the cheapest choice found, "
            "not proven the cheapest (see README, --max-blobs)"
        )
    return out


@dataclass
class Rederived:
    """A plan as apply would carry it out: its derived numbers recomputed from its decisions."""

    plan: Plan
    note: str | None = None  # why the numbers are the plan file's own, when they could not be recomputed


def rederive(plan: Plan, recorded_digest: str | None, source: str) -> Rederived:
    """``plan`` with summary, groups, new table, deletable blobs and new indexes recomputed from
    its decisions as apply recomputes them, when it was edited after `compact plan` wrote it.

    A hand-edited plan (a merge turned into a keep, a blob taken out of its group) keeps the
    numbers of the decisions it no longer has; `show`, `report` and `explain` must not repeat
    them. When the inputs are gone or changed, or apply would refuse the decisions, the plan is
    returned as written with a note saying why.
    """
    if recorded_digest is None or recorded_digest == plan.digest or not plan.summary.changes:
        return Rederived(plan)
    for im in plan.images:
        path = plan.locate(im.path)
        if not path.is_file() or bootstrap_sha256(path) != im.sha256:
            return Rederived(plan, f"bootstrap {path} is gone or changed, so its numbers are as the file says")
    if plan.chunk_dict is not None:
        path = plan.locate(plan.chunk_dict.path)
        if not path.is_file() or bootstrap_sha256(path) != plan.chunk_dict.sha256:
            return Rederived(plan, f"chunk dict {path} is gone or changed, so its numbers are as the file says")
    sources = [load_bootstrap(plan.locate(im.path)) for im in plan.images]
    dict_bs = load_bootstrap(plan.locate(plan.chunk_dict.path)) if plan.chunk_dict is not None else None
    try:
        union, decisions, result = relayout(plan, source, sources, dict_bs)
    except PlanError as exc:
        return Rederived(plan, f"apply will refuse it: {exc}")
    sizes = {b.blob_id: b.observed_size for b in plan.blobs if b.observed_size is not None}
    header = {k: getattr(plan, k) for k in ("tool_version", "flags", "config", "config_sha256", "backend")}
    again = _describe(header, plan.flags, plan.images, union, plan.chunk_dict, decisions, result, sizes, {})
    # What the reviewer wrote stays: decisions and reasons, and the plan's findings and candidates.
    return Rederived(
        replace(again, findings=plan.findings, merge_candidates=plan.merge_candidates, max_blobs=plan.max_blobs,
                base_dir=plan.base_dir)
    )


def _check_readable(
    decisions: Decisions, result: Layout, missing: dict[str, str], sizes: dict[str, int], facts: Facts
) -> None:
    """Every blob apply must read has to exist now, with the size its table claims."""
    blobs = _extended_blobs(facts)
    for nb in result.new_blobs:
        for member in nb.members:
            blob = blobs[member]
            if blob.blob_id in missing:
                raise PlanError(f"{missing[blob.blob_id]} (needed to write new blob g{nb.group})")
            have = sizes[blob.blob_id]
            if blob.compressed_size and have != blob.compressed_size:
                raise PlanError(
                    f"blob {blob.blob_id}: backend size {have} differs from the blob table's "
                    f"compressed_size {blob.compressed_size} (needed to write new blob g{nb.group})"
                )


def _extended_blobs(facts: Facts) -> list:
    blobs = list(facts.blobs)
    if facts.chunk_dict is not None:
        seen = {b.blob_id for b in blobs}
        blobs += [b for b in facts.chunk_dict.blobs if b.blob_id not in seen and not seen.add(b.blob_id)]
    return blobs


def _describe(
    header: dict,
    flags: Flags,
    images: list[InputImage],
    union: Union,
    dict_file: InputFile | None,
    decisions: Decisions,
    result: Layout,
    sizes: dict[str, int],
    missing: dict[str, str],
    limit: LimitResult | None = None,
) -> Plan:
    facts = union.facts
    blobs = _extended_blobs(facts)
    n_source = len(facts.blobs)
    used = [referenced_bytes(facts, n_source, start, end) for start, end in union.slices]
    group_name = {g.group: f"g{g.group}" for g in decisions.groups}
    new_index_of_source = {e.source: e.new_index for e in result.table if e.source is not None}
    new_index_of_group = {e.group: e.new_index for e in result.table if e.group is not None}
    by_index = {d.index: d for d in decisions.blobs}

    rows: list[PlanBlob] = []
    for i, blob in enumerate(blobs):
        d = by_index.get(i)
        action = d.action if d else Action.KEEP
        group = group_name.get(d.group) if d and d.group is not None else None
        new_index = new_index_of_source.get(i)
        if new_index is None and d is not None and d.group is not None:
            if any(g.target == i and g.group == d.group for g in decisions.groups):
                new_index = new_index_of_group.get(d.group)
        rows.append(
            PlanBlob(
                index=i,
                blob_id=blob.blob_id,
                origin="image" if i < n_source else "chunk-dict",
                table_size=blob.compressed_size,
                observed_size=sizes.get(blob.blob_id),
                decision=action,
                reason=d.reason if d else Reason.KEEP,
                used_bytes=d.used_bytes if d else 0,
                ratio=d.ratio if d else None,
                size_for_ratio=d.size if d and d.ratio is not None else None,
                size_source=d.size_source if d and d.ratio is not None else None,
                group=group,
                new_index=new_index,
                compressor=blob.compressor.label,
                digester=blob.digester.label,
                features=int(blob.features),
                referenced_by={
                    im.path: int(u[i]) for im, u in zip(images, used) if i < n_source and u[i]
                },
            )
        )

    groups = [
        Group(
            name=f"g{nb.group}",
            target=nb.target,
            members=list(nb.members),
            chunk_count=nb.chunk_count,
            compressed_size=nb.compressed_size,
            uncompressed_size=nb.uncompressed_size,
            read_requests=len(nb.reads),
            new_index=nb.new_index,
        )
        for nb in result.new_blobs
    ]
    new_table = [e.blob_id if e.blob_id is not None else f"new:g{e.group}" for e in result.table]
    changes = not (result.identical and flags.i3_report_no_changes) and result.noop_reason is None
    noop_reason = result.noop_reason or decisions.noop_reason
    # The policy's I3 verdict is a bare "no changes"; the summary line already says that much.
    if not changes and noop_reason in (None, NoopReason.NO_CHANGES):
        noop_reason = NoopReason.IDENTICAL
    size_of = {b.blob_id: sizes.get(b.blob_id, b.compressed_size) for b in blobs}
    findings = [
        f"blob {bid} is not available from the backend ({why}); it is kept, but `compact verify` will fail"
        for bid, why in missing.items()
        if bid not in result.deletable
    ]
    kept = {e.blob_id for e in result.table if e.blob_id is not None} if changes else {b.blob_id for b in facts.blobs}
    findings += [
        f"blob {b.blob_id} is {sizes[b.blob_id]} bytes, shorter than the {b.compressed_size} its blob-table entry "
        "says; it is kept, but its chunks past the end cannot be read (`compact verify` will fail)"
        for b in blobs
        if b.blob_id in kept and b.blob_id in sizes and 0 < b.compressed_size and sizes[b.blob_id] < b.compressed_size
    ]
    if limit is not None:
        findings += limit_findings(limit, images)
    summary = Summary(
        changes=changes,
        noop_reason=None if changes else noop_reason,
        blobs_before=n_source,
        blobs_after=len(result.table) if changes else n_source,
        new_blobs=len(result.new_blobs) if changes else 0,
        bytes_before=sum(size_of[b.blob_id] for b in facts.blobs),
        bytes_to_read=result.bytes_to_read if changes else 0,
        bytes_to_write=result.bytes_to_write if changes else 0,
        reclaimable_bytes=sum(size_of[bid] for bid in result.deletable) if changes else 0,
        occurrences_remapped=result.occurrences_remapped if changes else 0,
    )
    return Plan(
        **header,
        images=images,
        chunk_dict=dict_file,
        summary=summary,
        blobs=rows,
        groups=groups if changes else [],
        new_table=new_table if changes else [b.blob_id for b in facts.blobs],
        deletable=sorted(result.deletable) if changes else [],
        merge_candidates=[(c.index, c.size) for c in decisions.candidates],
        findings=findings,
        max_blobs=None
        if limit is None
        else MaxBlobs(
            limit=limit.limit,
            reached=limit.reached,
            exact=limit.exact,
            blobs_before=list(limit.before),
            blobs_after=list(limit.after),
            extra_bytes=limit.extra_bytes,
        ),
    )


def _save_recipe(
    store: Store, plan: Plan, image_ids: list[int], inputs: PlanInputs, decisions: Decisions, result: Layout
) -> None:
    blob_rows = [
        {
            "e_index": b.index,
            "blob_id": b.blob_id,
            "action": b.decision,
            "reason": b.reason,
            "used_bytes": b.used_bytes,
            "size": b.size_for_ratio if b.size_for_ratio is not None else b.table_size,
            "size_source": b.size_source or "table",
            "ratio": b.ratio,
            "grp": int(b.group[1:]) if b.group else None,
            "new_index": b.new_index,
        }
        for b in plan.blobs
    ]
    new_blobs = [
        {
            "grp": nb.group,
            "new_index": nb.new_index,
            "chunk_count": nb.chunk_count,
            "compressed_size": nb.compressed_size,
            "uncompressed_size": nb.uncompressed_size,
        }
        for nb in result.new_blobs
    ]
    save_plan(
        store,
        plan.digest,
        image_ids,
        canonical_json(inputs.config).decode(),
        json.dumps(inputs.flags.describe(), sort_keys=True),
        blob_rows,
        new_blobs,
        _read_ranges(result),
    )


def _read_ranges(result: Layout) -> np.ndarray:
    """Every new blob's coalesced reads (layout.READ_DTYPE, the store's column names) tagged with its group."""
    rows = np.zeros(sum(len(nb.reads) for nb in result.new_blobs), dtype=READ_RANGE_DTYPE)
    at = 0
    for nb in result.new_blobs:
        part = rows[at : at + len(nb.reads)]
        part["grp"] = nb.group
        for name in nb.reads.dtype.names:
            part[name] = nb.reads[name]
        at += len(nb.reads)
    return rows
