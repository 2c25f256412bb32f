"""`compact apply` from the files a user names: the plan, the backend to read sources from, the
state store, then apply and (with --verify) a check of every new image. The command only parses
arguments, calls ``run_apply`` and renders the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nydus_compact.backends.config import (
    FINGERPRINT_KEYS, BackendConfig, load_backend_config, map_local_paths, open_backend,
)
from nydus_compact.planner.plan import Plan
from nydus_compact.planner.planfile import load_plan
from nydus_compact.store import default_state
from nydus_compact.store.db import open_store

from .apply import ApplyOptions, ApplyResult, Progress, apply_plan
from .errors import ApplyError
from .verify import VerifyReport, verify_outputs


@dataclass
class ApplyRequest:
    """What the user asked for; None means the plan's (or the default) choice."""

    plan_path: Path
    blobs_dir: Path | None = None
    output_bootstrap: Path | None = None
    output_dir: Path | None = None
    output_json: Path | None = None
    backend_config: Path | None = None
    backend_type: str | None = None
    state: Path | None = None
    verify: bool = False
    verify_sources: bool = True
    jobs: int = 2


@dataclass
class ApplyOutcome:
    result: ApplyResult
    verified: list[tuple[str, VerifyReport]] = field(default_factory=list)  # (new bootstrap, report)

    @property
    def ok(self) -> bool:
        return all(report.ok for _, report in self.verified)


def plan_backend(plan: Plan, backend_config: Path | None, backend_type: str | None) -> BackendConfig:
    """The backend to read source blobs from: given again, or rebuilt from the plan for localfs
    (its local paths are stored relative to the plan file)."""
    if backend_config is not None:
        return load_backend_config(backend_config, backend_type)
    recorded = plan.backend
    if recorded.get("type") != "localfs":
        raise ApplyError(
            f"the plan reads blobs from a {recorded.get('type')} backend; pass the same --backend-config "
            "(secrets are never stored in plans)"
        )
    located = map_local_paths(recorded, lambda p: str(plan.locate(p)))
    return BackendConfig("localfs", {k: located[k] for k in FINGERPRINT_KEYS if k in located}, "plan")


def run_apply(
    req: ApplyRequest, progress: Progress | None = None, loaded: tuple[Plan, str | None] | None = None
) -> ApplyOutcome:
    """``loaded``: the plan and its recorded digest, when the caller has read the plan already."""
    plan, recorded = loaded or load_plan(req.plan_path)
    bcfg = plan_backend(plan, req.backend_config, req.backend_type)
    blobs_dir = req.blobs_dir
    if blobs_dir is None:
        default = bcfg.config.get("dir") or plan.config.get("blobs_dir")
        if not default:
            raise ApplyError("where should new blobs go? pass --blobs-dir DIR")
        blobs_dir = Path(default)
    opts = ApplyOptions(
        req.plan_path, blobs_dir, req.output_bootstrap, req.output_json, req.verify, req.jobs, req.output_dir,
        req.verify_sources,
    )
    with open_backend(bcfg) as backend, open_store(req.state or default_state(req.plan_path)) as store:
        outcome = ApplyOutcome(apply_plan(plan, recorded, opts, backend, bcfg, store, progress))
        if req.verify and outcome.result.run_id is not None:
            outcome.verified = verify_outputs(
                outcome.result.images, outcome.result.run_id, blobs_dir, backend, store, progress
            )
    return outcome
