"""Jinja2 templates of the plan file and reports (package data), and the one environment that loads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def environment(filters: dict[str, Callable[..., Any]], *, autoescape: bool, trim_blocks: bool) -> jinja2.Environment:
    """An environment over this package's templates: strict (an undefined name is an error), newlines kept.

    ``trim_blocks`` (with ``lstrip_blocks``) suits the reports' block layout; the plan template
    controls its whitespace itself. jinja2 is imported here, by the commands that render.
    """
    import jinja2
    from importlib import resources

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files(__name__).joinpath(name).read_text()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=autoescape,
        trim_blocks=trim_blocks,
        lstrip_blocks=trim_blocks,
    )
    env.filters.update(filters)
    return env
