"""Audit reports, `compact explain` and `compact demo` on the bundled sample image.

One demo directory is built per module with a ticking fake clock, so every timestamp in the
store (and so in the reports) is fixed; the only value normalized in the snapshots is the
temporary directory, which apply records as absolute output paths.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from dataclasses import astuple, replace
from datetime import datetime, timedelta, timezone
from itertools import count
from pathlib import Path

import pytest
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from helpers.cli import cli, compact

from nydus_compact.planner.planfile import load_plan
from nydus_compact.walkthrough.demo import run_demo
from nydus_compact.reports.render import render_report
from nydus_compact.reports.views import Report, plan_view, plan_view_from_store, run_view, select_run
from nydus_compact.store.db import open_store

MERGED, DELETED, KEPT, REBUILT = "4dbf96720aa5", "d15e9c1ee38c", "5417c4848b27", "89db322f04d6"
RAW_HTML = r"(?<!\\)<[A-Za-z/!]"  # a tag start not escaped as \<


class MarkdownSnapshot(SingleFileSnapshotExtension):
    file_extension = "md"
    _write_mode = WriteMode.TEXT


class HtmlSnapshot(SingleFileSnapshotExtension):
    file_extension = "html"
    _write_mode = WriteMode.TEXT


def ticking_clock():
    ticks = count()
    start = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    return lambda: start + timedelta(milliseconds=250 * next(ticks))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tmp cwd holding `demo/`, made by the demo with a fake clock."""
    cwd = tmp_path_factory.mktemp("reports").resolve()
    with contextlib.chdir(cwd):
        run_demo(Path("demo"), clock=ticking_clock())
    return cwd


def report_for(root: Path, fmt: str) -> str:
    with contextlib.chdir(root):
        plan, recorded = load_plan(Path("demo/plan.yaml"))
        view = plan_view(plan, "plan file demo/plan.yaml", recorded)
        with open_store(Path("demo/plan.state.sqlite"), create=False) as store:
            run = select_run(store, plan.digest, None)
            text = render_report(Report(view, run_view(store, run, view)), fmt)
    return text.replace(str(root), "/TMP")




def test_markdown_report_snapshot(root, snapshot):
    text = report_for(root, "md")
    assert not re.search(RAW_HTML, text), "markdown report must not contain raw HTML"
    assert snapshot(extension_class=MarkdownSnapshot) == text


def test_html_report_snapshot(root, snapshot):
    text = report_for(root, "html")
    assert snapshot(extension_class=HtmlSnapshot) == text


def test_html_is_self_contained(root):
    text = report_for(root, "html")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", text), "no external assets"
    assert text.count("<svg") == 2 and 'class="threshold"' in text


def test_reports_escape_hostile_text(root):
    with contextlib.chdir(root):
        plan, _ = load_plan(Path("demo/plan.yaml"))
    evil = "<script>alert(1)</script> | *bold* `x`"
    blobs = [replace(plan.blobs[0], reason=evil)] + plan.blobs[1:]
    plan = replace(plan, blobs=blobs, findings=[evil])
    report = Report(plan_view(plan, "plan file <b>x</b>.yaml"), None)
    html = render_report(report, "html")
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    md = render_report(report, "md")
    row = next(line for line in md.splitlines() if line.startswith(f"| 0 | `{REBUILT}`"))
    # 9 columns: 10 unescaped pipes; the reason's own pipe and markup are escaped
    assert len(re.findall(r"(?<!\\)\|", row)) == 10
    assert r"\<script\>" in row and r"\*bold\*" in row and r"\`x\`" in row
    assert not re.search(RAW_HTML, md)


def test_html_renders_in_chromium(root, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = tmp_path / "report.html"
    page.write_text(report_for(root, "html"))
    args = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(args + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h1>nydus-compact report</h1>" in dom.stdout
    assert dom.stdout.count("<svg") == 2 and dom.stdout.count("<rect") == 5 + 5 + 3
    assert "Apply run 1" in dom.stdout and "passed" in dom.stdout
    shot = tmp_path / "shot.png"
    done = subprocess.run(args + [f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 20_000, done.stderr[-2000:]


def test_state_report_matches_plan_report(root):
    rc, from_state, _ = astuple(cli("report", "--state", "demo/plan.state.sqlite", cwd=root))
    assert rc == 0
    from_plan = report_for(root, "md").replace("/TMP", str(root))
    run_part = from_plan[from_plan.index("## Apply run 1"):]
    assert from_state.endswith(run_part)
    assert "| decisions from | state demo/plan.state.sqlite |" in from_state
    for line in from_plan.splitlines():
        if line.startswith(("| blobs |", "| bytes to", f"| 0 | `{REBUILT}`", f"| 3 | `{MERGED}`", "| g1 |")):
            assert line in from_state


def test_report_command_writes_file_and_rejects_bad_runs(root, tmp_path):
    out = tmp_path / "r.html"
    rc, _, _ = astuple(cli("report", "demo/plan.yaml", "-o", str(out), cwd=root))
    assert rc == 0 and out.read_text().startswith("<!DOCTYPE html>")
    rc, _, err = astuple(cli("report", "demo/plan.yaml", "--run", "9", cwd=root))
    assert rc == 1 and err == "compact: error: demo/plan.state.sqlite: no apply run 9\n"
    rc, _, err = astuple(cli("report", cwd=root))
    assert rc == 1 and err.count("\n") == 1 and "--state" in err


def explain(root, *args: str) -> str:
    rc, out, err = astuple(cli("explain", *args, cwd=root))
    assert rc == 0, err
    return out


def test_explain_merged_blob(root):
    out = explain(root, MERGED[:8], "--plan", "demo/plan.yaml")
    new_g1 = json.loads((root / "demo/apply.json").read_text())["new_blobs"][1]
    assert new_g1["group"] == "g1"
    assert "  decision    merge (MERGED_INTO) -> g1\n" in out
    assert "smaller than compact_blob_size 64.0 KiB" in out
    assert f"written as {new_g1['blob_id']}" in out and "by apply run 1" in out
    files = out.split("files referencing its chunks (top 10 by bytes):\n")[1].splitlines()
    assert files[0].split() == ["3.0", "KiB", "/srv/data/a.bin"]


def test_explain_deleted_blob_from_state_only(root):
    out = explain(root, DELETED, "--state", "demo/plan.state.sqlite")
    assert "  decision    delete (UNREFERENCED)\n" in out
    assert "  why         the new image needs none of its chunks, so it leaves the blob table\n" in out
    assert "the blob itself is deletable (197.0 KiB reclaimable" in out
    assert out.endswith("files: none of the image's files reference its chunks\n")


def test_explain_kept_blob(root):
    out = explain(root, KEPT, "--plan", "demo/plan.yaml", "--top", "2")
    assert "  decision    keep (KEEP)\n" in out
    assert "(99%), not below min_used_ratio 50%" in out
    assert "  after apply stays in the blob table at index 1\n" in out
    files = out.split("files referencing its chunks (top 2 by bytes):\n")[1].splitlines()
    assert [f.split()[-1] for f in files] == ["/usr/lib/libbig.so", "/usr/bin/tool-b"]


@pytest.mark.parametrize(
    "query, message",
    [
        ("4dbf", "'4dbf': give at least 8 characters of the blob id"),
        ("0123456789ab", "0123456789ab: no such blob in plan sha256:"),
    ],
)
def test_explain_rejects_unknown_or_short_ids(root, query, message):
    rc, out, err = astuple(cli("explain", query, "--plan", "demo/plan.yaml", cwd=root))
    assert rc == 1 and out == ""
    assert err.startswith(f"compact: error: {message}") and err.count("\n") == 1


def test_run_report_shows_resume(tmp_path):
    """A run killed after writing a blob and resumed: the report names the resume and the reused step."""
    assert compact("mkimage", "--sample", "-o", "img", "--chunk-size", "64KiB", cwd=tmp_path).rc == 0
    plan = compact("plan", "img/image.boot", "--blobs-dir", "img/blobs", "--min-used-ratio", "50",
                    "--compact-blob-size", "64KiB", "-o", "plan.yaml", cwd=tmp_path)
    assert plan.rc == 0, plan.err
    killed = compact("apply", "plan.yaml", cwd=tmp_path, fault="blob-done:g0")
    assert killed.rc != 0
    assert compact("apply", "plan.yaml", cwd=tmp_path).rc == 0
    with open_store(tmp_path / "plan.state.sqlite", create=False) as store:
        run = select_run(store, None, None)
        view = run_view(store, run, plan_view_from_store(store, run.plan_digest))
    md = render_report(Report(None, view), "md")
    assert "The run was resumed 1 time." in md
    assert "- blob:g0: output found intact from an earlier attempt, reused" in md
    assert re.search(r"^\| blob:g0 \| skipped \|", md, re.M)
    assert "Not recorded for this run" in md


def test_demo_end_to_end(tmp_path):
    done = compact("demo", "out", cwd=tmp_path)
    assert done.rc == 0, done.err
    lines = done.out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "image", "plan", "state", "applied", "apply", "verify", "report", "report", "deletable", "layout", "verify"
    ]
    assert "published oci:" in lines[-2] and "sample-compact" in lines[-2] and " OK: " in lines[-1]
    for name in ("plan.yaml", "plan.state.sqlite", "apply.json", "report.md", "report.html",
                 "image/image.boot", "image/image.boot.compact"):
        assert (tmp_path / "out" / name).is_file(), name
        assert f"out/{name}" in done.out
    deletable = json.loads((tmp_path / "out/apply.json").read_text())["deletable_blobs"]
    report = (tmp_path / "out/report.md").read_text()
    assert len(deletable) == 4 and all(f"| `{d}` |" in report for d in deletable)
    assert "OK: 3 blobs" in lines[5] and "**passed**" in report
    again = compact("demo", "out", cwd=tmp_path)
    assert again.rc == 1 and again.out == ""
    assert again.err == "compact: error: out: exists and is not an empty directory (use --force to start over in it)\n"
    assert compact("demo", "out", "--force", cwd=tmp_path).rc == 0


@pytest.mark.parametrize("command", ["report", "explain", "demo"])
def test_help_has_an_example(command):
    r = cli(command, "--help")
    assert r.rc == 0 and "Example:" in r.out
