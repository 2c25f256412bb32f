"""Apply runs and their checkpointed steps, for resuming and for the audit report.

Every call commits at once with ``synchronous=FULL``, so a step recorded as done survives
a crash of the process that recorded it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .db import Store, select_sql
from .errors import StoreError
from .schema import COLUMNS

RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_FINAL = frozenset({RUN_SUCCEEDED, RUN_FAILED})

STEP_RUNNING = "running"
STEP_DONE = "done"
STEP_SKIPPED = "skipped"  # the output already existed with the recorded size and sha256
STEP_FAILED = "failed"
STEP_STATUSES = frozenset({STEP_RUNNING, STEP_DONE, STEP_SKIPPED, STEP_FAILED})
STEP_COMPLETE = frozenset({STEP_DONE, STEP_SKIPPED})
VERIFY_STEP = "verify"  # the key of the step `apply --verify` records


@dataclass(frozen=True)
class Run:
    id: int
    plan_digest: str
    started: str
    finished: str | None
    status: str
    resumes: int
    outputs: dict[str, str]
    inputs: dict[str, str]


@dataclass(frozen=True)
class Step:
    run_id: int
    key: str
    status: str
    started: str
    finished: str | None
    bytes: int
    requests: int
    blob_id: str | None
    size: int | None
    sha256: str | None
    detail: str | None


def _canonical(mapping: Mapping[str, str]) -> str:
    return json.dumps(dict(mapping), sort_keys=True)


def _run(store: Store, row: dict[str, Any]) -> Run:
    try:
        outputs, inputs = json.loads(row["outputs"]), json.loads(row["inputs"])
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{store.path}: run {row['id']} has corrupt outputs/inputs ({exc})") from None
    return Run(**{**row, "outputs": outputs, "inputs": inputs})


def _runs(store: Store, where: str, params: tuple, order: str = '"id"') -> list[Run]:
    rows = store.fetch_dicts(select_sql("runs", COLUMNS["runs"], where, order), params)
    return [_run(store, row) for row in rows]


def _get_run(store: Store, run_id: int) -> Run:
    runs = _runs(store, '"id" = ?', (run_id,))
    if not runs:
        raise StoreError(f"{store.path}: no apply run {run_id}")
    return runs[0]


def find_run(store: Store, plan_digest: str) -> Run | None:
    """The latest run of a plan, if any."""
    runs = _runs(store, '"plan_digest" = ?', (plan_digest,), '"id" DESC LIMIT 1')
    return runs[0] if runs else None


def list_runs(store: Store, plan_digest: str | None = None) -> list[Run]:
    """All runs (of one plan, if given), oldest first."""
    if plan_digest is None:
        return _runs(store, "1", ())
    return _runs(store, '"plan_digest" = ?', (plan_digest,))


def start_run(store: Store, plan_digest: str, *, outputs: Mapping[str, str], inputs: Mapping[str, str]) -> Run:
    """Begin applying a plan. The latest run of the same plan that did not succeed and wrote to the
    same outputs from the same inputs is resumed (its ``resumes`` counter goes up and its completed
    steps stay valid); otherwise a new run starts."""
    outputs_json, inputs_json = _canonical(outputs), _canonical(inputs)
    with store.transaction():
        latest = find_run(store, plan_digest)
        if (
            latest is not None
            and latest.status != RUN_SUCCEEDED
            and _canonical(latest.outputs) == outputs_json
            and _canonical(latest.inputs) == inputs_json
        ):
            store.execute(
                'UPDATE "runs" SET "status" = ?, "finished" = NULL, "resumes" = "resumes" + 1 WHERE "id" = ?',
                (RUN_RUNNING, latest.id),
            )
            run_id = latest.id
        else:
            cur = store.execute(
                'INSERT INTO "runs" ("plan_digest", "started", "status", "resumes", "outputs", "inputs")'
                " VALUES (?, ?, ?, 0, ?, ?)",
                (plan_digest, store.now(), RUN_RUNNING, outputs_json, inputs_json),
            )
            run_id = int(cur.lastrowid)
        return _get_run(store, run_id)


def finish_run(store: Store, run_id: int, status: str) -> Run:
    if status not in RUN_FINAL:
        raise ValueError(f"a run finishes as {' or '.join(sorted(RUN_FINAL))}, not {status!r}")
    with store.transaction():
        _get_run(store, run_id)
        store.execute('UPDATE "runs" SET "status" = ?, "finished" = ? WHERE "id" = ?', (status, store.now(), run_id))
        return _get_run(store, run_id)


_STEP_UPSERT = (
    'INSERT INTO "steps" ("run_id", "key", "status", "started", "finished", "bytes", "requests",'
    ' "blob_id", "size", "sha256", "detail") VALUES (:run_id, :key, :status, :now, :finished, :bytes,'
    " :requests, :blob_id, :size, :sha256, :detail)"
    ' ON CONFLICT ("run_id", "key") DO UPDATE SET "status" = excluded."status",'
    # A step that starts again (after a crash) is a new attempt; finishing keeps the start time.
    ' "started" = CASE WHEN excluded."status" = :running THEN excluded."started" ELSE "started" END,'
    ' "finished" = excluded."finished", "bytes" = excluded."bytes", "requests" = excluded."requests",'
    ' "blob_id" = excluded."blob_id", "size" = excluded."size", "sha256" = excluded."sha256",'
    ' "detail" = excluded."detail"'
)


def record_step(
    store: Store,
    run_id: int,
    key: str,
    status: str,
    *,
    bytes: int = 0,
    requests: int = 0,
    blob_id: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    detail: str | None = None,
) -> Step:
    """Checkpoint one step ("blob:<grp>", "bootstrap", "json") of a run; the latest call wins."""
    if status not in STEP_STATUSES:
        raise ValueError(f"unknown step status {status!r}")
    with store.transaction():
        _get_run(store, run_id)
        now = store.now()
        store.execute(
            _STEP_UPSERT,
            {
                "run_id": run_id,
                "key": key,
                "status": status,
                "now": now,
                "finished": None if status == STEP_RUNNING else now,
                "bytes": bytes,
                "requests": requests,
                "blob_id": blob_id,
                "size": size,
                "sha256": sha256,
                "detail": detail,
                "running": STEP_RUNNING,
            },
        )
        return _steps(store, '"run_id" = ? AND "key" = ?', (run_id, key))[key]


def _steps(store: Store, where: str, params: tuple) -> dict[str, Step]:
    rows = store.fetch_dicts(select_sql("steps", COLUMNS["steps"], where, '"key"'), params)
    return {row["key"]: Step(**row) for row in rows}


def steps(store: Store, run_id: int) -> dict[str, Step]:
    """Every step of a run, by key, in key order."""
    return _steps(store, '"run_id" = ?', (run_id,))


def completed_steps(store: Store, run_id: int) -> dict[str, Step]:
    """The steps of a run that need not be redone (done or skipped), by key."""
    return {key: step for key, step in steps(store, run_id).items() if step.status in STEP_COMPLETE}
