"""The words of a plan, defined once: what happens to a blob (``Action``), why (``Reason``), and why
a plan changes nothing (``NoopReason``).

They are ``StrEnum``s, so they compare equal to, hash like and serialise as their plain strings
(JSON, the plan template); ``plain`` turns them into ``str`` where a serialiser insists on exact
types (``yaml.safe_dump``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """A blob's decision; a reviewer may edit it in the plan file ("merge" needs a group)."""

    KEEP = "keep"
    DELETE = "delete"
    REBUILD = "rebuild"
    MERGE = "merge"
    DICT_KEEP = "dict-keep"


KEPT_ACTIONS = frozenset({Action.KEEP, Action.DICT_KEEP})  # the blob stays in the new table as it is
GROUP_ACTIONS = frozenset({Action.REBUILD, Action.MERGE})  # the blob's chunks go into a new blob


class Reason(StrEnum):
    """Why the policy chose a blob's action (compact.md §1.5–§1.9)."""

    KEEP = "KEEP"
    KEEP_UNSUPPORTED = "KEEP_UNSUPPORTED"  # ZRAN, SEPARATE or inlined meta: never rewritten
    UNREFERENCED = "UNREFERENCED"
    DICT_KEEP = "DICT_KEEP"
    DICT_UNUSED = "DICT_UNUSED"  # I1
    REBUILD_RATIO = "REBUILD_RATIO"
    MERGE_TARGET = "MERGE_TARGET"
    MERGED_INTO = "MERGED_INTO"
    MERGE_FOR_COUNT = "MERGE_FOR_COUNT"  # --max-blobs: merged so the new table fits the limit


class NoopReason(StrEnum):
    """Why a plan changes nothing (besides "fewer than layers_to_compact", which carries numbers)."""

    NO_CHANGES = "no changes"  # I3: the decisions keep every blob in place
    EMPTY_TABLE = "the new blob table would be empty"
    IDENTICAL = "the compacted image would equal the source"
    NO_CHANGES_PLANNED = "no changes planned"  # a reviewed plan that decides nothing
    RECORDED_PLAN_UNCHANGED = "the recorded plan changes nothing"


def plain(value: Any) -> Any:
    """``value`` with every enum member (in dicts, lists and tuples too) as its plain ``str``."""
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value
