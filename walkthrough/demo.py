"""`compact demo`: the whole flow on the bundled sample image, end to end, into one directory."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from nydus_compact.applier.apply import ApplyOptions, ApplyResult, apply_plan
from nydus_compact.applier.verify import VerifyReport, record_verification, verify_image
from nydus_compact.backends.config import localfs_config, open_backend
from nydus_compact.image.build import write_layout_image
from nydus_compact.image.fetch import fetched_image
from nydus_compact.image.planning import prepare_images, work_dir
from nydus_compact.image.publish import Published, apply_image_plan
from nydus_compact.image.source import Access
from nydus_compact.mkimage.builder import BuildOptions, BuildResult, build_image
from nydus_compact.mkimage.sample import make_sample_layers
from nydus_compact.planner.config import CompactConfig
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.pipeline import PlanInputs, make_plan
from nydus_compact.planner.formatting import human_size, plural, summary_line
from nydus_compact.planner.plan import Plan
from nydus_compact.planner.planfile import write_plan
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.safeio import atomic_write_text
from nydus_compact.store.db import Clock, Store, open_store, utc_now

from nydus_compact.reports.errors import ReportError
from nydus_compact.reports.render import render_report
from nydus_compact.reports.views import Report, plan_view, run_view, select_run

KiB = 1024
# Chosen so the sample exercises every action: its stale base layer (23% used) is rebuilt, the
# fully shadowed layer deleted, the update layer kept and the two tiny layers merged.
DEMO_BUILD = BuildOptions(fs_version=6, chunk_size=64 * KiB, repeatable=True)
DEMO_CONFIG = CompactConfig(min_used_ratio=50, compact_blob_size=64 * KiB)


@dataclass
class DemoResult:
    bootstrap: Path
    blobs_dir: Path
    plan_path: Path
    state: Path
    new_bootstrap: Path
    apply_json: Path
    report_md: Path
    report_html: Path
    plan: Plan
    applied: ApplyResult
    verified: VerifyReport
    image: DemoImage

    def lines(self) -> list[str]:
        """What `compact demo` prints: where everything went, one line each."""
        p = self.plan
        reclaim = human_size(p.summary.reclaimable_bytes)
        return [
            f"image      {self.bootstrap} (RAFS v{p.images[0].rafs_version}, {plural(p.summary.blobs_before, 'blob')} in {self.blobs_dir})",
            f"plan       {self.plan_path}: {summary_line(p)}",
            f"state      {self.state}",
            f"applied    {self.new_bootstrap}: {self.applied.message}",
            f"apply json {self.apply_json}",
            f"verify     {self.verified.summary(str(self.new_bootstrap))}",
            f"report     {self.report_md}",
            f"report     {self.report_html}",
            f"deletable  {plural(len(p.deletable), 'blob')} ({reclaim}) once {self.bootstrap} is retired: "
            f"compact gc --keep {self.new_bootstrap} --blobs-dir {self.blobs_dir}",
            f"layout     {self.image.source} -> {self.image.published.line()} (plan {self.image.plan_path})",
            f"verify     {self.image.verified.summary(self.image.published.target)}",
        ]


@dataclass
class DemoImage:
    """The image step: the same sample as an OCI layout, compacted into a new tag of that layout."""

    source: str
    plan_path: Path
    published: Published
    verified: VerifyReport


def image_step(out: Path, built: BuildResult, clock: Clock) -> DemoImage:
    """`compact plan oci:LAYOUT:sample` then `compact apply`: the layout gains tag sample-compact."""
    layout = out / "layout"
    source = f"oci:{layout}:sample"
    write_layout_image(source, built.bootstrap_path.read_bytes(), DEMO_BUILD.fs_version, built.blob_paths)
    plan_path = out / "image-plan.yaml"
    access = Access()
    images = prepare_images([source], plan_path, access, target=None, target_suffix=None, platform=None)
    with images.backend as backend, open_store(out / "image-plan.state.sqlite", clock=clock) as store:
        inputs = PlanInputs(images.bootstraps, None, images.backend_config, DEMO_CONFIG, Flags.tool_default(),
                            image_sources=images.sources)
        plan = make_plan(inputs, backend, store).plan
        write_plan(plan, plan_path)
        opts = ApplyOptions(plan_path, work_dir(plan_path) / "blobs", output_json=out / "image-apply.json")
        _, [published] = apply_image_plan(plan, plan.digest, opts, access, store)
    with fetched_image(published.target, access) as image:
        verified = verify_image(load_bootstrap(image.bootstrap), image.backend)
    return DemoImage(source, plan_path, published, verified)


def write_reports(store: Store, plan: Plan, plan_path: Path, out_md: Path, out_html: Path) -> None:
    view = plan_view(plan, f"plan file {plan_path}", plan.digest)
    run = select_run(store, plan.digest, None)
    report = Report(view, run_view(store, run, view) if run is not None else None)
    atomic_write_text(out_md, render_report(report, "md"))
    atomic_write_text(out_html, render_report(report, "html"))


def run_demo(out: Path, *, force: bool = False, clock: Clock = utc_now) -> DemoResult:
    """Build the sample, plan, apply, verify and report into ``out``; ``clock`` stamps the store."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise ReportError(f"{out}: exists and is not an empty directory (use --force to start over in it)")
    out.mkdir(parents=True, exist_ok=True)
    state = out / "plan.state.sqlite"
    if force:  # the store is the demo's only memory: without it everything below is done afresh
        for leftover in (state, state.with_name(state.name + "-wal"), state.with_name(state.name + "-shm")):
            leftover.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="compact-demo-") as tmp:
        built = build_image(make_sample_layers(Path(tmp)), out / "image", DEMO_BUILD)
    bootstrap = built.bootstrap_path
    blobs_dir = bootstrap.parent / "blobs"
    plan_path = out / "plan.yaml"
    apply_json = out / "apply.json"
    bcfg = localfs_config(blobs_dir)
    with open_backend(bcfg) as backend, open_store(state, clock=clock) as store:
        inputs = PlanInputs([bootstrap], None, bcfg, DEMO_CONFIG, Flags.tool_default(), plan_dir=out)
        plan = make_plan(inputs, backend, store).plan
        write_plan(plan, plan_path)
        opts = ApplyOptions(plan_path, blobs_dir, output_json=apply_json)
        applied = apply_plan(plan, plan.digest, opts, backend, bcfg, store)
        if applied.bootstrap is None or applied.run_id is None:
            raise ReportError(f"{plan_path}: the demo plan changes nothing ({applied.message})")
        verified = verify_image(load_bootstrap(applied.bootstrap), backend)
        record_verification(store, applied.run_id, verified, applied.bootstrap)
        report_md, report_html = out / "report.md", out / "report.html"
        write_reports(store, plan, plan_path, report_md, report_html)
    image = image_step(out, built, clock)
    return DemoResult(
        bootstrap, blobs_dir, plan_path, state, applied.bootstrap, apply_json, report_md, report_html,
        plan, applied, verified, image,
    )
