"""`compact verify` and `compact gc`: checking an image against its blobs, finding orphaned blobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nydus_compact.backends.base import BlobBackend
from nydus_compact.planner.formatting import human_size, plural
from nydus_compact.rafs.blob import ChunkSource, VerifyStats
from nydus_compact.rafs.model import Bootstrap
from nydus_compact.store.db import Store
from nydus_compact.store.runs import STEP_DONE, STEP_FAILED, VERIFY_STEP, record_step

# Step key under which a verification of an apply run's output is kept in its audit trail.


@dataclass
class VerifyReport:
    problems: list[str]
    stats: VerifyStats
    blobs: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, bootstrap: str) -> str:
        s = self.stats
        state = "OK" if self.ok else f"FAILED ({plural(s.problems, 'problem')})"
        return (
            f"verify {bootstrap}: {state}: {plural(self.blobs, 'blob')}, {s.checked} of "
            f"{plural(s.distinct, 'distinct chunk')} ({plural(s.occurrences, 'occurrence')}) checked, "
            f"{human_size(s.bytes_read)} read"
        )


def verify_image(
    bs: Bootstrap, backend: BlobBackend, limit: int = 20, progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Every blob of the table present with its recorded size, and every chunk sound: the one
    verifier (``ChunkSource.verify``) that `compact inspect --verify` runs too."""
    source = ChunkSource(bs, backend)
    problems = source.verify(progress=progress, limit=limit)
    return VerifyReport(problems, source.stats, len(bs.blobs))


def record_verification(store: Store, run_id: int, report: VerifyReport, bootstrap: Path) -> None:
    """Keep a verification of a run's output in its audit trail (the report's Verification section)."""
    status = STEP_DONE if report.ok else STEP_FAILED
    record_step(
        store, run_id, VERIFY_STEP, status, bytes=report.stats.bytes_read, detail=report.summary(str(bootstrap))
    )


def verify_outputs(
    result_images: list[dict], run_id: int, blobs_dir: Path, source: BlobBackend, store: Store,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[tuple[str, VerifyReport]]:
    """Verify each new bootstrap an apply run wrote (new blobs from ``blobs_dir``, kept ones from
    ``source``) and record each report in the run's audit trail."""
    from nydus_compact.rafs.loader import load_bootstrap

    from .overlay import NewImageBackend

    reports = []
    for image in result_images:
        boot = Path(image["bootstrap"])
        if progress is not None:
            progress(f"verifying {boot.name}", 0, 0)
        report = verify_image(load_bootstrap(boot), NewImageBackend(blobs_dir, source))
        record_verification(store, run_id, report, boot)
        reports.append((image["bootstrap"], report))
    return reports
