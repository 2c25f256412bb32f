"""`compact explain`: why one blob is kept, rebuilt, merged or deleted, and which files hold it.

For a fleet plan (several images sharing a blob store) the files are answered per image: which
images use the blob, how many bytes each (the plan's ``referenced_by``), and each one's top files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nydus_compact.planner.plan import Plan
from nydus_compact.planner.formatting import human_size, plural
from nydus_compact.planner.vocab import KEPT_ACTIONS
from nydus_compact.store.db import Store
from nydus_compact.store.index import find_image, load_blobs, load_image, nodes_referencing
from nydus_compact.store.plans import load_plan_recipe

from .errors import ReportError
from .views import BlobRow, PlanView, RunView

MIN_PREFIX = 8


@dataclass(frozen=True)
class PlanImage:
    """A source image of a plan and the compressed bytes it uses per blob id (None: not recorded)."""

    path: str
    sha256: str
    used: dict[str, int] | None


@dataclass
class ImageUse:
    """How one image of a fleet uses the explained blob."""

    path: str
    used_bytes: int | None  # None: the plan file is not at hand
    files: list[tuple[str, int]] | None  # None: the image is not in the content index


@dataclass
class Explanation:
    blob: BlobRow
    plan: PlanView
    files: list[tuple[str, int]] | None  # None: no content index to ask
    top: int
    run: RunView | None = None
    # Fleet plans only: the images that use the blob, in plan order, out of ``fleet_size``.
    images: list[ImageUse] = field(default_factory=list)
    fleet_size: int = 1


def plan_images(plan: Plan) -> list[PlanImage]:
    """The plan's images with the bytes each uses of every blob (its ``referenced_by`` columns),
    named by paths usable from here (the plan stores them relative to itself)."""
    used: dict[str, dict[str, int]] = {im.path: {} for im in plan.images}
    for b in plan.blobs:
        for path, n in b.referenced_by.items():
            if path in used:
                used[path][b.blob_id] = n
    return [PlanImage(str(plan.locate(im.path)), im.sha256, used[im.path]) for im in plan.images]


def recorded_images(store: Store, plan_digest: str) -> list[PlanImage]:
    """The images of a plan recorded in the store (without a plan file: bytes per image unknown)."""
    recipe = load_plan_recipe(store, plan_digest)
    if recipe is None:
        return []
    rows = [load_image(store, image_id) for image_id in recipe.image_ids]
    return [PlanImage(row["path"], row["sha256"], None) for row in rows]


def find_blob(plan: PlanView, query: str) -> BlobRow:
    """The blob whose id is ``query`` or starts with it (at least MIN_PREFIX characters, unique)."""
    query = query.strip().lower()
    exact = [b for b in plan.blobs if b.blob_id.lower() == query]
    if exact:
        return exact[0]
    if len(query) < MIN_PREFIX:
        raise ReportError(f"{query!r}: give at least {MIN_PREFIX} characters of the blob id")
    ids = {b.blob_id: b for b in reversed(plan.blobs) if b.blob_id.lower().startswith(query)}
    if not ids:
        raise ReportError(f"{query}: no such blob in plan {plan.digest} ({plan.source})")
    if len(ids) > 1:
        raise ReportError(f"{query}: ambiguous, matches {len(ids)} blobs ({', '.join(sorted(i[:16] for i in ids))})")
    return next(iter(ids.values()))


@dataclass
class NewBlobExplanation:
    """A blob the plan makes: its group, the source blobs it is made from, and what apply wrote."""

    group: GroupRow
    plan: PlanView
    sources: list[BlobRow]
    step: StepRow | None  # the apply step that wrote it, when a run is at hand
    run: RunView | None


def find_new_blob(plan: PlanView, run: RunView | None, query: str) -> NewBlobExplanation | None:
    """The new blob ``query`` names (its group, ``new:g0``, or the id apply gave it), when it names
    no source blob: a source blob of the same id (a rebuild that changed nothing) wins."""
    query = query.strip().lower()
    if any(b.blob_id.lower().startswith(query) for b in plan.blobs) and len(query) >= MIN_PREFIX:
        return None
    steps = {s.key.removeprefix("blob:"): s for s in run.steps if s.key.startswith("blob:")} if run else {}
    for g in plan.groups:
        step = steps.get(g.name)
        written = step.blob_id.lower() if step is not None and step.blob_id else None
        if query in (g.name, f"new:{g.name}") or (
            written and (written == query or (len(query) >= MIN_PREFIX and written.startswith(query)))
        ):
            by_index = {b.index: b for b in plan.blobs}
            sources = [by_index[m] for m in g.members if m in by_index]
            return NewBlobExplanation(g, plan, sources, step, run)
    return None


def render_new_blob(e: NewBlobExplanation) -> str:
    g, plan = e.group, e.plan
    written = (
        f"written by apply run {e.run.id} ({human_size(e.step.size)}, sha256 {e.step.sha256})"
        if e.step is not None and e.step.blob_id and e.run is not None
        else "not written yet (apply the plan)"
    )
    lines = [
        f"blob {e.step.blob_id if e.step is not None and e.step.blob_id else 'new:' + g.name}",
        f"  new blob    {g.name}, made by the plan: a new blob, not one of the source blobs",
        f"  plan        {plan.digest} ({plan.source})",
        f"  index       [{g.new_index}] of the new blob table, in the turn of source blob [{g.target}]",
        f"  holds       {plural(g.chunk_count, 'chunk')}, {human_size(g.compressed_size)} of data, "
        f"read in {plural(g.read_requests, 'request')}",
        f"  apply       {written}",
        f"made from the used chunks of {plural(len(e.sources), 'source blob')}:",
    ]
    for b in e.sources:
        lines.append(f"  [{b.index}] {b.blob_id}  {b.decision} ({b.reason}): {b.why}")
    lines.append("files: see `compact explain` of each source blob above")
    return "\n".join(lines)


def referencing_files(store: Store, image_id: int, blob_id: str, top: int) -> list[tuple[str, int]]:
    """Up to ``top`` files whose chunks live in ``blob_id``, largest share first."""
    table = load_blobs(store, image_id)
    index = next((row["blob_index"] for row in table if row["blob_id"] == blob_id), None)
    if index is None:  # a chunk-dict blob the image's own table lacks: no file of the image uses it
        return []
    return [(path.decode("utf-8", "backslashreplace"), int(n)) for path, n in nodes_referencing(store, image_id, index, top)]


def _image_files(store: Store | None, sha256: str, blob_id: str, top: int) -> list[tuple[str, int]] | None:
    image_id = find_image(store, sha256) if store is not None else None
    return referencing_files(store, image_id, blob_id, top) if image_id is not None else None


def explain(
    plan: PlanView,
    query: str,
    store: Store | None,
    top: int,
    run: RunView | None = None,
    images: list[PlanImage] | None = None,
) -> Explanation:
    """Everything `compact explain` says about the blob ``query`` names; files come from the
    content index in ``store`` (None, or an image never indexed there: files unknown).

    With several ``images`` (a fleet plan) the files are answered per image that uses the blob."""
    blob = find_blob(plan, query)
    if images is None or len(images) <= 1:
        return Explanation(blob, plan, _image_files(store, plan.image_sha256, blob.blob_id, top), top, run)
    uses = []
    for im in images:
        used = im.used.get(blob.blob_id, 0) if im.used is not None else None
        files = _image_files(store, im.sha256, blob.blob_id, top) if used != 0 else []
        if used or (used is None and files != []):
            uses.append(ImageUse(im.path, used, files))
    return Explanation(blob, plan, None, top, run, uses, len(images))


def _after(e: Explanation) -> str:
    b, plan = e.blob, e.plan
    deletable = any(d.blob_id == b.blob_id for d in plan.deletable)
    if b.decision in KEPT_ACTIONS and not deletable:
        where = f" at index {b.new_index}" if b.new_index is not None else ""
        if e.fleet_size > 1:
            return f"stays in the new table of the fleet{where}, and in each using image's own table"
        return f"stays in the blob table{where}"
    text = ""
    g = plan.group(b.group) if b.group else None
    if g is not None:
        members = ", ".join(f"[{m}]" for m in g.members)
        text = (
            f"its used chunks move to new blob {g.name} at index {g.new_index} "
            f"({human_size(g.compressed_size)} of data, {plural(g.chunk_count, 'chunk')} from {members})"
        )
        step = next((s for s in e.run.steps if s.key == f"blob:{g.name}"), None) if e.run else None
        if step is not None and step.blob_id:
            text += f", written as {step.blob_id} ({human_size(step.size)}) by apply run {e.run.id}"
        text += "; "
    if deletable:
        text += f"the blob itself is deletable ({human_size(b.size)} reclaimable; see `compact gc`)"
    return text.rstrip("; ")


def render_explanation(e: Explanation) -> str:
    b, plan, t = e.blob, e.plan, e.plan.thresholds
    origin = "source table" if b.origin == "image" else "chunk dict"
    ratio = f"{b.ratio}%" if b.ratio is not None else "-"
    where = plan.image_path if e.fleet_size == 1 else f"a fleet of {e.fleet_size} images (their tables united)"
    lines = [
        f"blob {b.blob_id}",
        f"  index       [{b.index}] of the {origin} of {where}",
        f"  plan        {plan.digest} ({plan.source})",
        f"  decision    {b.decision} ({b.reason}){' -> ' + b.group if b.group else ''}",
        f"  why         {b.why}",
        f"  numbers     size {human_size(b.size)}, used {human_size(b.used_bytes)} ({b.used_bytes} bytes), ratio {ratio}; "
        f"min_used_ratio {t.min_used_ratio}%, compact_blob_size {human_size(t.compact_blob_size)}, "
        f"max_compact_size {human_size(t.max_compact_size)}" + (f", max_blobs {t.max_blobs}" if t.max_blobs else ""),
        f"  after apply {_after(e)}",
    ]
    if e.fleet_size > 1:
        lines += _render_images(e)
    elif e.files is None:
        lines.append("files: unknown (no content index in the state store; run `compact plan` to build it)")
    elif not e.files:
        lines.append("files: none of the image's files reference its chunks")
    else:
        lines.append(f"files referencing its chunks (top {e.top} by bytes):")
        lines += _render_files(e.files, "  ")
    return "\n".join(lines)


def _render_files(files: list[tuple[str, int]], indent: str) -> list[str]:
    return [f"{indent}{human_size(n):>10}  {path}" for path, n in files]


def _render_images(e: Explanation) -> list[str]:
    if not e.images:
        return [f"images: none of the {e.fleet_size} images references its chunks"]
    lines = [f"images using its chunks ({len(e.images)} of {e.fleet_size}; top {plural(e.top, 'file')} of each by bytes):"]
    for im in e.images:
        if im.used_bytes is None:
            lines.append(f"  {im.path}: uses its chunks (bytes per image: see the plan file)")
        else:
            lines.append(f"  {im.path}: uses {human_size(im.used_bytes)} ({im.used_bytes} bytes)")
        if im.files is None:
            lines.append("    files: unknown (the image is not in the content index; run `compact plan` to build it)")
        else:
            lines += _render_files(im.files, "    ")
    return lines
