"""Plan recipes: what the planner decided, in a form apply can stream.

A plan is stored once per ``plan_digest`` (the sha256 of its canonical body), so saving the
same plan again is a no-op. Read ranges may be given as a numpy structured array
(``READ_RANGE_DTYPE``, or any array carrying those field names) or as an iterable of
mappings/tuples in table column order; they are loaded back as an array.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from .db import BATCH_ROWS, Store, column_values, quote, select_sql
from .errors import StoreError
from .schema import COLUMNS

# A new blob's coalesced reads: planner.layout.READ_DTYPE's fields (same names), plus the group.
READ_RANGE_DTYPE = np.dtype(
    [("grp", "<u4"), ("source", "<u4"), ("offset", "<u8"), ("length", "<u8"), ("first", "<u8"), ("count", "<u8")]
)

RowsLike = np.ndarray | Iterable[Mapping[str, Any] | Sequence[Any]]


@dataclass(frozen=True)
class PlanRecipe:
    plan_id: int
    plan_digest: str
    image_ids: list[int]
    created: str
    config_json: str
    flags_json: str
    blobs: list[dict[str, Any]]  # plan_blobs rows, by e_index
    new_blobs: list[dict[str, Any]]  # new_blobs rows, by grp
    read_ranges: np.ndarray  # READ_RANGE_DTYPE, by (grp, first)


def _payload_columns(table: str) -> tuple[str, ...]:
    return COLUMNS[table][1:]  # every recipe table starts with plan_id


def _rows(plan_id: int, columns: Sequence[str], data: RowsLike) -> Iterator[tuple]:
    if isinstance(data, np.ndarray):
        missing = [c for c in columns if c not in (data.dtype.names or ())]
        if missing:
            raise ValueError(f"recipe array lacks fields {missing}")
        for lo in range(0, len(data), BATCH_ROWS):
            part = data[lo : lo + BATCH_ROWS]
            yield from zip(repeat(plan_id), *(column_values(part, c) for c in columns))
        return
    for row in data:
        if isinstance(row, Mapping):
            yield (plan_id, *(row[c] for c in columns))
        elif len(row) == len(columns):
            yield (plan_id, *row)
        else:
            raise ValueError(f"recipe row has {len(row)} values, expected {len(columns)} ({', '.join(columns)})")


def _find_plan(store: Store, plan_digest: str) -> dict[str, Any] | None:
    rows = store.fetch_dicts(select_sql("plans", COLUMNS["plans"], '"plan_digest" = ?'), (plan_digest,))
    return rows[0] if rows else None


def save_plan(
    store: Store,
    plan_digest: str,
    image_ids: Sequence[int],
    config_json: str,
    flags_json: str,
    blob_rows: RowsLike,
    new_blobs: RowsLike,
    read_ranges: RowsLike,
) -> int:
    """Store a plan's recipe and return its id; a plan already stored under ``plan_digest`` is kept as is."""
    with store.bulk():
        existing = _find_plan(store, plan_digest)
        if existing is not None:
            return int(existing["id"])
        cur = store.execute(
            'INSERT INTO "plans" ("plan_digest", "image_ids", "created", "config_json", "flags_json")'
            " VALUES (?, ?, ?, ?, ?)",
            (plan_digest, json.dumps([int(i) for i in image_ids]), store.now(), config_json, flags_json),
        )
        plan_id = int(cur.lastrowid)
        # new_blobs before ranges: they reference their group.
        for table, data in (("plan_blobs", blob_rows), ("new_blobs", new_blobs), ("read_ranges", read_ranges)):
            store.insert_many(table, COLUMNS[table], _rows(plan_id, _payload_columns(table), data))
    return plan_id


def _recipe_array(store: Store, table: str, plan_id: int, dtype: np.dtype, order: str) -> np.ndarray:
    count = store.fetchall(f'SELECT COUNT(*) FROM {quote(table)} WHERE "plan_id" = ?', (plan_id,))[0][0]
    return store.fetch_array(select_sql(table, dtype.names, '"plan_id" = ?', order), (plan_id,), dtype, count)


def load_plan_recipe(store: Store, plan_digest: str) -> PlanRecipe | None:
    plan = _find_plan(store, plan_digest)
    if plan is None:
        return None
    plan_id = int(plan["id"])
    try:
        image_ids = [int(i) for i in json.loads(plan["image_ids"])]
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{store.path}: plan {plan_digest} has corrupt image ids ({exc})") from None
    return PlanRecipe(
        plan_id=plan_id,
        plan_digest=plan["plan_digest"],
        image_ids=image_ids,
        created=plan["created"],
        config_json=plan["config_json"],
        flags_json=plan["flags_json"],
        blobs=store.fetch_dicts(
            select_sql("plan_blobs", _payload_columns("plan_blobs"), '"plan_id" = ?', '"e_index"'), (plan_id,)
        ),
        new_blobs=store.fetch_dicts(
            select_sql("new_blobs", _payload_columns("new_blobs"), '"plan_id" = ?', '"grp"'), (plan_id,)
        ),
        read_ranges=_recipe_array(store, "read_ranges", plan_id, READ_RANGE_DTYPE, '"grp", "first"'),
    )
