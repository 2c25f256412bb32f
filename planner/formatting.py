"""Sizes and the one-line plan summary as people read them (plan file, `show`, reports, `gc`).

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


def summary_line(plan: Plan) -> str:
    s = plan.summary
    if not s.changes:
        return f"No changes: {s.noop_reason}."
    return (
        f"{s.blobs_before} blobs -> {s.blobs_after} ({s.new_blobs} new); "
        f"read {human_size(s.bytes_to_read)}, write {human_size(s.bytes_to_write)}, "
        f"reclaimable {human_size(s.reclaimable_bytes)}."
    )
