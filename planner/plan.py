"""The plan as data: what `compact plan` decided and what it was decided from.

The plan file (planner/planfile.py) is a rendering of this; apply reads it back into the same
dataclasses. Authoritative for apply are the header (inputs the plan is bound to) and the
per-blob decisions with their merge groups; every number beside them is derived and is
recomputed (and re-validated) by apply.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .flags import Flags
from .vocab import Action, plain

FORMAT = "nydus-compact-plan/1"
ALGORITHM = "nydus-compact-R1"

@dataclass
class ImageSource:
    """Where an image plan's bootstrap came from and where apply publishes the result (no secrets)."""

    source: str  # docker://… or oci:… as given, canonical
    digest: str  # what the source reference named when planned (an index's digest for an index)
    manifest_digest: str  # the nydus manifest the bootstrap was read from
    platform: str | None  # the index entry's platform, None when the reference named a manifest
    target: str
    source_scheme: str | None = None  # http / https for registries
    target_scheme: str | None = None


@dataclass
class InputImage:
    path: str
    sha256: str
    size: int
    rafs_version: int
    chunk_size: int
    compressor: str
    digester: str
    blob_count: int
    output: str  # file name of the new bootstrap apply writes for this image
    image: ImageSource | None = None  # set when the input was an image reference


@dataclass
class InputFile:
    path: str
    sha256: str
    size: int


@dataclass
class PlanBlob:
    """One blob of E as the plan file shows it: the decision and the numbers behind it."""

    index: int  # position in E (source table, then chunk-dict blobs)
    blob_id: str
    origin: str  # "image" | "chunk-dict"
    table_size: int  # compressed_size in the blob table (0 in old images)
    observed_size: int | None  # stat/HEAD of the backend; None if not looked at
    decision: Action
    reason: str  # a vocab.Reason as the planner writes it; free text is kept as read
    used_bytes: int
    ratio: int | None  # used_bytes * 100 // size, None when not computed
    size_for_ratio: int | None
    size_source: str | None  # "table" | "backend"
    group: str | None  # name of the merge/rebuild group producing the blob's replacement
    new_index: int | None  # position in the new blob table (kept blobs and group targets)
    compressor: str
    digester: str
    features: int
    referenced_by: dict[str, int] = field(default_factory=dict)  # image path -> bytes used


@dataclass
class Group:
    name: str  # "g0", "g1", ... in new-table order
    target: int  # E index whose turn in the table the new blob takes
    members: list[int]  # E indexes, ascending
    chunk_count: int
    compressed_size: int  # data bytes of the new blob (meta not included)
    uncompressed_size: int
    read_requests: int  # after coalescing
    new_index: int


@dataclass
class Summary:
    changes: bool
    noop_reason: str | None
    blobs_before: int
    blobs_after: int
    new_blobs: int
    bytes_before: int  # sum of source blob sizes in the new tables' images
    bytes_to_read: int
    bytes_to_write: int
    reclaimable_bytes: int  # sizes of deletable blobs
    occurrences_remapped: int


@dataclass
class MaxBlobs:
    """What `--max-blobs` did (planner.max_blobs); absent from plans made without it."""

    limit: int
    reached: bool  # every image's new table holds at most ``limit`` blobs
    exact: bool  # the choice is proven to rewrite the fewest extra bytes
    blobs_before: list[int]  # per image: blobs in its new table under R alone
    blobs_after: list[int]  # per image: blobs once the limit is applied
    extra_bytes: int  # referenced bytes of blobs R kept that the limit makes rewritten


# Scalars only (and lists of strings): a plan file is untrusted input, and a free-form value
# could hold a YAML alias bomb that only explodes when the plan is hashed.
ConfigValue = int | str | None
BackendValue = bool | int | str | list[str]


@dataclass
class Plan:
    tool_version: str
    flags: Flags
    images: list[InputImage]
    chunk_dict: InputFile | None
    config: dict[str, ConfigValue]
    config_sha256: str
    backend: dict[str, BackendValue]
    summary: Summary
    blobs: list[PlanBlob]
    groups: list[Group]
    new_table: list[str]  # blob id or "new:<group>" per new position
    deletable: list[str]
    merge_candidates: list[tuple[int, int]]
    findings: list[str] = field(default_factory=list)  # things a reviewer should know (missing kept blobs, ...)
    max_blobs: MaxBlobs | None = None
    format: str = FORMAT
    algorithm: str = ALGORITHM
    # The directory relative paths in the plan (images, outputs, chunk dict, localfs dirs) are
    # resolved from: the plan file's. Not content of the plan, not in its digest: the reader sets it.
    base_dir: Path = field(default=Path("."), compare=False, repr=False, metadata={"in_file": False})

    def body(self) -> dict:
        """Everything the digest covers, as plain data in a fixed order."""
        d = plain({k: v for k, v in asdict(self).items() if k != "base_dir"})
        # File plans carry no image section: their digests stay what they always were.
        for im in d["images"]:
            if im["image"] is None:
                del im["image"]
        d["merge_candidates"] = [list(c) for c in self.merge_candidates]
        if d["max_blobs"] is None:  # plans made without the limit keep their digests
            del d["max_blobs"]
        return d

    def locate(self, stored: str) -> Path:
        """A path as the plan stores it, usable from the current directory."""
        path = Path(stored)
        return path if path.is_absolute() else self.base_dir / path

    @property
    def digest(self) -> str:
        return plan_digest(self.body())


def stored_path(path: str | Path, plan_dir: Path) -> str:
    """How a plan stores a path: relative to the plan's directory when it lies under it (the plan
    and its inputs can move together), else absolute; never relative to where `plan` ran."""
    absolute = os.path.abspath(path)
    base = os.path.abspath(plan_dir)
    if absolute == base or absolute.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, base)
    return absolute


def plan_digest(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
