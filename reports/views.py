"""Report data: what a plan decides and what an apply run did, as plain dataclasses.

A ``PlanView`` is built either from a plan file (``plan_view``) or, when only the state store is
at hand, from the plan recipe the planner saved there (``plan_view_from_store``); both go
through ``_assemble`` so the numbers and explanations of a blob never depend on the source.
A ``RunView`` comes from the run and step checkpoints apply wrote. Nothing here formats for a
medium: the templates do that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from nydus_compact.planner.formatting import count_merge_text, human_size
from nydus_compact.planner.plan import Plan
from nydus_compact.planner.planfile import load_plan
from nydus_compact.planner.vocab import KEPT_ACTIONS, NoopReason, Reason
from nydus_compact.store import default_state
from nydus_compact.store.db import Store, open_store
from nydus_compact.store.errors import StoreError
from nydus_compact.store.index import load_blobs, load_image
from nydus_compact.store.plans import load_plan_recipe
from nydus_compact.store.runs import (
    STEP_COMPLETE,
    STEP_DONE,
    STEP_SKIPPED,
    VERIFY_STEP,
    Run,
    Step,
    list_runs,
    steps,
)

from .errors import ReportError


@dataclass(frozen=True)
class Thresholds:
    min_used_ratio: int
    compact_blob_size: int
    max_compact_size: int
    max_blobs: int | None = None  # --max-blobs, when the plan was made with it

    @classmethod
    def from_config(cls, config: dict) -> Thresholds:
        def number(key: str) -> int:
            value = config.get(key, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            number("min_used_ratio"), number("compact_blob_size"), number("max_compact_size"), number("max_blobs") or None
        )


@dataclass
class BlobRow:
    index: int  # position in E: the source table, then chunk-dict blobs
    blob_id: str
    origin: str  # "image" | "chunk-dict"
    decision: str
    reason: str
    used_bytes: int
    size: int | None  # size the ratio is taken against (table or backend size)
    ratio: int | None  # as the policy computed it; None when it did not
    group: str | None
    new_index: int | None
    # Whether some file of the source points into it; None when not known (plans from the store).
    referenced: bool | None = None
    why: str = ""

    @property
    def used_percent(self) -> float | None:
        """Exact share of the blob files reference, for charts (the policy's ratio is truncated)."""
        return self.used_bytes * 100 / self.size if self.size else None


@dataclass
class GroupRow:
    name: str
    target: int
    members: list[int]
    member_ids: list[str]
    new_index: int
    chunk_count: int
    compressed_size: int
    read_requests: int


@dataclass
class TableEntry:
    """One entry of the new blob table."""

    new_index: int
    blob_id: str | None  # kept blob; None for a blob apply writes
    group: str | None
    size: int | None


@dataclass(frozen=True)
class ImageRow:
    """A source image of the plan and its new bootstrap."""

    path: str
    sha256: str
    rafs_version: int
    compressor: str
    digester: str
    output: str | None  # where apply wrote the new bootstrap (else where the plan says it goes), when known


@dataclass
class PlanView:
    digest: str
    source: str  # where the decisions were read from
    image_path: str
    image_sha256: str
    rafs_version: int
    compressor: str
    digester: str
    output: str | None  # bootstrap apply writes, when known
    thresholds: Thresholds
    changes: bool
    noop_reason: str | None
    bytes_to_read: int
    bytes_to_write: int
    blobs: list[BlobRow]
    groups: list[GroupRow]
    new_table: list[TableEntry]
    deletable: list[BlobRow]
    findings: list[str] = field(default_factory=list)
    edited: bool = False  # the plan file's recorded digest differs from its content
    limit_exact: bool = True  # --max-blobs: the blobs merged for the count are proven the cheapest
    images: list[ImageRow] = field(default_factory=list)  # every source image, in plan order

    @property
    def image_blobs(self) -> list[BlobRow]:
        return [b for b in self.blobs if b.origin == "image"]

    @property
    def bytes_before(self) -> int:
        return sum(b.size or 0 for b in self.image_blobs)

    @property
    def bytes_after(self) -> int:
        return sum(e.size or 0 for e in self.new_table)

    @property
    def reclaimable_bytes(self) -> int:
        return sum(b.size or 0 for b in self.deletable)

    def blob(self, blob_id: str) -> BlobRow:
        return next(b for b in self.blobs if b.blob_id == blob_id)

    def group(self, name: str) -> GroupRow | None:
        return next((g for g in self.groups if g.name == name), None)


@dataclass
class StepRow:
    key: str
    status: str
    started: str
    finished: str | None
    seconds: float | None
    bytes: int
    requests: int
    blob_id: str | None
    size: int | None
    sha256: str | None
    inputs: list[str]  # source blob ids a new blob was copied from
    detail: str | None

    @property
    def throughput(self) -> float | None:
        """Bytes per second; None when the step took no measurable time."""
        return self.bytes / self.seconds if self.seconds else None


@dataclass
class RunView:
    id: int
    plan_digest: str
    status: str
    started: str
    finished: str | None
    seconds: float | None
    resumes: int
    outputs: dict[str, str]
    inputs: dict[str, str]
    steps: list[StepRow]
    verification: StepRow | None

    @property
    def reused(self) -> list[StepRow]:
        """Steps an earlier attempt completed and this one only checked."""
        return [s for s in self.steps if s.status == STEP_SKIPPED]

    @property
    def bytes_copied(self) -> int:
        """Bytes copied into new blobs by this run, an earlier attempt's included: a resumed run
        finds those blobs intact (its steps are skipped) but they were copied all the same."""
        return sum(s.bytes for s in self.steps if s.key.startswith("blob:") and s.status in STEP_COMPLETE)

    @property
    def bytes_reused(self) -> int:
        """The part of ``bytes_copied`` an earlier attempt wrote and this one found intact."""
        return sum(s.bytes for s in self.steps if s.key.startswith("blob:") and s.status == STEP_SKIPPED)

    @property
    def incomplete(self) -> list[StepRow]:
        return [s for s in self.steps if s.status not in STEP_COMPLETE]


@dataclass
class Report:
    plan: PlanView | None
    run: RunView | None

    @property
    def images(self) -> list[ImageRow]:
        """The plan's images, each with the new bootstrap the run wrote (e.g. under --output-dir)."""
        rows = self.plan.images if self.plan is not None else []
        if self.run is None:
            return rows
        keys = ["bootstrap"] if len(rows) == 1 else [f"bootstrap:{k}" for k in range(len(rows))]
        return [replace(r, output=self.run.outputs.get(k, r.output)) for r, k in zip(rows, keys)]


# The decision each policy reason belongs to: a reviewer who changes a decision but not its reason
# gets the decision explained, not the stale reason ("merged into new blob None").
_DECISION_OF_REASON = {
    "KEEP": "keep", "KEEP_UNSUPPORTED": "keep", "UNREFERENCED": "delete", "DICT_UNUSED": "delete",
    "REBUILD_RATIO": "rebuild", "MERGE_TARGET": "merge", "MERGED_INTO": "merge", "DICT_KEEP": "dict-keep",
}  # fmt: skip


def why(b: BlobRow, plan: PlanView, candidates: dict[int, int] | None) -> str:
    """The decision of one blob in words, with the numbers and thresholds that made it."""
    if _DECISION_OF_REASON.get(b.reason, b.decision) != b.decision or (b.decision in ("merge", "rebuild") and not b.group):
        group = f" into new blob {b.group}" if b.group else ""
        return f"{b.decision}{group}: set by a reviewer (the reason {b.reason} belongs to another decision)"
    t = plan.thresholds
    used = f"uses {human_size(b.used_bytes)}"
    if b.size:
        used += f" of {human_size(b.size)}" + (f" ({b.ratio}%)" if b.ratio is not None else "")
    g = plan.group(b.group) if b.group else None
    partners = ", ".join(f"[{m}]" for m in g.members if m != b.index) if g else ""
    if b.reason == Reason.UNREFERENCED:
        if b.referenced is None:
            return "the new image needs none of its chunks, so it leaves the blob table"
        if b.referenced:
            return "every chunk files use from it is served by another blob, so it leaves the blob table"
        return "no file references any of its chunks, so it leaves the blob table"
    if b.reason == Reason.KEEP:
        text = f"{used}"
        if t.min_used_ratio and b.ratio is not None:
            text += f", not below min_used_ratio {t.min_used_ratio}%"
        if candidates is not None:
            if b.index in candidates:
                text += f"; smaller than compact_blob_size {human_size(t.compact_blob_size)} but no merge partner fit"
            else:
                text += f"; not smaller than compact_blob_size {human_size(t.compact_blob_size)}, so never merged"
        return text + ": kept as is"
    if b.reason == Reason.REBUILD_RATIO:
        return f"{used}, below min_used_ratio {t.min_used_ratio}%: its used chunks are copied into new blob {b.group}"
    if b.reason == Reason.MERGE_TARGET:
        return (
            f"{used}; merge target of {b.group}: its used chunks and those of {partners or 'no other blob'} "
            f"go into one new blob (at most max_compact_size {human_size(t.max_compact_size)} of used data)"
        )
    if b.reason == Reason.MERGED_INTO:
        target = f" (target [{g.target}])" if g else ""
        return (
            f"{used}; smaller than compact_blob_size {human_size(t.compact_blob_size)}: "
            f"its used chunks are merged into new blob {b.group}{target}"
        )
    if b.reason == Reason.MERGE_FOR_COUNT:
        return f"{used}; {count_merge_text(t.max_blobs, plan.limit_exact)}: its used chunks go into new blob {b.group}"
    if b.reason == Reason.KEEP_UNSUPPORTED:
        return f"{used}; a ZRAN, SEPARATE or inlined-meta blob, whose chunks cannot be copied: kept as is"
    if b.reason == Reason.DICT_KEEP:
        return "chunk-dict blob, kept as is"
    if b.reason == Reason.DICT_UNUSED:
        return "chunk-dict blob no file uses, dropped"
    return f"{b.decision} ({b.reason}, set by a reviewer)"


def _assemble(plan: PlanView, candidates: dict[int, int] | None) -> PlanView:
    for b in plan.blobs:
        b.why = why(b, plan, candidates)
    return plan


def _row_size(size_for_ratio: int | None, observed: int | None, table: int) -> int | None:
    size = size_for_ratio if size_for_ratio is not None else (observed or table)
    return size or None


def plan_view(plan: Plan, source: str, recorded_digest: str | None = None, digest: str | None = None) -> PlanView:
    """The report data of a plan read from a plan file; ``digest`` is the file's own when ``plan``
    is its rederived form (planner.pipeline.rederive)."""
    digest = digest or plan.digest
    rows = [
        BlobRow(
            index=b.index,
            blob_id=b.blob_id,
            origin=b.origin,
            decision=b.decision,
            reason=b.reason,
            used_bytes=b.used_bytes,
            size=_row_size(b.size_for_ratio, b.observed_size, b.table_size),
            ratio=b.ratio,
            group=b.group,
            new_index=b.new_index,
            referenced=bool(b.referenced_by),
        )
        for b in plan.blobs
    ]
    by_index = {r.index: r for r in rows}
    by_id = {r.blob_id: r for r in reversed(rows)}  # first row of an id wins
    groups = [
        GroupRow(
            g.name, g.target, list(g.members), [by_index[m].blob_id for m in g.members if m in by_index],
            g.new_index, g.chunk_count, g.compressed_size, g.read_requests,
        )
        for g in plan.groups
    ]
    group_by_name = {f"new:{g.name}": g for g in groups}
    table = []
    for i, entry in enumerate(plan.new_table):
        if (g := group_by_name.get(entry)) is not None:
            table.append(TableEntry(i, None, g.name, g.compressed_size))
        else:
            kept = by_id.get(entry)
            table.append(TableEntry(i, entry, None, kept.size if kept else None))
    image = plan.images[0] if plan.images else None
    if image is None:
        raise ReportError(f"{source}: the plan names no image")
    view = PlanView(
        digest=digest,
        source=source,
        image_path=str(plan.locate(image.path)),  # stored relative to the plan: shown from here
        image_sha256=image.sha256,
        rafs_version=image.rafs_version,
        compressor=image.compressor,
        digester=image.digester,
        output=str(plan.locate(image.output)),
        thresholds=Thresholds.from_config(plan.config),
        changes=plan.summary.changes,
        noop_reason=plan.summary.noop_reason,
        bytes_to_read=plan.summary.bytes_to_read,
        bytes_to_write=plan.summary.bytes_to_write,
        blobs=rows,
        groups=groups,
        new_table=table,
        deletable=[by_id[d] for d in plan.deletable if d in by_id],
        findings=list(plan.findings),
        images=[
            ImageRow(str(plan.locate(im.path)), im.sha256, im.rafs_version, im.compressor, im.digester, str(plan.locate(im.output)))
            for im in plan.images
        ],
        edited=recorded_digest is not None and recorded_digest != digest,
        limit_exact=plan.max_blobs.exact if plan.max_blobs is not None else True,
    )
    return _assemble(view, dict(plan.merge_candidates))


def plan_view_from_store(store: Store, plan_digest: str) -> PlanView | None:
    """The report data of a plan from the recipe saved in the store (no plan file needed)."""
    recipe = load_plan_recipe(store, plan_digest)
    if recipe is None or not recipe.image_ids:
        return None
    recorded = [load_image(store, image_id) for image_id in recipe.image_ids]
    image = recorded[0]
    # E starts with the images' tables united by blob id; chunk-dict blobs follow.
    n_source = len({b["blob_id"] for image_id in recipe.image_ids for b in load_blobs(store, image_id)})
    try:
        config = json.loads(recipe.config_json)
    except ValueError:
        raise StoreError(f"{store.path}: plan {plan_digest} has a corrupt config") from None
    rows = [
        BlobRow(
            index=r["e_index"],
            blob_id=r["blob_id"],
            origin="image" if r["e_index"] < n_source else "chunk-dict",
            decision=r["action"],
            reason=r["reason"],
            used_bytes=r["used_bytes"],
            size=r["size"] or None,
            ratio=int(r["ratio"]) if r["ratio"] is not None else None,
            group=f"g{r['grp']}" if r["grp"] is not None else None,
            new_index=r["new_index"],
        )
        for r in recipe.blobs
    ]
    reads = recipe.read_ranges
    groups = []
    for nb in recipe.new_blobs:
        name = f"g{nb['grp']}"
        members = [r for r in rows if r.group == name]
        target = next((r.index for r in members if r.new_index == nb["new_index"]), members[0].index if members else -1)
        groups.append(
            GroupRow(
                name, target, [r.index for r in members], [r.blob_id for r in members], nb["new_index"],
                nb["chunk_count"], nb["compressed_size"], int((reads["grp"] == nb["grp"]).sum()),
            )
        )
    kept = [r for r in rows if r.decision in KEPT_ACTIONS and r.new_index is not None]
    table = sorted(
        [TableEntry(r.new_index, r.blob_id, None, r.size) for r in kept]
        + [TableEntry(g.new_index, None, g.name, g.compressed_size) for g in groups],
        key=lambda e: e.new_index,
    )
    kept_ids = {r.blob_id for r in kept}
    deletable: dict[str, BlobRow] = {}
    for r in rows:
        if r.blob_id not in kept_ids:
            deletable.setdefault(r.blob_id, r)
    view = PlanView(
        digest=plan_digest,
        source=f"state {store.path}",
        image_path=image["path"],
        image_sha256=image["sha256"],
        rafs_version=image["version"],
        compressor=image["compressor"],
        digester=image["digester"],
        output=None,
        thresholds=Thresholds.from_config(config if isinstance(config, dict) else {}),
        changes=bool(groups) or bool(deletable),
        noop_reason=None if groups or deletable else NoopReason.RECORDED_PLAN_UNCHANGED,
        bytes_to_read=int(reads["length"].sum()),
        bytes_to_write=sum(g.compressed_size for g in groups),
        blobs=rows,
        groups=groups,
        new_table=table,
        deletable=[deletable[k] for k in sorted(deletable)],
        images=[ImageRow(r["path"], r["sha256"], r["version"], r["compressor"], r["digester"], None) for r in recorded],
    )
    return _assemble(view, None)


def _seconds(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    try:
        return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return None


def select_run(store: Store, plan_digest: str | None, run_id: int | None) -> Run | None:
    """The run ``run_id``, else the latest run of the plan (or of any plan); None if there is none."""
    if run_id is None:
        runs = list_runs(store, plan_digest)
        return runs[-1] if runs else None
    run = next((r for r in list_runs(store) if r.id == run_id), None)
    if run is None:
        raise ReportError(f"{store.path}: no apply run {run_id}")
    if plan_digest is not None and run.plan_digest != plan_digest:
        raise ReportError(f"{store.path}: run {run_id} applied another plan ({run.plan_digest}); drop --run or the plan")
    return run


def _step_row(step: Step, plan: PlanView | None) -> StepRow:
    group = plan.group(step.key.removeprefix("blob:")) if plan and step.key.startswith("blob:") else None
    return StepRow(
        key=step.key,
        status=step.status,
        started=step.started,
        finished=step.finished,
        seconds=_seconds(step.started, step.finished),
        bytes=step.bytes,
        requests=step.requests,
        blob_id=step.blob_id,
        size=step.size,
        sha256=step.sha256,
        inputs=group.member_ids if group else [],
        detail=step.detail,
    )


def run_view(store: Store, run: Run, plan: PlanView | None) -> RunView:
    rows = [_step_row(s, plan) for s in steps(store, run.id).values()]
    return RunView(
        id=run.id,
        plan_digest=run.plan_digest,
        status=run.status,
        started=run.started,
        finished=run.finished,
        seconds=_seconds(run.started, run.finished),
        resumes=run.resumes,
        outputs=dict(sorted(run.outputs.items())),
        inputs=dict(sorted(run.inputs.items())),
        steps=[s for s in rows if s.key != VERIFY_STEP],
        verification=next((s for s in rows if s.key == VERIFY_STEP), None),
    )


@contextmanager
def report_views(
    plan_file: Path | None, state: Path | None, run_id: int | None
) -> Iterator[tuple[PlanView | None, RunView | None, Store | None]]:
    """The plan (from its file, else from the state's latest or chosen run) and that plan's run.

    The store stays open for the caller; it is None when a plan file has no store beside it.
    """
    if plan_file is None:
        if state is None:
            raise ReportError("nothing to report on: give a plan file or --state PATH")
        with open_store(state, create=False) as store:
            run = select_run(store, None, run_id)
            if run is None:
                raise ReportError(f"{state}: no apply run recorded; give the plan file to report on a plan")
            view = plan_view_from_store(store, run.plan_digest)
            yield view, run_view(store, run, view), store
        return
    plan, recorded = load_plan(plan_file)
    shown, note = plan, None
    if recorded is not None and recorded != plan.digest:  # reported as apply will carry it out
        from nydus_compact.planner.pipeline import rederive

        again = rederive(plan, recorded, str(plan_file))
        shown, note = again.plan, again.note
    view = plan_view(shown, f"plan file {plan_file}", recorded, digest=plan.digest)
    if note:
        view.findings.insert(0, f"the plan was edited, but its numbers could not be recomputed: {note}")
    store_path = state or default_state(plan_file)
    if state is None and not store_path.exists():
        if run_id is not None:
            raise ReportError(f"{store_path}: no state store next to the plan; pass --state PATH")
        yield view, None, None
        return
    with open_store(store_path, create=False) as store:
        run = select_run(store, plan.digest, run_id)
        yield view, run_view(store, run, view) if run is not None else None, store
