"""`compact explain`: why one blob is kept, rebuilt, merged or deleted, and which files hold it."""

from __future__ import annotations

from dataclasses import dataclass

from planner.planfile import human_size
from store.db import Store
from store.index import find_image, load_blobs, nodes_referencing

from .errors import ReportError
from .views import KEPT_ACTIONS, BlobRow, PlanView, RunView

MIN_PREFIX = 8


@dataclass
class Explanation:
    blob: BlobRow
    plan: PlanView
    files: list[tuple[str, int]] | None  # None: no content index to ask
    top: int
    run: RunView | None = None


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


def referencing_files(store: Store, image_id: int, blob_id: str, top: int) -> list[tuple[str, int]]:
    """Up to ``top`` files whose chunks live in ``blob_id``, largest share first."""
    table = load_blobs(store, image_id)
    index = next((row["blob_index"] for row in table if row["blob_id"] == blob_id), None)
    if index is None:  # a chunk-dict blob the image's own table lacks: no file of the image uses it
        return []
    return [(path.decode("utf-8", "backslashreplace"), int(n)) for path, n in nodes_referencing(store, image_id, index, top)]


def explain(plan: PlanView, query: str, store: Store | None, top: int, run: RunView | None = None) -> Explanation:
    """Everything `compact explain` says about the blob ``query`` names; files come from the
    content index in ``store`` (None, or an image never indexed there: files unknown)."""
    blob = find_blob(plan, query)
    image_id = find_image(store, plan.image_sha256) if store is not None else None
    files = referencing_files(store, image_id, blob.blob_id, top) if image_id is not None else None
    return Explanation(blob, plan, files, top, run)


def _after(e: Explanation) -> str:
    b, plan = e.blob, e.plan
    deletable = any(d.blob_id == b.blob_id for d in plan.deletable)
    if b.decision in KEPT_ACTIONS and not deletable:
        where = f" at index {b.new_index}" if b.new_index is not None else ""
        return f"stays in the blob table{where}"
    text = ""
    g = plan.group(b.group) if b.group else None
    if g is not None:
        members = ", ".join(f"[{m}]" for m in g.members)
        text = (
            f"its used chunks move to new blob {g.name} at index {g.new_index} "
            f"({human_size(g.compressed_size)} of data, {g.chunk_count} chunks from {members})"
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
    lines = [
        f"blob {b.blob_id}",
        f"  index       [{b.index}] of the {origin} of {plan.image_path}",
        f"  plan        {plan.digest} ({plan.source})",
        f"  decision    {b.decision} ({b.reason}){' -> ' + b.group if b.group else ''}",
        f"  why         {b.why}",
        f"  numbers     size {human_size(b.size)}, used {human_size(b.used_bytes)} ({b.used_bytes} bytes), ratio {ratio}; "
        f"min_used_ratio {t.min_used_ratio}%, compact_blob_size {human_size(t.compact_blob_size)}, "
        f"max_compact_size {human_size(t.max_compact_size)}",
        f"  after apply {_after(e)}",
    ]
    if e.files is None:
        lines.append("files: unknown (no content index in the state store; run `compact plan` to build it)")
    elif not e.files:
        lines.append("files: none of the image's files reference its chunks")
    else:
        lines.append(f"files referencing its chunks (top {e.top} by bytes):")
        lines += [f"  {human_size(n):>10}  {path}" for path, n in e.files]
    return "\n".join(lines)
