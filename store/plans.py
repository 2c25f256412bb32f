"""Plan recipes: what the planner decided, in a form apply can stream.

A plan is stored once per ``plan_digest`` (the sha256 of its canonical body), so saving the
same plan again is a no-op. Per-chunk recipe rows may be given as numpy structured arrays
(``NEW_BLOB_CHUNK_DTYPE``, ``READ_RANGE_DTYPE``, or any array carrying those field names)
or as iterables of mappings/tuples in table column order; they are loaded back as arrays.
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

NEW_BLOB_CHUNK_DTYPE = np.dtype(
    [
        ("grp", "<u4"),
        ("seq", "<u4"),  # the chunk's index in the new blob
        ("src_e_index", "<u4"),
        ("src_offset", "<u8"),
        ("compressed_size", "<u4"),
        ("uncompressed_size", "<u4"),
        ("new_coff", "<u8"),
        ("new_uoff", "<u8"),
        ("block_id", "V32"),
        ("flags", "<u4"),
    ]
)
READ_RANGE_DTYPE = np.dtype(
    [
        ("grp", "<u4"),
        ("src_e_index", "<u4"),
        ("offset", "<u8"),
        ("size", "<u8"),
        ("first_seq", "<u4"),
        ("n_chunks", "<u4"),
    ]
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
    new_blob_chunks: np.ndarray  # NEW_BLOB_CHUNK_DTYPE, by (grp, seq)
    read_ranges: np.ndarray  # READ_RANGE_DTYPE, by (grp, first_seq)


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
    new_blob_chunks: RowsLike,
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
        # new_blobs before chunks and ranges: they reference their group.
        for table, data in (
            ("plan_blobs", blob_rows),
            ("new_blobs", new_blobs),
            ("new_blob_chunks", new_blob_chunks),
            ("read_ranges", read_ranges),
        ):
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
        new_blob_chunks=_recipe_array(store, "new_blob_chunks", plan_id, NEW_BLOB_CHUNK_DTYPE, '"grp", "seq"'),
        read_ranges=_recipe_array(store, "read_ranges", plan_id, READ_RANGE_DTYPE, '"grp", "first_seq"'),
    )
