"""Sizes, the one-line plan summary and the --max-blobs wording as people read them (plan file,
`show`, reports, `explain`, `gc`).

Kept free of heavy imports: `compact show` and the reports use it without loading YAML or jinja.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Plan


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` with the noun in the number it takes: 1 new blob, 2 new blobs, 0 new blobs."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def summary_line(plan: Plan) -> str:
    s = plan.summary
    if not s.changes:
        return f"No changes: {s.noop_reason}."
    return (
        f"{plural(s.blobs_before, 'blob')} -> {s.blobs_after} ({s.new_blobs} new); "
        f"read {human_size(s.bytes_to_read)}, write {human_size(s.bytes_to_write)}, "
        f"reclaimable {human_size(s.reclaimable_bytes)}."
    )


def count_merge_text(limit: int | None, exact: bool = True) -> str:
    """Why a blob R would keep is merged under --max-blobs (plan comments, show, reports, explain)."""
    under = f"under {limit} blobs" if limit is not None else "under the --max-blobs limit"
    cheapest = "this was the cheapest choice" if exact else "this was the cheapest choice found (not proven optimal)"
    return f"merged to bring the image {under}; {cheapest}"


def limit_line(plan: Plan) -> str | None:
    """What --max-blobs did, in one line; None for plans made without it."""
    m = plan.max_blobs
    if m is None:
        return None
    before, after = max(m.blobs_before, default=0), max(m.blobs_after, default=0)
    if before <= m.limit:
        return f"max-blobs {m.limit}: already met ({before} blobs after the size rules); nothing more merged."
    text = f"max-blobs {m.limit}: {before} blobs after the size rules -> {after}; {human_size(m.extra_bytes)} more rewritten"
    if not m.reached:
        return text + f" (no grouping reaches {m.limit}; this is the nearest count)."
    return text + f" ({count_merge_text(m.limit, m.exact)})."
