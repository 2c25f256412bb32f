"""Geometry of the HTML report's horizontal bar charts; templates/_chart.svg.j2 draws them.

Only numbers and plain strings leave this module, so every label goes through the HTML
template's autoescaping and no markup is built by string concatenation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from nydus_compact.planner.formatting import human_size, plural

from .views import PlanView

LABEL_WIDTH = 200  # text left of the bars
PLOT_WIDTH = 440  # the full-scale bar
VALUE_WIDTH = 150  # the number right of a bar
ROW_HEIGHT = 22
BAR_HEIGHT = 14
TOP = 30  # room for tick labels
SECTION_HEIGHT = 24
# Past this many rows a chart draws the largest blobs one by one and sums up the rest in one row.
MAX_ROWS = 40


@dataclass(frozen=True)
class Bar:
    y: float
    width: float
    label: str
    value: str
    css: str  # decision (or "new"), used for the colour
    title: str  # tooltip with the full blob id


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Section:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: float
    bars: list[Bar]
    ticks: list[Tick]
    sections: list[Section]
    threshold_x: float | None = None
    threshold_label: str = ""
    label_width: int = LABEL_WIDTH
    plot_width: int = PLOT_WIDTH
    bar_height: int = BAR_HEIGHT
    top: int = TOP


def _x(value: float, full: float) -> float:
    return 0.0 if full <= 0 else min(value, full) * PLOT_WIDTH / full


def _label(index: int, blob_id: str) -> str:
    return f"[{index}] {blob_id[:12]}"


def size_scale(largest: int) -> tuple[int, int]:
    """(step, steps) of a size axis: the smallest round step (1, 2 or 5 × 10^k of B, KiB, MiB, ...)
    that covers ``largest`` in at most five steps, so every tick reads as a round number."""
    unit = 1
    while largest >= 2048 * unit and unit < 1 << 40:
        unit *= 1024
    scale = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * scale * unit
            steps = max(1, -(-largest // step))
            if steps <= 5:
                return step, steps
        scale *= 10


def tick_label(n: int) -> str:
    """A tick's size in the largest binary unit it is a whole number of (500 KiB, 1000 KiB, 2 MiB)."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return human_size(n) if n >= 1024 else f"{n} B"


def _shown(rows: list, size) -> tuple[list, list]:
    """Rows to draw one by one and rows to fold into one: past MAX_ROWS, the largest MAX_ROWS - 1
    (in their table order) are drawn and the rest are summed up in a last row."""
    if len(rows) <= MAX_ROWS:
        return rows, []
    largest = set(sorted(range(len(rows)), key=lambda i: (-(size(rows[i]) or 0), i))[: MAX_ROWS - 1])
    return [r for i, r in enumerate(rows) if i in largest], [r for i, r in enumerate(rows) if i not in largest]


def ratio_chart(plan: PlanView) -> Chart:
    """Share of each source blob that files reference, against the rebuild threshold."""
    shown, rest = _shown(plan.blobs, lambda b: b.size)
    bars = []
    for row, b in enumerate(shown):
        pct = b.used_percent
        value = f"{pct:.1f}% ({b.decision})" if pct is not None else f"n/a ({b.decision})"
        title = f"{b.blob_id}: uses {human_size(b.used_bytes)} of {human_size(b.size)}"
        bars.append(Bar(TOP + row * ROW_HEIGHT, _x(pct or 0.0, 100), _label(b.index, b.blob_id), value, b.decision, title))
    if rest:
        used, size = sum(b.used_bytes for b in rest), sum(b.size or 0 for b in rest)
        pct = used * 100 / size if size else 0.0
        decisions = ", ".join(f"{n} {d}" for d, n in sorted(Counter(b.decision for b in rest).items()))
        bars.append(Bar(TOP + len(shown) * ROW_HEIGHT, _x(pct, 100), f"{len(rest)} smaller blobs", f"{pct:.1f}% in all",
                        "rest", f"{plural(len(rest), 'smaller blob')} ({decisions}): use {human_size(used)} of {human_size(size)}"))
    t = plan.thresholds.min_used_ratio
    return Chart(
        title="Used ratio per blob",
        width=LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        height=TOP + len(bars) * ROW_HEIGHT + 24,  # room for the threshold label
        bars=bars,
        ticks=[Tick(_x(p, 100), f"{p}%") for p in (0, 25, 50, 75, 100)],
        sections=[],
        threshold_x=_x(t, 100) if t else None,
        threshold_label=f"min_used_ratio {t}%",
    )


def size_chart(plan: PlanView) -> Chart:
    """Blob sizes in the table before and after, on one round scale."""
    before = plan.image_blobs
    step, steps = size_scale(max([b.size or 0 for b in before] + [e.size or 0 for e in plan.new_table] + [1]))
    full = step * steps
    bars: list[Bar] = []
    sections: list[Section] = []
    y = float(TOP)
    panels = (
        (f"before: {plural(len(before), 'blob')}, {human_size(plan.bytes_before)}",
         [(_label(b.index, b.blob_id), b.size, b.decision, b.blob_id) for b in before]),
        (f"after: {plural(len(plan.new_table), 'blob')}, {human_size(plan.bytes_after)}",
         [(f"[{e.new_index}] new {e.group}", e.size, "new", f"new blob {e.group}") if e.blob_id is None
          else (_label(e.new_index, e.blob_id), e.size, "keep", e.blob_id) for e in plan.new_table]),
    )
    for heading, rows in panels:
        sections.append(Section(y + 12, heading))
        y += SECTION_HEIGHT
        shown, rest = _shown(rows, lambda r: r[1])
        for label, size, css, title in shown:
            bars.append(Bar(y, _x(size or 0, full), label, human_size(size), css, f"{title}: {human_size(size)}"))
            y += ROW_HEIGHT
        if rest:
            total = sum(r[1] or 0 for r in rest)
            mean = total // len(rest)
            bars.append(Bar(y, _x(mean, full), f"{len(rest)} smaller blobs", f"{human_size(total)} in all", "rest",
                            f"{plural(len(rest), 'smaller blob')}: {human_size(total)} in all, {human_size(mean)} on average"))
            y += ROW_HEIGHT
    return Chart(
        title="Blob sizes before and after",
        width=LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        height=y + 8,
        bars=bars,
        ticks=[Tick(_x(k * step, full), tick_label(k * step)) for k in range(steps + 1)],
        sections=sections,
    )
