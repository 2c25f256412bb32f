"""Rendering reports with the jinja2 templates in templates/ (Markdown and self-contained HTML)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nydus_compact.planner.formatting import human_size, plural
from nydus_compact.templates import environment

from .charts import ratio_chart, size_chart
from .views import Report

if TYPE_CHECKING:
    import jinja2

FORMATS = ("md", "html")
_PLAIN = re.compile(r"[0-9A-Za-z:._/+-]+")
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~"})


def md(value: object) -> str:
    """Text safe inside a Markdown table cell: no markup, no HTML, no line breaks."""
    return " ".join(str(value).split()).translate(_MD_SPECIAL)


def code(value: object) -> str:
    """An identifier as a code span when it is plainly one, else escaped text."""
    text = str(value)
    return f"`{text}`" if _PLAIN.fullmatch(text) else md(text)


def rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{human_size(int(bytes_per_second))}/s"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _environment(autoescape: bool) -> jinja2.Environment:
    filters = dict(
        human=human_size,
        plural=plural,
        md=md,
        code=code,
        rate=rate,
        seconds=seconds,
        num=lambda v: f"{v:.1f}",
        short=lambda v: (v or "-")[:12],
    )
    return environment(filters, autoescape=autoescape, trim_blocks=True)


def render_report(report: Report, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}")
    charts = []
    if fmt == "html" and report.plan is not None:
        charts = [ratio_chart(report.plan), size_chart(report.plan)]
    template = _environment(autoescape=fmt == "html").get_template(f"report.{fmt}.j2")
    return template.render(plan=report.plan, run=report.run, images=report.images, charts=charts)
