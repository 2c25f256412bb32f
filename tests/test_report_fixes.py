"""Run reports that tell the truth and fit the page (issue 13, "Everyday use"): bytes copied by a
resumed run, every image of a fleet with the bootstrap apply really wrote, round chart ticks,
charts that stay readable with hundreds of blobs, a steps table within 1280 px."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest
from helpers.compact_env import REBUILD_AND_MERGE, build, cli, compact, plan

from nydus_compact.planner.planfile import load_plan
from nydus_compact.reports.charts import MAX_ROWS, ratio_chart, size_chart
from nydus_compact.walkthrough.demo import run_demo
from nydus_compact.reports.views import plan_view
from nydus_compact.store.db import open_store
from nydus_compact.store.runs import list_runs, steps


def test_resumed_run_reports_the_bytes_its_steps_copied(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    killed = compact("apply", image.plan, fault="blob-done:g0")
    assert killed.rc != 0
    resumed = cli("apply", image.plan)
    assert resumed.rc == 0 and resumed.err.startswith("resumed and applied"), resumed.err
    with open_store(image.root / "plan.state.sqlite", create=False) as store:
        (run,) = list_runs(store)
        blob_steps = {k: s for k, s in steps(store, run.id).items() if k.startswith("blob:")}
    assert blob_steps["blob:g0"].status == "skipped" and blob_steps["blob:g0"].bytes > 0
    copied = sum(s.bytes for s in blob_steps.values())
    report = cli("report", image.plan).out
    line = next(x for x in report.splitlines() if x.startswith("| bytes copied |"))
    assert f"({copied})" in line, line
    assert f"{blob_steps['blob:g0'].bytes}" not in line or "earlier attempt" in line


def test_fleet_report_names_every_image_and_the_bootstrap_apply_wrote(layers, tmp_path):
    a = build(layers[:3], tmp_path / "a", 6)
    b = build(layers, tmp_path / "b", 6)
    for blob in a.blobs.iterdir():
        if not (b.blobs / blob.name).exists():
            shutil.copyfile(blob, b.blobs / blob.name)
    fleet = tmp_path / "fleet.yaml"
    r = cli("plan", a.boot, b.boot, "--blobs-dir", b.blobs, "-o", fleet, *REBUILD_AND_MERGE)
    assert r.rc == 0, r.err
    out_dir = tmp_path / "out"
    applied = cli("apply", fleet, "--output-dir", out_dir)
    assert applied.rc == 0, applied.err
    written = sorted(p for p in out_dir.iterdir() if not p.name.startswith("."))
    assert len(written) == 2
    for fmt in ("md", "html"):
        report = cli("report", fleet, "--format", fmt).out
        for image, out in zip((a, b), written):
            assert str(image.boot) in report and str(out.resolve()) in report, fmt
        for planned in load_plan(fleet)[0].images:  # the plan's own outputs were not written
            assert planned.output not in report, fmt
        sha = [im.sha256 for im in load_plan(fleet)[0].images]
        assert all((s if fmt == "md" else s[:12]) in report for s in sha)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    result = run_demo(root / "demo")
    plan, recorded = load_plan(result.plan_path)
    return result, plan_view(plan, "plan file", recorded)


def test_size_chart_ticks_are_round_numbers(demo):
    _, view = demo
    chart = size_chart(view)
    labels = [t.label for t in chart.ticks]
    assert labels[0] == "0 B" and len(labels) >= 3
    assert all(re.fullmatch(r"\d+ (B|KiB|MiB|GiB)", label) for label in labels), labels
    steps_ = {round(b.x - a.x, 6) for a, b in zip(chart.ticks, chart.ticks[1:])}
    assert len(steps_) == 1  # evenly spaced
    bar = max(chart.bars, key=lambda b: b.width)
    assert bar.width <= chart.plot_width and bar.width > chart.plot_width / 2  # the scale fits the largest blob


def test_charts_of_a_240_blob_image_stay_under_40_rows(demo):
    _, view = demo
    template = view.blobs[0]
    blobs = [
        dataclasses.replace(template, index=i, blob_id=f"{i:064x}", size=(i % 17 + 1) << 20, used_bytes=(i % 5) << 19,
                            decision=("keep", "merge", "delete")[i % 3], group=None, new_index=i)
        for i in range(240)
    ]
    table = [dataclasses.replace(view.new_table[0], new_index=i, blob_id=b.blob_id, group=None, size=b.size)
             for i, b in enumerate(blobs[:120])]
    big = dataclasses.replace(view, blobs=blobs, new_table=table, deletable=[])
    ratio = ratio_chart(big)
    assert len(ratio.bars) == MAX_ROWS and MAX_ROWS <= 40
    assert ratio.bars[-1].label == f"{240 - (MAX_ROWS - 1)} smaller blobs"
    sizes = size_chart(big)
    assert len(sizes.bars) == 2 * MAX_ROWS
    assert [b.label for b in sizes.bars if b.label.endswith("smaller blobs")] == [
        f"{240 - (MAX_ROWS - 1)} smaller blobs", f"{120 - (MAX_ROWS - 1)} smaller blobs"
    ]
    shown = [b for b in sizes.bars[: MAX_ROWS - 1]]
    assert all(b.value.endswith("MiB") for b in shown)
    assert min(int(float(b.value.split()[0])) for b in shown) >= 12  # the largest ones are drawn one by one


_MEASURE = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const over = [...document.querySelectorAll('table, svg')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => (e.className.baseVal ?? e.className) + ':' + Math.round(e.getBoundingClientRect().right));
  document.body.setAttribute('data-overflow', over.join(' ') || 'none');
  document.body.setAttribute('data-width', String(document.documentElement.scrollWidth));
});
</script>"""


def test_html_report_fits_1280_px(layers, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    image = build(layers, tmp_path / "a-rather-long-directory-name-for-the-image" / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    assert cli("apply", image.plan, "--verify").rc == 0
    html = cli("report", image.plan, "--format", "html").out
    page = tmp_path / "measured.html"
    page.write_text(html.replace("</body>", _MEASURE + "</body>"))
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,900"]  # fmt: skip
    dom = subprocess.run(args + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    overflow = re.search(r'data-overflow="([^"]*)"', dom.stdout)
    width = re.search(r'data-width="(\d+)"', dom.stdout)
    assert overflow and width, dom.stdout[-500:]
    assert overflow.group(1) == "none" and int(width.group(1)) <= 1280, (overflow.group(1), width.group(1))
