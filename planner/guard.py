"""The output guard of a command working from a plan (apply, report): every file the plan
names is an input no output may replace. See safeio/guard.py for the rules."""

from __future__ import annotations

from pathlib import Path

from nydus_compact.backends.config import local_blob_places
from nydus_compact.safeio import OutputGuard

from .plan import Plan


def plan_guard(plan: Plan, plan_path: Path | None, state: Path | None, *, outputs_are_inputs: bool) -> OutputGuard:
    """A guard knowing the plan file, the state store and everything the plan names: source
    bootstraps, chunk dict, every local file of a source blob (any name, in the localfs dir,
    alt_dirs or blob_file) and, with ``outputs_are_inputs`` (commands other than apply), the
    new bootstraps apply writes."""
    guard = OutputGuard().input(plan_path, "the plan").input(state, "the state store")
    for im in plan.images:
        guard.input(plan.locate(im.path), f"the source bootstrap {im.path}")
        if outputs_are_inputs:
            guard.input(plan.locate(im.output), f"the new bootstrap of {im.path}")
    if plan.chunk_dict is not None:
        guard.input(plan.locate(plan.chunk_dict.path), f"the chunk dict {plan.chunk_dict.path}")
    dirs, files = local_blob_places(plan.backend, [b.blob_id for b in plan.blobs], plan.locate)
    for d in dirs:
        guard.blob_dir(d, f"the source blobs dir {d}")
    for f in files:
        guard.input(f, f"the source blob {f}")
    return guard
