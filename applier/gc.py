"""`compact gc`: delete only blobs it can attribute, under the blobs dir's lock.

A blob file is deletable when its id is attributed to something the user retired: the blob
table of a bootstrap named as dropped (``--drop``), or the ``deletable`` list of a plan that
was applied (``--plan``); and no kept bootstrap (``--keep``) references it. Every other file of
the directory is left alone: files nothing attributes are listed as unknown (an OCI layout's
``blobs/sha256/`` also holds manifests and configs named by sha256), and the temp files of an
interrupted write are listed as stale. Deleting holds the directory's exclusive lock, the one
apply takes for every local blobs dir it reads or writes, so gc never deletes under an apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.safeio import TMP_PREFIX, stale_temps
from nydus_compact.store import default_state
from nydus_compact.store.db import open_store
from nydus_compact.store.runs import RUN_SUCCEEDED, find_run

from .errors import ApplyError
from .lock import LOCK_NAME, blobs_dir_lock


@dataclass
class GcResult:
    blobs_dir: Path
    deletable: list[Path] = field(default_factory=list)  # deleted, when ``deleted``
    still_referenced: list[Path] = field(default_factory=list)  # attributed, but a kept bootstrap uses it
    unknown: list[Path] = field(default_factory=list)  # nothing attributes it: left alone
    stale_temps: list[Path] = field(default_factory=list)  # leftovers of interrupted writes: listed only
    deleted: bool = False
    bytes: int = 0  # of ``deletable``

    def document(self) -> dict:
        return {
            "deleted": self.deleted,
            "blobs": [p.name for p in self.deletable],
            "bytes": self.bytes,
            "still_referenced": [p.name for p in self.still_referenced],
            "unknown": [p.name for p in self.unknown],
            "stale_temps": [p.name for p in self.stale_temps],
        }


def applied_deletable(plan_path: Path, state: Path | None = None) -> list[str]:
    """The ``deletable`` ids of a plan whose apply succeeded (its state store says so)."""
    plan, _ = load_plan(plan_path)
    state = state or default_state(plan_path)
    if not state.is_file():
        raise ApplyError(f"{plan_path}: no state store {state}: gc trusts a plan's deletable list only once it is applied")
    with open_store(state, create=False) as store:
        run = find_run(store, plan.digest)
    if run is None or run.status != RUN_SUCCEEDED:
        raise ApplyError(f"{plan_path}: not applied (no successful run in {state}); apply it before gc --plan")
    return plan.deletable


def attributed_ids(drop: list[Path], plans: list[Path], state: Path | None = None) -> set[str]:
    """Blob ids the user retired: blob tables of dropped bootstraps, deletable lists of applied plans."""
    ids = {b.blob_id for p in drop for b in load_bootstrap(p).blobs}
    for p in plans:
        ids.update(applied_deletable(p, state))
    return ids


def survey(blobs_dir: Path, keep: set[str], attributed: set[str]) -> GcResult:
    """Sort the files of ``blobs_dir`` (regular files only; directories are never entered)."""
    if not blobs_dir.is_dir():
        raise ApplyError(f"{blobs_dir}: not a directory")
    result = GcResult(blobs_dir, stale_temps=stale_temps(blobs_dir))
    for p in sorted(blobs_dir.iterdir()):
        if p.name == LOCK_NAME or p.name.startswith(TMP_PREFIX) or p.is_symlink() or not p.is_file():
            continue
        if p.name in attributed:
            (result.still_referenced if p.name in keep else result.deletable).append(p)
        elif p.name not in keep:
            result.unknown.append(p)
    result.bytes = sum(p.stat().st_size for p in result.deletable)
    return result


def collect_garbage(
    blobs_dir: Path, keep: list[Path], drop: list[Path], plans: list[Path], *, delete: bool, state: Path | None = None
) -> GcResult:
    """List, or with ``delete`` remove, the blobs of ``blobs_dir`` that ``drop`` / ``plans``
    attribute and no bootstrap of ``keep`` references."""
    if delete and not (drop or plans):
        raise ApplyError("gc deletes only blobs it can attribute: name the retired images with --drop OLD.boot or --plan PLAN.yaml")
    kept = {b.blob_id for p in keep for b in load_bootstrap(p).blobs}
    attributed = attributed_ids(drop, plans, state)
    if not delete:
        return survey(blobs_dir, kept, attributed)
    with blobs_dir_lock(blobs_dir):
        result = survey(blobs_dir, kept, attributed)
        for p in result.deletable:
            p.unlink()
        result.deleted = True
    return result
