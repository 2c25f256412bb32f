"""Geometry of the HTML report's horizontal bar charts; templates/_chart.svg.j2 draws them.

Only numbers and plain strings leave this module, so every label goes through the HTML
template's autoescaping and no markup is built by string concatenation.
"""

from __future__ import annotations

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


def ratio_chart(plan: PlanView) -> Chart:
    """Share of each source blob that files reference, against the rebuild threshold."""
    bars = []
    for row, b in enumerate(plan.blobs):
        pct = b.used_percent
        value = f"{pct:.1f}% ({b.decision})" if pct is not None else f"n/a ({b.decision})"
        title = f"{b.blob_id}: uses {human_size(b.used_bytes)} of {human_size(b.size)}"
        bars.append(Bar(TOP + row * ROW_HEIGHT, _x(pct or 0.0, 100), _label(b.index, b.blob_id), value, b.decision, title))
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
    """Blob sizes in the table before and after, on one scale."""
    before = plan.image_blobs
    full = max([b.size or 0 for b in before] + [e.size or 0 for e in plan.new_table] + [1])
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
        for label, size, css, title in rows:
            bars.append(Bar(y, _x(size or 0, full), label, human_size(size), css, f"{title}: {human_size(size)}"))
            y += ROW_HEIGHT
    return Chart(
        title="Blob sizes before and after",
        width=LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        height=y + 8,
        bars=bars,
        ticks=[Tick(_x(full * k / 4, full), human_size(int(full * k / 4))) for k in range(5)],
        sections=sections,
    )
